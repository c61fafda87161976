# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Does a live mount give what a tree asks for? One rule for the planner (an overlay that gives less is drift)
and the executor (a mount just made that gives less is undone and reported).

The kernel can accept an overlay and give less than it was asked: it falls back to a read-only superblock when
it cannot set up the work dir, and drops index, uuid, xino and other features with only a log line. Pure, and
standard library only: the boot helper asks the same of a mount it finds (boot.mounted_as_specified).
"""

from __future__ import annotations

from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._options import option_shortfalls
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._paths import fold_path


def overlay_shortfalls(entry, lowers, upper, work, options, readonly):
    """What the mount ``entry`` gives less than asked, one phrase each; [] when it gives all of it."""
    layers = entry.overlay_layers() if entry else None
    if layers is None:
        return ['%s is mounted there, not an overlay' % entry.fstype if entry else 'nothing is mounted there']
    shown_lowers, shown_upper, shown_work = layers
    problems = []
    if not same_lowers(entry, lowers):
        problems.append('the lower layers are %s' % ':'.join(shown_lowers))
    if not same_upper_and_work(entry, upper, work):
        problems.append('upper %s and work %s' % (shown_upper, shown_work))
    if entry.readonly != readonly:
        problems.append('it is mounted %s' % ('read-only' if entry.readonly else 'read-write'))
    elif upper and not readonly and entry.superblock_readonly:
        problems.append('its superblock is read-only (the kernel could not set up the work dir %s)' % work)
    problems += ['option %s' % text for text in option_shortfalls(options, entry.super_options, bool(upper))]
    return problems


def overlay_mount_shortfalls(entry, lowers, upper, work, options, readonly, mount_flags):
    """What the mount ``entry`` of an overlay gives less than asked, its mount flags included: "is it mounted as
    asked", for a mount the module made (executor) and for one the boot helper finds (boot.mounted_as_specified)."""
    return overlay_shortfalls(entry, lowers, upper, work, options, readonly) + flag_shortfalls(entry, mount_flags)


def same_lowers(entry, lowers):
    """The overlay ``entry`` shows the lower layers ``lowers`` (paths compared folded)."""
    return [_fold(path) for path in entry.overlay_layers()[0]] == list(lowers)


def same_upper_and_work(entry, upper, work):
    _lowers, shown_upper, shown_work = entry.overlay_layers()
    return (_fold(shown_upper), _fold(shown_work)) == (upper, work)


def missing_flags(entry, mount_flags):
    """The mount flags (options.MOUNT_FLAGS) of ``mount_flags`` the mount ``entry`` lacks. A tree's flags are the
    least its mount has: more (a bind's, taken from the mount it binds) take nothing away."""
    return tuple(flag for flag in mount_flags if flag not in entry.mount_flags)


def flag_shortfalls(entry, mount_flags):
    """What missing_flags says, as a phrase."""
    if entry is None:
        return ['nothing is mounted there']
    missing = missing_flags(entry, mount_flags)
    return ['it is mounted without %s' % ', '.join(missing)] if missing else []


def _fold(path):
    return fold_path(path) if path else path


def stacked_shortfalls(stacked):
    """A mount just made must be the only one at its target."""
    return ['%d mounts are stacked there' % len(stacked)] if len(stacked) > 1 else []


def device_shortfalls(entry, device_number, readonly):
    """What a device mount ``entry`` gives other than asked; ``device_number`` is the device's (major, minor)."""
    if entry is None:
        return ['nothing is mounted there']
    wrong = (entry.major, entry.minor) != device_number
    return _source_and_mode(entry, wrong, readonly)


def bind_shortfalls(entry, shows_source, readonly):
    """What a bind mount ``entry`` gives other than asked; ``shows_source``: the target is now the source dir."""
    if entry is None:
        return ['nothing is mounted there']
    return _source_and_mode(entry, not shows_source, readonly)


def _source_and_mode(entry, wrong_source, readonly):
    problems = ['%s from %s is mounted there' % (entry.fstype, entry.source)] if wrong_source else []
    if entry.readonly != readonly:
        problems.append('it is mounted %s' % ('read-only' if entry.readonly else 'read-write'))
    return problems
