# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""devices: the command each helper runs, how it reads the kernel's answer, and its errors (a fake runner and a
fake /sys/block; the real commands run in the integration and VM tests)."""

from __future__ import annotations

import errno
import json
import subprocess
import sys

import pytest

from ansible_collections.containerhost.overlayfs.plugins.module_utils.host import _devices as devices
from ansible_collections.containerhost.overlayfs.plugins.module_utils.host._devices import DeviceError


class Runner(object):
    """Answers each command from a table of argv prefixes; records what ran."""

    def __init__(self, answers=None, missing=()):
        self.answers = answers or {}
        self.missing = missing
        self.ran = []

    def __call__(self, argv):
        self.ran.append(list(argv))
        if argv[0] in self.missing:
            raise OSError(errno.ENOENT, 'No such file or directory')
        for prefix, answer in self.answers.items():
            if tuple(argv[:len(prefix)]) == prefix:
                return answer
        return 0, '', ''


def nbd_sysfs(tmp_path, states):
    """/sys/block/nbdN with a size and, for a connected one, a pid file."""
    for number, (size, pid) in enumerate(states):
        base = tmp_path / ('nbd%d' % number)
        base.mkdir()
        (base / 'size').write_text('%d\n' % size)
        if pid:
            (base / 'pid').write_text('%d\n' % pid)
    return str(tmp_path)


def test_attach_loop_runs_losetup_read_only_with_the_path_after_double_dash():
    run = Runner({('losetup', '--find'): (0, '/dev/loop4\n', '')})
    assert devices.attach_loop(run, '-odd name', True) == '/dev/loop4'
    assert run.ran == [['losetup', '--find', '--show', '--read-only', '--', '-odd name']]


def loop_sysfs(tmp_path, backing_files):
    for name, backing_file in backing_files.items():
        (tmp_path / name / 'loop').mkdir(parents=True)
        (tmp_path / name / 'loop' / 'backing_file').write_text(backing_file + '\n')
    return str(tmp_path)


def test_a_failing_command_names_itself_its_status_and_its_message(tmp_path):
    run = Runner({('losetup',): (1, '', 'losetup: /dev/loop4: detach failed: Device or resource busy\n')})
    sys_block = loop_sysfs(tmp_path, {'loop4': '/srv/i.raw'})
    with pytest.raises(DeviceError, match=r'^losetup --detach /dev/loop4 exited 1: losetup: /dev/loop4: detach failed'):
        devices.detach_loop(run, '/dev/loop4', '/srv/i.raw', sys_block=sys_block)
    with pytest.raises(DeviceError, match='exited 3: no message'):
        devices.detach_nbd(Runner({('qemu-nbd',): (3, '', '')}), '/dev/nbd0')


def test_a_loop_device_that_no_longer_serves_the_image_is_detached_already(tmp_path):
    sys_block = loop_sysfs(tmp_path, {'loop5': '/srv/someone-else.raw'})  # loop4: freed by the kernel (autoclear)
    run = Runner()
    for device in ('/dev/loop4', '/dev/loop5'):
        devices.detach_loop(run, device, '/srv/i.raw', sys_block=sys_block)
    assert run.ran == []
    devices.detach_loop(run, '/dev/loop5', '/srv/someone-else.raw', sys_block=sys_block)
    assert run.ran == [['losetup', '--detach', '/dev/loop5']]


def test_a_missing_program_is_named():
    with pytest.raises(DeviceError, match='^cannot run qemu-nbd: No such file or directory'):
        devices.detach_nbd(Runner(missing=('qemu-nbd',)), '/dev/nbd0')


def test_a_module_that_does_not_load_says_which_kernel_and_what_to_do_instead():
    run = Runner({('modprobe',): (1, '', 'modprobe: FATAL: Module nbd not found in directory /lib/modules/6.18\n')})
    with pytest.raises(DeviceError) as error:
        devices.load_module(run, 'nbd', '6.18')
    assert 'could not load the nbd kernel module on kernel 6.18: modprobe: FATAL' in str(error.value)
    assert 'driver fuse needs no kernel module' in str(error.value)


def test_qemu_nbd_takes_an_image_by_name_or_the_file_pinned_without_a_backing_file():
    assert devices.nbd_argv('/dev/nbd1', '/srv/i.qcow2', 'qcow2', True) == [
        'qemu-nbd', '--format=qcow2', '--connect=/dev/nbd1', '--read-only', '--', '/srv/i.qcow2']
    argv = devices.nbd_argv('/dev/nbd1', '/c/v/i.qcow2', 'qcow2', False, '/proc/9/fd/5', '/run/p.pid')
    assert argv[:5] == ['qemu-nbd', '--format=qcow2', '--connect=/dev/nbd1', '--pid-file=/run/p.pid',
                        '--description=/c/v/i.qcow2']
    assert argv[5] == '--' and json.loads(argv[6][len('json:'):]) == {
        'driver': 'qcow2', 'backing': None, 'read-only': False,
        'file': {'driver': 'file', 'filename': '/proc/9/fd/5', 'read-only': False}}


def test_free_nbd_devices_are_those_without_server_and_size_in_number_order(tmp_path):
    sys_block = nbd_sysfs(tmp_path, [(0, None), (1 << 20, 77), (0, None)] + [(0, None)] * 8)
    assert devices.free_nbd_devices(sys_block)[:3] == ['/dev/nbd0', '/dev/nbd2', '/dev/nbd3']
    assert devices.free_nbd_devices(sys_block)[-1] == '/dev/nbd10'  # 10 after 9, not after 1


def test_attach_nbd_moves_on_after_a_failed_connect_and_gives_up_after_three(tmp_path, monkeypatch):
    sys_block = nbd_sysfs(tmp_path, [(0, None)] * 5)
    monkeypatch.setattr(devices, 'wait_for_nbd', lambda device, sys_block: None)
    run = Runner({('qemu-nbd',): (1, '', 'qemu-nbd: Failed to set NBD socket\n')})
    with pytest.raises(DeviceError) as error:
        devices.attach_nbd(run, '/srv/i.qcow2', 'qcow2', True, sys_block=sys_block)
    assert [argv[2] for argv in run.ran] == ['--connect=/dev/nbd0', '--connect=/dev/nbd1', '--connect=/dev/nbd2']
    assert str(error.value).startswith('qemu-nbd could not serve /srv/i.qcow2: /dev/nbd0: qemu-nbd: Failed')
    assert run.ran[0] == ['qemu-nbd', '--format=qcow2', '--connect=/dev/nbd0', '--read-only', '--', '/srv/i.qcow2']


def test_attach_nbd_without_a_free_device_says_how_to_get_more(tmp_path):
    with pytest.raises(DeviceError, match='no free nbd device .*nbds_max'):
        devices.attach_nbd(Runner(), '/srv/i.qcow2', 'qcow2', True, sys_block=nbd_sysfs(tmp_path, [(1, 9)]))


@pytest.mark.parametrize('out, rc, expected', [
    ('DEVNAME=/dev/loop1\nTYPE=ext4\n', 0, 'ext4'),
    ('PTTYPE=dos\n', 0, DeviceError('holds a dos partition table, not a filesystem')),
    ('', 2, DeviceError('no filesystem found on /dev/loop1')),
    ('', 4, DeviceError('blkid /dev/loop1 exited 4')),
])
def test_filesystem_type_from_blkids_low_level_probe(out, rc, expected):
    run = Runner({('blkid',): (rc, out, 'usage' if rc == 4 else '')})
    if isinstance(expected, DeviceError):
        with pytest.raises(DeviceError, match=str(expected)):
            devices.filesystem_type(run, '/dev/loop1')
    else:
        assert devices.filesystem_type(run, '/dev/loop1') == expected
    assert run.ran == [['blkid', '--probe', '--output', 'export', '--', '/dev/loop1']]


def test_a_failed_export_start_removes_its_files_and_qemu_values_double_their_commas(tmp_path):
    run = Runner({('qemu-storage-daemon',): (1, '', 'qemu-storage-daemon: Could not open image\n')})
    export, pidfile, metafile = (str(tmp_path / 'exports' / name) for name in ('e,1.img', 'e.pid', 'e.json'))
    with pytest.raises(DeviceError, match='exited 1: qemu-storage-daemon: Could not open image'):
        devices.start_export(run, '/srv/a,b.qcow2', 'qcow2', export, pidfile, metafile)
    argv = run.ran[0]
    assert 'driver=file,node-name=file,read-only=on,filename=/srv/a,,b.qcow2' in argv
    assert argv[-1].endswith('mountpoint=%s' % export.replace(',', ',,'))
    assert sorted(p.name for p in (tmp_path / 'exports').iterdir()) == []


def test_an_export_a_killed_runs_daemon_is_still_starting_is_adopted_once_it_serves(tmp_path):
    """The daemon of a killed run holds the pid file (qemu lockf's it); this run's own daemon fails on that lock."""
    export, pidfile, metafile = (str(tmp_path / name) for name in ('e.img', 'e.pid', 'e.json'))
    holder = subprocess.Popen([sys.executable, '-c', 'import fcntl, sys, time; handle = open(sys.argv[1], "w"); '
                               'fcntl.lockf(handle, fcntl.LOCK_EX); print("held", flush=True); time.sleep(60)', pidfile],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == 'held\n', holder.stderr.read()

        def starts_serving(argv):
            with open(export, 'w') as handle:
                handle.write('the export now serves')  # what the other daemon does once it is up
            return 1, '', 'qemu-storage-daemon: cannot create PID file: Cannot lock pid file: Resource temporarily unavailable'
        devices.start_export(starts_serving, '/srv/a.qcow2', 'qcow2', export, pidfile, metafile)
        assert sorted(p.name for p in tmp_path.iterdir()) == ['e.img', 'e.json', 'e.pid']
    finally:
        holder.kill()
        holder.wait()


def test_an_export_with_a_loop_device_on_it_is_not_stopped(tmp_path):
    export = str(tmp_path / 'e.img')
    sys_block = loop_sysfs(tmp_path / 'sys', {'loop2': export, 'loop3': '/srv/other.img'})
    with pytest.raises(DeviceError, match=r'^the FUSE export %s still has /dev/loop2 on it: detach it first$' % export):
        devices.stop_export(export, str(tmp_path / 'e.pid'), str(tmp_path / 'e.json'), sys_block=sys_block)
