# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Idmapped layers, for real: one base dir owned by root, two trees over it in two id ranges, written from inside
user namespaces as unprivileged containers would write them."""

from __future__ import annotations

import json
import os
import sys

import pytest

from ansible_collections.containerhost.overlayfs.plugins.module_utils.boot import _boot as boot
from ansible_collections.containerhost.overlayfs.plugins.module_utils.host import _syscalls as syscalls
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._idmap import IDMAP_DIR, idmap_mount_path, parse_idmap
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._mountinfo import read_mountinfo
from ansible_collections.containerhost.overlayfs.tests.helpers.host import (
    checked,
    converge_twice,
    make_ext4_image,
    quietly,
    run,
    tree_digest,
)
from ansible_collections.containerhost.overlayfs.plugins.plugin_utils._persistence import helper_sources, render
from ansible_collections.containerhost.overlayfs.tests.helpers.playbooks import info_round_trip_playbook

RANGES = {'a': 100000, 'b': 200000}
COUNT = 65536


def idmap(target):
    ranges = [{'start': 0, 'target': target, 'count': COUNT}]
    return {'uid': ranges, 'gid': list(ranges)}


def tree(host, name, target_id, **extra):
    return dict({'upper': host.path('upper-' + name), 'work': host.path('work-' + name),
                 'target': host.path('merged-' + name), 'lower': [host.path('base')], 'idmap': idmap(target_id)},
                **extra)


def owner(path):
    info = os.lstat(path)
    return info.st_uid, info.st_gid


def idmapped_mounts():
    return [entry for entry in read_mountinfo() if entry.mountpoint.startswith(IDMAP_DIR + '/')]


def mount_points_in_idmap_dir():
    """The dirs in IDMAP_DIR, shared with any other test session on this machine: compare only a test's own."""
    return {os.path.join(IDMAP_DIR, name) for name in os.listdir(IDMAP_DIR)}


@pytest.fixture
def subids(host):
    """newuidmap (which unshare --map-users runs) maps only the ranges /etc/subuid and /etc/subgid give root: this
    test's ranges, over the host's files in this private mount namespace only."""
    lines = ''.join('root:%d:%d\n' % (start, COUNT) for start in RANGES.values())
    host.write('subids', lines)
    bound = []
    try:
        for name in ('/etc/subuid', '/etc/subgid'):
            checked(['mount', '--bind', host.path('subids'), name])
            bound.append(name)
        yield
    finally:
        for name in bound:
            quietly(['umount', name])


@pytest.fixture
def base(host):
    """The base image: root-owned files, as a distribution's rootfs has them."""
    host.make_dirs('base/data', **{'base/etc/conf': 'base setting\n', 'base/bin/tool': 'binary'})
    return host.path('base')


def as_container(host, name, script):
    """Run ``script`` in a user namespace whose root is host uid/gid RANGES[name], as an unprivileged container's
    processes run."""
    start = RANGES[name]
    return checked(['unshare', '--user', '--map-users=%d,0,%d' % (start, COUNT),
                    '--map-groups=%d,0,%d' % (start, COUNT), '--setuid', '0', '--setgid', '0',
                    'sh', '-euc', script], cwd=host.path('merged-' + name))


def test_one_base_two_ranges_each_container_writes_its_own_upper_dir_with_its_host_ids(host, base, subids):
    digest_before = tree_digest(base)
    trees = [tree(host, name, start) for name, start in sorted(RANGES.items())]
    first = converge_twice(host, filesystems=trees)
    assert [step['kind'] for step in first['steps'] if step['action'] == 'mount'] == ['idmapped', 'overlay'] * 2
    assert len(idmapped_mounts()) == 2
    assert all('idmapped' in entry.mount_options for entry in idmapped_mounts())

    for name, start in RANGES.items():
        merged = host.path('merged-' + name)
        assert owner(os.path.join(merged, 'etc/conf')) == (start, start)
        assert owner(merged) == (start, start)  # the upper dir the module made belongs to the container's root
        as_container(host, name, 'echo new > created; echo %s >> etc/conf; mkdir data/sub; id -u > data/sub/who'
                     % name)
        upper = host.path('upper-' + name)
        for written in ('created', 'etc/conf', 'data/sub', 'data/sub/who'):
            assert owner(os.path.join(upper, written)) == (start, start), written
        with open(os.path.join(upper, 'etc/conf')) as handle:
            assert handle.read() == 'base setting\n%s\n' % name
        with open(os.path.join(upper, 'data/sub/who')) as handle:
            assert handle.read() == '0\n'  # root inside its namespace

    assert tree_digest(base) == digest_before
    assert owner(os.path.join(base, 'etc/conf')) == (0, 0)
    assert not os.path.exists(os.path.join(base, 'created'))
    again = host.play(filesystems=trees)
    assert (again['changed'], again['plan']) == (False, [])


def test_a_container_cannot_write_through_the_other_ranges_view(host, base, subids):
    converge_twice(host, filesystems=[tree(host, 'a', RANGES['a']), tree(host, 'b', RANGES['b'])])
    completed = quietly(['unshare', '--user', '--map-users=%d,0,%d' % (RANGES['a'], COUNT),
                         '--map-groups=%d,0,%d' % (RANGES['a'], COUNT), '--setuid', '0', '--setgid', '0',
                         'sh', '-c', 'echo x > %s' % host.path('merged-b/etc/conf')])
    assert completed.returncode != 0, completed.stdout + completed.stderr
    assert 'Permission denied' in completed.stderr


def test_a_changed_mapping_is_drift_and_replace_remounts_both_mounts(host, base):
    converge_twice(host, filesystems=[tree(host, 'a', RANGES['a'])])
    changed = [tree(host, 'a', 300000)]
    refused = host.play(filesystems=changed)
    assert refused['failed']
    assert 'filesystems[0].lower[0].idmap' in refused['msg']
    assert 'it maps uid 0->100000 (65536), gid 0->100000 (65536)' in refused['msg']
    assert owner(host.path('merged-a/etc/conf')) == (100000, 100000)

    replaced = host.play(filesystems=changed, on_drift='replace')
    assert not replaced.get('failed'), replaced.get('msg')
    assert owner(host.path('merged-a/etc/conf')) == (300000, 300000)
    assert len(idmapped_mounts()) == 1
    again = host.play(filesystems=changed)
    assert (again['changed'], again['plan']) == (False, [])


def test_unmount_removes_the_idmapped_mounts_of_the_tree_and_nothing_else(host, base):
    host.make_dirs('other')
    trees = [tree(host, 'a', RANGES['a']),
             tree(host, 'b', RANGES['b'], lower=[host.path('base'), host.path('other')])]
    converge_twice(host, filesystems=trees)
    assert len(idmapped_mounts()) == 3  # base for a; base and other for b
    of_b = {idmap_mount_path(trees[1]['target'], layer) for layer in trees[1]['lower']}
    of_a = idmap_mount_path(trees[0]['target'], host.path('base'))
    assert of_b | {of_a} <= mount_points_in_idmap_dir()
    result = host.play(filesystems=[trees[1]], state='unmounted')
    assert not result.get('failed'), result.get('msg')
    assert [entry.mountpoint for entry in idmapped_mounts()] == [of_a]
    assert not of_b & mount_points_in_idmap_dir()  # their mount points went with them
    assert owner(host.path('merged-a/etc/conf')) == (100000, 100000)
    assert not os.path.ismount(host.path('merged-b'))


def test_an_overlay_of_idmapped_block_and_nested_layers_maps_every_layer(host, base):
    host.make_dirs(**{'inner/x': 'inner file'})
    device = checked(['losetup', '--find', '--show', '--read-only',
                      make_ext4_image(host, 'disk.img', {'on-disk': 'block'})]).stdout.strip()
    nested = {'type': 'overlay', 'target': host.path('nested'), 'upper': host.path('nested-upper'),
              'work': host.path('nested-work'), 'lower': [host.path('inner')]}
    block = {'type': 'block', 'source': device, 'target': host.path('disk')}
    trees = [tree(host, 'a', RANGES['a'], lower=[nested, block, host.path('base')])]
    try:
        converge_twice(host, filesystems=trees)
        assert owner(host.path('merged-a/x')) == (100000, 100000)  # through the nested overlay's idmapped lower
        assert owner(host.path('merged-a/on-disk')) == (100000, 100000)  # the block device's root-owned file
        assert owner(host.path('disk/on-disk')) == (0, 0)  # its own mount is not idmapped
        assert owner(host.path('merged-a/etc/conf')) == (100000, 100000)
        assert len(idmapped_mounts()) == 3
        host.play(filesystems=trees, state='unmounted')
        assert idmapped_mounts() == []
    finally:
        quietly(['umount', host.path('disk')])
        quietly(['losetup', '--detach', device])


def test_a_filesystem_that_cannot_be_idmapped_fails_with_the_kernels_reason_and_is_undone(host, base):
    proc = host.path('proc')
    os.makedirs(proc)
    checked(['mount', '-t', 'proc', 'proc', proc])
    lowers = [{'type': 'mount', 'source': proc, 'target': host.path('p')}, host.path('base')]
    trees = [tree(host, 'a', RANGES['a'], lower=lowers)]
    before = sorted(os.listdir(host.root))
    result = host.play(filesystems=trees)
    assert result['failed']
    assert 'mount_setattr' in result['msg'] and 'Invalid argument' in result['msg']
    assert 'cannot idmap a mount' in result['msg']
    assert 'Undid' in result['msg']
    assert idmapped_mounts() == []
    assert not os.path.ismount(host.path('p'))
    assert sorted(os.listdir(host.root)) == before


def test_idmapped_trees_read_back_with_their_mappings_and_plan_nothing_fed_back(host, base):
    image = make_ext4_image(host, 'tools.img', {'bin/tool': 'a tool'})
    host.make_dirs('bind-src')
    own = {'uid': [{'start': 0, 'target': 5000, 'count': 10}], 'gid': [{'start': 0, 'target': 6000, 'count': 10}]}
    lowers = [{'type': 'file', 'source': image, 'format': 'raw', 'target': host.path('img')},
              {'type': 'mount', 'source': host.path('bind-src'), 'target': host.path('bind'), 'idmap': own},
              host.path('base')]
    converge_twice(host, filesystems=[tree(host, 'a', RANGES['a'], lower=lowers)])
    hand_made = host.path('by-hand')
    os.makedirs(hand_made)
    checked(['python3', '-c', 'import sys; from ansible_collections.containerhost.overlayfs.plugins.module_utils.host '
             'import _syscalls as s; from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel '
             'import _idmap as i; s.mount_idmapped(sys.argv[1], sys.argv[2], i.parse_idmap('
             '{"uid": [{"start": 0, "target": 1, "count": 1}], "gid": [{"start": 0, "target": 1, "count": 1}]}, "x"))',
             host.path('base'), hand_made], env=dict(os.environ, PYTHONPATH=':'.join(sys.path)))
    host.make_dirs('hand/upper', 'hand/work', 'hand/m')
    checked(['mount', '-t', 'overlay', 'by-hand', '-o', 'lowerdir=%s,upperdir=%s,workdir=%s' % (
        hand_made, host.path('hand/upper'), host.path('hand/work')), host.path('hand/m')])

    playbook, result_file = os.path.join(host.runs_dir, 'read-back.yml'), os.path.join(host.runs_dir, 'read-back.json')
    with open(playbook, 'w') as handle:
        handle.write(info_round_trip_playbook('localhost'))
    completed = run(['ansible-playbook', '-i', 'localhost,', '-c', 'local', '-e', 'root=' + host.root,
                     '-e', 'result_file=' + result_file, '-e', 'ansible_python_interpreter=' + sys.executable, playbook])
    assert completed.returncode == 0, completed.stdout[-5000:] + completed.stderr[-2000:]
    with open(result_file) as handle:
        results = json.load(handle)
    [found] = results['found']['filesystems']
    shift = idmap(RANGES['a'])
    assert found['lower'] == [dict(lowers[0], driver='loop', idmap=shift), lowers[1],
                              {'type': 'dir', 'target': host.path('base'), 'idmap': shift}]
    assert (results['fed']['changed'], results['fed']['plan']) == (False, [])
    [unexpressed] = results['found']['unexpressed']
    assert unexpressed['target'] == host.path('hand/m')
    assert 'is an idmapped mount of %s that no tree made' % host.path('base') in unexpressed['reason']


def processes_in_other_user_namespaces():
    own = os.readlink('/proc/self/ns/user')
    found = set()
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            if os.readlink('/proc/%s/ns/user' % pid) != own:
                found.add(int(pid))
        except OSError:  # gone meanwhile
            continue
    return found


def test_the_user_namespace_of_a_mapping_leaves_no_process_behind(host, base):
    before = processes_in_other_user_namespaces()
    target = host.path('clone')
    os.makedirs(target)
    syscalls.mount_idmapped(base, target, parse_idmap(idmap(RANGES['b']), 'idmap'))
    try:
        assert owner(os.path.join(target, 'etc/conf')) == (RANGES['b'], RANGES['b'])
        with pytest.raises(ChildProcessError):  # the child that made the namespace is gone and reaped
            os.waitpid(-1, os.WNOHANG)
        assert processes_in_other_user_namespaces() <= before
    finally:
        checked(['umount', target])


def rendered_spec(host, trees):
    """The spec files the role would write for these trees, written under the scratch root: {target: path}."""
    files = render([{'filesystem': one} for one in trees], settings={'helper_sources': helper_sources()})['files']
    specs = {}
    for path, text in files.items():
        if path.startswith(boot.SPEC_DIR + '/'):
            local = host.path('specs', os.path.basename(path))
            os.makedirs(os.path.dirname(local), exist_ok=True)
            with open(local, 'w') as handle:
                handle.write(text)
            specs[boot.read_spec(local)['target']] = local
    return specs


def test_the_boot_helper_mounts_the_idmapped_layers_before_the_overlay_and_leaves_nothing_when_it_fails(host, base):
    host.make_dirs('upper-a', 'work-a', 'merged-a', 'upper-b', 'work-b', 'merged-b')
    checked(['mount', '-t', 'tmpfs', 'elsewhere', host.path('work-b')])  # the kernel wants upper and work on one mount
    trees = [tree(host, name, start) for name, start in sorted(RANGES.items())]
    specs = rendered_spec(host, trees)
    target = host.path('merged-a')
    boot.mount(specs[target], target)
    assert owner(os.path.join(target, 'etc/conf')) == (RANGES['a'], RANGES['a'])
    boot.mount(specs[target], target)  # mount -a again: nothing stacks
    assert len(idmapped_mounts()) == 1 and len([e for e in read_mountinfo() if e.mountpoint == target]) == 1
    again = host.play(filesystems=trees[:1])  # the module sees what it would have made
    assert (again.get('msg'), again['plan']) == (None, [])

    with pytest.raises(boot.HelperError, match='mount overlay on %s' % host.path('merged-b')):
        boot.mount(specs[host.path('merged-b')], host.path('merged-b'))
    assert len(idmapped_mounts()) == 1, open('/proc/self/mountinfo').read()  # its idmapped layer went again
