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

from ansible_collections.containerhost.overlayfs.plugins.module_utils import syscalls

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
        self.attached = {}  # image -> loop device attached by this run

    def apply(self, steps):
        undo = []
        for number, step in enumerate(steps, 1):
            try:
                undo.append(getattr(self, '_' + step['action'])(step))
            except (OSError, ApplyError) as error:
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
            except (OSError, ApplyError) as error:
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

    def _attach_loop(self, step):
        argv = ['losetup', '--find', '--show']
        if step['readonly']:
            argv.append('--read-only')
        device = self._run(argv + ['--', step['image']]).strip()
        self.attached[step['image']] = device
        return lambda: (self._detach(device), self.attached.pop(step['image'], None))

    def _detach_loop(self, step):
        self._detach(step['device'])
        return lambda: self._attach_loop(dict(image=step['image'], readonly=step['readonly']))

    def _mount(self, step):
        kind = step['kind']
        if kind == 'overlay':
            syscalls.mount_overlay(step['target'], step['lowers'], step['upper'], step['work'], step['options'],
                                   step['readonly'])
        elif kind == 'bind':
            syscalls.bind_mount(step['source'], step['target'], step['readonly'])
        else:
            device = self.attached.get(step['image']) or step['device']
            syscalls.mount_device(device, step['target'], self._filesystem_type(device), step['readonly'])
        return lambda: syscalls.unmount(step['target'])

    def _unmount(self, step):
        syscalls.unmount(step['target'])
        restore = step.get('restore')
        if not restore:
            return _cannot_restore(step)
        return lambda: self._mount(restore)

    # --- helpers ----------------------------------------------------------------------------------

    def _filesystem_type(self, device):
        """The filesystem in a device, as blkid's low-level probe sees it (mount(8) probes the same way)."""
        rc, out, err = self.run_command(['blkid', '--probe', '--match-tag', 'TYPE', '--output', 'value', '--', device])
        if rc == 2 or (rc == 0 and not out.strip()):  # blkid: 2 means nothing was found
            raise ApplyError('no filesystem found on %s' % device)
        if rc != 0:
            raise ApplyError('blkid %s exited %d: %s' % (device, rc, err.strip()))
        return out.strip()

    def _detach(self, device):
        self._run(['losetup', '--detach', device])

    def _run(self, argv):
        rc, out, err = self.run_command(argv)
        if rc != 0:
            raise ApplyError('%s exited %d: %s' % (' '.join(argv), rc, (err or out).strip()))
        return out


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
