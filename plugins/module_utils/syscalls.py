# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Small, explicit wrappers around mount(2) and umount2(2), and the kernel's reason for a failure.

mount(8) is not used for overlays: libmount re-parses the option string (and from
util-linux 2.39 splits it on commas itself), so an escaped path could change meaning.
mount(2) hands the data string to the kernel untouched.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
KMSG = '/dev/kmsg'

_libc = ctypes.CDLL(ctypes.util.find_library('c') or None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


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
    with KernelLog(keywords) as log:
        result = _libc.mount(os.fsencode(source) if source else None, os.fsencode(target),
                             fstype.encode() if fstype else None, flags,
                             os.fsencode(data) if data is not None else None)
        if result != 0:
            err = ctypes.get_errno()
            raise MountError(err, call, log.messages())


def mount_overlay(target, data, readonly):
    _call_mount('mount overlay on %s' % target, ('overlayfs',), 'overlay', target, 'overlay',
                MS_RDONLY if readonly else 0, data)


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


def unmount(target):
    if _libc.umount2(os.fsencode(target), 0) != 0:
        err = ctypes.get_errno()
        raise MountError(err, 'unmount %s' % target, [])
