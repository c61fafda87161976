# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Small, explicit wrappers around mount(2) and umount2(2), and the kernel's reason for a failure.

mount(8) is not used for overlays: libmount re-parses the option string (and from
util-linux 2.39 splits it on commas itself), so an escaped path could change meaning.
mount(2) hands the data string to the kernel untouched.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import socket
import stat
import struct
from typing import Any, Callable, Iterable, Iterator, List, Literal, Optional, Sequence, Tuple, Union

from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._idmap import IdMap, kernel_map, parse_kernel_map
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._options import OverlayPayload
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._paths import Beneath

MS_RDONLY = 0x1
MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x2, 0x4, 0x8
MS_REMOUNT = 0x20
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 0x400, 0x800, 0x200000
MS_BIND = 0x1000
MS_REC, MS_PRIVATE = 0x4000, 0x40000
CLONE_NEWNS = 0x20000
MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8
KMSG = '/dev/kmsg'

# Syscalls called by number: glibc wraps the mount API only from 2.36 (RHEL 9 has 2.34) and statmount(2) not at all.
# Each came after Linux 5.1 gave every architecture one numbering for new syscalls (424 on), so one number holds
# everywhere (test_syscalls checks them against x86_64's, aarch64's and riscv64's tables). Older syscalls, whose
# numbers differ by architecture (statx: 332 on x86_64, 291 on aarch64), go through their C library wrappers.
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_FSOPEN, SYS_FSCONFIG, SYS_FSMOUNT = 428, 429, 430, 431, 432
SYS_OPENAT2, SYS_MOUNT_SETATTR, SYS_STATMOUNT = 437, 442, 457
FSOPEN_CLOEXEC = FSMOUNT_CLOEXEC = 0x1
FSCONFIG_SET_FLAG, FSCONFIG_SET_STRING, FSCONFIG_CMD_CREATE = 0, 1, 6
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC = 0x2, 0x4, 0x8
# options.MOUNT_FLAGS as mount(2) and as fsmount(2) and mount_setattr(2) take them
FLAG_BITS = {'nodev': (MS_NODEV, MOUNT_ATTR_NODEV), 'nosuid': (MS_NOSUID, MOUNT_ATTR_NOSUID),
             'noexec': (MS_NOEXEC, MOUNT_ATTR_NOEXEC)}
# statvfs(3)'s per-mount flags, each with the mount(2) flag that asks for it again: what a remount keeps
KEPT_ON_REMOUNT = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
                   (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME), (os.ST_RELATIME, MS_RELATIME))
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_SYMLINKS = 0x10  # follow the target's last component: a pinned_dir's /proc/self/fd link
AT_FDCWD = -100

# Idmapped mounts (Linux 5.12; overlayfs takes them as layers from 5.19) and reading them back (statmount(2) 6.8,
# its UIDMAP/GIDMAP 6.15).
OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC = 0x1, 0x80000
AT_EMPTY_PATH, AT_SYMLINK_NOFOLLOW = 0x1000, 0x100
MOUNT_ATTR_IDMAP = 0x00100000
CLONE_NEWUSER = 0x10000000
STATX_MNT_ID_UNIQUE = 0x4000
STATX_MNT_ID_OFFSET = 144  # stx_mnt_id in struct statx (256 bytes)
STATMOUNT_MNT_UIDMAP, STATMOUNT_MNT_GIDMAP = 0x2000, 0x4000
# struct statmount up to mnt_gidmap (u32 fields I, u64 fields Q); its strings start after the 512-byte header
STATMOUNT_LAYOUT = '=IIQIIQIIQQIIQQQQQIIQIIIIIIQIIII'
STATMOUNT_FIELDS = ('size', 'mnt_opts', 'mask', 'sb_dev_major', 'sb_dev_minor', 'sb_magic', 'sb_flags', 'fs_type',
                    'mnt_id', 'mnt_parent_id', 'mnt_id_old', 'mnt_parent_id_old', 'mnt_attr', 'mnt_propagation',
                    'mnt_peer_group', 'mnt_master', 'propagate_from', 'mnt_root', 'mnt_point', 'mnt_ns_id',
                    'fs_subtype', 'sb_source', 'opt_num', 'opt_array', 'opt_sec_num', 'opt_sec_array',
                    'supported_mask', 'mnt_uidmap_num', 'mnt_uidmap', 'mnt_gidmap_num', 'mnt_gidmap')
STATMOUNT_HEADER = 512

LOOP_GET_STATUS64, LOOP_INFO64_SIZE = 0x4C05, 232  # struct loop_info64, lo_device and lo_inode first

# openat2(2) (Linux 5.6): resolve a path below a directory without following any symlink.
RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS, RESOLVE_BENEATH = 0x02, 0x04, 0x08


class _MountAttr(ctypes.Structure):
    _fields_ = [('attr_set', ctypes.c_uint64), ('attr_clr', ctypes.c_uint64), ('propagation', ctypes.c_uint64),
                ('userns_fd', ctypes.c_uint64)]


class _OpenHow(ctypes.Structure):
    _fields_ = [('flags', ctypes.c_uint64), ('mode', ctypes.c_uint64), ('resolve', ctypes.c_uint64)]


# The C library already loaded into this process (dlopen(NULL)): ctypes.util.find_library runs ldconfig -p, which
# costs a boot-time helper a third of its start-up.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.syscall.restype = ctypes.c_long


class MountError(OSError):
    """A failed mount syscall, with what the kernel logged about it."""

    def __init__(self, err: int, call: str, kernel_messages: List[str]) -> None:
        super(MountError, self).__init__(err, os.strerror(err))
        self.call = call
        self.kernel_messages = kernel_messages

    def __str__(self) -> str:
        text = '%s: %s' % (self.call, self.strerror)
        if self.kernel_messages:
            text += ' (kernel: %s)' % '; '.join(self.kernel_messages)
        return text


class KernelLog(object):
    """Collect the kernel log records written while a block runs (best effort: needs /dev/kmsg)."""

    def __init__(self, keywords: Sequence[str]) -> None:
        self.keywords = keywords
        self.fd: Optional[int] = None

    def __enter__(self) -> KernelLog:
        try:
            self.fd = os.open(KMSG, os.O_RDONLY | os.O_NONBLOCK)
            os.lseek(self.fd, 0, os.SEEK_END)
        except OSError:
            self.fd = None
        return self

    def __exit__(self, *exc: Any) -> Literal[False]:
        if self.fd is not None:
            os.close(self.fd)
        return False

    def messages(self) -> List[str]:
        found = []
        while self.fd is not None:
            try:
                record = os.read(self.fd, 8192)
            except OSError as error:
                if error.errno == errno.EPIPE:  # records overwritten while we read: skip ahead
                    continue
                break
            if not record:
                break
            text = record.decode('utf-8', 'replace').split(';', 1)[-1].split('\n', 1)[0]
            if any(keyword in text for keyword in self.keywords):
                found.append(text.strip())
        return found


def _call_mount(call: str, keywords: Sequence[str], source: Optional[str], target: str, fstype: Optional[str],
                flags: int, data: Optional[str]) -> List[str]:
    """Return what the kernel logged about a mount that succeeded (it may have given less than asked)."""
    with KernelLog(keywords) as log:
        result = _libc.mount(os.fsencode(source) if source else None, os.fsencode(target),
                             fstype.encode() if fstype else None, flags,
                             os.fsencode(data) if data is not None else None)
        if result != 0:
            err = ctypes.get_errno()
            raise MountError(err, call, log.messages())
        return log.messages()


def _mount_bits(readonly: bool, mount_flags: Iterable[str]) -> int:
    """mount(2)'s flags for a mount made read-only (or not) with ``mount_flags`` (options.MOUNT_FLAGS)."""
    return (MS_RDONLY if readonly else 0) | sum(FLAG_BITS[flag][0] for flag in mount_flags)


def _attr_bits(readonly: bool, mount_flags: Iterable[str]) -> int:
    """The same as MOUNT_ATTR_* bits, for fsmount(2) and mount_setattr(2)."""
    return (MOUNT_ATTR_RDONLY if readonly else 0) | sum(FLAG_BITS[flag][1] for flag in mount_flags)


def mount_overlay(target: str, payload: OverlayPayload, readonly: bool, at: Optional[str] = None,
                  mount_flags: Sequence[str] = ()) -> List[str]:
    """Mount an overlay exactly as its payload (options.overlay_payload) says; return what the kernel logged.
    ``at``: the path the call uses (a pinned_dir path), when it is not ``target`` itself; messages name target."""
    if payload.api == 'mount':
        return _call_mount('mount overlay on %s' % target, ('overlayfs',), 'overlay', at or target, 'overlay',
                           _mount_bits(readonly, mount_flags), payload.data)
    with KernelLog(('overlayfs',)) as log:
        try:
            _mount_overlay_fsconfig(target, payload.parameters, _attr_bits(readonly, mount_flags), at or target)
        except MountError as error:
            error.kernel_messages += log.messages()  # overlayfs reports some errors with pr_err only
            raise
        return log.messages()


def mount_overlay_reached(target: str, payload: OverlayPayload, readonly: bool,
                          reach: Sequence[Tuple[str, Optional[Beneath]]], at: Optional[str] = None,
                          mount_flags: Sequence[str] = ()) -> List[str]:
    """Mount an overlay as mount_overlay does, with each path its payload names reached as ``reach`` says: (path,
    (root, below)) for one below an open dir, opened as open_beneath does (no symlink followed below root), and
    (path, None) for one only root can change. The kernel takes layers by name and shows them as named; here each
    name leads, through a symlink in a stage of this run's own, to the dir pinned by an fd, so the kernel takes
    exactly the dirs reached and shows the names as given. The stage lives in a child process's mount namespace,
    where nobody else sees it; the overlay comes back as a detached mount (open_tree(2)) and is attached on
    ``target`` (or ``at``, a pinned_dir path) here."""
    with KernelLog(('overlayfs',)) as log:
        try:
            tree = _in_child('mount overlay on %s' % target, _mount_in_stage, target, payload, readonly, reach,
                             mount_flags)
            try:
                _syscall('attach the overlay on %s' % target, SYS_MOVE_MOUNT, tree, b'', AT_FDCWD,
                         os.fsencode(at or target), _move_flags(at))
            finally:
                os.close(tree)
        except MountError as error:
            error.kernel_messages += log.messages()
            raise
        return log.messages()


def _move_flags(pinned: Union[bool, Optional[str]]) -> int:
    """move_mount(2) follows no link at its target unless told: a pinned target is one (a /proc/self/fd link)."""
    return MOVE_MOUNT_F_EMPTY_PATH | (MOVE_MOUNT_T_SYMLINKS if pinned else 0)


def _in_child(call: str, function: Callable[..., int], *args: Any) -> int:
    """Run ``function(*args)``, which returns an fd, in a child process; return the fd (passed back over a socket
    pair), or raise what it raised there: a MountError as it was, another OSError as a ConfinedPathError with its
    message (a path refused by open_beneath), anything else (a bug) as an OSError naming its type."""
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        try:
            parent_end.close()
            try:
                socket.send_fds(child_end, [b'{}'], [function(*args)])
            except MountError as error:  # with what the filesystem context logged (fsconfig's reasons are there)
                _tell(child_end, kind='mount', errno=error.errno, text=error.call, kernel=error.kernel_messages)
            except OSError as error:
                _tell(child_end, kind='path', errno=error.errno or errno.EIO, text=str(error))
            except BaseException as error:  # never raised in this forked copy of the caller
                _tell(child_end, kind='path', errno=errno.EIO, text='%s: %s: %s' % (call, type(error).__name__, error))
        finally:
            os._exit(0)
    child_end.close()
    try:
        message, fds, _flags, _address = socket.recv_fds(parent_end, 65536, 1)
    finally:
        parent_end.close()
        os.waitpid(pid, 0)
    if fds:
        return fds[0]
    told = json.loads(message.decode() or '{}')
    if told.get('kind') == 'mount':
        raise MountError(told['errno'], told['text'], told['kernel'])
    raise ConfinedPathError(told.get('errno', errno.ECHILD), told.get('text', call + ': the child that staged it died'))


def _tell(end: socket.socket, **what: Any) -> None:
    end.sendall(json.dumps(what).encode())


def _mount_in_stage(target: str, payload: OverlayPayload, readonly: bool,
                    reach: Sequence[Tuple[str, Optional[Beneath]]],
                    mount_flags: Sequence[str]) -> int:
    """In the child: a mount namespace of its own, the pinned dirs, the stage (a tmpfs on /proc, which exists
    everywhere and is not needed once the fds are open, with a procfs of its own inside for the /proc/self/fd links),
    then the overlay mounted inside the stage (chroot) and cloned detached (the clone keeps its mount flags). Return
    the clone's fd."""
    call = 'mount overlay on %s' % target
    _check(_libc.unshare(CLONE_NEWNS), call + ' (unshare a mount namespace)')
    _check(_libc.mount(None, b'/', None, MS_REC | MS_PRIVATE, None), call + ' (make its mounts private)')
    pinned = [(path, open_beneath(*how) if how else os.open(path, os.O_PATH | os.O_DIRECTORY)) for path, how in reach]
    _call_mount(call + ' (stage)', (), 'stage', '/proc', 'tmpfs', MS_NOSUID | MS_NODEV | MS_NOEXEC, 'mode=0700')
    os.chdir('/proc')
    os.mkdir('proc')
    _call_mount(call + ' (procfs in the stage)', (), 'proc', 'proc', 'proc', MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    for path, fd in pinned:
        os.makedirs('.' + os.path.dirname(path), exist_ok=True)  # only dirs of its own: a link here leads nowhere
        os.symlink('/proc/self/fd/%d' % fd, '.' + path)
    mount_point = '/' + next(name for name in ('target%d' % number for number in range(len(pinned) + 1))
                             if not os.path.lexists(name))
    os.mkdir('.' + mount_point)
    os.chroot('.')
    mount_overlay(target, payload, readonly, at=mount_point, mount_flags=mount_flags)
    return _syscall(call + ' (open_tree)', SYS_OPEN_TREE, AT_FDCWD, os.fsencode(mount_point),
                    OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC)


def _check(result: int, call: str) -> None:
    if result != 0:
        raise MountError(ctypes.get_errno(), call, [])


def _mount_overlay_fsconfig(target: str, parameters: Iterable[Tuple[str, Optional[str]]], attributes: int,
                            at: str) -> None:
    """fsopen/fsconfig/fsmount/move_mount (Linux 5.2). Errors come from the context log."""
    call = 'mount overlay on %s with fsconfig(2)' % target
    context = _syscall(call, SYS_FSOPEN, b'overlay', FSOPEN_CLOEXEC)
    try:
        for key, value in parameters:
            if value is None:
                _fsconfig(call, context, FSCONFIG_SET_FLAG, key, None)
            else:
                _fsconfig(call, context, FSCONFIG_SET_STRING, key, value)
        _fsconfig(call, context, FSCONFIG_CMD_CREATE, None, None)
        mount = _syscall(call, SYS_FSMOUNT, context, FSMOUNT_CLOEXEC, attributes, log_fd=context)
        try:
            _syscall(call, SYS_MOVE_MOUNT, mount, b'', AT_FDCWD, os.fsencode(at), _move_flags(at != target))
        finally:
            os.close(mount)
    finally:
        os.close(context)


def _fsconfig(call: str, context: int, command: int, key: Optional[str], value: Optional[str]) -> None:
    _syscall('%s (%s)' % (call, key) if key else call, SYS_FSCONFIG, context, command,
             key.encode() if key else None, os.fsencode(value) if value is not None else None, 0, log_fd=context)


def _syscall(call: str, number: int, *args: Any, **kwargs: Optional[int]) -> int:
    result = _libc.syscall(number, *args)
    if result < 0:
        err = ctypes.get_errno()
        raise MountError(err, call, _context_log(kwargs.get('log_fd')))
    return result


def _context_log(context: Optional[int]) -> List[str]:
    """The messages a filesystem context logged (read(2) on the fsopen fd: one message per read)."""
    messages = []
    while context is not None:
        try:
            message = os.read(context, 1024).decode('utf-8', 'replace')
        except OSError:
            break
        messages.append(message[2:] if message[1:2] == ' ' else message)
    return messages


def mount_device(device: str, target: str, fstype: str, readonly: bool, at: Optional[str] = None,
                 mount_flags: Sequence[str] = ()) -> None:
    """``at``: the path the call uses (a pinned_dir path), when it is not ``target`` itself; messages name target."""
    _call_mount('mount %s (%s) on %s' % (device, fstype, target), (os.path.basename(device),),
                device, at or target, fstype, _mount_bits(readonly, mount_flags), None)


def bind_mount(source: str, target: str, at: Optional[str] = None, source_at: Optional[str] = None) -> None:
    """A bind mount takes the flags of the mount it binds and ignores MS_RDONLY on creation: remount_bind gives it
    its own. ``at`` and ``source_at``: the paths the call uses (pinned_dir paths), when they are not ``target`` and
    ``source``."""
    _call_mount('bind %s on %s' % (source, target), (), source_at or source, at or target, None, MS_BIND, None)


def remount_bind(target: str, readonly: bool, mount_flags: Sequence[str], at: Optional[str] = None) -> None:
    """Make the bind mount at ``target`` read-only and give it ``mount_flags``, keeping the flags it has (the ones
    it took from the mount it binds: nosuid on a bind of /home stays). A remount sets every per-mount flag, so the
    ones it has are asked for again (statvfs(3)); any kernel does it. ``at`` must reach the bind mount's own root
    (in_parent_of), not the directory it covers."""
    shown = os.statvfs(at or target).f_flag
    kept = sum(bit for flag, bit in KEPT_ON_REMOUNT if shown & flag)
    _call_mount('remount the bind mount %s' % target, (), None, at or target, None,
                MS_BIND | MS_REMOUNT | kept | _mount_bits(readonly or bool(shown & os.ST_RDONLY), mount_flags), None)


def set_mount_flags(target: str, add: Iterable[str] = (), remove: Iterable[str] = (), at: Optional[str] = None) -> None:
    """Add the mount flags ``add`` (options.MOUNT_FLAGS) to the mount at ``target`` and take ``remove`` off, in place
    (mount_setattr(2), Linux 5.12: nothing else of the mount changes, and no symlink is followed at its last
    component). ``at`` must reach the mount's own root (in_parent_of), as for a remount."""
    attr = _MountAttr(_attr_bits(False, add), _attr_bits(False, remove), 0, 0)
    _syscall('set the mount flags of %s' % target, SYS_MOUNT_SETATTR, AT_FDCWD, os.fsencode(at or target),
             AT_SYMLINK_NOFOLLOW, ctypes.byref(attr), ctypes.sizeof(attr))


def unmount(target: str, lazy: bool = False, at: Optional[str] = None) -> None:
    """lazy: MNT_DETACH, the mount goes now and the filesystem once nothing uses it. A last component that is a
    symlink is not followed."""
    if _libc.umount2(os.fsencode(at or target), (MNT_DETACH if lazy else 0) | UMOUNT_NOFOLLOW) != 0:
        err = ctypes.get_errno()
        raise MountError(err, 'unmount %s' % target, [])


# --- idmapped mounts -------------------------------------------------------------------------------------------

_CANNOT_IDMAP = 'this kernel or the filesystem of %(source)s cannot idmap a mount'
IDMAP_REFUSALS = {  # what mount_setattr(2)'s errors mean for an idmapped mount
    errno.EINVAL: _CANNOT_IDMAP, errno.EPERM: _CANNOT_IDMAP, errno.EOPNOTSUPP: _CANNOT_IDMAP,
    errno.ENOSYS: 'this kernel has no idmapped mounts (Linux 5.12 and later have them)',
}


def mount_idmapped(source: str, target: str, idmap: IdMap, source_at: Optional[str] = None) -> None:
    """Mount a clone of ``source`` (the dir and the mount it is on, without the mounts below it) on ``target``, its
    files' owners shown through ``idmap`` (an _idmap.IdMap). The clone is made detached (open_tree(2)), idmapped
    while nothing can see it (mount_setattr(2) takes MOUNT_ATTR_IDMAP only there) and then attached (move_mount).
    ``source_at``: the path the call clones (a pinned_dir path), when it is not ``source`` itself."""
    call = 'mount %s idmapped on %s' % (source, target)
    tree = _syscall(call + ' (open_tree)', SYS_OPEN_TREE, AT_FDCWD, os.fsencode(source_at or source),
                    OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC)
    try:
        with user_namespace(idmap) as userns:
            attr = _MountAttr(MOUNT_ATTR_IDMAP, 0, 0, userns)
            try:
                _syscall(call + ' (mount_setattr)', SYS_MOUNT_SETATTR, tree, b'', AT_EMPTY_PATH, ctypes.byref(attr),
                         ctypes.sizeof(attr))
            except MountError as error:
                if error.errno in IDMAP_REFUSALS:
                    error.kernel_messages.append(IDMAP_REFUSALS[error.errno] % {'source': source})
                raise
        _syscall(call + ' (move_mount)', SYS_MOVE_MOUNT, tree, b'', AT_FDCWD, os.fsencode(target),
                 MOVE_MOUNT_F_EMPTY_PATH)
    finally:
        os.close(tree)


@contextlib.contextmanager
def user_namespace(idmap: IdMap) -> Iterator[int]:
    """An fd on a new user namespace that maps ids as ``idmap`` does: what mount_setattr(2) takes the mapping from.
    A child process makes the namespace and exits once the fd is open, so no process is left in it; the
    namespace lives on only while a mount uses it."""
    made_read, made_write = os.pipe()
    done_read, done_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: unshare, say how it went, wait until the parent holds the namespace
        try:
            os.close(made_read)
            os.close(done_write)
            result = _libc.unshare(CLONE_NEWUSER)
            os.write(made_write, str(0 if result == 0 else ctypes.get_errno()).encode())
            os.read(done_read, 1)
        finally:
            os._exit(0)
    os.close(made_write)
    os.close(done_read)
    try:
        err = int(os.read(made_read, 16) or errno.ECHILD)
        if err:
            raise MountError(err, 'create a user namespace for an idmapped mount', [])
        for name, text in (('uid_map', kernel_map(idmap.uid)), ('setgroups', 'deny'),
                           ('gid_map', kernel_map(idmap.gid))):
            _write_proc(pid, name, text)
        userns = os.open('/proc/%d/ns/user' % pid, os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(done_write)
        os.close(made_read)
        os.waitpid(pid, 0)
    try:
        yield userns
    finally:
        os.close(userns)


def _write_proc(pid: int, name: str, text: str) -> None:
    """One write(2), as /proc/PID/uid_map requires."""
    try:
        fd = os.open('/proc/%d/%s' % (pid, name), os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError as error:
        raise MountError(error.errno or errno.EIO, 'write %s of the user namespace for an idmapped mount' % name, [])


def mount_idmap(path: str) -> Optional[IdMap]:
    """The mapping (an IdMap) of the idmapped mount at ``path`` as statmount(2) reads it back; None where the kernel
    cannot tell (statmount before 6.8, its UIDMAP and GIDMAP before 6.15)."""
    info = ctypes.create_string_buffer(256)
    try:
        statx = _libc.statx  # glibc 2.28, musl 1.2.5
    except AttributeError:
        return None
    if statx(AT_FDCWD, os.fsencode(path), AT_SYMLINK_NOFOLLOW, STATX_MNT_ID_UNIQUE, info) != 0:
        err = ctypes.get_errno()
        raise MountError(err, 'statx %s' % path, [])
    if not struct.unpack_from('=I', info, 0)[0] & STATX_MNT_ID_UNIQUE:
        return None
    request = struct.pack('=IIQQ', 24, 0, struct.unpack_from('=Q', info, STATX_MNT_ID_OFFSET)[0],
                          STATMOUNT_MNT_UIDMAP | STATMOUNT_MNT_GIDMAP)
    answer = ctypes.create_string_buffer(1 << 16)  # 340 ranges of at most 32 bytes each way
    if _libc.syscall(SYS_STATMOUNT, request, answer, len(answer), 0) < 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EINVAL):
            return None
        raise MountError(err, 'statmount %s' % path, [])
    fields = dict(zip(STATMOUNT_FIELDS, struct.unpack_from(STATMOUNT_LAYOUT, answer, 0)))
    wanted = STATMOUNT_MNT_UIDMAP | STATMOUNT_MNT_GIDMAP
    if fields['mask'] & wanted != wanted:
        return None
    strings = answer.raw[STATMOUNT_HEADER:fields['size']]
    return IdMap(*(parse_kernel_map(_strings(strings, fields[key], fields[key + '_num']))
                   for key in ('mnt_uidmap', 'mnt_gidmap')))


def _strings(table: bytes, offset: int, count: int) -> Tuple[str, ...]:
    """``count`` NUL-terminated strings from ``offset`` of a statmount string table."""
    return tuple(item.decode() for item in table[offset:].split(b'\0')[:count]) if count else ()

# --- paths inside another overlay's merged view or upper dir: no symlink followed, nothing re-resolved ---------


class ConfinedPathError(OSError):
    """Its message names the path and why it was not reached (OSError's own would prefix [Errno N])."""

    def __str__(self) -> str:
        return str(self.strerror)


def open_beneath(root: str, below: str, directory: bool = True) -> int:
    """An O_PATH fd on ``root/below`` (a directory, unless ``directory`` is false) reached without following any
    symlink below root (openat2(2) with RESOLVE_NO_SYMLINKS and RESOLVE_BENEATH). Symlinks above root are the
    host's and are followed."""
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        how = _OpenHow(os.O_PATH | (os.O_DIRECTORY if directory else 0) | os.O_CLOEXEC, 0,
                       RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_BENEATH)
        fd = _libc.syscall(SYS_OPENAT2, root_fd, os.fsencode(below or '.'), ctypes.byref(how), ctypes.sizeof(how))
    finally:
        os.close(root_fd)
    if fd < 0:
        err = ctypes.get_errno()
        path = os.path.join(root, below)
        if err in (errno.ELOOP, errno.EXDEV):
            raise ConfinedPathError(err, '%s is reached through a symlink inside %s, which is not followed there'
                                         % (path, root))
        raise ConfinedPathError(err, '%s: %s' % (path, os.strerror(err)))
    return fd


@contextlib.contextmanager
def pinned_dir(root: str, below: str) -> Iterator[str]:
    """The directory ``root/below`` as open_beneath reaches it, as the /proc/self/fd path that mount(2) and
    move_mount(2) resolve to exactly that directory, whatever its path becomes meanwhile."""
    fd = open_beneath(root, below)
    try:
        yield '/proc/self/fd/%d' % fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def pinned_file(root: str, below: str) -> Iterator[str]:
    """The regular file ``root/below`` as open_beneath reaches it, as the path by which another process (losetup,
    qemu) opens exactly that file: the /proc/PID/fd link of this process's fd, held while the block runs."""
    fd = open_beneath(root, below, directory=False)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfinedPathError(errno.EINVAL, '%s is not a regular file' % os.path.join(root, below))
        yield '/proc/%d/fd/%d' % (os.getpid(), fd)
    finally:
        os.close(fd)


def loop_backing_identity(device: str) -> Tuple[int, int]:
    """(st_dev, st_ino) of the file a loop device reads (LOOP_GET_STATUS64's lo_device and lo_inode)."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        info = bytearray(LOOP_INFO64_SIZE)
        fcntl.ioctl(fd, LOOP_GET_STATUS64, info, True)
    finally:
        os.close(fd)
    return struct.unpack_from('=QQ', bytes(info), 0)


def block_device_beneath(root: str, below: str) -> str:
    """The /dev name of the block device ``root/below`` leads to, reached as open_beneath does: mount(2) takes a
    device by name and shows the name given, so the name is that of the device node pinned, in /dev (root's)."""
    fd = open_beneath(root, below, directory=False)
    try:
        info = os.fstat(fd)
    finally:
        os.close(fd)
    path = os.path.join(root, below)
    if not stat.S_ISBLK(info.st_mode):
        raise ConfinedPathError(errno.ENOTBLK, '%s is not a block device' % path)
    name = os.path.realpath('/dev/block/%d:%d' % (os.major(info.st_rdev), os.minor(info.st_rdev)))
    if not os.path.exists(name) or os.stat(name).st_rdev != info.st_rdev:
        raise ConfinedPathError(errno.ENODEV, '%s: its device %d:%d has no node in /dev/block'
                                % (path, os.major(info.st_rdev), os.minor(info.st_rdev)))
    return name


@contextlib.contextmanager
def in_parent_of(root: str, below: str) -> Iterator[str]:
    """The working directory set to the parent of ``root/below`` (reached as open_beneath does); yields the last
    component. For the calls that must reach what is mounted there without holding it: umount2 (a held fd keeps
    the mount busy) and a remount (a pinned fd reaches the directory under the mount)."""
    parent, _slash, name = below.rpartition('/')
    saved = os.open('.', os.O_PATH | os.O_CLOEXEC)
    try:
        fd = open_beneath(root, parent)
    except OSError:
        os.close(saved)
        raise
    try:
        os.fchdir(fd)
        yield name
    finally:
        os.fchdir(saved)
        os.close(saved)
        os.close(fd)


def make_dirs_beneath(root: str, below: str, mode: int = 0o755) -> List[str]:
    """mkdir -p of ``root/below``, each directory made by mkdirat(2) in its parent as open_beneath reaches it.
    Return the paths below root that were made, parents first."""
    parts = below.split('/')
    made = []
    try:
        for index in range(len(parts)):
            relative = '/'.join(parts[:index + 1])
            try:
                os.close(open_beneath(root, relative))
                continue
            except ConfinedPathError as error:
                if error.errno != errno.ENOENT:
                    raise
            parent = open_beneath(root, '/'.join(parts[:index]))
            try:
                os.mkdir(parts[index], mode, dir_fd=parent)
            finally:
                os.close(parent)
            made.append(relative)
    except OSError:
        for relative in reversed(made):
            remove_empty_dir_beneath(root, relative)
        raise
    return made


def remove_empty_dir_beneath(root: str, below: str) -> None:
    """rmdir(2) of ``root/below`` in its parent as open_beneath reaches it (unlinkat does not follow the last
    component)."""
    parent_path, _slash, name = below.rpartition('/')
    parent = open_beneath(root, parent_path)
    try:
        os.rmdir(name, dir_fd=parent)
    finally:
        os.close(parent)
