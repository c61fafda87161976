# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""syscalls: each wrapper once against the kernel, in a private mount namespace of its own (root only)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from ansible_collections.containerhost.overlayfs.plugins.module_utils.host import _syscalls as syscalls
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._idmap import parse_idmap
from ansible_collections.containerhost.overlayfs.tests.helpers.kernel import reads_idmap_back

SCRIPT = textwrap.dedent('''
    import json, os, subprocess, sys
    sys.path[:0] = json.loads(sys.argv[2])
    from ansible_collections.containerhost.overlayfs.plugins.module_utils.host import _syscalls as syscalls
    from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._mountinfo import read_mountinfo
    from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._options import overlay_payload
    base = sys.argv[1]
    report = {}

    def path(*parts):
        return os.path.join(base, *parts)

    def top(target):
        return [entry for entry in read_mountinfo() if entry.mountpoint == target][-1]

    subprocess.run(['mount', '-t', 'tmpfs', 'scratch', base], check=True, capture_output=True)
    lowers = [path('l,%03d' % index + 'x' * 90) for index in range(40)]
    for name in lowers + [path('u'), path('w'), path('m'), path('m2'), path('bound'), path('w2'), path('src')]:
        os.mkdir(name)
    for kind, layers in (('mount', lowers[:2]), ('fsconfig', lowers)):
        payload = overlay_payload(layers, path('u'), path('w'), {'default_permissions': 'on'})
        assert payload.api == kind, payload.api
        syscalls.mount_overlay(path('m'), payload, False, mount_flags=('nodev', 'noexec'))
        entry = top(path('m'))
        report[kind] = [entry.overlay_layers()[0] == layers, entry.readonly, 'default_permissions' in entry.super_options,
                        entry.mount_flags]
        syscalls.unmount(path('m'))
        report[kind].append(any(entry.mountpoint == path('m') for entry in read_mountinfo()))
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'nosuid', 'source', path('src')], check=True, capture_output=True)
    syscalls.bind_mount(path('src'), path('bound'))
    syscalls.remount_bind(path('bound'), True, ('nodev',))
    report['bind'] = [top(path('bound')).readonly, top(path('bound')).mount_flags]
    syscalls.set_mount_flags(path('bound'), add=('noexec',), remove=('nodev',))
    report['bind'].append(top(path('bound')).mount_flags)
    syscalls.unmount(path('bound'), lazy=True)
    try:
        syscalls.mount_overlay(path('m2'), overlay_payload([path('missing'), lowers[0]], None, None, {}), False)
    except syscalls.MountError as error:
        report['refused'] = [error.errno, str(error)]
    try:
        syscalls.unmount(path('m2'))
    except syscalls.MountError as error:
        report['not_mounted'] = [error.errno, str(error)]
    print(json.dumps(report))
''')


@pytest.fixture
def namespace_run(tmp_path):
    unshare = shutil.which('unshare')
    if os.geteuid() != 0 or not unshare:
        pytest.skip('needs root and unshare to mount in a private namespace')

    def run(script):
        completed = subprocess.run([unshare, '-m', '--propagation', 'private', sys.executable, '-c', script,
                                    str(tmp_path), json.dumps(sys.path)], capture_output=True, text=True, check=False)
        assert completed.returncode == 0, 'stdout: %s\nstderr: %s' % (completed.stdout, completed.stderr)
        return json.loads(completed.stdout)
    return run


def test_paths_below_a_root_are_reached_made_and_removed_without_following_a_symlink(tmp_path):
    root = tmp_path / 'view'
    (root / 'etc').mkdir(parents=True)
    (tmp_path / 'host').mkdir()
    (root / 'etc' / 'x').symlink_to(tmp_path / 'host')
    assert syscalls.make_dirs_beneath(str(root), 'etc/new/deep') == ['etc/new', 'etc/new/deep']
    assert syscalls.make_dirs_beneath(str(root), 'etc/new/deep') == []
    with syscalls.pinned_dir(str(root), 'etc/new/deep') as at:
        assert os.path.samefile(at, root / 'etc' / 'new' / 'deep')
    for attempt in (lambda: syscalls.make_dirs_beneath(str(root), 'etc/x/sub'),
                    lambda: syscalls.open_beneath(str(root), 'etc/x'),
                    lambda: syscalls.open_beneath(str(root), '../host')):
        with pytest.raises(syscalls.ConfinedPathError) as error:
            attempt()
        assert 'is reached through a symlink inside %s, which is not followed there' % root in str(error.value)
    assert list((tmp_path / 'host').iterdir()) == []  # nothing landed where the symlink points
    syscalls.remove_empty_dir_beneath(str(root), 'etc/new/deep')
    assert not (root / 'etc' / 'new' / 'deep').exists()


def test_each_wrapper_does_what_it_says_and_failures_carry_the_call_and_errno(namespace_run, tmp_path):
    report = namespace_run(SCRIPT)
    # mount(2) and fsconfig(2) give the same overlay: the layers in order, the flag, gone after unmount
    assert report['mount'] == [True, False, True, ['nodev', 'noexec'], False]
    assert report['fsconfig'] == [True, False, True, ['nodev', 'noexec'], False]
    # read-only and nodev take the remount; the source's nosuid stays; then noexec is added and nodev taken off
    assert report['bind'] == [True, ['nodev', 'nosuid'], ['nosuid', 'noexec']]
    err, text = report['refused']
    assert err == 2 and text.startswith('mount overlay on %s: No such file or directory' % (tmp_path / 'm2'))
    err, text = report['not_mounted']
    assert err == 22 and text == 'unmount %s: Invalid argument' % (tmp_path / 'm2')


@pytest.mark.parametrize('err, hint', [
    (errno.EINVAL, 'this kernel or the filesystem of /srv/base cannot idmap a mount'),
    (errno.EPERM, 'this kernel or the filesystem of /srv/base cannot idmap a mount'),
    (errno.ENOSYS, 'this kernel has no idmapped mounts (Linux 5.12 and later have them)'),
])
def test_an_idmapped_mount_the_kernel_refuses_says_why_and_leaves_no_fd_open(monkeypatch, err, hint):
    opened = []

    def fake_syscall(call, number, *args, **kwargs):
        if number == syscalls.SYS_OPEN_TREE:
            opened.append(os.open('/', os.O_RDONLY))
            return opened[-1]
        raise syscalls.MountError(err, call, [])

    monkeypatch.setattr(syscalls, '_syscall', fake_syscall)
    monkeypatch.setattr(syscalls, 'user_namespace', lambda idmap: contextlib.nullcontext(-1))
    shift = {'uid': [{'start': 0, 'target': 100000, 'count': 65536}], 'gid': [{'start': 0, 'target': 1, 'count': 1}]}
    with pytest.raises(syscalls.MountError) as error:
        syscalls.mount_idmapped('/srv/base', '/run/x', parse_idmap(shift, 'idmap'))
    assert str(error.value) == 'mount /srv/base idmapped on /run/x (mount_setattr): %s (kernel: %s)' % (
        os.strerror(err), hint)
    with pytest.raises(OSError):
        os.fstat(opened[0])  # the detached clone's fd was closed


def test_the_syscalls_called_by_number_have_that_number_on_every_architecture():
    # the kernel's tables as system-calls (hrw/syscalls-table) carries them; a number that differs by architecture
    # (statx's, say) must go through the C library instead
    from system_calls import syscalls as kernel_tables
    tables = kernel_tables()
    by_number = {name[len('SYS_'):].lower(): value for name, value in vars(syscalls).items() if name.startswith('SYS_')}
    assert set(by_number) == {'open_tree', 'move_mount', 'fsopen', 'fsconfig', 'fsmount', 'openat2', 'mount_setattr',
                              'statmount'}
    for arch in ('x86_64', 'arm64', 'riscv64'):
        assert {name: tables.get(name, arch) for name in by_number} == by_number, arch


IDMAP_SCRIPT = textwrap.dedent('''
    import json, os, subprocess, sys
    sys.path[:0] = json.loads(sys.argv[2])
    from ansible_collections.containerhost.overlayfs.plugins.module_utils.host import _syscalls as syscalls
    from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._idmap import parse_idmap
    base = sys.argv[1]
    subprocess.run(['mount', '-t', 'tmpfs', 'scratch', base], check=True, capture_output=True)
    os.mkdir(base + '/plain')
    os.mkdir(base + '/shifted')
    idmap = parse_idmap({'uid': [{'start': 0, 'target': 100000, 'count': 65536}],
                         'gid': [{'start': 0, 'target': 200000, 'count': 10}]}, 'idmap')
    syscalls.mount_idmapped(base + '/plain', base + '/shifted', idmap)
    print(json.dumps({'plain': syscalls.mount_idmap(base + '/plain') is None,
                      'shifted': syscalls.mount_idmap(base + '/shifted') == idmap}))
''')


@pytest.mark.skipif(not reads_idmap_back(os.uname().release), reason='statmount(2) reads a mapping back from Linux 6.15 on')
def test_an_idmapped_mount_is_read_back_through_statx_and_statmount(namespace_run):
    # statx through the C library (its number differs by architecture), statmount by number
    assert namespace_run(IDMAP_SCRIPT) == {'plain': True, 'shifted': True}
