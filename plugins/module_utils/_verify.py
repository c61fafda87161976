# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Does a live overlay give what a tree asks for? One rule for the planner (a mount that gives less is drift)
and the executor (a mount just made that gives less is undone and reported).

The kernel can accept an overlay and give less than it was asked: it falls back to a read-only superblock when
it cannot set up the work dir, and drops index, uuid, xino and other features with only a log line. Pure.
"""

from __future__ import annotations

from ansible_collections.containerhost.overlayfs.plugins.module_utils._options import option_shortfalls
from ansible_collections.containerhost.overlayfs.plugins.module_utils._tree import fold_path


def overlay_shortfalls(entry, lowers, upper, work, options, readonly):
    """What the mount ``entry`` gives less than asked, one phrase each; [] when it gives all of it."""
    layers = entry.overlay_layers() if entry else None
    if layers is None:
        return ['%s is mounted there, not an overlay' % entry.fstype if entry else 'nothing is mounted there']
    shown_lowers, shown_upper, shown_work = layers
    problems = []
    if [_fold(path) for path in shown_lowers] != list(lowers):
        problems.append('the lower layers are %s' % ':'.join(shown_lowers))
    if (_fold(shown_upper), _fold(shown_work)) != (upper, work):
        problems.append('upper %s and work %s' % (shown_upper, shown_work))
    if entry.readonly != readonly:
        problems.append('it is mounted %s' % ('read-only' if entry.readonly else 'read-write'))
    elif upper and not readonly and entry.superblock_readonly:
        problems.append('its superblock is read-only (the kernel could not set up the work dir %s)' % work)
    problems += ['option %s' % text for text in option_shortfalls(options, entry.super_options, bool(upper))]
    return problems


def _fold(path):
    return fold_path(path) if path else path
