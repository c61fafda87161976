# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Attacks through a container's view, planted for real, at run time and at boot.

A container controls its merged view and its upper dir: it plants a symlink there to something of the host's, and
a tree that names a path through it must not reach the host. Each attack runs beside a control: the same tree with
the same link in a dir only root can change, which the module follows, so the host's dir, device or image is what
the attacked path would have reached.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import pytest

from ansible_collections.containerhost.overlayfs.plugins.module_utils.apply import _converge
from ansible_collections.containerhost.overlayfs.plugins.module_utils.boot import _boot as boot
from ansible_collections.containerhost.overlayfs.plugins.module_utils.steps import _steps as steps
from ansible_collections.containerhost.overlayfs.plugins.module_utils.apply._converge import ConvergeError, converge
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._options import volatile_marker
from ansible_collections.containerhost.overlayfs.plugins.plugin_utils._persistence import helper_sources, render, spec_file
from ansible_collections.containerhost.overlayfs.tests.helpers.host import (
    checked,
    converge_twice,
    loops_backed_under,
    make_ext4_image,
    make_qcow2,
    module_params,
    mounts_under,
    quietly,
    run_command,
)

SECRET = 'the host\'s own\n'


@pytest.fixture
def container(host):
    """A container's overlay, mounted: its merged view and upper dir are the container's to shape."""
    host.make_dirs('ct/base', 'ct/upper', 'ct/work', 'ct/merged', 'trusted', 'host/secret')
    host.write('host/secret/secret', SECRET)
    checked(['mount', '-t', 'overlay', 'container', '-o', 'lowerdir=%s,upperdir=%s,workdir=%s'
             % (host.path('ct/base'), host.path('ct/upper'), host.path('ct/work')), host.path('ct/merged')])
    return host.path('ct/merged')


def plant(directory, name, points_to):
    os.symlink(points_to, os.path.join(directory, name))
    return os.path.join(directory, name)


def overlay_over(host, lower):
    return {'upper': host.path('v/upper'), 'work': host.path('v/work'), 'target': host.path('v/merged'),
            'lower': [lower]}


def secret_image(host):
    return make_ext4_image(host, 'host/secret.img', {'secret': SECRET})


def attached_device(host, image):
    """A loop device of the host's own on ``image`` (a link to it in a view must not make it a container's)."""
    return checked(['losetup', '--find', '--show', '--read-only', image]).stdout.strip()


# name -> (what the host has, the tree over a path that leads to it)
ATTACKS = {
    'lower dir': (lambda host: host.path('host/secret'), overlay_over),
    'bind source': (lambda host: host.path('host/secret'),
                    lambda host, path: {'type': 'mount', 'source': path, 'target': host.path('v/merged')}),
    'block device': (lambda host: attached_device(host, secret_image(host)),
                     lambda host, path: {'type': 'block', 'source': path, 'target': host.path('v/merged'),
                                         'readonly': True}),
    'image, loop': (secret_image, lambda host, path: overlay_over(host, {
        'type': 'file', 'source': path, 'format': 'raw', 'target': host.path('v/img')})),
    'image, fuse': (lambda host: make_qcow2(host, 'host/secret.qcow2', {'secret': SECRET}),
                    lambda host, path: overlay_over(host, {'type': 'file', 'driver': 'fuse', 'format': 'qcow2',
                                                           'source': path, 'target': host.path('v/img')})),
    'idmapped source': (lambda host: host.path('host/secret'), lambda host, path: dict(
        overlay_over(host, path), idmap={'uid': [{'start': 0, 'target': 100000, 'count': 65536}],
                                         'gid': [{'start': 0, 'target': 100000, 'count': 65536}]})),
}
ROLES = {'lower dir': 'lower dir', 'bind source': 'bind source', 'block device': 'source', 'image, loop': 'image',
         'image, fuse': 'image', 'idmapped source': 'lower dir'}


def shows_secret(host):
    with open(host.path('v/merged/secret')) as handle:
        return handle.read() == SECRET


def paths_under(path):
    return sorted(os.path.join(directory, name) for directory, dirs, files in os.walk(path) for name in dirs + files)


@pytest.mark.parametrize('kind', sorted(ATTACKS))
def test_a_layer_or_source_through_a_link_a_container_planted_is_refused_and_the_host_untouched(
        host, container, kind):
    host_thing, tree_of = ATTACKS[kind]
    target = host_thing(host)
    # control: the link in a dir only root can change is the host's own, and leads to the host's thing
    trusted_link = plant(host.path('trusted'), 'link', os.path.dirname(target))
    control = tree_of(host, os.path.join(trusted_link, os.path.basename(target)))
    first = host.play(filesystem=control)
    assert not first.get('failed') and first['changed'], first.get('msg')
    assert shows_secret(host)
    assert not host.play(filesystem=control, state='unmounted').get('failed')
    assert mounts_under(host.path('v')) == []
    before = paths_under(host.path('v'))

    os.makedirs(os.path.join(container, 'etc'))
    parent_link = plant(os.path.join(container, 'etc'), 'x', os.path.dirname(target))
    attacks = [  # (the path the tree names, the link, who controls the dir it is in)
        (plant(container, 'evil', target), 'merged view'),
        (plant(host.path('ct/upper'), 'evil-in-upper', target), 'upper dir'),
        (os.path.join(parent_link, os.path.basename(target)), 'merged view'),
    ]
    for path, view in attacks:
        link = parent_link if path.startswith(parent_link + '/') else path
        refused = host.play(filesystem=tree_of(host, path))
        assert refused['failed'], refused
        assert ('%s %s: %s is a symlink (to %s) inside the %s of the overlay at %s; symlinks there are not followed'
                % (ROLES[kind], path, link, os.readlink(link), view, container)) in refused['msg'], refused['msg']
        assert mounts_under(host.path('v')) == [] and paths_under(host.path('v')) == before


def test_a_tree_whose_lower_is_swapped_for_a_link_between_runs_is_refused_even_with_on_drift_replace(host, container):
    os.makedirs(os.path.join(container, 'layer'))
    tree = overlay_over(host, os.path.join(container, 'layer'))
    converge_twice(host, filesystem=tree)
    os.rename(os.path.join(container, 'layer'), os.path.join(container, 'layer.old'))
    link = plant(container, 'layer', host.path('host/secret'))
    refused = host.play(filesystem=tree, on_drift='replace')
    assert refused['failed'] and ('lower dir %s: %s is a symlink (to %s)' % (link, link, host.path('host/secret'))
                                  in refused['msg']), refused['msg']
    assert not os.path.exists(host.path('v/merged/secret'))


def test_a_work_entry_turned_into_a_link_makes_no_volatile_marker_discard_reach_the_host(host, container):
    """on_volatile_marker: discard removes the kernel's marker in the work dir; a container that can change the work
    dir links its work entry to a host dir that holds one: nothing there goes."""
    host.make_dirs('host/state/work/incompat/volatile', 'v/upper', 'v/work',
                   **{'host/state/work/incompat/volatile/dirty': ''})
    plant(host.path('v/work'), 'work', host.path('host/state/work'))
    assert os.path.isdir(volatile_marker(host.path('v/work')))  # control: a check that follows links sees one
    tree = {'upper': host.path('v/upper'), 'work': host.path('v/work'), 'target': host.path('v/merged'),
            'lower': [host.path('host/secret')]}
    result = host.play(filesystem=tree, on_volatile_marker='discard')
    assert not result.get('failed'), result.get('msg')
    assert 'discard_volatile_marker' not in [one['action'] for one in result['steps']], result['plan']
    assert os.listdir(host.path('host/state/work/incompat/volatile')) == ['dirty']


def test_unmounting_a_tree_whose_image_became_a_link_leaves_the_hosts_loop_device_attached(host, container):
    image = make_ext4_image(host, 'ct/merged/img.raw', {'file': 'the container\'s\n'})
    host_image = secret_image(host)
    host_device = attached_device(host, host_image)
    tree = overlay_over(host, {'type': 'file', 'source': image, 'format': 'raw', 'target': host.path('v/img')})
    converge_twice(host, filesystem=tree)
    os.rename(image, image + '.old')
    plant(container, 'img.raw', host_image)
    # control: what a match by realpath finds, a free loop device on where the link points, is the host's
    assert os.path.realpath(image) == host_image and host_device in loops_backed_under(host_image)
    # the kernel shows the renamed image behind the tree's loop device: drift, unmounted as asked with replace
    done = host.play(filesystem=tree, state='unmounted', on_drift='replace')
    assert not done.get('failed'), done.get('msg')
    assert host_device in loops_backed_under(host_image), done['plan']
    assert mounts_under(host.path('v')) == []
    quietly(['losetup', '--detach', host_device])


def test_the_boot_helper_refuses_a_spec_through_a_link_a_container_planted(host, container):
    """Run as mount(8) runs it at the next boot: the message names the link, and nothing is mounted."""
    link = plant(container, 'evil', host.path('host/secret'))
    host.make_dirs('v/upper', 'v/work', 'v/merged')
    spec = host.path('spec')
    host.write('spec', boot.spec_text('# test', {
        'target': host.path('v/merged'), 'lowers': [link], 'upper': host.path('v/upper'),
        'work': host.path('v/work'), 'options': {}, 'readonly': False, 'mount_flags': ['nodev'],
        'on_volatile_marker': 'fail', 'idmapped': [], 'views': {}}))
    with pytest.raises(boot.HelperError) as refused:
        boot.mount(spec, host.path('v/merged'))
    assert str(refused.value) == (
        'not mounting %s: lower dir %s: %s is a symlink (to %s) inside the merged view of the overlay at %s; '
        'symlinks there are not followed' % (host.path('v/merged'), link, link, host.path('host/secret'), container))
    assert mounts_under(host.path('v')) == []


def test_the_boot_nbd_service_refuses_an_image_through_a_link_and_serves_one_in_a_view_from_the_file_pinned(
        host, container, capsys):
    """The nbd service's start at boot, as systemd runs it: qemu-nbd gets no image through a container's link; one
    in a container's view only as the file pinned, opened without a backing file. The control: the same link in a
    dir only root can change reaches the host's image, by name."""
    image = make_qcow2(host, 'host/secret.qcow2', {'secret': SECRET})
    commands = []

    def serve(argv):
        commands.append(argv)
        return 0, '', ''

    def start(path):
        return boot.main([boot.NBD_HELPER, 'start', '/dev/nbd7', host.path('nbd.pid'), path, 'qcow2', '--read-only'],
                         serve)

    assert start(plant(host.path('trusted'), 'image.qcow2', image)) == 0  # the control
    assert commands.pop()[-2:] == ['--', image]  # the link followed: the host's own image
    link = plant(container, 'image.qcow2', image)
    assert (start(link), commands) == (boot.EX_FAIL, [])
    assert ('containerhost-overlayfs-nbd: not serving %s: image %s: %s is a symlink (to %s) inside the merged view '
            'of the overlay at %s' % (link, link, link, image, container)) in capsys.readouterr().err
    inside = os.path.join(container, 'inner.qcow2')
    shutil.copy(image, inside)
    assert start(inside) == 0
    (argv,) = commands
    assert argv[:4] == ['qemu-nbd', '--format=qcow2', '--connect=/dev/nbd7', '--read-only'], argv
    assert argv[4:7] == ['--pid-file=' + host.path('nbd.pid'), '--description=' + inside, '--'], argv
    opened = json.loads(argv[7][len('json:'):])
    assert (opened['backing'], opened['file']['filename'].startswith('/proc/')) == (None, True), opened


def test_a_base_two_trees_share_is_never_pulled_from_under_one_nor_mounted_twice(host):
    """Two tasks, two trees over one nested base (the README's shared, nested base)."""
    host.make_dirs('image')
    host.write('image/from-base', 'base\n')
    base = {'type': 'overlay', 'upper': host.path('base/upper'), 'work': host.path('base/work'),
            'lower': [host.path('image')], 'target': host.path('base/merged')}
    trees = dict((name, {'upper': host.path(name, 'upper'), 'work': host.path(name, 'work'), 'lower': [base],
                         'target': host.path(name, 'rootfs')}) for name in ('ct1', 'ct2'))
    converge_twice(host, filesystem=trees['ct1'])
    converge_twice(host, filesystem=trees['ct2'])
    for lazy in (False, True):
        refused = host.play(filesystem=trees['ct1'], state='unmounted', lazy_unmount=lazy)
        assert refused['failed'] and ('refusing to unmount %s: the overlay mounted at %s (not in this run) stands on '
                                      'what is mounted there now' % (host.path('base/merged'), host.path('ct2/rootfs'))
                                      in refused['msg']), refused['msg']
    assert sorted(entry.mountpoint for entry in mounts_under(host.root)) == [
        host.path('base/merged'), host.path('ct1/rootfs'), host.path('ct2/rootfs')]

    # someone unmounts the base by hand: the kernel keeps it alive under ct2, with its upper and work dirs in use
    checked(['umount', host.path('ct1/rootfs')])
    checked(['umount', host.path('base/merged')])
    refused = host.play(filesystem=trees['ct1'])
    assert refused['failed'] and ('refusing to mount an overlay on %s: the overlay mounted at %s (not in this run)'
                                  % (host.path('base/merged'), host.path('ct2/rootfs')) in refused['msg'])
    assert host.play(filesystem=trees['ct2'])['failed']  # stale: its base is gone (the next run says so)
    # and mounted again by hand on the same dirs (the kernel only warns): ct2 stands on the earlier one, hidden
    checked(['mount', '-t', 'overlay', 'again', '-o', 'lowerdir=%s,upperdir=%s,workdir=%s' % (
        host.path('image'), host.path('base/upper'), host.path('base/work')), host.path('base/merged')])
    stale = host.play(filesystem=trees['ct2'])
    assert stale['failed'] and 'is mounted, but not on the layers this tree describes' in stale['msg'], stale
    replaced = host.play(filesystem=trees['ct2'], on_drift='replace')
    assert not replaced.get('failed'), replaced['msg']
    assert replaced['plan'][0].startswith('unmount %s' % host.path('ct2/rootfs')), replaced['plan']
    assert host.play(filesystem=trees['ct2'])['changed'] is False


UNCONFINED = {  # what a step carries to reach its paths by fd, taken away
    steps.MountOverlay: {'reach': ()}, steps.MountBind: {'source_beneath': None},
    steps.MountIdmapped: {'source_beneath': None}, steps.AttachLoop: {'image_beneath': None},
    steps.StartExport: {'image_beneath': None},
}


def planned_then(monkeypatch, change, unconfined=False):
    """Plan as converge does, then ``change`` the host (a container swaps a link in after the plan was made);
    ``unconfined``: the control, the plan's mount steps without the reach that pins their layers."""
    real_plan = _converge.plan

    def plan_then_change(*args):
        planned = real_plan(*args)
        change()
        if unconfined:
            planned = [dataclasses.replace(one, **UNCONFINED[type(one)]) if type(one) in UNCONFINED else one
                       for one in planned]
        return planned
    monkeypatch.setattr(_converge, 'plan', plan_then_change)


@pytest.mark.parametrize('kind', ['lower dir', 'bind source', 'idmapped source', 'image, loop', 'image, fuse'])
def test_a_layer_swapped_for_a_link_after_the_plan_is_not_followed_by_the_kernel(
        host, container, monkeypatch, tmp_path, kind):
    """The container's own layer, image or source in its view is what the plan saw; the link swapped in before the
    apply leads to the host's."""
    host_thing, tree_of = ATTACKS[kind]
    secret = host_thing(host)
    layer = os.path.join(container, 'layer')
    if kind.startswith('image'):
        own = make_qcow2(host, 'own.qcow2', {'own': 'x'}) if kind == 'image, fuse' else make_ext4_image(
            host, 'own.img', {'own': 'x'})
        shutil.move(own, layer)  # into the view: another mount
    else:
        os.makedirs(layer)
    tree = tree_of(host, layer)

    def swap():
        os.rename(layer, layer + '.old')
        os.symlink(secret, layer)

    def unswap():
        os.unlink(layer)
        os.rename(layer + '.old', layer)

    # control: the same steps with the layer handed to the kernel by name reach the host's dir
    planned_then(monkeypatch, swap, unconfined=True)
    converge(module_params(filesystem=tree), run_command, False, lock_path=str(tmp_path / 'lock'))
    assert shows_secret(host)
    assert not host.play(filesystem=tree, state='unmounted', on_drift='replace').get('failed')
    unswap()
    monkeypatch.undo()

    planned_then(monkeypatch, swap)
    with pytest.raises(ConvergeError) as raced:
        converge(module_params(filesystem=tree), run_command, False, lock_path=str(tmp_path / 'lock'))
    assert '%s is reached through a symlink inside %s, which is not followed there' % (layer, container) in str(
        raced.value), str(raced.value)
    assert mounts_under(host.path('v')) == []


def test_a_link_inside_a_view_mounted_earlier_in_the_same_batch_is_not_followed(
        host, container, monkeypatch, tmp_path):
    """The second tree's lower lies in the first tree's view, which the run itself mounts: only the kernel, at
    apply time, sees the link the container's upper dir holds."""
    host.make_dirs('ct2/base', 'ct2/upper', 'ct2/work')
    os.symlink(host.path('host/secret'), host.path('ct2/upper/evil'))
    first = {'upper': host.path('ct2/upper'), 'work': host.path('ct2/work'), 'lower': [host.path('ct2/base')],
             'target': host.path('ct2/merged')}
    batch = [first, overlay_over(host, host.path('ct2/merged/evil'))]
    planned_then(monkeypatch, lambda: None, unconfined=True)  # control: by name, the kernel follows the link
    converge(module_params(filesystems=batch), run_command, False, lock_path=str(tmp_path / 'lock'))
    assert shows_secret(host)
    checked(['umount', host.path('v/merged')])
    checked(['umount', host.path('ct2/merged')])
    monkeypatch.undo()

    refused = host.play(filesystems=batch)
    assert refused['failed'] and ('%s is reached through a symlink inside %s, which is not followed there'
                                  % (host.path('ct2/merged/evil'), host.path('ct2/merged'))) in refused['msg'], refused
    assert mounts_under(host.path('v')) == [] and mounts_under(host.path('ct2')) == []  # the batch was undone


def test_layers_inside_a_view_are_mounted_by_fd_and_shown_by_name_at_run_time_and_at_boot(host, container):
    """A lower in the container's merged view, upper and work in its upper dir (the kernel takes no overlay as upper
    fs)."""
    upper_dir = host.path('ct/upper')
    inner = {'layer': os.path.join(container, 'inner/layer'), 'upper': os.path.join(upper_dir, 'inner/upper'),
             'work': os.path.join(upper_dir, 'inner/work')}
    for path in inner.values():
        os.makedirs(path)
    host.write('ct/merged/inner/layer/file', 'from the view\n')
    tree = {'upper': inner['upper'], 'work': inner['work'], 'lower': [inner['layer'], host.path('host/secret')],
            'target': host.path('v/merged')}
    first = converge_twice(host, filesystem=tree)
    assert [one.get('reach') for one in first['steps'] if one['action'] == 'mount'] == [[
        [inner['layer'], [container, 'inner/layer']], [host.path('host/secret'), None],
        [inner['upper'], [upper_dir, 'inner/upper']], [inner['work'], [upper_dir, 'inner/work']]]]
    (mounted,) = mounts_under(host.path('v'))
    assert mounted.overlay_layers() == ([inner['layer'], host.path('host/secret')], inner['upper'], inner['work'])
    assert mounted.mount_flags == ('nodev',)  # set on the overlay in the stage, kept by its clone
    with open(host.path('v/merged/file')) as handle:
        assert handle.read() == 'from the view\n'
    assert not host.play(filesystem=tree, state='unmounted').get('failed')

    host.write('spec', boot.spec_text('# test', {
        'target': host.path('v/merged'), 'lowers': tree['lower'], 'upper': inner['upper'], 'work': inner['work'],
        'options': {}, 'readonly': False, 'mount_flags': ['nodev'], 'on_volatile_marker': 'fail', 'idmapped': [], 'views': {}}))
    boot.mount(host.path('spec'), host.path('v/merged'))
    boot.mount(host.path('spec'), host.path('v/merged'))  # a second start stacks nothing
    assert [(entry.overlay_layers(), entry.mount_flags) for entry in mounts_under(host.path('v'))] == [
        (mounted.overlay_layers(), ('nodev',))]
    assert host.play(filesystem=tree)['plan'] == []  # the module sees what it would have made
    assert not host.play(filesystem=tree, state='unmounted').get('failed')

    # the target in the view too: the overlay made in the stage is attached on the target pinned
    inside = dict(tree, target=os.path.join(container, 'inner/target'))
    converge_twice(host, filesystem=inside)
    with open(os.path.join(inside['target'], 'file')) as handle:
        assert handle.read() == 'from the view\n'


def test_at_boot_the_upper_dir_of_a_persisted_container_not_up_yet_is_a_view_all_the_same(host):
    """The container's overlay comes up after this tree at the next boot, or not at all: the link it planted in its
    upper dir (where this tree's upper lies) is refused because the spec names that dir as a view."""
    host.make_dirs('ct/base', 'ct/upper/inner/work', 'ct/work', 'host/state', 'v/merged', 'l1', 'l2')
    os.symlink(host.path('host/state'), host.path('ct/upper/inner/upper'))
    container = {'upper': host.path('ct/upper'), 'work': host.path('ct/work'), 'lower': [host.path('ct/base')],
                 'target': host.path('ct/merged')}
    inside = {'upper': host.path('ct/upper/inner/upper'), 'work': host.path('ct/upper/inner/work'),
              'lower': [host.path('l1'), host.path('l2')], 'target': host.path('v/merged')}
    rendered = render([{'filesystem': container}, {'filesystem': inside}],
                      settings={'helper_sources': helper_sources()})
    spec_path = spec_file(host.path('v/merged'))
    spec = json.loads(rendered['files'][spec_path].split('\n', 2)[2])
    assert spec['views'] == {host.path('ct/upper'): 'the upper dir of the overlay at %s' % host.path('ct/merged')}
    host.write('spec', rendered['files'][spec_path])
    with pytest.raises(boot.HelperError, match=r'upper %s: %s is a symlink \(to %s\) inside the upper dir of the '
                                               r'overlay at %s' % (inside['upper'], inside['upper'],
                                                                   host.path('host/state'), host.path('ct/merged'))):
        boot.mount(host.path('spec'), host.path('v/merged'))
    assert mounts_under(host.path('v')) == [] and os.listdir(host.path('host/state')) == []
    # control: without the view, the helper takes ct/upper for the host's own dir and follows the link
    host.write('spec', boot.spec_text('# test', dict(spec, views={})))
    boot.mount(host.path('spec'), host.path('v/merged'))
    open(host.path('v/merged/written'), 'w').close()
    assert os.listdir(host.path('host/state')) == ['written']
