# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Apply a plan step by step; on a failure, undo what this run did, in reverse order.

Directories are only ever created (and removed again only if this run created them and
they are still empty); upper and work dirs and their data are never touched otherwise.
"""

from __future__ import annotations

import errno
import fcntl
import os

from ansible_collections.containerhost.overlayfs.plugins.module_utils import devices, hostfs, syscalls

LOCK_FILE = '/run/lock/containerhost-overlayfs.lock'


class ApplyError(RuntimeError):
    pass


class HostLock(object):
    """Serialize runs on one host: observe, plan and apply happen under one exclusive lock."""

    def __init__(self, path=LOCK_FILE):
        self.path = path
        self.handle = None

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.handle = open(self.path, 'a')
        fcntl.flock(self.handle, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()
        return False


class Executor(object):
    """Runs steps. ``run_command`` is AnsibleModule.run_command (argv list in, (rc, out, err) out)."""

    def __init__(self, run_command):
        self.run_command = run_command
        self.attached = {}  # ref (a node's label) -> the device an attach step of this run got

    def apply(self, steps):
        undo = []
        for number, step in enumerate(steps, 1):
            try:
                undo.append(getattr(self, '_' + step['action'])(step))
            except (OSError, ApplyError, devices.DeviceError) as error:
                problems = self._undo(undo)
                message = 'step %d of %d (%s) failed: %s' % (number, len(steps), step['description'], error)
                if undo:
                    message += '. Undid the %d step(s) before it' % len(undo)
                if problems:
                    message += '; could not undo: %s' % '; '.join(problems)
                raise ApplyError(message)

    def _undo(self, undo):
        problems = []
        for action in reversed(undo):
            try:
                action()
            except (OSError, ApplyError, devices.DeviceError) as error:
                problems.append(str(error))
        return problems

    # --- steps: each runs and returns the callable that reverses it ------------------------------

    def _mkdir(self, step):
        missing = []
        path = step['path']
        while not os.path.isdir(path):
            missing.append(path)
            path = os.path.dirname(path)
        created = []
        try:
            for path in reversed(missing):
                os.mkdir(path, 0o755)
                created.append(path)
        except OSError:
            _remove_all_if_empty(created)
            raise
        return lambda: _remove_all_if_empty(created)

    def _discard_volatile_marker(self, step):
        hostfs.discard_volatile_marker(step['path'])
        return lambda: hostfs.restore_volatile_marker(step['path'])

    def _attach_loop(self, step):
        return self._attached(step, devices.attach_loop(self.run_command, step['image'], step['readonly']),
                              lambda device: devices.detach_loop(self.run_command, device))

    def _detach_loop(self, step):
        devices.detach_loop(self.run_command, step['device'])
        return lambda: self._attach_loop(step)

    def _load_module(self, step):
        devices.load_module(self.run_command, step['module'], step['kernel'])
        return _nothing  # a loaded module stays: unloading it could take devices from others

    def _attach_nbd(self, step):
        device = devices.attach_nbd(self.run_command, step['image'], step['format'], step['readonly'])
        return self._attached(step, device, lambda device: devices.detach_nbd(self.run_command, device))

    def _detach_nbd(self, step):
        devices.detach_nbd(self.run_command, step['device'])
        if step['image'] is None:
            return _nothing  # its server was gone: there is nothing to serve again
        return lambda: self._attach_nbd(step)

    def _start_export(self, step):
        devices.start_export(self.run_command, step['image'], step['format'], step['export'], step['pidfile'],
                             step['metafile'])
        return lambda: devices.stop_export(step['export'], step['pidfile'], step['metafile'])

    def _stop_export(self, step):
        devices.stop_export(step['export'], step['pidfile'], step['metafile'])
        if step['image'] is None:
            return _nothing
        return lambda: self._start_export(step)

    def _mount(self, step):
        kind = step['kind']
        if kind == 'overlay':
            syscalls.mount_overlay(step['target'], step['lowers'], step['upper'], step['work'], step['options'],
                                   step['readonly'])
        elif kind == 'bind':
            syscalls.bind_mount(step['source'], step['target'], step['readonly'])
        else:
            device = self.attached.get(step['ref']) or step['device']
            syscalls.mount_device(device, step['target'], devices.filesystem_type(self.run_command, device),
                                  step['readonly'])
        return lambda: syscalls.unmount(step['target'])

    def _unmount(self, step):
        syscalls.unmount(step['target'], lazy=step['lazy'])
        restore = step.get('restore')
        if not restore:
            return _cannot_restore(step)
        return lambda: self._mount(restore)

    # --- helpers ----------------------------------------------------------------------------------

    def _attached(self, step, device, detach):
        """Record the device an attach step got, for the mount step that names the same ref."""
        self.attached[step['ref']] = device

        def undo():
            detach(device)
            self.attached.pop(step['ref'], None)
        return undo


def _nothing():
    pass


def _remove_all_if_empty(paths):
    """Newest first, so a parent goes after its children."""
    for path in reversed(paths):
        _remove_if_empty(path)


def _remove_if_empty(path):
    try:
        os.rmdir(path)
    except OSError as error:
        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
            raise


def _cannot_restore(step):
    def fail():
        raise ApplyError('%s cannot be mounted again automatically' % step['target'])
    return fail
