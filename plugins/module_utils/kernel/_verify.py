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

from typing import List, Optional, Sequence, Tuple

from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._mountinfo import MountEntry
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._options import Options, option_shortfalls
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._paths import fold_path


def overlay_shortfalls(entry: Optional[MountEntry], lowers: Sequence[str], upper: Optional[str], work: Optional[str],
                       options: Options, readonly: bool) -> List[str]:
    """What the mount ``entry`` gives less than asked, one phrase each; [] when it gives all of it."""
    layers = entry.overlay_layers() if entry else None
    if entry is None or layers is None:
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


def overlay_mount_shortfalls(entry: Optional[MountEntry], lowers: Sequence[str], upper: Optional[str],
                             work: Optional[str], options: Options, readonly: bool,
                             mount_flags: Sequence[str]) -> List[str]:
    """What the mount ``entry`` of an overlay gives less than asked, its mount flags included: "is it mounted as
    asked", for a mount the module made (executor) and for one the boot helper finds (boot.mounted_as_specified)."""
    return overlay_shortfalls(entry, lowers, upper, work, options, readonly) + flag_shortfalls(entry, mount_flags)


def same_lowers(entry: MountEntry, lowers: Sequence[str]) -> bool:
    """The overlay ``entry`` shows the lower layers ``lowers`` (paths compared folded)."""
    layers = entry.overlay_layers()
    return layers is not None and [fold_path(path) for path in layers[0]] == list(lowers)


def same_upper_and_work(entry: MountEntry, upper: Optional[str], work: Optional[str]) -> bool:
    layers = entry.overlay_layers()
    if layers is None:
        return False
    _lowers, shown_upper, shown_work = layers
    return (_fold(shown_upper), _fold(shown_work)) == (upper, work)


def missing_flags(entry: MountEntry, mount_flags: Sequence[str]) -> Tuple[str, ...]:
    """The mount flags (options.MOUNT_FLAGS) of ``mount_flags`` the mount ``entry`` lacks. A tree's flags are the
    least its mount has: more (a bind's, taken from the mount it binds) take nothing away."""
    return tuple(flag for flag in mount_flags if flag not in entry.mount_flags)


def flag_shortfalls(entry: Optional[MountEntry], mount_flags: Sequence[str]) -> List[str]:
    """What missing_flags says, as a phrase."""
    if entry is None:
        return ['nothing is mounted there']
    missing = missing_flags(entry, mount_flags)
    return ['it is mounted without %s' % ', '.join(missing)] if missing else []


def _fold(path: Optional[str]) -> Optional[str]:
    return fold_path(path) if path else path


def stacked_shortfalls(stacked: Sequence[MountEntry]) -> List[str]:
    """A mount just made must be the only one at its target."""
    return ['%d mounts are stacked there' % len(stacked)] if len(stacked) > 1 else []


def device_shortfalls(entry: Optional[MountEntry], device_number: Tuple[int, int], readonly: bool) -> List[str]:
    """What a device mount ``entry`` gives other than asked; ``device_number`` is the device's (major, minor)."""
    if entry is None:
        return ['nothing is mounted there']
    wrong = (entry.major, entry.minor) != device_number
    return _source_and_mode(entry, wrong, readonly)


def bind_shortfalls(entry: Optional[MountEntry], shows_source: bool, readonly: bool) -> List[str]:
    """What a bind mount ``entry`` gives other than asked; ``shows_source``: the target is now the source dir."""
    if entry is None:
        return ['nothing is mounted there']
    return _source_and_mode(entry, not shows_source, readonly)


def _source_and_mode(entry: MountEntry, wrong_source: bool, readonly: bool) -> List[str]:
    problems = ['%s from %s is mounted there' % (entry.fstype, entry.source)] if wrong_source else []
    if entry.readonly != readonly:
        problems.append('it is mounted %s' % ('read-only' if entry.readonly else 'read-write'))
    return problems
