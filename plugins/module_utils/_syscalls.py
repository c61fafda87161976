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

import ctypes
import errno
import os

MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MNT_DETACH = 0x2
KMSG = '/dev/kmsg'

# The new mount API: one syscall number on every architecture (asm-generic/unistd.h, Linux 5.2).
SYS_MOVE_MOUNT, SYS_FSOPEN, SYS_FSCONFIG, SYS_FSMOUNT = 429, 430, 431, 432
FSOPEN_CLOEXEC = FSMOUNT_CLOEXEC = 0x1
FSCONFIG_SET_FLAG, FSCONFIG_SET_STRING, FSCONFIG_CMD_CREATE = 0, 1, 6
MOUNT_ATTR_RDONLY = 0x1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
AT_FDCWD = -100

# The C library already loaded into this process (dlopen(NULL)): ctypes.util.find_library runs ldconfig -p, which
# costs a boot-time helper a third of its start-up.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.syscall.restype = ctypes.c_long


class MountError(OSError):
    """A failed mount syscall, with what the kernel logged about it."""

    def __init__(self, err, call, kernel_messages):
        super(MountError, self).__init__(err, os.strerror(err))
        self.call = call
        self.kernel_messages = kernel_messages

    def __str__(self):
        text = '%s: %s' % (self.call, self.strerror)
        if self.kernel_messages:
            text += ' (kernel: %s)' % '; '.join(self.kernel_messages)
        return text


class KernelLog(object):
    """Collect the kernel log records written while a block runs (best effort: needs /dev/kmsg)."""

    def __init__(self, keywords):
        self.keywords = keywords
        self.fd = None

    def __enter__(self):
        try:
            self.fd = os.open(KMSG, os.O_RDONLY | os.O_NONBLOCK)
            os.lseek(self.fd, 0, os.SEEK_END)
        except OSError:
            self.fd = None
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)
        return False

    def messages(self):
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


def _call_mount(call, keywords, source, target, fstype, flags, data):
    """Return what the kernel logged about a mount that succeeded (it may have given less than asked)."""
    with KernelLog(keywords) as log:
        result = _libc.mount(os.fsencode(source) if source else None, os.fsencode(target),
                             fstype.encode() if fstype else None, flags,
                             os.fsencode(data) if data is not None else None)
        if result != 0:
            err = ctypes.get_errno()
            raise MountError(err, call, log.messages())
        return log.messages()


def mount_overlay(target, payload, readonly):
    """Mount an overlay exactly as its payload (options.overlay_payload) says; return what the kernel logged."""
    if payload.api == 'mount':
        return _call_mount('mount overlay on %s' % target, ('overlayfs',), 'overlay', target, 'overlay',
                           MS_RDONLY if readonly else 0, payload.data)
    with KernelLog(('overlayfs',)) as log:
        try:
            _mount_overlay_fsconfig(target, payload.parameters, readonly)
        except MountError as error:
            error.kernel_messages += log.messages()  # overlayfs reports some errors with pr_err only
            raise
        return log.messages()


def _mount_overlay_fsconfig(target, parameters, readonly):
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
        mount = _syscall(call, SYS_FSMOUNT, context, FSMOUNT_CLOEXEC, MOUNT_ATTR_RDONLY if readonly else 0,
                         log_fd=context)
        try:
            _syscall(call, SYS_MOVE_MOUNT, mount, b'', AT_FDCWD, os.fsencode(target), MOVE_MOUNT_F_EMPTY_PATH)
        finally:
            os.close(mount)
    finally:
        os.close(context)


def _fsconfig(call, context, command, key, value):
    _syscall('%s (%s)' % (call, key) if key else call, SYS_FSCONFIG, context, command,
             key.encode() if key else None, os.fsencode(value) if value is not None else None, 0, log_fd=context)


def _syscall(call, number, *args, **kwargs):
    result = _libc.syscall(number, *args)
    if result < 0:
        err = ctypes.get_errno()
        raise MountError(err, call, _context_log(kwargs.get('log_fd')))
    return result


def _context_log(context):
    """The messages a filesystem context logged (read(2) on the fsopen fd: one message per read)."""
    messages = []
    while context is not None:
        try:
            message = os.read(context, 1024).decode('utf-8', 'replace')
        except OSError:
            break
        messages.append(message[2:] if message[1:2] == ' ' else message)
    return messages


def mount_device(device, target, fstype, readonly):
    _call_mount('mount %s (%s) on %s' % (device, fstype, target), (os.path.basename(device),),
                device, target, fstype, MS_RDONLY if readonly else 0, None)


def bind_mount(source, target, readonly):
    """A bind mount ignores MS_RDONLY on creation; read-only takes a second, remount call."""
    _call_mount('bind %s on %s' % (source, target), (), source, target, None, MS_BIND, None)
    if readonly:
        try:
            _call_mount('make bind mount %s read-only' % target, (), None, target, None,
                        MS_BIND | MS_REMOUNT | MS_RDONLY, None)
        except MountError:
            unmount(target)
            raise


def unmount(target, lazy=False):
    """lazy: MNT_DETACH, the mount goes now and the filesystem once nothing uses it."""
    if _libc.umount2(os.fsencode(target), MNT_DETACH if lazy else 0) != 0:
        err = ctypes.get_errno()
        raise MountError(err, 'unmount %s' % target, [])
