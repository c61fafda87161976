# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import os
import stat
import struct

import pytest

from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel import _mountinfo as mountinfo
from ansible_collections.containerhost.overlayfs.plugins.module_utils.host._confine import (
    ConfinedResolver,
    Resolution,
    describe_refusal,
    mounted_views,
)


@pytest.fixture
def root(tmp_path):
    """A scratch dir only root can change (pytest's own may be group-writable under some umasks)."""
    tmp_path.chmod(0o755)
    return tmp_path


def test_the_hosts_symlinks_are_followed_and_the_first_one_inside_a_view_is_reported(root):
    (root / 'data' / 'ct' / 'merged' / 'etc').mkdir(parents=True)
    (root / 'srv').symlink_to(root / 'data')  # the host's own: followed
    (root / 'data' / 'ct' / 'merged' / 'etc' / 'x').symlink_to('/')  # planted in the view: not followed
    view = str(root / 'data' / 'ct' / 'merged')
    resolve = ConfinedResolver({view: 'the merged view of the overlay at %s' % view})
    planted = resolve(str(root / 'srv' / 'ct' / 'merged' / 'etc' / 'x' / 'sub'))
    assert planted == Resolution(view + '/etc/x/sub', (view, 'etc/x/sub'), 'the merged view of the overlay at %s'
                                 % view, (view + '/etc/x', '/'))
    assert describe_refusal('lower dir', '/p', planted) == (
        'lower dir /p: %s/etc/x is a symlink (to /) inside the merged view of the overlay at %s; symlinks there are '
        'not followed' % (view, view))
    clean = resolve(str(root / 'srv' / 'ct' / 'merged' / 'etc' / 'new' / 'sub'))
    assert (clean.beneath, clean.symlink_inside) == ((view, 'etc/new/sub'), None)
    assert resolve(str(root / 'srv' / 'ct' / 'merged')) == Resolution(view)  # the view itself is not inside it
    assert resolve(str(root / 'srv' / 'elsewhere')) == Resolution(str(root / 'data' / 'elsewhere'))


def test_a_dir_a_local_user_owns_is_open_and_a_symlink_in_it_is_not_followed(root):
    (root / 'home' / 'alice').mkdir(parents=True)
    os.chown(str(root / 'home' / 'alice'), 1000, 1000)
    (root / 'home' / 'alice' / 'layer').symlink_to('/etc')
    resolve = ConfinedResolver({})
    alice = str(root / 'home' / 'alice')
    assert resolve(alice + '/layer/usr') == Resolution(
        alice + '/layer/usr', (alice, 'layer/usr'), 'the dir %s, which uid 1000 owns' % alice, (alice + '/layer', '/etc'))
    (root / 'home' / 'alice' / 'dir').mkdir()
    assert resolve(alice + '/dir').beneath == (alice, 'dir')


def test_writable_dirs_are_open_unless_sticky_and_the_entry_is_roots(root):
    for name, mode in (('shared', 0o777), ('sticky', 0o1777), ('group', 0o775)):
        (root / name).mkdir()
        (root / name).chmod(mode)
        (root / name / 'roots').mkdir()
        (root / name / 'users').mkdir()
        os.chown(str(root / name / 'users'), 1000, 1000)
    os.chown(str(root / 'group'), 0, 1000)
    resolve = ConfinedResolver({})
    assert resolve(str(root / 'shared' / 'roots')).opened_by == 'the dir %s, which every user may write to' % (
        root / 'shared')
    assert resolve(str(root / 'sticky' / 'roots')) == Resolution(str(root / 'sticky' / 'roots'))
    assert resolve(str(root / 'sticky' / 'users')).beneath == (str(root / 'sticky'), 'users')
    assert resolve(str(root / 'sticky' / 'not-yet')).beneath == (str(root / 'sticky'), 'not-yet')  # anyone may make it
    assert resolve(str(root / 'group' / 'roots')).opened_by == 'the dir %s, which group 1000 may write to' % (
        root / 'group')
    (root / 'group').chmod(0o755)
    assert ConfinedResolver({})(str(root / 'group' / 'roots')).beneath is None


def test_a_loop_of_the_hosts_own_links_ends(root):
    (root / 'a').symlink_to(root / 'b')
    (root / 'b').symlink_to(root / 'a')
    assert ConfinedResolver({})(str(root / 'a' / 'x')).symlink_inside is None


def test_the_hosts_root_is_never_open():
    """Where / is itself an overlay (a live system, a container host inside a container), its paths are the
    host's own."""
    table = '1 0 0:30 / / rw - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w'
    views = mounted_views(mountinfo.parse(table))
    assert views == {'/': 'the merged view of the overlay at /', '/u': 'the upper dir of the overlay at /'}
    assert ConfinedResolver(views)('/etc/passwd').beneath is None


def test_a_root_dir_whose_access_acl_lets_a_user_write_is_open(root):
    """What setfacl -m u:1000:rwx writes: owner, group and other root's as before, uid 1000 named, the mask rwx."""
    (root / 'acl' / 'entry').mkdir(parents=True)
    entries = [(0x01, 7, 0xffffffff), (0x02, 7, 1000), (0x04, 5, 0xffffffff), (0x10, 7, 0xffffffff),
               (0x20, 5, 0xffffffff)]  # user_obj, user 1000, group_obj, mask, other
    acl = struct.pack('<I', 2) + b''.join(struct.pack('<HHI', *entry) for entry in entries)
    try:
        os.setxattr(str(root / 'acl'), 'system.posix_acl_access', acl)
    except OSError as error:
        pytest.skip('no ACLs on this filesystem: %s' % error)
    assert stat.S_IMODE(os.stat(str(root / 'acl')).st_mode) == 0o775
    assert ConfinedResolver({})(str(root / 'acl' / 'entry')).opened_by == (
        'the dir %s, whose access ACL lets others write to it' % (root / 'acl'))


def test_a_dir_that_cannot_be_read_is_not_taken_for_roots(root, monkeypatch):
    def lstat(path):
        if path == str(root / 'dead'):
            raise OSError(5, 'Input/output error')
        return os.lstat(path)
    assert ConfinedResolver({}, lstat=lstat)(str(root / 'dead' / 'x')).opened_by == (
        'the dir %s, which cannot be read (Input/output error)' % (root / 'dead'))
