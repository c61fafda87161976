# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The arm64 smoke run (`make vm-test-arm64`): the module in a Debian 13 arm64 guest under qemu-system-aarch64,
driven by real ansible-playbook runs from this host.

One tree with the layers whose syscalls differ between architectures, or might: a top overlay over a nested
overlay, a raw image through a loop device (ext4, made in the guest) and a dir through an idmapped mount. The steps
build on each other: the tree mounts as asked and a second run changes nothing; overlay_filesystem_info reads back
what it can on the guest's kernel, and its trees fed back change nothing; unmounted, nothing of the tree is left
mounted or attached.
"""

from __future__ import annotations

import shutil
import tempfile

import pytest

from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._idmap import IDMAP_DIR, idmap_mount_path
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._tree import parse_filesystem, to_yaml
from ansible_collections.containerhost.overlayfs.tests.helpers.guest import (
    Guest, converge_twice, mountinfo, owners, unmount_everything_under)
from ansible_collections.containerhost.overlayfs.tests.helpers.kernel import reads_idmap_back

pytestmark = [pytest.mark.arm64, pytest.mark.incremental]

ROOT = '/srv/smoke'
START = 100000
IDMAP = {'uid': [{'start': 0, 'target': START, 'count': 65536}], 'gid': [{'start': 0, 'target': START, 'count': 65536}]}
NESTED = {'type': 'overlay', 'upper': ROOT + '/base/upper', 'work': ROOT + '/base/work', 'lower': [ROOT + '/base/lower'],
          'target': ROOT + '/base/merged'}
IMAGE = {'type': 'file', 'driver': 'loop', 'format': 'raw', 'source': ROOT + '/tools.img', 'target': ROOT + '/tools'}
IDMAPPED = {'type': 'dir', 'target': ROOT + '/shared', 'idmap': IDMAP}
TREE = {'upper': ROOT + '/upper', 'work': ROOT + '/work', 'target': ROOT + '/rootfs', 'lower': [IDMAPPED, NESTED, IMAGE]}

# The layers' files, all owned by root on disk; the image is made from tools/ and then removed.
SET_UP = '''
set -e
mkdir -p {root}/upper {root}/work {root}/rootfs {root}/base/upper {root}/base/work {root}/base/merged \
  {root}/base/lower {root}/shared/etc {root}/tools {root}/.tools/bin
echo debian > {root}/base/lower/os-release
echo shared > {root}/shared/etc/conf
echo 'a tool' > {root}/.tools/bin/tool
mkfs.ext4 -q -F -d {root}/.tools {root}/tools.img 16M
rm -r {root}/.tools
'''.format(root=ROOT)

# What a failed step left: the tree's mounts deepest first, its idmapped layer, its loop device.
CLEAN_UP = '''
{unmount}
umount -l {idmapped} 2>/dev/null
losetup -n -O NAME -j {root}/tools.img | xargs -r losetup -d
true
'''.format(unmount=unmount_everything_under(ROOT + '/'), root=ROOT, idmapped=idmap_mount_path(TREE['target'], IDMAPPED['target']))


def canonical(tree):
    return to_yaml(parse_filesystem(dict(tree, type='overlay'), 'filesystem'))


class SmokeGuest(Guest):
    def mounts(self):
        """{mount point: MountEntry} of the tree's mounts and its idmapped layer, read with the collection's parser."""
        return dict((entry.mountpoint, entry) for entry in mountinfo(self.vm)
                    if entry.mountpoint.startswith((ROOT + '/', IDMAP_DIR + '/')))

    def loops(self):
        """The loop devices backed by the tree's image, each with whether it is read-only."""
        out = self.sh('losetup -n -O NAME,RO -j %s/tools.img' % ROOT).stdout
        return [tuple(line.split()) for line in out.splitlines()]


@pytest.fixture(scope='module')
def guest(vm):
    workdir = tempfile.mkdtemp(prefix='overlayfs-vm-smoke-')
    vm.run(SET_UP, check=True)
    yield SmokeGuest(vm, ROOT, workdir)
    vm.run(CLEAN_UP)
    shutil.rmtree(workdir)


def test_the_tree_mounts_as_asked_and_a_second_run_changes_nothing(guest):
    converge_twice(guest, filesystem=TREE)
    mounts = guest.mounts()
    idmapped = idmap_mount_path(TREE['target'], IDMAPPED['target'])
    assert sorted(mounts) == sorted([idmapped, TREE['target'], NESTED['target'], IMAGE['target']])
    assert mounts[TREE['target']].overlay_layers() == (
        [idmapped, NESTED['target'], IMAGE['target']], TREE['upper'], TREE['work'])
    assert mounts[NESTED['target']].overlay_layers() == (NESTED['lower'], NESTED['upper'], NESTED['work'])
    [(device, readonly)] = guest.loops()
    image = mounts[IMAGE['target']]
    assert (image.fstype, image.source, image.readonly, readonly) == ('ext4', device, True, '1')
    assert 'idmapped' in mounts[idmapped].mount_options
    merged = TREE['target']
    assert owners(guest.vm, [ROOT + '/shared/etc/conf', merged + '/etc/conf', merged + '/os-release',
                             merged + '/bin/tool']) == {
        ROOT + '/shared/etc/conf': (0, 0), merged + '/etc/conf': (START, START),  # only the idmapped layer is shifted
        merged + '/os-release': (0, 0), merged + '/bin/tool': (0, 0)}
    assert guest.sh('cat %s/bin/tool %s/os-release' % (merged, merged)).stdout == 'a tool\ndebian\n'


def test_the_info_module_reads_back_what_is_mounted_and_feeding_it_back_changes_nothing(guest):
    mounted = guest.mount_ids()
    results = guest.read_back()
    found = results['found']
    if reads_idmap_back(guest.sh('uname -r').stdout):
        assert (found['filesystems'], found['unexpressed']) == ([canonical(TREE)], [])
    else:
        # The top overlay cannot say its idmapped layer's mapping; the nested overlay is a tree of its own then.
        assert found['filesystems'] == [canonical(NESTED)]
        [unexpressed] = found['unexpressed']
        assert unexpressed['target'] == TREE['target']
        assert 'mapping this kernel cannot read back' in unexpressed['reason'], unexpressed
    assert (results['fed']['changed'], results['fed']['plan']) == (False, []), results['fed']
    assert guest.mount_ids() == mounted


def test_unmounted_leaves_no_mount_of_the_tree_and_no_loop_device(guest):
    result = guest.play(filesystem=TREE, state='unmounted')
    assert not result.get('failed'), result.get('msg')
    assert result['changed'] is True
    assert guest.mounts() == {}  # the idmapped layer's mount point included
    assert guest.loops() == []
    again = guest.play(filesystem=TREE, state='unmounted')
    assert (again['changed'], again['plan']) == (False, [])
