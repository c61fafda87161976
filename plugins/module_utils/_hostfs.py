# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The kernel's text files (/proc, /sys) and the collection's runtime files on a host.

Standard library only: the boot helper (boot.py) runs it outside Ansible.
"""

from __future__ import annotations

import errno
import hashlib
import os

from ansible_collections.containerhost.overlayfs.plugins.module_utils import _syscalls as syscalls

SYS_BLOCK = '/sys/block'
SYS_MODULE = '/sys/module'
# Where FUSE exports of images live (the nbd-free attach method): NAME.img is the export, NAME.pid its daemon,
# NAME.json what it serves.
EXPORT_DIR = '/run/containerhost-overlayfs/exports'


def read_text(path):
    """A kernel text file, without its trailing newline; undecodable bytes kept as surrogates, a \\r as it is."""
    with open(path, 'r', encoding='utf-8', errors='surrogateescape', newline='') as handle:
        return handle.read().rstrip('\n')


def loop_backing_file(device, sys_block=SYS_BLOCK):
    """The file a loop device is attached to (as it was named, even once deleted); None when it is not attached."""
    try:
        backing_file = read_text(os.path.join(sys_block, os.path.basename(device), 'loop', 'backing_file'))
    except FileNotFoundError:
        return None
    return backing_file[:-len(' (deleted)')] if backing_file.endswith(' (deleted)') else backing_file


def device_number(device):
    """(major, minor) of a device node."""
    rdev = os.stat(device).st_rdev
    return os.major(rdev), os.minor(rdev)


def same_file(path, other):
    return os.path.samefile(path, other)


def owner(path):
    """(uid, gid) of a path as the mount it is on shows them."""
    info = os.stat(path)
    return info.st_uid, info.st_gid


def mount_idmapped_layer(source, target, idmap):
    """An idmapped layer's mount on its own mount point, which is made for it (and removed again if the mount
    fails): the collection's dir under idmap.IDMAP_DIR lives as long as the mount."""
    made = not os.path.isdir(target)
    if made:
        os.makedirs(target, 0o755)
    try:
        syscalls.mount_idmapped(source, target, idmap)
    except OSError:
        if made:
            os.rmdir(target)
        raise


def process_alive(pid):
    """A process that exists and is not a zombie (a killed daemon whose parent does not reap it)."""
    try:
        stat_line = read_text('/proc/%d/stat' % pid)
    except OSError:
        return False
    return stat_line.rsplit(')', 1)[-1].split()[0] != 'Z'


def export_files(image, image_format):
    """The export file, pid file and metadata file of the FUSE export of an image in a format.

    Named after the image path as the tree gives it (not resolved): the boot-time service the role renders on
    the controller, which cannot resolve the target's symlinks, finds the same files as the module.
    """
    digest = hashlib.sha256(('%s\0%s' % (image, image_format)).encode('utf-8', 'surrogateescape')).hexdigest()
    base = os.path.join(EXPORT_DIR, digest[:16])
    return base + '.img', base + '.pid', base + '.json'


def discard_volatile_marker(marker):
    """Remove the marker a volatile overlay leaves: the kernel makes it as the dir volatile with an empty file dirty."""
    dirty = os.path.join(marker, 'dirty')
    foreign = [name for name in os.listdir(marker) if name != 'dirty']
    kernels = not os.path.lexists(dirty) or (os.path.isfile(dirty) and not os.path.islink(dirty)
                                             and os.path.getsize(dirty) == 0)
    if foreign or not kernels:
        raise OSError(errno.ENOTEMPTY, '%s holds more than the kernel leaves there (%s); it is left as it is'
                      % (marker, ', '.join(foreign) or 'dirty'))
    if os.path.lexists(dirty):
        os.unlink(dirty)
    os.rmdir(marker)


def restore_volatile_marker(marker):
    """Put a discarded marker back (a run that is undone leaves the work dir as it found it)."""
    os.makedirs(marker)
    with open(os.path.join(marker, 'dirty'), 'w'):
        pass


def processes_using(path, proc='/proc'):
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


def _paths_held(base):
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


def _readlink(path):
    try:
        return os.readlink(path)
    except OSError:
        return ''


def _command(base):
    try:
        return read_text(os.path.join(base, 'comm'))
    except OSError:
        return '?'
