# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Observe the host: the mount table, loop devices, and the facts the planner needs about each path.

Everything the planner decides on is gathered here in one pass, so planning stays a pure function.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import stat
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Protocol, Sequence, Tuple, TypeVar

from ansible_collections.containerhost.overlayfs.plugins.module_utils.host import _syscalls as syscalls
from ansible_collections.containerhost.overlayfs.plugins.module_utils.host._confine import ConfinedResolver, mounted_views, normalized, views_of, with_views
from ansible_collections.containerhost.overlayfs.plugins.module_utils.host._devices import settle_starting_exports
from ansible_collections.containerhost.overlayfs.plugins.module_utils.host._hostfs import (
    EXPORT_DIR,
    SYS_BLOCK,
    SYS_MODULE,
    has_volatile_marker,
    loop_backing_file,
    process_alive,
    read_text,
)
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._idmap import IdMap
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._mountinfo import (
    MountEntry,
    read_mountinfo,
)
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._paths import Beneath, path_and_ancestors

_K = TypeVar('_K')
_V = TypeVar('_V')


class ImageServer(object):
    """What a live qemu-nbd (or qemu-storage-daemon) process serves."""

    def __init__(self, image: str, image_format: Optional[str], readonly: bool) -> None:
        self.image = image
        self.image_format = image_format
        self.readonly = readonly

    def serves(self, image: str, image_format: Optional[str], readonly: bool) -> bool:
        return (self.image, self.image_format, self.readonly) == (image, image_format, readonly)


class NbdDevice(object):
    def __init__(self, device: str, major: int, minor: int, connected: bool, server: Optional[ImageServer],
                 foreign: bool = False) -> None:
        self.device = device
        self.major = major
        self.minor = minor
        self.connected = connected
        self.server = server  # None when no live qemu-nbd serves it (free, or its server died)
        self.foreign = foreign  # a live server that is not qemu-nbd (nbd-client, ...): not ours to repair


class FuseExport(object):
    def __init__(self, path: str, pidfile: str, metafile: str, server: Optional[ImageServer]) -> None:
        self.path = path
        self.pidfile = pidfile
        self.metafile = metafile
        self.server = server  # None when its daemon is gone or the export is not mounted


class LoopDevice(object):
    def __init__(self, device: str, major: int, minor: int, backing_file: str, readonly: bool,
                 holders: List[str]) -> None:
        self.device = device
        self.major = major
        self.minor = minor
        self.backing_file = backing_file
        self.readonly = readonly
        self.holders = holders


class PathFacts(NamedTuple):
    """What a path is now: existence, kind, identity, and (for work dirs) its entries. A plain record:
    observe_path fills it from the host, tests fill it by hand.

    A path that cannot be read (EIO on a filesystem whose device lost its server) exists but is of no
    known kind: ``unreadable`` holds the error.
    """
    path: str
    realpath: str
    exists: bool = False
    is_dir: bool = False
    is_file: bool = False
    is_block: bool = False
    identity: Optional[Tuple[int, int]] = None  # (st_dev, st_ino)
    owner: Optional[Tuple[int, int]] = None  # (st_uid, st_gid), as the mount the path is on shows them
    rdev: Optional[Tuple[int, int]] = None  # (major, minor) of a block device
    entries: Tuple[str, ...] = ()
    volatile_leftover: bool = False  # a volatile overlay left its marker in this work dir
    unreadable: Optional[str] = None
    is_symlink: bool = False  # the path's last component is a symlink (a parent's symlinks do not count)
    # Below an open dir (another overlay's merged view or upper dir, a dir a local user can change: see
    # _confine): (that dir, the rest of the path), what makes it open, the first symlink below it and where it points
    beneath: Optional[Beneath] = None
    opened_by: Optional[str] = None
    symlink_inside: Optional[Beneath] = None


def observe_path(path: str, work_dir: bool = False, resolve: Optional[ConfinedResolver] = None) -> PathFacts:
    """The facts of one path, as the confined walk reaches it (``resolve``: a ConfinedResolver); of a work dir
    (``work_dir``) also its entries and volatile marker. A path through a symlink inside an open dir is not looked
    at further: it is refused."""
    resolve = resolve or ConfinedResolver({})
    resolution = resolve(path)
    confined: Dict[str, Any] = dict(beneath=resolution.beneath, opened_by=resolution.opened_by,
                                    symlink_inside=resolution.symlink_inside)
    if resolution.symlink_inside:
        return PathFacts(path, resolution.realpath, exists=True, **confined)
    parent, name = path.rsplit('/', 1)
    last = os.path.join(resolve(parent or '/').realpath, name) if name else '/'
    is_symlink = False
    try:
        info = os.lstat(last)
        if stat.S_ISLNK(info.st_mode):
            is_symlink = True
            info = os.stat(resolution.realpath)
    except OSError as error:
        if error.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return PathFacts(path, resolution.realpath, exists=is_symlink, is_symlink=is_symlink, **confined)
        return PathFacts(path, resolution.realpath, exists=True, unreadable=error.strerror, is_symlink=is_symlink,
                         **confined)
    real = resolution.realpath
    is_dir = stat.S_ISDIR(info.st_mode)
    is_block = stat.S_ISBLK(info.st_mode)
    return PathFacts(
        path, real, exists=True, is_dir=is_dir, is_file=stat.S_ISREG(info.st_mode),
        is_block=is_block, identity=(info.st_dev, info.st_ino), owner=(info.st_uid, info.st_gid),
        rdev=(os.major(info.st_rdev), os.minor(info.st_rdev)) if is_block else None,
        entries=_entries(real) if work_dir and is_dir else (),
        # The kernel refuses to mount on a work dir that holds this marker.
        volatile_leftover=work_dir and is_dir and has_volatile_marker(real, resolution.beneath),
        is_symlink=is_symlink, **confined
    )


class Observed(object):
    """What observe() saw, indexed once so every lookup costs the same however many mounts, devices and trees
    the host has."""

    def __init__(self, mounts: Sequence[MountEntry], loops: Sequence[LoopDevice], paths: Dict[str, PathFacts],
                 nbds: Iterable[NbdDevice] = (), exports: Iterable[FuseExport] = (), nbd_loaded: bool = False,
                 kernel: str = '', views: Optional[Dict[str, str]] = None,
                 idmaps: Optional[Dict[str, Optional[IdMap]]] = None) -> None:
        self.mounts = mounts
        self.idmaps = idmaps or {}  # target of an idmapped layer -> the mapping of its mount (syscalls.mount_idmap)
        self.views = views or {}  # container_views
        self.loops = loops
        self.paths = paths
        self.nbds = list(nbds)
        self.exports = list(exports)
        self.nbd_loaded = nbd_loaded
        self.kernel = kernel
        self._at_mountpoint = _grouped((entry.mountpoint, entry) for entry in mounts)
        self._of_device = _grouped(((entry.major, entry.minor), entry) for entry in mounts)
        self._using_dir = _grouped((path, entry) for entry in mounts for path in _upper_and_work(entry))
        self._loop_numbered = dict(((loop.major, loop.minor), loop) for loop in loops)
        self._loops_backed_by = _grouped((loop.backing_file, loop) for loop in loops)
        self._nbd_numbered = dict(((nbd.major, nbd.minor), nbd) for nbd in self.nbds)
        self._export_at = dict((export.path, export) for export in self.exports)
        self._resolve = ConfinedResolver(self.views)
        self._standing_on, self._hidden_lowers = self._layers_in_use()
        # built on first use: overlays_with_lower_under
        self._users_under: Optional[Dict[str, List[MountEntry]]] = None

    def _layers_in_use(self) -> Tuple[Dict[int, List[MountEntry]], Dict[int, List[str]]]:
        """Which mount each overlay's lower lies on, and the lowers it stands on that are no longer in the mount
        table. An overlay resolved its lowers when it was mounted, and the mount table lists mounts in the order
        they were attached: a lower on a mount attached after the overlay is not the one the overlay holds (the
        kernel keeps that one alive, hidden)."""
        order = dict((entry.mount_id, index) for index, entry in enumerate(self.mounts))
        standing_on: Dict[int, List[MountEntry]] = {}
        hidden: Dict[int, List[str]] = {}
        for entry in self.mounts:
            for lower in self._lowers_of(entry):
                below = self.mount_containing(lower)
                if below is not None and order[below.mount_id] < order[entry.mount_id]:
                    standing_on.setdefault(below.mount_id, []).append(entry)
                else:
                    hidden.setdefault(entry.mount_id, []).append(lower)
        return standing_on, hidden

    def after(self, mounts: Sequence[MountEntry]) -> Observed:
        """What a run that changed only the mount table leaves: the same paths and devices, with ``mounts``. For
        the result's mount table and diff, which look at nothing else."""
        return Observed(mounts, self.loops, self.paths, self.nbds, self.exports, self.nbd_loaded, self.kernel, self.views,
                        self.idmaps)

    def with_paths(self, paths: Dict[str, PathFacts]) -> Observed:
        """The same observation with the facts of ``paths``."""
        return Observed(self.mounts, self.loops, paths, self.nbds, self.exports, self.nbd_loaded, self.kernel, self.views,
                        self.idmaps)

    def facts(self, path: str) -> PathFacts:
        return self.paths[path]

    def resolved(self, path: str) -> str:
        """A path as the kernel shows it in mountinfo (symlinks resolved) when it was observed, else as given."""
        return self.paths[path].realpath if path in self.paths else path

    def mounts_at(self, path: str) -> List[MountEntry]:
        """Mounts stacked on a path, bottom first: each covering mount's parent is the one it covers."""
        here = self._at_mountpoint.get(self.resolved(path), [])
        ids = set(entry.mount_id for entry in here)
        stack = [entry for entry in here if entry.parent_id not in ids][:1]
        while stack:
            above = [entry for entry in here if entry.parent_id == stack[-1].mount_id]
            if not above:
                break
            stack.append(above[0])
        return stack

    def top_mount_at(self, path: str) -> Optional[MountEntry]:
        stacked = self.mounts_at(path)
        return stacked[-1] if stacked else None

    def mount_containing(self, path: str) -> Optional[MountEntry]:
        """The mount a path lives on: the nearest mountpoint above its resolved form (the last one listed there)."""
        for ancestor in path_and_ancestors(self.resolved(path)):
            if ancestor in self._at_mountpoint:
                return self._at_mountpoint[ancestor][-1]
        return None

    def loop_by_number(self, major: int, minor: int) -> Optional[LoopDevice]:
        return self._loop_numbered.get((major, minor))

    def nbd_by_number(self, major: int, minor: int) -> Optional[NbdDevice]:
        return self._nbd_numbered.get((major, minor))

    def export_at(self, path: str) -> Optional[FuseExport]:
        return self._export_at.get(path)

    def loops_backed_by(self, image: str) -> List[LoopDevice]:
        return self._loops_backed_by.get(self.resolved(image), [])

    def mounts_of_device(self, major: int, minor: int) -> List[MountEntry]:
        return self._of_device.get((major, minor), [])

    def is_mounted_device(self, major: int, minor: int) -> bool:
        return bool(self.mounts_of_device(major, minor))

    def _lowers_of(self, entry: MountEntry) -> List[str]:
        """An overlay's lowers where they lead: mountinfo echoes them as given ('//a/', through the host's symlinks,
        or relative to the cwd of whoever mounted them, which nobody can tell now and which are left out)."""
        layers = entry.overlay_layers()
        return [self._resolve(path).realpath for path in map(normalized, layers[0] if layers else ()) if path]

    def overlays_on(self, entry: MountEntry) -> List[MountEntry]:
        """Mounted overlays with a lower on the mount ``entry`` (which they hold: unmounting it only hides it)."""
        return self._standing_on.get(entry.mount_id, [])

    def hidden_lowers(self, entry: MountEntry) -> List[str]:
        """Lowers of the overlay ``entry`` whose mount was replaced after it was mounted: it stands on the old one."""
        return self._hidden_lowers.get(entry.mount_id, [])

    def overlays_with_lower_under(self, path: str) -> List[MountEntry]:
        """Mounted overlays with a lower at ``path`` or below it."""
        if self._users_under is None:
            self._users_under = _grouped((ancestor, entry) for entry in self.mounts
                                         for lower in self._lowers_of(entry) for ancestor in path_and_ancestors(lower))
        return self._users_under.get(self.resolved(path), [])

    def overlays_using(self, path: str) -> List[MountEntry]:
        """Mounted overlays whose upper or work dir is this path."""
        return self._using_dir.get(self.resolved(path), [])


def _grouped(pairs: Iterable[Tuple[_K, _V]]) -> Dict[_K, List[_V]]:
    """key -> the values with that key, in the order given."""
    groups: Dict[_K, List[_V]] = {}
    for key, value in pairs:
        groups.setdefault(key, []).append(value)
    return groups


def _upper_and_work(entry: MountEntry) -> List[str]:
    layers = entry.overlay_layers()
    return [path for path in layers[1:] if path] if layers else []


def read_loop_devices(sys_block: str = SYS_BLOCK) -> List[LoopDevice]:
    loops = []
    for backing in sorted(glob.glob(os.path.join(sys_block, 'loop*', 'loop', 'backing_file'))):
        base = os.path.dirname(os.path.dirname(backing))
        name = os.path.basename(base)
        backing_file = loop_backing_file(name, sys_block)
        if backing_file is None:
            continue  # detached since the glob
        major, minor = read_text(os.path.join(base, 'dev')).split(':')
        loops.append(LoopDevice(
            device='/dev/' + name,
            major=int(major),
            minor=int(minor),
            backing_file=backing_file,
            readonly=read_text(os.path.join(base, 'ro')) == '1',
            holders=os.listdir(os.path.join(base, 'holders')),
        ))
    return loops


def read_nbd_devices(sys_block: str = SYS_BLOCK) -> List[NbdDevice]:
    devices = []
    for base in sorted(glob.glob(os.path.join(sys_block, 'nbd*')), key=_device_number_order):
        major, minor = read_text(os.path.join(base, 'dev')).split(':')
        pid_file = os.path.join(base, 'pid')
        pid = int(read_text(pid_file)) if os.path.exists(pid_file) else None
        size = int(read_text(os.path.join(base, 'size')))
        server = qemu_nbd_server(pid)
        devices.append(NbdDevice(device='/dev/' + os.path.basename(base), major=int(major), minor=int(minor),
                                 connected=pid is not None or size > 0, server=server,
                                 foreign=server is None and pid is not None and process_alive(pid)))
    return devices


def _device_number_order(path: str) -> int:
    digits = ''.join(char for char in os.path.basename(path) if char.isdigit())
    return int(digits or 0)


def qemu_nbd_server(pid: Optional[int]) -> Optional[ImageServer]:
    """What the qemu-nbd process (or thread) ``pid`` serves, from its command line; None if it is gone."""
    if pid is None:
        return None
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as handle:
            argv = [os.fsdecode(arg) for arg in handle.read().split(b'\0') if arg]
        cwd = os.readlink('/proc/%d/cwd' % pid)
    except OSError:
        return None
    if not argv or 'qemu-nbd' not in os.path.basename(argv[0]):
        return None
    image_format: Optional[str] = None
    readonly = False
    described: Optional[str] = None
    for index, arg in enumerate(argv[1:-1], 1):
        if arg in ('-f', '--format'):
            image_format = argv[index + 1]
        elif arg.startswith('--format='):
            image_format = arg.split('=', 1)[1]
        elif arg in ('-r', '--read-only'):
            readonly = True
        elif arg.startswith('--description='):
            described = arg.split('=', 1)[1]
    if described and argv[-1].startswith('json:'):
        # an image below an open dir, served from the file pinned: its export's description names it as the plan
        # resolved it (no link followed below the open dir: realpath here would follow one planted since)
        return ImageServer(described, image_format, readonly)
    image = argv[-1]
    if not os.path.isabs(image):
        image = _open_file_ending_in(pid, image) or os.path.join(cwd, image)
    return ImageServer(os.path.realpath(image), image_format, readonly)


def _open_file_ending_in(pid: int, relative: str) -> Optional[str]:
    """The file process ``pid`` holds open whose path ends in ``relative``: where a relative image argument points
    once qemu-nbd has daemonized (``--connect`` does, and its working dir is / from then on)."""
    tail = '/' + os.path.normpath(relative)
    try:
        descriptors = os.listdir('/proc/%d/fd' % pid)
    except OSError:
        return None
    for descriptor in descriptors:
        try:
            target = os.readlink('/proc/%d/fd/%s' % (pid, descriptor))
        except OSError:
            continue
        if target.endswith(tail):
            return target
    return None


def read_fuse_exports(mounts: Sequence[MountEntry], export_dir: str = EXPORT_DIR) -> List[FuseExport]:
    exports = []
    for metafile in sorted(glob.glob(os.path.join(export_dir, '*.json'))):
        base = metafile[:-len('.json')]
        path, pidfile = base + '.img', base + '.pid'
        server: Optional[ImageServer] = None
        try:
            with open(metafile) as handle:
                meta = json.load(handle)
            alive = process_alive(int(read_text(pidfile)))
        except (OSError, ValueError):
            alive = False
        if alive and any(entry.mountpoint == path and entry.fstype.startswith('fuse') for entry in mounts):
            server = ImageServer(meta['image'], meta['format'], True)
        exports.append(FuseExport(path, pidfile, metafile, server))
    return exports


def _entries(path: str) -> Tuple[str, ...]:
    try:
        return tuple(sorted(os.listdir(path)))
    except OSError:
        return ()


class TreeNode(Protocol):
    """What observing asks of a node of a tree (tree._node.Node, a layer above this one)."""

    @property
    def idmapped_target(self) -> Optional[str]: ...

    @property
    def view(self) -> Optional[Tuple[str, Optional[str]]]: ...

    def walk(self) -> Sequence[TreeNode]: ...

    def paths_used(self) -> List[Tuple[str, str]]: ...


def observe(roots: Sequence[TreeNode]) -> Observed:
    """Observe everything the trees mention."""
    settle_starting_exports()
    mounts = read_mountinfo()
    views = container_views(roots, mounts)
    resolve = ConfinedResolver(views)
    paths: Dict[str, PathFacts] = {}
    idmapped: List[str] = []
    for root in roots:
        for node in root.walk():
            if node.idmapped_target:
                idmapped.append(node.idmapped_target)
            for role, path in node.paths_used():
                if path not in paths:
                    paths[path] = observe_path(path, work_dir=role == 'work', resolve=resolve)
    observed = Observed(mounts, read_loop_devices(), paths, nbds=read_nbd_devices(),
                        exports=read_fuse_exports(mounts), nbd_loaded=os.path.isdir(os.path.join(SYS_MODULE, 'nbd')),
                        kernel=os.uname().release, views=views)
    for target in idmapped:  # the mapping of what is mounted there now
        top = observed.top_mount_at(target)
        if top is not None and 'idmapped' in top.mount_options:
            observed.idmaps[target] = syscalls.mount_idmap(target)
    return observed


def container_views(roots: Iterable[TreeNode], mounts: Iterable[MountEntry]) -> Dict[str, str]:
    """Where a container shapes the contents: the merged view and the upper dir of every overlay, mounted or in
    the batch. Canonical path -> what it is, for messages. A batch's paths are taken through the host's own
    symlinks (those in dirs only root can change), as the kernel will show them once mounted."""
    return with_views(mounted_views(mounts), views_of(view for root in roots for node in root.walk()
                                                      for view in [node.view] if view))
