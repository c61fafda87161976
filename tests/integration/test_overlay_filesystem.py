# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""overlay_filesystem through real ansible-playbook and ansible runs, real overlayfs, real loop devices."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import threading

import pytest

from ansible_collections.containerhost.overlayfs.plugins.module_utils.apply import _converge
from ansible_collections.containerhost.overlayfs.plugins.module_utils.apply._converge import ConvergeError, converge
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._mountinfo import read_mountinfo
from ansible_collections.containerhost.overlayfs.tests.helpers.host import (
    checked,
    converge_twice,
    loops_backed_under,
    make_ext4_image,
    module_params,
    mounts_under,
    relocate,
    run_command,
    snapshot,
    tree_digest,
)


def overlays(host):
    return {entry.mountpoint: entry.overlay_layers() for entry in mounts_under(host.root) if entry.fstype == 'overlay'}


# --- the seed's examples --------------------------------------------------------------------------


def test_seed_simple_overlay_mounts_and_is_idempotent(host, seed_examples):
    simple = [xml for xml in seed_examples if "type='overlay'" in xml and 'backing/' not in xml and 'nbd' not in xml]
    assert len(simple) == 1
    host.make_dirs(**{'lower1/a': 'from lower1', 'lower2/b': 'from lower2', 'lower3/c': 'from lower3'})
    result = converge_twice(host, xml=relocate(simple[0], host.root))
    assert overlays(host) == {host.path('merged'): (
        [host.path('lower1'), host.path('lower2'), host.path('lower3')], host.path('upper'), host.path('work'))}
    assert sorted(os.listdir(host.path('merged'))) == ['a', 'b', 'c']
    assert '<source dir="%s"/>' % host.path('upper') in result['xml']


def test_seed_nested_overlay_mounts_inner_at_its_own_target_first(host, seed_examples):
    nested = [xml for xml in seed_examples if "backingStore type='overlay'" in xml]
    assert len(nested) == 1
    host.make_dirs(**{'backing/lower1/x': '1', 'backing/lower2/y': '2', 'lower2/z': '3', 'lower3/w': '4'})
    result = converge_twice(host, xml=relocate(nested[0], host.root))
    mounted = overlays(host)
    assert mounted[host.path('backing/merged')][0] == [host.path('backing/lower1'), host.path('backing/lower2')]
    assert mounted[host.path('merged')][0] == [host.path('backing/merged'), host.path('lower2'), host.path('lower3')]
    mount_steps = [step['target'] for step in result['steps'] if step['action'] == 'mount']
    assert mount_steps == [host.path('backing/merged'), host.path('merged')]
    assert sorted(os.listdir(host.path('merged'))) == ['w', 'x', 'y', 'z']


def test_seed_qcow2_example_on_a_kernel_without_nbd_fails_naming_module_and_kernel(host, seed_examples):
    qcow2 = [xml for xml in seed_examples if "type='overlay'" in xml and 'nbd' in xml]
    assert len(qcow2) == 1
    if os.path.isdir('/sys/module/nbd') or os.path.exists('/sys/block/nbd0'):
        pytest.skip('this kernel has nbd: the VM tests cover it')
    host.write('guest.img', 'never read: the module is missing first')
    before = sorted(os.listdir(host.root))
    result = host.play(xml=relocate(qcow2[0], host.root))
    assert result['failed']
    assert 'could not load the nbd kernel module on kernel %s' % os.uname().release in result['msg']
    assert 'driver fuse needs no kernel module' in result['msg']
    assert sorted(os.listdir(host.root)) == before  # the directory made for the layer was removed again


def test_seed_bind_examples_mount_host_dirs(host, seed_examples):
    binds = [xml for xml in seed_examples if "type='mount'" in xml or "type='bind'" in xml]
    assert len(binds) == 2
    host.make_dirs(**{'path/on/host/f': 'host', 'path/in/container/g': 'container'})
    for xml in binds:
        converge_twice(host, xml=relocate(xml, host.root))
    assert os.listdir(host.path('path/in/container')) == ['f']
    assert os.listdir(host.path('other/path/in/container')) == ['f']


def test_seed_block_example_mounts_a_block_device(host, seed_examples):
    block = [xml for xml in seed_examples if "type='block'" in xml]
    assert len(block) == 1
    image = make_ext4_image(host, 'disk.img', {'hello': 'block'})
    device = checked(['losetup', '--find', '--show', image]).stdout.strip()
    rdev = os.stat(device).st_rdev
    os.makedirs(host.path('dev'))
    os.mknod(host.path('dev/sdb1'), 0o600 | 0o060000, rdev)  # S_IFBLK: the seed's /dev/sdb1, relocated
    converge_twice(host, xml=relocate(block[0], host.root))
    with open(host.path('path/in/container/hello')) as handle:
        assert handle.read() == 'block'


# --- image and block lowers --------------------------------------------------------------------


def raw_image_tree(host, image):
    return {
        'upper': host.path('upper'), 'work': host.path('work'), 'target': host.path('merged'),
        'lower': [{'type': 'file', 'source': image, 'format': 'raw', 'target': host.path('img')},
                  host.path('base')],
    }


def test_raw_image_lower_is_attached_read_only_once_and_detached_on_unmount(host):
    image = make_ext4_image(host, 'tools.img', {'tool': 'from image'})
    host.make_dirs(**{'base/b': 'base'})
    tree = raw_image_tree(host, image)
    converge_twice(host, filesystem=tree)
    devices = loops_backed_under(host.root)
    assert len(devices) == 1
    with open('/sys/block/%s/ro' % os.path.basename(devices[0])) as handle:
        assert handle.read().strip() == '1'
    assert sorted(os.listdir(host.path('merged'))) == ['b', 'lost+found', 'tool']
    result = host.play(filesystem=tree, state='unmounted')
    assert result['changed'] and not result.get('failed'), result.get('msg')
    assert [step['action'] for step in result['steps']] == ['unmount', 'unmount', 'detach_loop']
    assert mounts_under(host.root) == []
    assert loops_backed_under(host.root) == []


def test_block_device_lower_mounts_read_only(host):
    image = make_ext4_image(host, 'sdb1.img', {'data': 'on a disk'})
    device = checked(['losetup', '--find', '--show', image]).stdout.strip()
    host.make_dirs('base')
    tree = {'upper': host.path('upper'), 'work': host.path('work'), 'target': host.path('merged'),
            'lower': [{'type': 'block', 'source': device, 'target': host.path('disk')}, host.path('base')]}
    converge_twice(host, filesystem=tree)
    disk = [entry for entry in mounts_under(host.root) if entry.mountpoint == host.path('disk')]
    assert disk[0].readonly and disk[0].fstype == 'ext4'
    host.play(filesystem=tree, state='unmounted')
    assert mounts_under(host.root) == []
    assert loops_backed_under(host.root) == [device]  # not ours to detach


# --- unmount, data, drift, check mode ------------------------------------------------------------


def nested_tree(host):
    return {
        'upper': host.path('upper'), 'work': host.path('work'), 'target': host.path('merged'),
        'lower': [{'type': 'overlay', 'upper': host.path('inner/upper'), 'work': host.path('inner/work'),
                   'lower': [host.path('base')], 'target': host.path('inner/merged')},
                  host.path('extra')],
    }


def test_unmounted_removes_every_mount_and_keeps_upper_data_byte_identical(host):
    host.make_dirs(**{'base/etc/os-release': 'base', 'extra/opt/x': 'extra'})
    tree = nested_tree(host)
    converge_twice(host, filesystem=tree)
    host.write('merged/etc/os-release', 'changed in the container')
    host.write('merged/new file\nwith newline', 'new')
    os.remove(host.path('merged/opt/x'))
    digest = tree_digest(host.path('upper'))
    result = host.play(filesystem=tree, state='unmounted')
    assert [step['target'] for step in result['steps']] == [host.path('merged'), host.path('inner/merged')]
    assert mounts_under(host.root) == []
    assert tree_digest(host.path('upper')) == digest
    assert host.play(filesystem=tree, state='unmounted')['changed'] is False


def test_drift_is_refused_showing_both_then_replaced_when_asked(host):
    host.make_dirs('base', 'other', 'extra', 'merged')
    checked(['mount', '-t', 'overlay', 'overlay', '-o', 'lowerdir=%s:%s' % (host.path('other'), host.path('extra')),
             host.path('merged')])
    tree = {'lower': [host.path('base'), host.path('extra')], 'target': host.path('merged')}
    before = snapshot(host)
    refused = host.play(filesystem=tree)
    assert refused['failed']
    assert 'drift' in refused['msg'] and host.path('other') in refused['msg'] and host.path('base') in refused['msg']
    assert snapshot(host) == before
    replaced = host.play(filesystem=tree, on_drift='replace')
    assert replaced['changed'] and [step['action'] for step in replaced['steps']] == ['unmount', 'mount']
    assert overlays(host)[host.path('merged')][0] == [host.path('base'), host.path('extra')]


def test_check_mode_reports_the_plan_and_changes_nothing(host):
    host.make_dirs('base', 'extra')
    tree = nested_tree(host)
    before = sorted(os.listdir(host.root))
    result = host.play(filesystem=tree, check=True, diff=True)
    assert result['changed'] is True
    assert result['plan'][-1].startswith('mount overlay on %s' % host.path('merged'))
    assert 'not mounted' in result['diff']['before'] and 'as planned' in result['diff']['after']
    assert mounts_under(host.root) == [] and sorted(os.listdir(host.root)) == before


def test_diff_mode_shows_the_mount_state_before_and_after(host):
    host.make_dirs('base', 'extra')
    result = host.play(filesystem={'lower': [host.path('base'), host.path('extra')], 'target': host.path('m')},
                       diff=True)
    assert result['diff']['before'] == '%s: not mounted\n' % host.path('m')
    # no upper dir: the kernel makes the superblock read-only
    assert result['diff']['after'].startswith('%s: nodev overlay from overlay (ro,lowerdir=%s:'
                                              % (host.path('m'), host.path('base')))


def test_report_changed_and_summary_hold_only_the_trees_that_change(host):
    host.make_dirs('base')
    trees = [{'upper': host.path(name, 'upper'), 'work': host.path(name, 'work'), 'lower': [host.path('base')],
              'target': host.path(name, 'rootfs')} for name in ('a', 'b', 'c')]
    assert not host.play(filesystems=trees[:2]).get('failed')
    changed = host.play(filesystems=trees, report='changed', check=True)
    assert changed['summary'] == {'filesystems': 3, 'changed': 1, 'steps': len(changed['plan'])}
    assert [tree['target'] for tree in changed['filesystems']] == [host.path('c', 'rootfs')]
    assert changed['mounts'] == [] and changed['xml'].count('<filesystem ') == 1, changed
    summary = host.play(filesystems=trees, report='summary', diff=True)
    assert summary['changed'] is True and summary['summary'] == changed['summary']
    assert not set(summary) & {'plan', 'steps', 'filesystems', 'xml', 'mounts'}, sorted(summary)
    assert summary['diff']['before'] == '%s: not mounted\n' % host.path('c', 'rootfs')
    again = host.play(filesystems=trees, report='changed')
    assert (again['changed'], again['summary']['changed'], again['filesystems'], again['mounts']) == (False, 0, [], [])


def test_a_six_deep_tree_mounts_flattened_reads_as_nested_reruns_unchanged_and_unmounts(host):
    """Level i: upper uI, lowers [level i+1, dI]; dI holds fI. The deepest dir holds common, hidden and opaque/deep;
    the upper of level 3, flattened into the levels above it, overrides common, whites out hidden and makes opaque
    opaque with a file of its own: the top view must show what the nested tree would."""
    depth = 6
    for level in range(depth):
        host.make_dirs(**{'d%d/f%d' % (level, level): 'level %d' % level})
    host.make_dirs(**{'d5/common': 'from d5', 'd5/hidden': 'hidden', 'd5/opaque/deep': 'deep',
                      'u3/common': 'from u3', 'u3/opaque/shallow': 'shallow'})
    os.mknod(host.path('u3', 'hidden'), 0o600 | stat.S_IFCHR, os.makedev(0, 0))  # a whiteout
    os.setxattr(host.path('u3', 'opaque'), 'trusted.overlay.opaque', b'y')
    tree = {'type': 'overlay', 'upper': host.path('u5'), 'work': host.path('w5'), 'lower': [host.path('d5')],
            'target': host.path('t5')}
    for level in reversed(range(depth - 1)):
        tree = {'type': 'overlay', 'upper': host.path('u%d' % level), 'work': host.path('w%d' % level),
                'lower': [tree, host.path('d%d' % level)], 'target': host.path('t%d' % level)}
    del tree['type']
    result = converge_twice(host, filesystem=tree)
    flattened = [step['description'] for step in result['steps'] if step.get('flattened')]
    assert len(flattened) == 4 and 'with the layers of filesystem.lower[0] in their place' in flattened[-1], flattened
    assert sorted(overlays(host)) == sorted(host.path('t%d' % level) for level in range(depth))
    assert overlays(host)[host.path('t0')][0] == [host.path('u%d' % level) for level in (1, 2, 3, 4)] + [
        host.path('t5')] + [host.path('d%d' % level) for level in (4, 3, 2, 1, 0)]
    top = host.path('t0')
    assert sorted(os.listdir(top)) == ['common', 'f0', 'f1', 'f2', 'f3', 'f4', 'f5', 'opaque']
    with open(os.path.join(top, 'common')) as handle:
        assert handle.read() == 'from u3'
    assert os.listdir(os.path.join(top, 'opaque')) == ['shallow']
    assert sorted(os.listdir(host.path('t4'))) == ['common', 'f4', 'f5', 'hidden', 'opaque']  # below level 3
    unmounted = host.play(filesystem=tree, state='unmounted')
    assert not unmounted.get('failed'), unmounted.get('msg')
    assert mounts_under(host.root) == [] and os.listdir(host.path('u3', 'opaque')) == ['shallow']


def test_without_flatten_a_six_deep_tree_is_refused_before_any_change(host):
    tree = {'lower': [host.path('d')], 'target': host.path('t3'), 'type': 'overlay'}
    for level in (2, 1, 0):
        tree = {'type': 'overlay', 'lower': [tree, host.path('d')], 'target': host.path('t%d' % level)}
    del tree['type']
    result = host.play(filesystem=tree, flatten=False)
    assert result.get('failed') and 'overlays nest at most 2 deep' in result['msg'], result
    assert mounts_under(host.root) == []


# --- paths are data -----------------------------------------------------------------------------


HOSTILE_NAMES = ['comma,upperdir=evil', 'colon:lower', 'back\\slash', 'equals=sign', "quote'single",
                 'quote"double', 'space here', 'tab\there', 'newline\nhere']


def test_hostile_paths_mount_exactly_and_add_no_option(host):
    lowers = []
    for index, name in enumerate(HOSTILE_NAMES):
        host.write(os.path.join(name, 'f%d' % index), name)
        lowers.append(host.path(name))
    os.makedirs(host.path('evil'))
    tree = {'upper': host.path('up,per:x'), 'work': host.path('wo rk'), 'lower': lowers,
            'target': host.path('mer\nged')}
    converge_twice(host, filesystem=tree)
    assert overlays(host)[host.path('mer\nged')] == (lowers, host.path('up,per:x'), host.path('wo rk'))
    assert sorted(os.listdir(host.path('mer\nged'))) == sorted('f%d' % i for i in range(len(HOSTILE_NAMES)))
    assert os.listdir(host.path('evil')) == []


def test_paths_that_cannot_be_data_are_refused_by_name(host):
    result = host.play(filesystem={'lower': ['relative/path', '/abs'], 'target': host.path('m')})
    assert result['failed'] and 'filesystem.lower[0]' in result['msg'] and 'absolute' in result['msg']


# --- failures, batches, concurrency --------------------------------------------------------------


def test_a_kernel_failure_half_way_undoes_the_run_and_names_the_step(host):
    host.make_dirs('l1', 'l2', 'u', 'w', 'a', 'b')
    reused = {'upper': host.path('u'), 'work': host.path('w'), 'target': host.path('m'), 'options': {'index': True}}
    converge_twice(host, filesystem=dict(reused, lower=[host.path('l1')]))
    host.play(filesystem=dict(reused, lower=[host.path('l1')]), state='unmounted')
    batch = [
        {'lower': [host.path('a'), host.path('b')], 'target': host.path('fresh/first')},
        dict(reused, lower=[host.path('l2')]),  # index=on remembers l1: the kernel says ESTALE
    ]
    result = host.play(filesystems=batch)
    assert result['failed']
    assert 'step 3 of 3' in result['msg'] and 'Stale file handle' in result['msg']
    assert 'failed to verify upper root origin' in result['msg']  # the kernel's own words
    assert mounts_under(host.root) == []
    assert not os.path.exists(host.path('fresh'))


def test_batch_mounts_dependencies_first_whatever_the_order(host):
    host.make_dirs(**{'base/a': '1', 'extra/b': '2', 'more/c': '3'})
    shared = {'lower': [host.path('base'), host.path('extra')], 'target': host.path('shared')}
    containers = [{'upper': host.path('ct%d/upper' % n), 'work': host.path('ct%d/work' % n),
                   'lower': [host.path('shared'), host.path('more')], 'target': host.path('ct%d/rootfs' % n)}
                  for n in range(3)]
    result = converge_twice(host, filesystems=containers + [shared])
    mount_targets = [step['target'] for step in result['steps'] if step['action'] == 'mount']
    assert mount_targets[0] == host.path('shared')
    assert [fs['target'] for fs in result['filesystems']] == [c['target'] for c in containers] + [shared['target']]
    for n in range(3):
        assert sorted(os.listdir(host.path('ct%d/rootfs' % n))) == ['a', 'b', 'c']


def test_concurrent_runs_serialize_and_mount_once(host):
    host.make_dirs('base', 'extra')
    tree = {'upper': host.path('u'), 'work': host.path('w'), 'lower': [host.path('base'), host.path('extra')],
            'target': host.path('m'), 'options': {'index': False}}
    results = []
    threads = [threading.Thread(target=lambda: results.append(host.play(filesystem=tree))) for run in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(result['changed'] for result in results) == [False, True]
    assert [entry.mountpoint for entry in mounts_under(host.root)] == [host.path('m')]


# --- options, read-only, ad hoc ------------------------------------------------------------------


def test_overlay_options_are_applied_and_compared_semantically(host):
    host.make_dirs('base', 'extra')
    tree = {'upper': host.path('u'), 'work': host.path('w'), 'lower': [host.path('base'), host.path('extra')],
            'target': host.path('m'), 'options': {'index': False, 'redirect_dir': 'nofollow', 'xino': 'off'}}
    converge_twice(host, filesystem=tree)
    refused = host.play(filesystem=dict(tree, options={'metacopy': True, 'redirect_dir': 'off'}, target=host.path('n')))
    assert refused['failed'] and 'conflicting options' in refused['msg'] and 'redirect_dir=off' in refused['msg']
    assert not os.path.exists(host.path('n'))


def test_readonly_overlay_and_readonly_bind(host):
    host.make_dirs('base', 'extra', 'data')
    converge_twice(host, filesystems=[
        {'lower': [host.path('base'), host.path('extra')], 'target': host.path('ro-overlay'), 'readonly': True},
        {'type': 'mount', 'source': host.path('data'), 'target': host.path('ro-bind'), 'readonly': True},
    ])
    readonly = {entry.mountpoint: entry.readonly for entry in mounts_under(host.root)}
    assert readonly == {host.path('ro-overlay'): True, host.path('ro-bind'): True}


def test_mount_flags_are_set_read_back_and_changed_in_place(host):
    """nodev by default; nosuid and noexec when asked; a tree mounted without its flags (by hand, or by a release
    before mount flags) gets them in place, on the same mount."""
    host.make_dirs('base', 'extra', 'data')
    os.mknod(host.path('base/null'), stat.S_IFCHR | 0o666, os.makedev(1, 3))
    shutil.copy('/bin/true', host.path('data/true'))
    overlay = {'upper': host.path('u'), 'work': host.path('w'), 'lower': [host.path('base'), host.path('extra')],
               'target': host.path('m')}
    bind = {'type': 'mount', 'source': host.path('data'), 'target': host.path('b'), 'mount_flags': ['nosuid', 'noexec']}
    converge_twice(host, filesystems=[overlay, bind])
    flags = {entry.mountpoint: entry.mount_flags for entry in mounts_under(host.root)}
    assert flags == {host.path('m'): ('nodev',), host.path('b'): ('nosuid', 'noexec')}
    with open(host.path('base/null'), 'wb'):
        pass  # the control: the device node is a device where no mount says nodev
    with pytest.raises(PermissionError):
        open(host.path('m/null'), 'wb')
    checked([host.path('data/true')])
    with pytest.raises(PermissionError):
        subprocess.run([host.path('b/true')], check=False)

    # flags beyond those asked stay: mount_flags [] takes nothing away
    assert host.play(filesystems=[dict(overlay, mount_flags=[]), bind])['plan'] == []

    # mounted by hand (or by a release before mount flags), without nodev: added in place, on the same mount
    host.make_dirs('u2', 'w2', 'n')
    checked(['mount', '-t', 'overlay', 'by-hand', '-o', 'lowerdir=%s:%s,upperdir=%s,workdir=%s' % (
        host.path('base'), host.path('extra'), host.path('u2'), host.path('w2')), host.path('n')])
    by_hand = {'upper': host.path('u2'), 'work': host.path('w2'), 'lower': overlay['lower'], 'target': host.path('n')}
    (before,) = [entry.mount_id for entry in mounts_under(host.root) if entry.mountpoint == host.path('n')]
    predicted = host.play(filesystem=by_hand, check=True, diff=True)
    assert predicted['diff']['before'].startswith('%s: overlay from by-hand (' % host.path('n'))
    assert predicted['diff']['after'] == '%s: as planned: add nodev to the mount %s, in place\n' % (
        host.path('n'), host.path('n'))
    changed = converge_twice(host, filesystem=by_hand)
    assert [(one['action'], one['target'], one['add'], one['remove']) for one in changed['steps']] == [
        ('set_mount_flags', host.path('n'), ['nodev'], [])]
    (after,) = [entry for entry in mounts_under(host.root) if entry.mountpoint == host.path('n')]
    assert (after.mount_id, after.mount_flags) == (before, ('nodev',))
    with pytest.raises(PermissionError):
        open(host.path('n/null'), 'wb')


def test_a_bind_keeps_the_flags_of_the_mount_it_binds(host):
    """A bind of a nosuid, nodev mount (as /home or /tmp may be) stays nosuid and nodev, read-only or not, whatever
    mount_flags asks: nothing here takes a restriction away."""
    host.make_dirs('src', 'plain')
    checked(['mount', '-t', 'tmpfs', '-o', 'nosuid,nodev', 'restricted', host.path('src')])
    binds = [{'type': 'mount', 'source': host.path('src'), 'target': host.path('ro'), 'readonly': True,
              'mount_flags': []},
             {'type': 'mount', 'source': host.path('src'), 'target': host.path('rw'), 'mount_flags': ['noexec']},
             {'type': 'mount', 'source': host.path('plain'), 'target': host.path('plain-bind'), 'mount_flags': []}]
    converge_twice(host, filesystems=binds)
    shown = {entry.mountpoint: (entry.readonly, entry.mount_flags) for entry in mounts_under(host.root)}
    assert shown[host.path('ro')] == (True, ('nodev', 'nosuid'))
    assert shown[host.path('rw')] == (False, ('nodev', 'nosuid', 'noexec'))
    (scratch,) = [entry for entry in read_mountinfo() if entry.mountpoint == host.root]
    assert shown[host.path('plain-bind')][1] == scratch.mount_flags  # the control: as the mount it binds


def test_adhoc_xml_twice(host):
    host.make_dirs('l1', 'l2')
    xml = ("<filesystem type='overlay'><source dir='{0}/u'/><source dir='{0}/w'/>"
           "<backingStore type='dir'><target dir='{0}/l1'/></backingStore>"
           "<backingStore type='dir'><target dir='{0}/l2'/></backingStore>"
           "<target dir='{0}/m'/></filesystem>").format(host.root)
    rc, first = host.adhoc('xml="%s"' % xml)
    assert rc == 0 and first['changed'] is True
    rc, second = host.adhoc('xml="%s"' % xml)
    assert rc == 0 and second['changed'] is False and second['plan'] == []


def test_adhoc_hostile_xml_is_refused(host):
    xml = ('<!DOCTYPE f [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
           "<filesystem type='overlay'><target dir='&x;'/></filesystem>")
    rc, result = host.adhoc("xml='%s'" % xml)
    assert rc != 0 and 'DTD' in result['msg']


def test_500_layers_beyond_one_page_of_mount_data_mount_and_501_are_refused(host):
    lowers = []
    for index in range(500):
        name = 'layers/layer-%03d, with:odd\\chars' % index  # every layer needs escaping in a mount(2) string
        host.write(os.path.join(name, 'f%03d' % index), '')
        lowers.append(host.path(name))
    tree = {'upper': host.path('u'), 'work': host.path('w'), 'lower': lowers, 'target': host.path('m')}
    converge_twice(host, filesystem=tree)
    assert overlays(host)[host.path('m')] == (lowers, host.path('u'), host.path('w'))
    assert len(os.listdir(host.path('m'))) == 500
    refused = host.play(filesystem=dict(tree, lower=lowers + [host.path('one-more')], target=host.path('n')))
    assert refused['failed'] and 'at most 500' in refused['msg']


def test_a_mount_point_under_another_trees_target_is_mounted_after_it(host):
    host.make_dirs('base', 'extra', 'shared-data')
    batch = [
        {'type': 'mount', 'source': host.path('shared-data'), 'target': host.path('ct1/rootfs/mnt')},
        {'upper': host.path('ct1/upper'), 'work': host.path('ct1/work'), 'lower': [host.path('base')],
         'target': host.path('ct1/rootfs')},
    ]
    result = converge_twice(host, filesystems=batch)
    assert [step['target'] for step in result['steps'] if step['action'] == 'mount'] == [
        host.path('ct1/rootfs'), host.path('ct1/rootfs/mnt')]
    teardown = host.play(filesystems=batch, state='unmounted')
    assert [step['target'] for step in teardown['steps']] == [host.path('ct1/rootfs/mnt'), host.path('ct1/rootfs')]


def test_replacing_an_image_layer_detaches_the_old_loop_device(host):
    old = make_ext4_image(host, 'old.img', {'version': 'old'})
    new = make_ext4_image(host, 'new.img', {'version': 'new'})
    host.make_dirs('base')
    converge_twice(host, filesystem=raw_image_tree(host, old))
    refused = host.play(filesystem=raw_image_tree(host, new))
    assert refused['failed'] and 'drift' in refused['msg']
    replaced = host.play(filesystem=raw_image_tree(host, new), on_drift='replace')
    assert not replaced.get('failed'), replaced.get('msg')
    assert [step['action'] for step in replaced['steps']] == ['unmount', 'unmount', 'detach_loop', 'attach_loop',
                                                              'mount', 'mount']
    devices = checked(['losetup', '--list', '--noheadings', '--output', 'BACK-FILE']).stdout.split()
    assert new in devices and old not in devices
    with open(host.path('merged/version')) as handle:
        assert handle.read() == 'new'


def test_a_volatile_overlay_is_not_mounted_again_unless_its_mark_is_discarded(host):
    """The kernel's own mark (the dir work/work/incompat/volatile with an empty file dirty), left by a real
    volatile mount."""
    host.make_dirs('l1', 'l2', 'u', 'w')
    tree = {'upper': host.path('u'), 'work': host.path('w'), 'lower': [host.path('l1'), host.path('l2')],
            'target': host.path('m'), 'options': {'volatile': True}}
    converge_twice(host, filesystem=tree)
    host.write('m/written', 'kept')
    assert host.play(filesystem=tree, state='unmounted')['changed']
    assert os.path.isfile(host.path('w/work/incompat/volatile/dirty'))
    refused = host.play(filesystem=tree)
    assert refused['failed'] and 'holds work/incompat/volatile' in refused['msg']
    assert 'on_volatile_marker: discard' in refused['msg'] and not mounts_under(host.root)
    first = converge_twice(host, filesystem=tree, on_volatile_marker='discard')
    assert [step['action'] for step in first['steps']] == ['discard_volatile_marker', 'mount']
    with open(host.path('m/written')) as handle:
        assert handle.read() == 'kept'


def small_upper_fs_out_of_inodes(host):
    """A tmpfs for upper and work with no inode left: the kernel cannot make work/work there."""
    small = host.path('small')
    os.makedirs(small)
    checked(['mount', '-t', 'tmpfs', '-o', 'nr_inodes=16,size=1m', 'small', small])
    os.makedirs(os.path.join(small, 'upper'))
    os.makedirs(os.path.join(small, 'work'))
    for number in range(16):
        try:
            os.mkdir(os.path.join(small, 'upper', 'fill%d' % number))
        except OSError:
            break
    host.make_dirs('l1', 'l2')
    return {'upper': os.path.join(small, 'upper'), 'work': os.path.join(small, 'work'),
            'lower': [host.path('l1'), host.path('l2')], 'target': host.path('merged')}


def test_an_overlay_the_kernel_mounts_read_only_is_undone_and_reported_and_a_degraded_one_is_drift(host):
    tree = small_upper_fs_out_of_inodes(host)
    failed = host.play(filesystem=tree)
    assert failed['failed']
    message = failed['msg']
    assert 'the kernel accepted the overlay on %s but gave less than asked' % host.path('merged') in message, message
    assert 'its superblock is read-only (the kernel could not set up the work dir' in message, message
    if os.access('/dev/kmsg', os.R_OK):
        assert 'mounting read-only' in message, message  # the kernel's own line
    assert [entry.mountpoint for entry in mounts_under(host.root)] == [host.path('small')]
    assert not os.path.exists(host.path('merged'))  # this run made it, and undid it

    # the same overlay made by hand: mount(8) says nothing, the next run calls it drift
    os.makedirs(host.path('merged'))
    checked(['mount', '-t', 'overlay', 'overlay', '-o', 'lowerdir=%s:%s,upperdir=%s,workdir=%s' % (
        tree['lower'][0], tree['lower'][1], tree['upper'], tree['work']), host.path('merged')])
    refused = host.play(filesystem=tree)
    assert refused['failed'] and 'drift at' in refused['msg'], refused['msg']
    assert 'its superblock is read-only' in refused['msg'], refused['msg']


def test_an_undone_run_takes_the_work_dirs_it_made_with_what_the_kernel_put_in_them(host):
    """The nested overlay mounts (the kernel makes iw/work), the top is refused as degraded: the undo unmounts the
    nested one and removes iu/ and iw/ with it, as before the run."""
    tree = small_upper_fs_out_of_inodes(host)
    tree['lower'][0] = {'type': 'overlay', 'upper': host.path('iu'), 'work': host.path('iw'),
                        'lower': [host.path('l1'), host.path('l2')], 'target': host.path('inner')}
    failed = host.play(filesystem=tree)
    assert failed['failed'] and 'gave less than asked' in failed['msg'], failed['msg']
    assert 'Undid the' in failed['msg'], failed['msg']
    assert [name for name in ('iu', 'iw', 'inner', 'merged') if os.path.lexists(host.path(name))] == []


def test_unmounting_a_busy_tree_names_who_holds_it_and_leaves_the_tree_whole(host):
    host.make_dirs('l1', 'l2', 'inner-upper', 'inner-work', 'upper', 'work')
    inner = {'type': 'overlay', 'upper': host.path('inner-upper'), 'work': host.path('inner-work'),
             'lower': [host.path('l1'), host.path('l2')], 'target': host.path('inner')}
    tree = {'upper': host.path('upper'), 'work': host.path('work'), 'lower': [inner], 'target': host.path('merged')}
    converge_twice(host, filesystem=tree)
    before = snapshot(host)
    holder = subprocess.Popen(['sleep', '60'], cwd=host.path('inner'))  # holds the lower, not the top
    try:
        busy = host.play(filesystem=tree, state='unmounted')
    finally:
        holder.kill()
        holder.wait()
    assert busy['failed']
    assert 'unmount %s: Device or resource busy, held by pid %d (sleep)' % (host.path('inner'), holder.pid) in busy['msg']
    assert 'Undid the 1 step(s)' in busy['msg'], busy['msg']  # the top, unmounted first, is mounted again
    assert [entry[1:] for entry in snapshot(host)] == [entry[1:] for entry in before]
    assert host.play(filesystem=tree)['changed'] is False


def test_lazy_unmount_detaches_a_busy_tree_and_its_holder_still_reads_through_it(host):
    host.make_dirs('lower', 'upper', 'work')
    with open(host.path('lower', 'kept'), 'w') as handle:
        handle.write('still readable')
    tree = {'upper': host.path('upper'), 'work': host.path('work'), 'lower': [host.path('lower')],
            'target': host.path('merged')}
    converge_twice(host, filesystem=tree)
    with open(host.path('merged', 'kept')) as held:  # an open file keeps the filesystem busy
        refused = host.play(filesystem=tree, state='unmounted')
        assert refused['failed'] and 'unless lazy_unmount=true' in refused['msg'], refused['msg']
        detached = host.play(filesystem=tree, state='unmounted', lazy_unmount=True)
        assert not detached.get('failed'), detached.get('msg')
        assert detached['plan'][0].startswith('lazily unmount %s' % host.path('merged')), detached['plan']
        assert mounts_under(host.root) == [] and detached['mounts'] == []
        assert held.read() == 'still readable'
    assert host.play(filesystem=tree, state='unmounted')['changed'] is False


def test_a_symlink_planted_in_a_containers_view_carries_no_mkdir_and_no_mount_out_of_it(host, monkeypatch, tmp_path):
    host.make_dirs('base/etc', 'outside', 'b-lower', 'b-upper', 'b-work')
    host.write('b-lower/from-b', 'b')
    container = {'upper': host.path('upper'), 'work': host.path('work'), 'lower': [host.path('base')],
                 'target': host.path('merged')}
    converge_twice(host, filesystem=container)
    merged = host.path('merged')
    os.symlink(host.path('outside'), os.path.join(merged, 'etc', 'x'))  # the container plants etc/x -> the host

    def inside(name):
        return {'upper': host.path('b-upper'), 'work': host.path('b-work'), 'lower': [host.path('b-lower')],
                'target': os.path.join(merged, 'etc', name, 'sub')}
    refused = host.play(filesystems=[container, inside('x')])
    assert refused['failed']
    assert ('target %s/etc/x/sub: %s/etc/x is a symlink (to %s) inside the merged view of the overlay at %s; '
            'symlinks there are not followed' % (merged, merged, host.path('outside'), merged)) in refused['msg']
    assert os.listdir(host.path('outside')) == []

    # one with no symlink mounts inside the view, re-runs unchanged, and unmounts
    converge_twice(host, filesystems=[container, inside('fine')])
    with open(os.path.join(merged, 'etc', 'fine', 'sub', 'from-b')) as handle:
        assert handle.read() == 'b'
    assert not host.play(filesystem=inside('fine'), state='unmounted').get('failed')

    # a symlink swapped in after the plan was made: neither the mkdir nor the mount follows it
    host.make_dirs('outside/sub')  # where a followed mount would land
    for name, made in (('raced', True), ('raced-existing', False)):
        os.makedirs(os.path.join(merged, 'etc', name, 'sub'))
        if made:
            os.rmdir(os.path.join(merged, 'etc', name, 'sub'))

        def plan_then_swap(*args, name=name):
            steps = real_plan(*args)
            os.rename(os.path.join(merged, 'etc', name), os.path.join(merged, 'etc', name + '.old'))
            os.symlink(host.path('outside'), os.path.join(merged, 'etc', name))
            return steps
        real_plan = _converge.plan
        monkeypatch.setattr(_converge, 'plan', plan_then_swap)
        with pytest.raises(ConvergeError) as raced:
            converge(module_params(filesystem=inside(name)), run_command, False, lock_path=str(tmp_path / 'lock'))
        monkeypatch.undo()
        assert raced.value.args[0].startswith('step 1 of %d (%s' % (2 if made else 1, 'create' if made else 'mount'))
        assert ('failed: %s/etc/%s' % (merged, name)) in str(raced.value), str(raced.value)
        assert ('is reached through a symlink inside %s, which is not followed there' % merged) in str(raced.value)
        assert os.listdir(host.path('outside')) == ['sub'] and os.listdir(host.path('outside', 'sub')) == []
        assert [entry.mountpoint for entry in mounts_under(host.root)] == [merged]


def test_a_yaml_tree_needs_no_lxml_on_the_controller(host, tmp_path):
    """lxml is needed for xml only: on a controller without it a YAML tree mounts (the result has no xml), and
    xml input is refused naming the library."""
    (tmp_path / 'lxml').mkdir()
    (tmp_path / 'lxml' / '__init__.py').write_text("raise ImportError('lxml is not installed here')\n")
    without_lxml = {'PYTHONPATH': '%s:%s' % (tmp_path, os.environ.get('PYTHONPATH', ''))}
    host.make_dirs('base', 'upper', 'work')
    tree = {'upper': host.path('upper'), 'work': host.path('work'), 'lower': [host.path('base')],
            'target': host.path('m')}
    result = host.play(filesystem=tree, env=without_lxml)
    assert not result.get('failed') and result['changed'] is True, result
    assert 'xml' not in result and result['filesystems'] == [dict(tree, type='overlay')]
    assert list(overlays(host)) == [host.path('m')]
    refused = host.play(xml="<filesystem type='mount'><source dir='/s'/><target dir='/t'/></filesystem>",
                        env=without_lxml)
    assert refused['failed'] and 'the lxml Python library is required on the controller' in refused['msg']
