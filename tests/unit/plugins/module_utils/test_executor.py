# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Fault injection: the executor's undo, with fake commands and fake mount syscalls."""

from __future__ import annotations

import errno
import os

import pytest

from ansible_collections.containerhost.overlayfs.plugins.module_utils.host import _devices as devices_module
from ansible_collections.containerhost.overlayfs.plugins.module_utils.apply import _executor as executor_module
from ansible_collections.containerhost.overlayfs.plugins.module_utils.host import _hostfs as hostfs
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel import _mountinfo as mountinfo
from ansible_collections.containerhost.overlayfs.plugins.module_utils.host import _syscalls as syscalls
from ansible_collections.containerhost.overlayfs.plugins.module_utils.steps import _steps as steps
from ansible_collections.containerhost.overlayfs.plugins.module_utils.apply._executor import ApplyError, Executor
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._options import overlay_payload


class FakeHost(object):
    """Records every command and syscall, in order; answers losetup and blkid like util-linux does."""

    def __init__(self, monkeypatch, loop_device='/dev/loop7', fstype='ext4'):
        self.events = []
        self.loop_device = loop_device
        self.fstype = fstype
        self.fail = {}  # event name -> exception to raise
        self.overlays = {}  # target -> the mount(2) data of the overlay the fake kernel shows there
        self.loops = {}  # device -> the backing file losetup attached it to
        self.others = {}  # target -> (source, 'ro' or 'rw') of a device or bind mount the fake kernel shows there
        monkeypatch.setattr(hostfs, 'device_number', lambda device: (7, self._number(device)))
        monkeypatch.setattr(hostfs, 'same_file', lambda path, other: True)
        monkeypatch.setattr(devices_module, 'loop_backing_file', lambda device, _sys_block: self.loops.get(device))
        for name in ('mount_overlay', 'mount_device', 'bind_mount', 'remount_bind', 'set_mount_flags', 'unmount'):
            monkeypatch.setattr(syscalls, name, self._syscall(name))
        monkeypatch.setattr(executor_module, 'read_mountinfo', self.mountinfo)

    def mountinfo(self):
        """What the executor reads back after a mount: each mount as it was asked for (a kernel that gives all)."""
        lines = ['%d 1 0:%d / %s rw - overlay overlay rw,%s' % (number, number, target, data)
                 for number, (target, data) in enumerate(sorted(self.overlays.items()), 50)]
        lines += ['%d 1 7:%d / %s %s - ext4 %s %s' % (number, number, target, mode, source, mode)
                  for number, (target, (source, mode)) in enumerate(sorted(self.others.items()), 100)]
        return mountinfo.parse('\n'.join(lines))

    def _syscall(self, name):
        def call(*args, **kwargs):
            at = kwargs.pop('at', None)
            assert at in (None, args[1] if name in ('mount_device', 'bind_mount') else args[0])  # not confined
            self.events.append((name,) + args + tuple(value for value in kwargs.values() if value))
            if name in self.fail:
                raise self.fail.pop(name)
            if name == 'mount_overlay':
                self.overlays[os.path.realpath(args[0])] = args[1].data
                return []
            if name == 'mount_device':
                self.others[os.path.realpath(args[1])] = (args[0], 'ro' if args[3] else 'rw')
            if name == 'bind_mount':
                self.others[os.path.realpath(args[1])] = (args[0], 'rw')
            if name == 'remount_bind':
                self.others[os.path.realpath(args[0])] = (self.others[os.path.realpath(args[0])][0],
                                                          'ro' if args[1] else 'rw')
            if name == 'unmount':
                self.overlays.pop(os.path.realpath(args[0]), None)
                self.others.pop(os.path.realpath(args[0]), None)
            return None
        return call

    def run_command(self, argv):
        self.events.append(('run', tuple(argv)))
        if argv[0] in self.fail:
            return self.fail.pop(argv[0])
        if argv[:3] == ['losetup', '--find', '--show']:
            self.loops[self.loop_device] = argv[-1]
            return 0, self.loop_device + '\n', ''
        if argv[:2] == ['losetup', '--detach']:
            self.loops.pop(argv[2], None)
        if argv[0] == 'blkid':
            return (0, 'TYPE=%s\n' % self.fstype, '') if self.fstype else (2, '', '')
        return 0, '', ''

    def _number(self, device):
        """The fake minor of a device: where mount_device recorded it, the mount's own number."""
        numbers = [number for number, (_target, (source, _mode)) in enumerate(sorted(self.others.items()), 100)
                   if source == device]
        return numbers[0] if numbers else -1

    def names(self):
        return [event[0] if event[0] != 'run' else ' '.join(event[1][:2]) for event in self.events]


IMAGE_NODE = 'filesystems[0].lower[1]'


def mkdir_step(path):
    return steps.mkdir('filesystems[0]', str(path))


def overlay_step(target, lowers=('/l1', '/l2'), upper='/u', work='/w', options=None):
    return steps.mount_overlay('filesystems[0]', str(target), lowers, upper, work, options or {}, False,
                               overlay_payload(lowers, upper, work, options or {}))


def payload(lowers, upper, work, options=None):
    return overlay_payload(lowers, upper, work, options or {})


def attach_step(image):
    return steps.attach_loop(IMAGE_NODE, str(image), True)


def device_step(image, target, device=None):
    return steps.mount_device(IMAGE_NODE, str(target), device, True, ref=IMAGE_NODE,
                              device_text='the loop device of %s' % image)


def kernel_refusal(target):
    return syscalls.MountError(errno.EINVAL, 'mount overlay on %s' % target,
                               ['overlayfs: workdir and upperdir must reside under the same mount'])


def test_failure_half_way_undoes_everything_in_reverse_and_names_the_step(tmp_path, monkeypatch):
    host = FakeHost(monkeypatch)
    (tmp_path / 'pre').mkdir()
    (tmp_path / 'pre' / 'keep.txt').write_text('data')
    image = tmp_path / 'img.raw'
    plan = [
        mkdir_step(tmp_path / 'new' / 'deep' / 'lower3'),
        mkdir_step(tmp_path / 'pre' / 'merged'),
        attach_step(image),
        device_step(image, tmp_path / 'new' / 'deep' / 'lower3'),
        overlay_step(tmp_path / 'pre' / 'merged'),
    ]
    host.fail['mount_overlay'] = kernel_refusal(tmp_path / 'pre' / 'merged')
    with pytest.raises(ApplyError) as error:
        Executor(host.run_command).apply(plan)
    message = str(error.value)
    assert message.startswith('step 5 of 5 (mount overlay on %s (lowerdir=/l1:/l2,upperdir=/u,workdir=/w)) failed'
                              % (tmp_path / 'pre' / 'merged'))
    assert 'Invalid argument' in message
    assert 'overlayfs: workdir and upperdir must reside under the same mount' in message
    assert 'Undid the 4 step(s) before it' in message
    assert 'could not undo' not in message

    # forward: attach, probe, mount the device on the loop device just attached, try the overlay
    # undo, in reverse: unmount the device, detach the loop device
    assert host.events == [
        ('run', ('losetup', '--find', '--show', '--read-only', '--', str(image))),
        ('run', ('blkid', '--probe', '--output', 'export', '--', '/dev/loop7')),
        ('mount_device', '/dev/loop7', str(tmp_path / 'new' / 'deep' / 'lower3'), 'ext4', True),
        ('mount_overlay', str(tmp_path / 'pre' / 'merged'), payload(['/l1', '/l2'], '/u', '/w'), False),
        ('unmount', str(tmp_path / 'new' / 'deep' / 'lower3')),
        ('run', ('losetup', '--detach', '/dev/loop7')),
    ]
    # the directories this run created are gone; what was there before stays
    assert not (tmp_path / 'new').exists()
    assert not (tmp_path / 'pre' / 'merged').exists()
    assert (tmp_path / 'pre' / 'keep.txt').read_text() == 'data'
    assert sorted(os.listdir(tmp_path)) == ['pre']


def test_a_directory_that_gained_content_is_not_removed_by_undo(tmp_path, monkeypatch):
    host = FakeHost(monkeypatch)
    target = tmp_path / 'made' / 'm'
    plan = [mkdir_step(target), overlay_step(target)]

    def mount_and_write(*args, **kwargs):
        (tmp_path / 'made' / 'someone-elses-file').write_text('x')
        raise kernel_refusal(target)
    monkeypatch.setattr(syscalls, 'mount_overlay', mount_and_write)
    with pytest.raises(ApplyError, match='step 2 of 2'):
        Executor(host.run_command).apply(plan)
    assert not target.exists()
    assert (tmp_path / 'made' / 'someone-elses-file').exists()


def test_failing_first_step_has_nothing_to_undo(tmp_path, monkeypatch):
    host = FakeHost(monkeypatch)
    host.fail['mount_overlay'] = kernel_refusal(tmp_path)
    with pytest.raises(ApplyError) as error:
        Executor(host.run_command).apply([overlay_step(tmp_path)])
    assert str(error.value).startswith('step 1 of 1 (mount overlay on %s (' % tmp_path)
    assert 'Undid' not in str(error.value)
    assert host.names() == ['mount_overlay']


def test_losetup_failure_is_reported_with_its_output(tmp_path, monkeypatch):
    host = FakeHost(monkeypatch)
    host.fail['losetup'] = (1, '', 'losetup: cannot find an unused loop device\n')
    plan = [mkdir_step(tmp_path / 'l3'), attach_step(tmp_path / 'img.raw'),
            device_step(tmp_path / 'img.raw', tmp_path / 'l3')]
    with pytest.raises(ApplyError) as error:
        Executor(host.run_command).apply(plan)
    message = str(error.value)
    assert 'step 2 of 3 (attach %s' % (tmp_path / 'img.raw') in message
    assert 'exited 1: losetup: cannot find an unused loop device' in message
    assert not (tmp_path / 'l3').exists()


def test_no_filesystem_on_the_device_detaches_it_again(tmp_path, monkeypatch):
    host = FakeHost(monkeypatch, fstype='')
    plan = [attach_step(tmp_path / 'img.raw'), device_step(tmp_path / 'img.raw', tmp_path)]
    with pytest.raises(ApplyError) as error:
        Executor(host.run_command).apply(plan)
    assert 'step 2 of 2' in str(error.value) and 'no filesystem found on /dev/loop7' in str(error.value)
    assert host.names() == ['losetup --find', 'blkid --probe', 'losetup --detach']


def test_unmount_is_undone_by_mounting_what_was_there_again(tmp_path, monkeypatch):
    host = FakeHost(monkeypatch)
    restore = overlay_step('/srv/m', lowers=['/srv/old'], upper='/srv/u', work='/srv/w', options={'uuid': 'on'})
    plan = [
        steps.unmount('filesystems[0]', '/srv/m', restore, shown='overlay from overlay (...)'),
        overlay_step('/srv/m', lowers=['/srv/new']),
    ]
    host.fail['mount_overlay'] = kernel_refusal('/srv/m')
    with pytest.raises(ApplyError, match='Undid the 1 step'):
        Executor(host.run_command).apply(plan)
    assert host.events == [
        ('unmount', '/srv/m'),
        ('mount_overlay', '/srv/m', payload(['/srv/new'], '/u', '/w'), False),
        ('mount_overlay', '/srv/m', payload(['/srv/old'], '/srv/u', '/srv/w', {'uuid': 'on'}), False),
    ]


def test_unmount_without_restore_information_is_reported_as_not_undone(monkeypatch):
    host = FakeHost(monkeypatch)
    plan = [steps.unmount('filesystems[0]', '/srv/m', steps.cannot_restore('filesystems[0]', '/srv/m')),
            overlay_step('/srv/m')]
    host.fail['mount_overlay'] = kernel_refusal('/srv/m')
    with pytest.raises(ApplyError) as error:
        Executor(host.run_command).apply(plan)
    assert ('Undid 0 of the 1 step(s) before it; could not undo step 1 (unmount /srv/m): /srv/m cannot be mounted '
            'again automatically, so it and the steps before it are left as they are') in str(error.value)


def test_detach_is_undone_by_attaching_again(monkeypatch):
    host = FakeHost(monkeypatch)
    plan = [
        steps.detach_loop(IMAGE_NODE, '/dev/loop3', '/srv/img.raw', True),
        steps.unmount('filesystems[0]', '/srv/busy', steps.cannot_restore('filesystems[0]', '/srv/busy')),
    ]
    host.fail['unmount'] = syscalls.MountError(errno.EBUSY, 'unmount /srv/busy', [])
    with pytest.raises(ApplyError) as error:
        Executor(host.run_command).apply(plan)
    assert 'step 2 of 2 (unmount /srv/busy) failed: unmount /srv/busy: Device or resource busy' in str(error.value)
    assert host.events[-1] == ('run', ('losetup', '--find', '--show', '--read-only', '--', '/srv/img.raw'))


def test_an_image_served_in_no_named_format_is_not_served_again_by_an_undo(monkeypatch):
    """A qemu-nbd started without --format (not by a run): the undo of its detach says it cannot serve it again,
    rather than start one with no format, which qemu would probe."""
    host = FakeHost(monkeypatch)
    plan = [
        steps.detach_nbd(IMAGE_NODE, '/dev/nbd3', '/srv/img.qcow2', None, True),
        steps.unmount('filesystems[0]', '/srv/busy', steps.cannot_restore('filesystems[0]', '/srv/busy')),
    ]
    host.fail['unmount'] = syscalls.MountError(errno.EBUSY, 'unmount /srv/busy', [])
    with pytest.raises(ApplyError) as error:
        Executor(host.run_command).apply(plan)
    assert ('could not undo step 1 (disconnect /dev/nbd3 (serving /srv/img.qcow2)): /srv/img.qcow2 cannot be served '
            'again automatically') in str(error.value)
    assert not [event for event in host.events if event[0] == 'run' and event[1][0] == 'qemu-nbd'
                and '--disconnect' not in event[1]]


def test_mount_flags_added_in_place_are_taken_off_again_when_the_run_is_undone(tmp_path, monkeypatch):
    host = FakeHost(monkeypatch)
    plan = [steps.set_mount_flags('filesystems[0]', str(tmp_path / 'a'), add=('nodev', 'nosuid')),
            overlay_step(tmp_path / 'b')]
    host.fail['mount_overlay'] = kernel_refusal(tmp_path / 'b')
    with pytest.raises(ApplyError, match=r'step 2 of 2 .*Undid the 1 step\(s\) before it'):
        Executor(host.run_command).apply(plan)
    flags = [event[1:] for event in host.events if event[0] == 'set_mount_flags']
    assert flags == [(str(tmp_path / 'a'), ('nodev', 'nosuid'), ()), (str(tmp_path / 'a'), (), ('nodev', 'nosuid'))]


def test_undo_stops_at_the_first_undo_step_that_fails_and_says_what_is_left(tmp_path, monkeypatch):
    host = FakeHost(monkeypatch)
    first, second = tmp_path / 'a', tmp_path / 'b'
    plan = [mkdir_step(first), overlay_step(first), mkdir_step(second), overlay_step(second)]

    def mount_overlay(target, payload, readonly, at=None, mount_flags=()):
        if target == str(second):
            raise kernel_refusal(target)
        host.overlays[target] = payload.data
        return []

    def unmount(target, lazy=False, at=None):
        raise syscalls.MountError(errno.EBUSY, 'unmount %s' % target, [])
    monkeypatch.setattr(syscalls, 'mount_overlay', mount_overlay)
    monkeypatch.setattr(syscalls, 'unmount', unmount)
    with pytest.raises(ApplyError) as error:
        Executor(host.run_command).apply(plan)
    message = str(error.value)
    assert message.startswith('step 4 of 4'), message
    assert ('Undid 1 of the 3 step(s) before it; could not undo step 2 (mount overlay on %s' % first) in message
    assert ('unmount %s: Device or resource busy; it stays mounted' % first) in message
    assert message.endswith(', so it and the steps before it are left as they are'), message
    assert not second.exists()  # undone before the failed unmount
    assert first.exists()  # what the overlay that stays stands on stays too


def test_a_mkdir_step_failing_half_way_removes_the_parents_it_made(tmp_path, monkeypatch):
    host = FakeHost(monkeypatch)
    real_mkdir = os.mkdir
    made = []

    def mkdir(path, mode=0o777):
        if len(made) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        made.append(path)
        real_mkdir(path, mode)
    monkeypatch.setattr(executor_module.os, 'mkdir', mkdir)
    with pytest.raises(ApplyError, match='step 1 of 1'):
        Executor(host.run_command).apply([mkdir_step(tmp_path / 'a' / 'b' / 'c')])
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_successful_apply_runs_every_step_once_and_undoes_nothing(tmp_path, monkeypatch):
    host = FakeHost(monkeypatch)
    target = tmp_path / 'm'
    Executor(host.run_command).apply([mkdir_step(target), overlay_step(target)])
    assert target.is_dir()
    assert host.names() == ['mount_overlay']


def test_mkdir_of_an_existing_directory_is_a_no_op_and_never_removes_it(tmp_path, monkeypatch):
    host = FakeHost(monkeypatch)
    host.fail['mount_overlay'] = kernel_refusal(tmp_path)
    with pytest.raises(ApplyError):
        Executor(host.run_command).apply([mkdir_step(tmp_path), overlay_step(tmp_path)])
    assert tmp_path.is_dir()


def test_an_overlay_the_kernel_gives_less_than_asked_is_unmounted_and_reported_with_its_log(tmp_path, monkeypatch):
    """The kernel falls back to a read-only superblock, with success, when it cannot set up the work dir."""
    host = FakeHost(monkeypatch)
    target = tmp_path / 'm'

    def degraded(target, payload, readonly, at=None, mount_flags=()):
        host.events.append(('mount_overlay', target))
        host.overlays[target] = payload.data.replace('uuid=on', 'uuid=null')
        return ['overlayfs: failed to create directory /w/work (errno: 28); mounting read-only']
    monkeypatch.setattr(syscalls, 'mount_overlay', degraded)
    monkeypatch.setattr(executor_module, 'read_mountinfo', lambda: mountinfo.parse(
        '50 1 0:50 / %s rw - overlay overlay ro,%s' % (target, host.overlays[str(target)])))
    with pytest.raises(ApplyError) as error:
        Executor(host.run_command).apply([mkdir_step(target), overlay_step(target, options={'uuid': 'on'})])
    message = str(error.value)
    assert 'the kernel accepted the overlay on %s but gave less than asked' % target in message
    assert 'its superblock is read-only (the kernel could not set up the work dir /w)' in message
    assert 'option uuid=on (shown: null)' in message
    assert 'kernel: overlayfs: failed to create directory /w/work (errno: 28); mounting read-only' in message
    assert host.events[-1] == ('unmount', str(target))  # the degraded mount goes, then the mkdir is undone
    assert not target.exists()


def test_a_device_mount_the_kernel_gives_read_write_is_unmounted_and_reported(tmp_path, monkeypatch):
    host = FakeHost(monkeypatch)
    fake_mount = syscalls.mount_device

    def read_write(device, target, fstype, readonly, at=None, mount_flags=()):
        fake_mount(device, target, fstype, False, at=at)
    monkeypatch.setattr(syscalls, 'mount_device', read_write)
    target = str(tmp_path / 'm')
    with pytest.raises(ApplyError) as error:
        Executor(host.run_command).apply([steps.mount_device(IMAGE_NODE, target, '/dev/loop7', True)])
    assert ('the kernel accepted /dev/loop7 on %s but gave less than asked: it is mounted read-write; asked: ext4 '
            'read-only. Undid the 1 step(s) of this run' % target) in str(error.value)
    assert host.others == {}


def test_the_mounts_of_a_run_are_read_back_in_one_pass_and_a_short_one_undoes_the_whole_run(tmp_path, monkeypatch):
    """One read of the mount table per run, however many mounts it makes (scale); the short mount is named by its
    step number, and the steps after it are undone too."""
    host = FakeHost(monkeypatch)
    reads = []
    monkeypatch.setattr(executor_module, 'read_mountinfo', lambda: reads.append(1) or host.mountinfo())
    plan = [overlay_step(tmp_path / ('m%d' % number)) for number in range(5)]
    Executor(host.run_command).apply(plan)
    assert (len(reads), len(host.overlays)) == (1, 5)

    host.overlays.clear()
    fake_mount = syscalls.mount_overlay

    def second_one_short(target, payload, readonly, at=None, mount_flags=()):
        fake_mount(target, payload, readonly, at=at)
        if target.endswith('m1'):
            host.overlays[target] = host.overlays[target].replace('upperdir=/u', 'upperdir=/elsewhere')
        return []
    monkeypatch.setattr(syscalls, 'mount_overlay', second_one_short)
    with pytest.raises(ApplyError) as error:
        Executor(host.run_command).apply(plan)
    message = str(error.value)
    assert message.startswith('step 2 of 5 (mount overlay on %s' % (tmp_path / 'm1')), message
    assert 'gave less than asked: upper /elsewhere and work /w' in message
    assert message.endswith('. Undid the 5 step(s) of this run'), message
    assert (len(reads), host.overlays) == (2, {})
