# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Read the host's overlay mounts back as trees, in the form overlay_filesystem's ``filesystems`` takes.

``read_host`` observes (the mount table, loop and nbd devices, FUSE exports, and the facts of every layer path);
``discover`` is a pure function of what it saw. Each layer of an overlay is read from what is mounted at its path:
another overlay (nested, or its own tree when several overlays stand on it), a loop, nbd or FUSE-export device
(an image layer, resolved to its image and format), another block device, a bind mount, the idmapped mount of a
tree's layer (that layer, with its mapping), or nothing (a dir). What
a tree cannot say is reported with the reason, never guessed.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

from ansible_collections.containerhost.overlayfs.plugins.module_utils.host import _syscalls as syscalls
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._mountinfo import (
    MountEntry,
    read_mountinfo,
)
from ansible_collections.containerhost.overlayfs.plugins.module_utils.host._observe import (
    Observed,
    observe_path,
    read_fuse_exports,
    read_loop_devices,
    read_nbd_devices,
)
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._options import OVERLAY_OPTIONS
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._paths import fold_path, is_within
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._kinds import READ_BACK_ORDER
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._node import TreeError, Unexpressed
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._tree import parse_filesystem, to_yaml

PATH_OPTIONS = ('lowerdir', 'lowerdir+', 'upperdir', 'workdir')


class Discovered(NamedTuple):
    filesystems: List[Any]  # canonical YAML trees, in mount order
    unexpressed: List[Dict[str, str]]  # {'target': ..., 'reason': ...}, in mount order


def read_host() -> Observed:
    """Observe what discovery needs, in one pass: the mount table and devices, then every path an overlay names."""
    mounts = read_mountinfo()
    idmaps = dict((entry.mountpoint, syscalls.mount_idmap(entry.mountpoint)) for entry in mounts
                  if 'idmapped' in entry.mount_options)
    observed = Observed(mounts, read_loop_devices(), {}, nbds=read_nbd_devices(), exports=read_fuse_exports(mounts),
                        idmaps=idmaps)
    paths: Set[str] = set()
    for entry in mounts:
        layers = entry.overlay_layers()
        if layers:
            paths.update(path for path in layers[0] + [layers[1], layers[2], entry.mountpoint] if path)
    paths.update(loop.backing_file for loop in observed.loops if loop.backing_file)
    paths.update(entry.source for entry in mounts if entry.source.startswith('/dev/'))
    return observed.with_paths(dict((path, observe_path(path)) for path in paths if path.startswith('/')))


def discover(observed: Observed, targets: Sequence[str] = (), under: Optional[str] = None) -> Discovered:
    """The overlays mounted on the host as trees (those at ``targets``, or under the path ``under``; all when
    neither is given), and what could not be expressed."""
    reader = _Reader(observed)
    filesystems, unexpressed = [], []
    candidates = reader.tree_tops(also=targets)
    while candidates:
        entry = candidates.pop(0)
        if (targets and entry.mountpoint not in targets) or (under and not is_within(entry.mountpoint, under)):
            continue
        try:
            filesystems.append(reader.tree(entry))
        except Unexpressed as why:
            unexpressed.append({'target': entry.mountpoint, 'reason': str(why)})
            candidates[:0] = reader.nested_in(entry)  # they may be trees on their own
    return Discovered(filesystems, unexpressed)


class _Reader(object):
    """Reads trees back from the observed host; it is the Reading each node kind reads its mounts with
    (tree._node.Reading)."""

    def __init__(self, observed: Observed) -> None:
        self.observed = observed
        self.root = ''  # the target of the tree being read (tree() sets it before any kind reads it)
        self.overlays = [entry for entry in observed.mounts if entry.fstype == 'overlay']
        # How many overlays stand on each path: an overlay used by exactly one is nested in it; one used by
        # several (a shared base) is a tree of its own, and they name its target as a dir.
        self.used_by = Counter(layer for entry in self.overlays
                               for layer in set(fold_path(path) for path in _layers(entry)[0]))

    def tree_tops(self, also: Sequence[str] = ()) -> List[MountEntry]:
        """The overlays that are trees of their own: the top mount at its target, not nested in one other (or
        at one of the targets ``also``)."""
        return [entry for entry in self.overlays
                if (not self.is_nested(entry.mountpoint) or entry.mountpoint in also)
                and self.observed.mounts_at(entry.mountpoint)[-1] is entry]

    def nested_in(self, entry: MountEntry) -> List[MountEntry]:
        """The overlays nested in ``entry``'s tree: the top overlays at its layers that it alone stands on."""
        nested: List[MountEntry] = []
        for path in _layers(entry)[0]:
            stacked = self.observed.mounts_at(fold_path(path)) if path.startswith('/') else []
            if stacked and stacked[-1].fstype == 'overlay' and self.is_nested(fold_path(path)):
                nested.append(stacked[-1])
        return nested

    def is_nested(self, path: str) -> bool:
        """An overlay at ``path`` is nested in the tree of the one overlay that stands on it."""
        return self.used_by[path] == 1

    def tree(self, entry: MountEntry) -> Any:
        self._top_at(entry.mountpoint)  # a stacked duplicate is no tree
        self.root = entry.mountpoint
        raw = dict(self.overlay(entry), mount_flags=list(entry.mount_flags))
        try:
            return to_yaml(parse_filesystem(raw, 'filesystem'))
        except TreeError as error:
            raise Unexpressed('as a tree it breaks a rule: %s' % error)

    def overlay(self, entry: MountEntry) -> Dict[str, Any]:
        """The YAML of the overlay mounted as ``entry``, its layers read back by their kinds."""
        lowers, upper, work = _layers(entry)
        options = entry.super_options
        if options.get('datadir+'):
            raise Unexpressed('it has data-only layers (datadir+), which a tree cannot hold')
        if upper and not entry.readonly and entry.superblock_readonly:
            raise Unexpressed('it is degraded: its superblock is read-only though it has an upper dir (the kernel '
                              'could not set up the work dir %s)' % work)
        node: Dict[str, Any] = {'type': 'overlay', 'target': entry.mountpoint,
                                'lower': [self.layer(_absolute(path, 'lower layer')) for path in lowers]}
        if upper and work:  # the kernel shows both, or neither
            node.update(upper=_absolute(upper, 'upper dir'), work=_absolute(work, 'work dir'))
        declared = _declared_options(options, bool(upper))
        if declared:
            node['options'] = declared
        if entry.readonly:
            node['readonly'] = True
        return node

    def layer(self, path: str) -> Any:
        """The YAML of the lower at ``path``: what the first kind that claims the mount there reads back."""
        entry = self._top_at(path)
        for kind in READ_BACK_ORDER:
            raw = kind.read_back(self, entry, path)
            if raw is not None:
                return raw
        raise Unexpressed('no kind of node reads the mount at its layer %s' % path)

    def _top_at(self, path: str) -> Optional[MountEntry]:
        stacked = self.observed.mounts_at(path)
        if len(stacked) > 1:
            raise Unexpressed('%d mounts are stacked at %s' % (len(stacked), path))
        return stacked[0] if stacked else None


def _layers(overlay: MountEntry) -> Tuple[List[str], Optional[str], Optional[str]]:
    """(lowers, upper, work) of the mount of an overlay."""
    return overlay.overlay_layers() or ([], None, None)


def _absolute(path: str, role: str) -> str:
    if not path.startswith('/'):
        raise Unexpressed('its %s %r is relative, as it was given to mount; a tree names absolute paths' % (role, path))
    return fold_path(path)


def _declared_options(shown: Dict[str, Any], has_upper: bool) -> Dict[str, str]:
    """The overlay options a tree names for a mount that shows ``shown``: all but the paths, rw/ro and those
    the kernel adds by itself."""
    declared: Dict[str, str] = {}
    for name, value in shown.items():
        if name in PATH_OPTIONS or name in ('rw', 'ro'):
            continue
        if name not in OVERLAY_OPTIONS:
            raise Unexpressed('it has the option %s, which a tree cannot name' % name)
        value = 'on' if value is None else value
        if _implied(name, value, shown, has_upper):
            continue
        declared[name] = value
    return declared


def _implied(name: str, value: str, shown: Dict[str, Any], has_upper: bool) -> bool:
    """Shown by the kernel without being asked: uuid=on on a fresh upper, redirect_dir=on without an upper,
    redirect_dir=nofollow with userxattr, index=on with nfs_export. Leaving them out loses nothing: a tree
    matches a mount on the options it names."""
    if (name, value) == ('uuid', 'on'):
        return True
    if (name, value) == ('redirect_dir', 'on') and not has_upper:
        return True
    if (name, value) == ('redirect_dir', 'nofollow') and 'userxattr' in shown:
        return True
    return (name, value) == ('index', 'on') and shown.get('nfs_export') == 'on'
