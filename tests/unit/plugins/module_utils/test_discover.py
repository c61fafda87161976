# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""discover(): the host's overlay mounts read back as trees, from observations made by hand."""

from __future__ import annotations

import pytest

from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel import _mountinfo as mountinfo
from ansible_collections.containerhost.overlayfs.plugins.module_utils.discover._discover import discover
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._idmap import idmap_mount_path, parse_idmap
from ansible_collections.containerhost.overlayfs.plugins.module_utils.host._observe import (
    FuseExport,
    ImageServer,
    LoopDevice,
    NbdDevice,
    Observed,
    PathFacts,
)
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._tree import parse_filesystems

ROOT = '1 0 8:1 / / rw - ext4 /dev/sda1 rw'


def overlay_line(mount_id, target, lowers, upper=None, work=None, extra='', mount_options='rw,nodev,relatime'):
    options = 'rw,lowerdir=' + ':'.join(lowers)
    if upper:
        options += ',upperdir=%s,workdir=%s' % (upper, work)
    return '%d 1 0:%d / %s %s - overlay overlay %s%s' % (mount_id, mount_id, target, mount_options, options, extra)


def host(lines, dirs=(), files=(), blocks=None, loops=(), nbds=(), exports=()):
    """An Observed of the mount table ``lines`` (after the root's), with PathFacts for the paths named."""
    paths = dict((path, PathFacts(path, path, exists=True, is_dir=True, identity=(1, index)))
                 for index, path in enumerate(dirs))
    paths.update((path, PathFacts(path, path, exists=True, is_file=True)) for path in files)
    paths.update((path, PathFacts(path, path, exists=True, is_block=True, rdev=rdev))
                 for path, rdev in (blocks or {}).items())
    return Observed(mountinfo.parse('\n'.join([ROOT] + list(lines))), list(loops), paths, nbds=nbds, exports=exports)


DIRS = ('/srv/base', '/srv/l2', '/srv/u', '/srv/w', '/srv/bu', '/srv/bw')


def test_an_overlay_of_dirs_reads_as_the_tree_that_mounts_it():
    found = discover(host([overlay_line(30, '/srv/m', ['/srv/base', '/srv/l2'], '/srv/u', '/srv/w', ',uuid=on')],
                          DIRS))
    assert found.filesystems == [{'type': 'overlay', 'upper': '/srv/u', 'work': '/srv/w',
                                  'lower': ['/srv/base', '/srv/l2'], 'target': '/srv/m'}]
    assert found.unexpressed == []


def test_an_overlay_on_another_is_nested_when_alone_on_it_and_a_tree_of_its_own_when_shared():
    base = overlay_line(30, '/srv/bm', ['/srv/base'], '/srv/bu', '/srv/bw')
    one = overlay_line(31, '/srv/ct1', ['/srv/bm', '/srv/l2'], '/srv/u', '/srv/w')
    nested = discover(host([base, one], DIRS)).filesystems
    assert [tree['target'] for tree in nested] == ['/srv/ct1']
    assert nested[0]['lower'][0] == {'type': 'overlay', 'upper': '/srv/bu', 'work': '/srv/bw', 'lower': ['/srv/base'],
                                     'target': '/srv/bm'}
    two = overlay_line(32, '/srv/ct2', ['/srv/bm'], '/srv/u2', '/srv/w2')
    shared = discover(host([base, one, two], DIRS + ('/srv/u2', '/srv/w2'))).filesystems
    assert [tree['target'] for tree in shared] == ['/srv/bm', '/srv/ct1', '/srv/ct2']
    assert shared[1]['lower'] == ['/srv/bm', '/srv/l2'] and shared[2]['lower'] == ['/srv/bm']
    assert [root.target for root in parse_filesystems(shared)] == ['/srv/bm', '/srv/ct1', '/srv/ct2']


def test_image_layers_read_back_to_their_image_and_format():
    lines = ['40 1 7:0 / /srv/img ro,relatime - ext4 /dev/loop0 ro',
             '41 1 43:0 / /srv/nbd ro,relatime - ext4 /dev/nbd0 ro',
             '42 1 7:1 / /srv/fuse ro,relatime - ext4 /dev/loop1 ro',
             overlay_line(50, '/srv/m', ['/srv/img', '/srv/nbd', '/srv/fuse'], '/srv/u', '/srv/w')]
    loops = [LoopDevice('/dev/loop0', 7, 0, '/srv/images/base.img', True, []),
             LoopDevice('/dev/loop1', 7, 1, '/run/exports/abc.img', True, [])]
    nbds = [NbdDevice('/dev/nbd0', 43, 0, True, ImageServer('/srv/images/guest.qcow2', 'qcow2', True))]
    exports = [FuseExport('/run/exports/abc.img', 'p', 'm', ImageServer('/srv/images/tools.vmdk', 'vmdk', True))]
    found = discover(host(lines, DIRS, files=['/srv/images/base.img'], loops=loops, nbds=nbds, exports=exports))
    assert found.unexpressed == []
    assert found.filesystems[0]['lower'] == [
        {'type': 'file', 'source': '/srv/images/base.img', 'driver': 'loop', 'format': 'raw', 'target': '/srv/img'},
        {'type': 'file', 'source': '/srv/images/guest.qcow2', 'driver': 'nbd', 'format': 'qcow2', 'target': '/srv/nbd'},
        {'type': 'file', 'source': '/srv/images/tools.vmdk', 'driver': 'fuse', 'format': 'vmdk', 'target': '/srv/fuse'}]


def test_block_and_bind_layers():
    lines = ['40 1 8:17 / /srv/disk ro,relatime - ext4 /dev/sdb1 ro',
             '41 1 8:1 /srv/data /srv/bound ro,relatime - ext4 /dev/sda1 rw',
             overlay_line(50, '/srv/m', ['/srv/disk', '/srv/bound'], '/srv/u', '/srv/w')]
    found = discover(host(lines, DIRS, blocks={'/dev/sdb1': (8, 17)}))
    assert found.filesystems[0]['lower'] == [{'type': 'block', 'source': '/dev/sdb1', 'target': '/srv/disk'},
                                             {'type': 'mount', 'source': '/srv/data', 'target': '/srv/bound',
                                              'readonly': True}]


def test_options_are_read_as_declared_less_what_the_kernel_adds():
    lines = [overlay_line(30, '/srv/m', ['/srv/base'], '/srv/u', '/srv/w', ',index=on,nfs_export=on,uuid=on,volatile'),
             overlay_line(31, '/srv/ro', ['/srv/base', '/srv/l2'], extra=',redirect_dir=on'),
             overlay_line(32, '/srv/rd', ['/srv/l2'], '/srv/bu', '/srv/bw', ',redirect_dir=nofollow,userxattr',
                          mount_options='ro,relatime')]
    trees = dict((tree['target'], tree) for tree in discover(host(lines, DIRS)).filesystems)
    assert trees['/srv/m']['options'] == {'nfs_export': 'on', 'volatile': 'on'}
    assert 'options' not in trees['/srv/ro']
    assert trees['/srv/rd']['options'] == {'userxattr': 'on'} and trees['/srv/rd']['readonly'] is True


def test_lowerdir_plus_and_escaped_paths_read_back_exactly():
    lines = ['30 1 0:30 / /srv/m rw - overlay none rw,lowerdir+=/srv/a:b,lowerdir+=/srv/c\\054d,upperdir=/srv/u,'
             'workdir=/srv/w']
    found = discover(host(lines, DIRS + ('/srv/a:b', '/srv/c,d')))
    assert found.filesystems[0]['lower'] == ['/srv/a:b', '/srv/c,d']


@pytest.mark.parametrize('lines, observed, reason', [
    ([overlay_line(30, '/srv/m', ['/srv/base'], '/srv/u', '/srv/w'),
      overlay_line(31, '/srv/m', ['/srv/base'], '/srv/u', '/srv/w').replace('31 1 ', '31 30 ')], {},
     '2 mounts are stacked at /srv/m'),
    ([overlay_line(30, '/srv/m', ['l1', '/srv/base'], '/srv/u', '/srv/w')], {}, "lower layer 'l1' is relative"),
    ([overlay_line(30, '/srv/m', ['/srv/gone'], '/srv/u', '/srv/w')], {}, 'lower layer /srv/gone no longer exists'),
    ([overlay_line(30, '/srv/m', ['/srv/base'], '/srv/u', '/srv/w', ',datadir+=/srv/l2')], {}, 'datadir+'),
    ([overlay_line(30, '/srv/m', ['/srv/base'], '/srv/u', '/srv/w').replace('overlay rw,', 'overlay ro,')], {},
     'degraded'),
    (['40 1 7:0 / /srv/img rw - ext4 /dev/loop0 rw', overlay_line(30, '/srv/m', ['/srv/img'], '/srv/u', '/srv/w')],
     {'loops': [LoopDevice('/dev/loop0', 7, 0, '/srv/a.img', False, [])], 'files': ['/srv/a.img']}, 'read-write'),
    (['40 1 7:0 / /srv/img ro - ext4 /dev/loop0 rw', overlay_line(30, '/srv/m', ['/srv/img'], '/srv/u', '/srv/w')],
     {'loops': [LoopDevice('/dev/loop0', 7, 0, '/srv/deleted.img', True, [])]}, 'whose file /srv/deleted.img is gone'),
    (['41 1 43:0 / /srv/nbd ro - ext4 /dev/nbd0 ro', overlay_line(30, '/srv/m', ['/srv/nbd'], '/srv/u', '/srv/w')],
     {'nbds': [NbdDevice('/dev/nbd0', 43, 0, True, None)]}, 'no qemu-nbd serves any more'),
    (['41 1 43:0 / /srv/nbd ro - ext4 /dev/nbd0 ro', overlay_line(30, '/srv/m', ['/srv/nbd'], '/srv/u', '/srv/w')],
     {'nbds': [NbdDevice('/dev/nbd0', 43, 0, True, ImageServer('/srv/g', None, True))]}, 'without --format'),
    (['42 1 0:42 / /srv/t rw - tmpfs tmpfs rw', overlay_line(30, '/srv/m', ['/srv/t'], '/srv/u', '/srv/w')], {},
     'a tmpfs filesystem is mounted at its layer /srv/t'),
])
def test_what_a_tree_cannot_say_is_reported_with_the_reason(lines, observed, reason):
    found = discover(host(lines, DIRS, **observed))
    assert found.filesystems == []
    [unexpressed] = found.unexpressed
    assert unexpressed['target'] == '/srv/m' and reason in unexpressed['reason'], unexpressed


def test_targets_and_under_filter_the_trees():
    lines = [overlay_line(30, '/srv/a/m', ['/srv/base'], '/srv/u', '/srv/w'),
             overlay_line(31, '/srv/b/m', ['/srv/base'], '/srv/bu', '/srv/bw')]
    observed = host(lines, DIRS)
    assert [tree['target'] for tree in discover(observed, targets=['/srv/b/m']).filesystems] == ['/srv/b/m']
    assert [tree['target'] for tree in discover(observed, under='/srv/a').filesystems] == ['/srv/a/m']
    assert len(discover(observed).filesystems) == 2


def test_an_overlay_nested_in_a_tree_that_cannot_be_said_is_a_tree_of_its_own():
    base = overlay_line(30, '/srv/bm', ['/srv/base'], '/srv/bu', '/srv/bw')
    top = overlay_line(31, '/srv/m', ['/srv/bm', 'relative'], '/srv/u', '/srv/w')
    found = discover(host([base, top], DIRS))
    assert [tree['target'] for tree in found.filesystems] == ['/srv/bm']
    assert [item['target'] for item in found.unexpressed] == ['/srv/m']


def test_a_nested_overlay_asked_for_by_target_is_reported_as_a_tree():
    base = overlay_line(30, '/srv/bm', ['/srv/base'], '/srv/bu', '/srv/bw')
    top = overlay_line(31, '/srv/m', ['/srv/bm'], '/srv/u', '/srv/w')
    found = discover(host([base, top], DIRS), targets=['/srv/bm'])
    assert [tree['target'] for tree in found.filesystems] == ['/srv/bm']


IDMAP_PATH = idmap_mount_path('/srv/m', '/srv/base')
IDMAPPED = '40 1 8:1 /srv/base %s rw,relatime,idmapped - ext4 /dev/sda1 rw' % IDMAP_PATH
SHIFT = {'uid': [{'start': 0, 'target': 100000, 'count': 65536}], 'gid': [{'start': 0, 'target': 100000, 'count': 65536}]}


def idmapped_host(lines, idmap):
    observed = host(lines, DIRS + (IDMAP_PATH,))
    observed.idmaps[IDMAP_PATH] = idmap
    return observed


def test_a_trees_idmapped_layer_reads_back_as_the_layer_with_its_mapping():
    top = overlay_line(30, '/srv/m', [IDMAP_PATH, '/srv/l2'], '/srv/u', '/srv/w')
    found = discover(idmapped_host([IDMAPPED, top], parse_idmap(SHIFT, 'x')))
    assert found.filesystems[0]['lower'] == [{'type': 'dir', 'target': '/srv/base', 'idmap': SHIFT}, '/srv/l2']


@pytest.mark.parametrize('target, idmap, reason', [
    ('/srv/m', None, 'whose mapping this kernel cannot read back (statmount(2) reads it from Linux 6.15)'),
    ('/srv/other', SHIFT, 'is an idmapped mount of /srv/base that no tree made'),  # named for another tree
])
def test_an_idmapped_layer_that_cannot_be_said_is_reported(target, idmap, reason):
    top = overlay_line(30, target, [IDMAP_PATH, '/srv/l2'], '/srv/u', '/srv/w')
    found = discover(idmapped_host([IDMAPPED, top], idmap and parse_idmap(idmap, 'x')))
    assert found.filesystems == []
    assert reason in found.unexpressed[0]['reason']
