# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import errno
import os
import subprocess
import sys

from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel import _mountinfo as mountinfo
from ansible_collections.containerhost.overlayfs.plugins.module_utils.host._observe import (
    LoopDevice,
    Observed,
    PathFacts,
    observe_path,
    qemu_nbd_server,
    read_loop_devices,
)

TABLE = '\n'.join([
    '1 0 8:1 / / rw - ext4 /dev/sda1 rw',
    '20 1 8:2 / /srv rw - ext4 /dev/sdb1 rw',
    '30 20 0:30 / /srv/m rw - overlay overlay rw,lowerdir=/srv/l,upperdir=/srv/u,workdir=/srv/w',
    '31 30 0:31 / /srv/m rw - overlay overlay rw,lowerdir=/srv/l,upperdir=/srv/u2,workdir=/srv/w2',
    '40 1 7:3 / /mnt/img ro - ext4 /dev/loop3 rw',
    '50 1 0:50 / /srv/other rw - tmpfs tmpfs rw',
])


def test_mounts_at_returns_the_stack_bottom_first():
    observed = Observed(mountinfo.parse(TABLE), [], {})
    assert [entry.mount_id for entry in observed.mounts_at('/srv/m')] == [30, 31]
    assert observed.top_mount_at('/srv/m').mount_id == 31
    assert observed.mounts_at('/srv/nothing') == []
    assert observed.top_mount_at('/srv/nothing') is None


def test_mounts_at_uses_the_resolved_path():
    link = PathFacts('/link/to/m', '/srv/m', exists=True, is_dir=True)
    observed = Observed(mountinfo.parse(TABLE), [], {'/link/to/m': link})
    assert [entry.mount_id for entry in observed.mounts_at('/link/to/m')] == [30, 31]


def test_mount_containing_picks_the_longest_mountpoint():
    observed = Observed(mountinfo.parse(TABLE), [], {})
    assert observed.mount_containing('/srv/u/x').mount_id == 20
    assert observed.mount_containing('/srv').mount_id == 20
    assert observed.mount_containing('/srvx/y').mount_id == 1
    assert observed.mount_containing('/srv/m/deep').mount_id == 31  # the top of the stack


def test_overlays_using_finds_upper_and_work():
    observed = Observed(mountinfo.parse(TABLE), [], {})
    assert [entry.mount_id for entry in observed.overlays_using('/srv/u')] == [30]
    assert [entry.mount_id for entry in observed.overlays_using('/srv/w2')] == [31]
    assert observed.overlays_using('/srv/l') == []


def test_loops_by_number_and_backing_file():
    loops = [LoopDevice('/dev/loop3', 7, 3, '/srv/a.img', True, []),
             LoopDevice('/dev/loop4', 7, 4, '/srv/a.img', False, ['dm-0'])]
    observed = Observed(mountinfo.parse(TABLE), loops, {})
    assert observed.loop_by_number(7, 4).device == '/dev/loop4'
    assert observed.loop_by_number(7, 9) is None
    assert [loop.device for loop in observed.loops_backed_by('/srv/a.img')] == ['/dev/loop3', '/dev/loop4']
    assert observed.is_mounted_device(7, 3)
    assert not observed.is_mounted_device(7, 4)


def _fake_loop(sys_block, name, dev, backing, ro='1', holders=()):
    base = sys_block / name
    (base / 'loop').mkdir(parents=True)
    (base / 'holders').mkdir()
    for holder in holders:
        (base / 'holders' / holder).mkdir()
    (base / 'dev').write_text(dev + '\n')
    (base / 'ro').write_text(ro + '\n')
    (base / 'loop' / 'backing_file').write_text(backing + '\n')


def test_read_loop_devices_from_sysfs(tmp_path):
    _fake_loop(tmp_path, 'loop0', '7:0', '/srv/images/base.img')
    _fake_loop(tmp_path, 'loop1', '7:1', '/srv/images/gone.img (deleted)', ro='0', holders=['dm-1'])
    (tmp_path / 'loop2').mkdir()  # an unused loop device has no loop/backing_file
    (tmp_path / 'sda').mkdir()
    loops = read_loop_devices(str(tmp_path))
    assert [(loop.device, loop.major, loop.minor, loop.backing_file, loop.readonly, loop.holders) for loop in loops] == [
        ('/dev/loop0', 7, 0, '/srv/images/base.img', True, []),
        ('/dev/loop1', 7, 1, '/srv/images/gone.img', False, ['dm-1']),
    ]


def test_read_loop_devices_of_this_machine_is_a_list():
    loops = read_loop_devices()
    assert isinstance(loops, list)
    for loop in loops:
        assert loop.device.startswith('/dev/loop')


def test_path_facts_of_real_paths(tmp_path):
    (tmp_path / 'dir' / 'work' / 'incompat' / 'volatile').mkdir(parents=True)
    (tmp_path / 'dir' / 'index').mkdir()
    (tmp_path / 'file').write_text('x')
    os.symlink('dir', str(tmp_path / 'link'))

    directory = observe_path(str(tmp_path / 'dir'), work_dir=True)
    assert directory.exists and directory.is_dir and not directory.is_file and not directory.is_block
    assert directory.entries == ('index', 'work')
    assert directory.volatile_leftover
    assert directory.identity == (os.stat(str(tmp_path / 'dir')).st_dev, os.stat(str(tmp_path / 'dir')).st_ino)

    regular = observe_path(str(tmp_path / 'file'))
    assert regular.is_file and not regular.is_dir and regular.entries == () and not regular.volatile_leftover
    assert not observe_path(str(tmp_path / 'dir')).volatile_leftover  # read for a work dir only

    link = observe_path(str(tmp_path / 'link'))
    assert link.realpath == str(tmp_path / 'dir') and link.identity == directory.identity

    missing = observe_path(str(tmp_path / 'missing' / 'deeper'))
    assert not missing.exists and missing.identity is None and missing.entries == ()
    assert missing.realpath == str(tmp_path / 'missing' / 'deeper')


def test_path_facts_of_a_block_device():
    candidates = [path for path in ('/dev/loop0', '/dev/vda', '/dev/sda', '/dev/ram0') if os.path.exists(path)]
    for path in candidates:
        facts = observe_path(path)
        if facts.is_block:
            info = os.stat(path)
            assert facts.rdev == (os.major(info.st_rdev), os.minor(info.st_rdev))
            return
    facts = observe_path('/dev/null')  # a character device: not a block device
    assert facts.exists and not facts.is_block and facts.rdev is None


def test_a_path_that_cannot_be_read_exists_with_its_error(monkeypatch):
    def stat(path):
        raise OSError(errno.EIO, 'Input/output error', path)
    monkeypatch.setattr(os, 'lstat', stat)
    facts = observe_path('/srv/on-a-dead-device')
    assert facts.exists and not facts.is_dir and facts.unreadable == 'Input/output error'


def test_path_facts_tell_a_symlinked_path_from_a_symlinked_parent(tmp_path):
    (tmp_path / 'real' / 'dir').mkdir(parents=True)
    os.symlink('real', str(tmp_path / 'parent-link'))
    os.symlink('real/dir', str(tmp_path / 'link'))
    os.symlink('nowhere', str(tmp_path / 'dangling'))
    assert observe_path(str(tmp_path / 'link')).is_symlink
    assert not observe_path(str(tmp_path / 'parent-link' / 'dir')).is_symlink
    dangling = observe_path(str(tmp_path / 'dangling'))
    assert dangling.is_symlink and dangling.exists and not dangling.is_dir


# Stands in for a daemonized qemu-nbd: holds the image open, then changes its working dir to / as qemu-nbd does.
DAEMONIZED = ("import os, sys, time; handle = open(sys.argv[-1]); os.chdir('/'); print('ready', flush=True); "
              "time.sleep(60)")


def test_a_relative_image_of_a_daemonized_qemu_nbd_is_the_file_it_holds_open(tmp_path):
    (tmp_path / 'images').mkdir()
    (tmp_path / 'images' / 'base.qcow2').write_bytes(b'QFI\xfb')
    os.symlink(sys.executable, str(tmp_path / 'qemu-nbd'))
    argv = [str(tmp_path / 'qemu-nbd'), '-c', DAEMONIZED, '-f', 'qcow2', '-r', 'images/base.qcow2']
    process = subprocess.Popen(argv, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == 'ready\n', process.stderr.read()
        server = qemu_nbd_server(process.pid)
        assert server.serves(os.path.realpath(str(tmp_path / 'images' / 'base.qcow2')), 'qcow2', True), vars(server)
    finally:
        process.kill()
        process.wait()


def test_an_image_served_from_the_file_pinned_is_the_one_its_description_names_with_no_link_followed(tmp_path):
    """devices.nbd_argv's form for an image below an open dir; a link planted at its name since changes nothing."""
    (tmp_path / 'view').mkdir()
    os.symlink('/etc/hostname', str(tmp_path / 'view' / 'image.qcow2'))  # planted after the attach
    os.symlink(sys.executable, str(tmp_path / 'qemu-nbd'))
    image = str(tmp_path / 'view' / 'image.qcow2')
    argv = [str(tmp_path / 'qemu-nbd'), '-c', "print('ready', flush=True); import time; time.sleep(60)",
            '--format=qcow2', '--connect=/dev/nbd3', '--read-only', '--description=' + image, '--',
            'json:{"driver": "qcow2", "backing": null, "file": {"filename": "/proc/1/fd/3"}}']
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == 'ready\n', process.stderr.read()
        assert vars(qemu_nbd_server(process.pid)) == {'image': image, 'image_format': 'qcow2', 'readonly': True}
    finally:
        process.kill()
        process.wait()
