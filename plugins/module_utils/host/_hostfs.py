# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The kernel's text files (/proc, /sys) and the collection's runtime files on a host.

Standard library only: the boot helper (boot.py) runs it outside Ansible.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from typing import Iterator, List, Optional, Tuple

from ansible_collections.containerhost.overlayfs.plugins.module_utils.host import _syscalls as syscalls
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._idmap import IdMap
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._options import VOLATILE_MARKER, volatile_marker
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._paths import Beneath

SYS_BLOCK = '/sys/block'
SYS_MODULE = '/sys/module'
RUN_DIR = '/run/containerhost-overlayfs'  # the collection's runtime files: root's alone (open_private_dir)
# Where FUSE exports of images live (the nbd-free attach method): NAME.img is the export, NAME.pid its daemon,
# NAME.json what it serves.
EXPORT_DIR = RUN_DIR + '/exports'


def read_text(path: str) -> str:
    """A kernel text file, without its trailing newline; undecodable bytes kept as surrogates, a \\r as it is."""
    with open(path, 'r', encoding='utf-8', errors='surrogateescape', newline='') as handle:
        return handle.read().rstrip('\n')


def loop_backing_file(device: str, sys_block: str = SYS_BLOCK) -> Optional[str]:
    """The file a loop device is attached to (as it was named, even once deleted); None when it is not attached."""
    try:
        backing_file = read_text(os.path.join(sys_block, os.path.basename(device), 'loop', 'backing_file'))
    except FileNotFoundError:
        return None
    return backing_file[:-len(' (deleted)')] if backing_file.endswith(' (deleted)') else backing_file


def open_private_dir(path: str) -> int:
    """An fd on one of the collection's own dirs (made 0700 if missing), opened without following a symlink, in a
    parent only root can change (/run). One that another user owns is refused; one of root's that others could
    write to is made 0700."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    info = os.fstat(fd)
    if info.st_uid != 0:
        os.close(fd)
        raise OSError(errno.EPERM, '%s belongs to uid %d, not root: it is not used' % (path, info.st_uid))
    if info.st_mode & 0o077:
        os.fchmod(fd, 0o700)
    return fd


def device_number(device: str) -> Tuple[int, int]:
    """(major, minor) of a device node."""
    rdev = os.stat(device).st_rdev
    return os.major(rdev), os.minor(rdev)


def same_file(path: str, other: str) -> bool:
    return os.path.samefile(path, other)


def owner(path: str) -> Tuple[int, int]:
    """(uid, gid) of a path as the mount it is on shows them."""
    info = os.stat(path)
    return info.st_uid, info.st_gid


def mount_idmapped_layer(source: str, target: str, idmap: IdMap,
                         source_beneath: Optional[Beneath] = None) -> None:
    """An idmapped layer's mount on its own mount point, which is made for it (and removed again if the mount
    fails): the collection's dir under idmap.IDMAP_DIR lives as long as the mount. ``source_beneath``: a source
    below an open dir, (that dir, the rest), cloned from the dir reached as syscalls.open_beneath does."""
    made = not os.path.isdir(target)
    if made:
        os.makedirs(target, 0o755)
    try:
        with syscalls.pinned_dir(*source_beneath) if source_beneath else contextlib.nullcontext() as reached:
            syscalls.mount_idmapped(source, target, idmap, source_at=reached)
    except OSError:
        if made:
            os.rmdir(target)
        raise


def process_alive(pid: int) -> bool:
    """A process that exists and is not a zombie (a killed daemon whose parent does not reap it)."""
    try:
        stat_line = read_text('/proc/%d/stat' % pid)
    except OSError:
        return False
    return stat_line.rsplit(')', 1)[-1].split()[0] != 'Z'


def export_files(image: str, image_format: str) -> Tuple[str, str, str]:
    """The export file, pid file and metadata file of the FUSE export of an image in a format.

    Named after the image path as the tree gives it (not resolved): the boot-time service the role renders on
    the controller, which cannot resolve the target's symlinks, finds the same files as the module.
    """
    digest = hashlib.sha256(('%s\0%s' % (image, image_format)).encode('utf-8', 'surrogateescape')).hexdigest()
    base = os.path.join(EXPORT_DIR, digest[:16])
    return base + '.img', base + '.pid', base + '.json'


def has_volatile_marker(work: str, beneath: Optional[Beneath] = None) -> bool:
    """Whether the work dir ``work`` holds the marker a volatile overlay leaves, each of its dirs a dir and no
    symlink (one a container planted is not the kernel's); ``beneath`` as for discard_volatile_marker."""
    try:
        os.close(_open_marker(work, beneath, len(VOLATILE_MARKER)))
    except OSError:
        return False
    return True


def discard_volatile_marker(work: str, beneath: Optional[Beneath] = None) -> None:
    """Remove the marker a volatile overlay leaves: the kernel makes it as the dir volatile with an empty file dirty.
    Every dir is opened from the one above it without following a symlink, and the removals act on those fds only
    (``beneath``: the work dir lies below that open dir, reached as syscalls.open_beneath does)."""
    parent = _open_marker(work, beneath, len(VOLATILE_MARKER) - 1)
    try:
        marker = os.open(VOLATILE_MARKER[-1], os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=parent)
        try:
            foreign = [name for name in os.listdir(marker) if name != 'dirty']
            dirty = _lstat_at(marker, 'dirty')
            kernels = dirty is None or (stat.S_ISREG(dirty.st_mode) and dirty.st_size == 0)
            if foreign or not kernels:
                raise OSError(errno.ENOTEMPTY, '%s holds more than the kernel leaves there (%s); it is left as it is'
                              % (volatile_marker(work), ', '.join(foreign) or 'dirty'))
            if dirty is not None:
                os.unlink('dirty', dir_fd=marker)
        finally:
            os.close(marker)
        os.rmdir(VOLATILE_MARKER[-1], dir_fd=parent)
    finally:
        os.close(parent)


def restore_volatile_marker(work: str, beneath: Optional[Beneath] = None) -> None:
    """Put a discarded marker back (a run that is undone leaves the work dir as it found it)."""
    parent = _open_marker(work, beneath, len(VOLATILE_MARKER) - 1, create=True)  # a mount since cleared work/
    try:
        os.mkdir(VOLATILE_MARKER[-1], 0o755, dir_fd=parent)
        marker = os.open(VOLATILE_MARKER[-1], os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=parent)
        try:
            os.close(os.open('dirty', os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                             dir_fd=marker))
        finally:
            os.close(marker)
    finally:
        os.close(parent)


def _open_marker(work: str, beneath: Optional[Beneath], depth: int, create: bool = False) -> int:
    """An fd on the work dir's first ``depth`` marker dirs (work/incompat/volatile), none reached through a
    symlink; ``create``: each made if missing."""
    fd = syscalls.open_beneath(*beneath) if beneath else os.open(work, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in VOLATILE_MARKER[:depth]:
            if create and _lstat_at(fd, name) is None:
                os.mkdir(name, 0o755, dir_fd=fd)
            below = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = below
    except OSError:
        os.close(fd)
        raise
    return fd


def _lstat_at(directory: int, name: str) -> Optional[os.stat_result]:
    try:
        return os.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return None


def processes_using(path: str, proc: str = '/proc') -> List[Tuple[int, str]]:
    """(pid, command) of the processes whose cwd, root, an open file or a mapped file lies at or under path,
    as far as /proc shows them (other users' processes need root). Sorted by pid."""
    prefix = path.rstrip('/') + '/'
    found = []
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        base = os.path.join(proc, name)
        if any(seen == path or seen.startswith(prefix) for seen in _paths_held(base)):
            found.append((int(name), _command(base)))
    return sorted(found)


def _paths_held(base: str) -> Iterator[str]:
    for link in ('cwd', 'root'):
        yield _readlink(os.path.join(base, link))
    try:
        fds = os.listdir(os.path.join(base, 'fd'))
    except OSError:
        fds = []
    for fd in fds:
        yield _readlink(os.path.join(base, 'fd', fd))
    try:
        with open(os.path.join(base, 'maps'), encoding='utf-8', errors='surrogateescape', newline='') as handle:
            for line in handle:
                fields = line.rstrip('\n').split(None, 5)
                if len(fields) == 6:
                    yield fields[5]
    except OSError:
        pass


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ''


def _command(base: str) -> str:
    try:
        return read_text(os.path.join(base, 'comm'))
    except OSError:
        return '?'
