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
from typing import NamedTuple

from ansible_collections.containerhost.overlayfs.plugins.module_utils.host import _syscalls as syscalls
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._idmap import IDMAP_DIR, idmap_mount_path
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._mountinfo import read_mountinfo
from ansible_collections.containerhost.overlayfs.plugins.module_utils.host._observe import (
    Observed,
    observe_path,
    read_fuse_exports,
    read_loop_devices,
    read_nbd_devices,
)
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._options import OVERLAY_OPTIONS
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._paths import fold_path
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._tree import (
    TreeError,
    is_within,
    parse_filesystem,
    to_yaml,
)

PATH_OPTIONS = ('lowerdir', 'lowerdir+', 'upperdir', 'workdir')


class Unexpressed(Exception):
    """A mount a tree cannot describe; the message says why."""


class Discovered(NamedTuple):
    filesystems: list  # canonical YAML trees, in mount order
    unexpressed: list  # {'target': ..., 'reason': ...}, in mount order


def read_host():
    """Observe what discovery needs, in one pass: the mount table and devices, then every path an overlay names."""
    mounts = read_mountinfo()
    idmaps = dict((entry.mountpoint, syscalls.mount_idmap(entry.mountpoint)) for entry in mounts
                  if 'idmapped' in entry.mount_options)
    observed = Observed(mounts, read_loop_devices(), {}, nbds=read_nbd_devices(), exports=read_fuse_exports(mounts),
                        idmaps=idmaps)
    paths = set()
    for entry in mounts:
        layers = entry.overlay_layers()
        if layers:
            paths.update(path for path in layers[0] + [layers[1], layers[2], entry.mountpoint] if path)
    paths.update(loop.backing_file for loop in observed.loops if loop.backing_file)
    paths.update(entry.source for entry in mounts if entry.source.startswith('/dev/'))
    return observed.with_paths(dict((path, observe_path(path)) for path in paths if path.startswith('/')))


def discover(observed, targets=(), under=None):
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
    def __init__(self, observed):
        self.observed = observed
        self.overlays = [entry for entry in observed.mounts if entry.fstype == 'overlay']
        # How many overlays stand on each path: an overlay used by exactly one is nested in it; one used by
        # several (a shared base) is a tree of its own, and they name its target as a dir.
        self.used_by = Counter(layer for entry in self.overlays
                               for layer in set(fold_path(path) for path in entry.overlay_layers()[0]))

    def tree_tops(self, also=()):
        """The overlays that are trees of their own: the top mount at its target, not nested in one other (or
        at one of the targets ``also``)."""
        return [entry for entry in self.overlays
                if (not self._nested(entry.mountpoint) or entry.mountpoint in also)
                and self.observed.mounts_at(entry.mountpoint)[-1] is entry]

    def nested_in(self, entry):
        """The overlays nested in ``entry``'s tree: the top overlays at its layers that it alone stands on."""
        nested = []
        for path in entry.overlay_layers()[0]:
            stacked = self.observed.mounts_at(fold_path(path)) if path.startswith('/') else []
            if stacked and stacked[-1].fstype == 'overlay' and self._nested(fold_path(path)):
                nested.append(stacked[-1])
        return nested

    def _nested(self, path):
        """An overlay at ``path`` is nested in the tree of the one overlay that stands on it."""
        return self.used_by[path] == 1

    def tree(self, entry):
        self._top_at(entry.mountpoint)  # a stacked duplicate is no tree
        raw = dict(self._overlay(entry, entry.mountpoint), mount_flags=list(entry.mount_flags))
        try:
            return to_yaml(parse_filesystem(raw, 'filesystem'))
        except TreeError as error:
            raise Unexpressed('as a tree it breaks a rule: %s' % error)

    # --- one node per mount -------------------------------------------------------------------------------

    def _overlay(self, entry, root):
        """``root``: the target of the tree's top overlay (it names the tree's idmapped mounts)."""
        lowers, upper, work = entry.overlay_layers()
        options = entry.super_options
        if options.get('datadir+'):
            raise Unexpressed('it has data-only layers (datadir+), which a tree cannot hold')
        if upper and not entry.readonly and entry.superblock_readonly:
            raise Unexpressed('it is degraded: its superblock is read-only though it has an upper dir (the kernel '
                              'could not set up the work dir %s)' % work)
        node = {'type': 'overlay', 'target': entry.mountpoint,
                'lower': [self._layer(_absolute(path, 'lower layer'), root) for path in lowers]}
        if upper:
            node.update(upper=_absolute(upper, 'upper dir'), work=_absolute(work, 'work dir'))
        declared = _declared_options(options, bool(upper))
        if declared:
            node['options'] = declared
        if entry.readonly:
            node['readonly'] = True
        return node

    def _layer(self, path, root):
        entry = self._top_at(path)
        if entry is None:
            facts = self.observed.paths.get(path)
            if facts is None or not facts.exists:
                raise Unexpressed('its lower layer %s no longer exists' % path)
            if not facts.is_dir:
                raise Unexpressed('its lower layer %s is not a directory' % path)
            return path
        if entry.fstype == 'overlay':
            return self._overlay(entry, root) if self._nested(path) else path
        if 'idmapped' in entry.mount_options:
            return self._idmapped(entry, path, root)
        return self._device_or_bind(entry, path)

    def _idmapped(self, entry, path, root):
        """The layer an idmapped mount at ``path`` is a clone of, with its mapping."""
        idmap = self.observed.idmaps.get(path)
        if idmap is None:
            raise Unexpressed('its layer at %s is an idmapped mount whose mapping this kernel cannot read back '
                              '(statmount(2) reads it from Linux 6.15)' % path)
        layer = self._cloned_layer(entry, path, root)
        node = self._layer(layer, root) if self.observed.mounts_at(layer) else layer
        return dict({'type': 'dir', 'target': node} if isinstance(node, str) else node, idmap=idmap.to_yaml())

    def _cloned_layer(self, entry, path, root):
        """The tree's layer whose idmapped mount is ``entry``: the dir it clones, seen where its filesystem is
        mounted, that names ``path`` (idmap.idmap_mount_path). Mountinfo alone cannot tell a clone of a bind mount
        from one of its source: the name can."""
        candidates = [fold_path('%s/%s' % (other.mountpoint, entry.root[len(other.root):]))
                      for other in self.observed.mounts_of_device(entry.major, entry.minor)
                      if 'idmapped' not in other.mount_options and is_within(entry.root, other.root)]
        for candidate in candidates:
            if idmap_mount_path(root, candidate) == path:
                return candidate
        raise Unexpressed('its layer at %s is an idmapped mount of %s that no tree made (a tree mounts its '
                          'idmapped layers under %s, each named for the tree and the layer)'
                          % (path, ' or '.join(candidates) or entry.root, IDMAP_DIR))

    def _device_or_bind(self, entry, path):
        loop = self.observed.loop_by_number(entry.major, entry.minor)
        nbd = self.observed.nbd_by_number(entry.major, entry.minor)
        if loop is not None or nbd is not None:
            if not entry.readonly:
                raise Unexpressed('its image layer at %s is mounted read-write; an image under an overlay is '
                                  'mounted read-only' % path)
            return dict(self._image(loop, nbd, path), type='file', target=path)
        if entry.root == '/' and entry.source.startswith('/dev/'):
            facts = self.observed.paths.get(entry.source)
            if facts is None or facts.rdev != (entry.major, entry.minor):
                raise Unexpressed('its layer at %s is mounted from %s, which is no longer that block device'
                                  % (path, entry.source))
            if not entry.readonly:
                raise Unexpressed('its block layer at %s is mounted read-write; a block device under an overlay '
                                  'is mounted read-only' % path)
            return {'type': 'block', 'source': entry.source, 'target': path}
        source = self._bind_source(entry)
        node = {'type': 'mount', 'source': source, 'target': path}
        if entry.readonly:
            node['readonly'] = True
        return node

    def _image(self, loop, nbd, path):
        if nbd is not None:
            if nbd.server is None:
                raise Unexpressed('its image layer at %s is on %s, which no qemu-nbd serves any more'
                                  % (path, nbd.device))
            if not nbd.server.image_format:
                raise Unexpressed('its image layer at %s is served by qemu-nbd without --format (a tree names the '
                                  'format: image formats are never probed)' % path)
            return {'driver': 'nbd', 'format': nbd.server.image_format, 'source': nbd.server.image}
        export = self.observed.export_at(loop.backing_file)
        if export is not None:
            if export.server is None:
                raise Unexpressed('its image layer at %s is on a FUSE export no daemon serves any more' % path)
            return {'driver': 'fuse', 'format': export.server.image_format, 'source': export.server.image}
        facts = self.observed.paths.get(loop.backing_file)
        if facts is None or not facts.is_file:
            raise Unexpressed('its image layer at %s is on %s, whose file %s is gone'
                              % (path, loop.device, loop.backing_file))
        return {'driver': 'loop', 'format': 'raw', 'source': loop.backing_file}

    def _bind_source(self, entry):
        """The host dir a bind mount shows: where its filesystem's root is mounted, and the mount's root in it."""
        if entry.root == '/' and not entry.source.startswith('/'):
            raise Unexpressed('a %s filesystem is mounted at its layer %s; a tree binds host dirs there'
                              % (entry.fstype, entry.mountpoint))
        for other in self.observed.mounts_of_device(entry.major, entry.minor):
            if other.root == '/' and other.mountpoint != entry.mountpoint:
                return fold_path(other.mountpoint + '/' + entry.root)
        raise Unexpressed('its layer at %s is a bind mount of %s on %s, which is not mounted anywhere else'
                          % (entry.mountpoint, entry.root, entry.source))

    def _top_at(self, path):
        stacked = self.observed.mounts_at(path)
        if len(stacked) > 1:
            raise Unexpressed('%d mounts are stacked at %s' % (len(stacked), path))
        return stacked[0] if stacked else None


def _absolute(path, role):
    if not path.startswith('/'):
        raise Unexpressed('its %s %r is relative, as it was given to mount; a tree names absolute paths' % (role, path))
    return fold_path(path)


def _declared_options(shown, has_upper):
    """The overlay options a tree names for a mount that shows ``shown``: all but the paths, rw/ro and those
    the kernel adds by itself."""
    declared = {}
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


def _implied(name, value, shown, has_upper):
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
