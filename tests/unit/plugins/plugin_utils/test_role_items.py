# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import pytest

from ansible_collections.containerhost.overlayfs.plugins.plugin_utils._role_items import (
    ItemError,
    normalize_items,
    role_work,
)
from ansible_collections.containerhost.overlayfs.tests.helpers.trees import canonical, overlay

TREE = overlay('/srv/ct1/rootfs', ['/srv/base', '/srv/app'], '/srv/ct1/upper', '/srv/ct1/work')
XML = '''<filesystem type='overlay'>
  <source dir='/srv/ct2/upper'/><source dir='/srv/ct2/work'/>
  <backingStore type='file'><driver name='nbd' type='qcow2'/><source file='/srv/images/a.qcow2'/>
    <target dir='/srv/ct2/a'/></backingStore>
  <backingStore type='dir'><target dir='/srv/base'/></backingStore>
  <target dir='/srv/ct2/rootfs'/>
</filesystem>'''


def test_an_item_gets_the_defaults_and_its_canonical_tree():
    (item,) = normalize_items([{'filesystem': TREE}], service_mgr='systemd')
    assert item == {'name': 'filesystems[0]', 'trees': [canonical(TREE)], 'state': 'mounted', 'persistence': 'systemd',
                    'nofail': True, 'required_by': [], 'wanted_by': []}


def test_persistence_auto_follows_the_service_manager_once_it_is_known():
    assert normalize_items([{'filesystem': TREE}], service_mgr='sysvinit')[0]['persistence'] == 'fstab'
    assert normalize_items([{'filesystem': TREE}])[0]['persistence'] == 'auto'
    assert normalize_items([{'filesystem': TREE}], {'persistence': 'none'}, 'systemd')[0]['persistence'] == 'none'
    later = normalize_items([{'filesystem': TREE}])
    assert normalize_items(later, service_mgr='systemd')[0]['persistence'] == 'systemd'


@pytest.mark.parametrize('items, service_mgr, needs', [
    ([{'filesystem': TREE}], None, True),
    ([{'filesystem': TREE}], 'openrc', False),
    ([{'filesystem': TREE, 'persistence': 'fstab'}], None, False),
    ([{'filesystem': TREE, 'state': 'absent'}, {'xml': XML, 'persistence': 'none'}], None, False),
])
def test_role_work_says_when_the_persistence_waits_on_the_service_manager(items, service_mgr, needs):
    assert role_work(items, service_mgr=service_mgr)['needs_service_mgr'] is needs


def test_an_explicit_false_is_kept_and_the_item_wins_over_the_defaults():
    items = [{'filesystem': TREE, 'nofail': False, 'persistence': 'fstab'}]
    (item,) = normalize_items(items, {'nofail': True, 'persistence': 'systemd'}, 'systemd')
    assert item['nofail'] is False and item['persistence'] == 'fstab'
    assert normalize_items([{'filesystem': TREE, 'nofail': 'no'}])[0]['nofail'] is False


def test_xml_items_hold_every_filesystem_of_the_document():
    (item,) = normalize_items([{'name': 'ct2', 'xml': XML, 'required_by': 'systemd-nspawn@ct2.service'}])
    assert item['name'] == 'ct2'
    assert [tree['target'] for tree in item['trees']] == ['/srv/ct2/rootfs']
    assert item['trees'][0]['lower'][0] == {'type': 'file', 'driver': 'nbd', 'format': 'qcow2',
                                            'source': '/srv/images/a.qcow2', 'target': '/srv/ct2/a'}
    assert item['required_by'] == ['systemd-nspawn@ct2.service']


def test_a_normalized_item_normalizes_to_itself():
    once = normalize_items([{'name': 'ct2', 'xml': XML, 'state': 'unmounted', 'wanted_by': ['libvirtd.service']},
                            {'filesystem': TREE}], {'nofail': False}, 'systemd')
    assert normalize_items(once) == once


def test_role_work_sorts_the_trees_by_what_the_role_does():
    gone = overlay('/srv/gone', ['/srv/g1', '/srv/g2'])
    fused = overlay('/srv/f', [{'type': 'file', 'driver': 'fuse', 'format': 'qcow2', 'source': '/srv/f.qcow2',
                                'target': '/srv/fimg'}, '/srv/g1'])
    work = role_work([{'filesystem': TREE}, {'name': 'ct2', 'xml': XML, 'state': 'unmounted'},
                      {'filesystem': gone, 'state': 'absent'}, {'filesystem': fused, 'persistence': 'none'}],
                     service_mgr='systemd')
    assert [tree['target'] for tree in work['mount']] == ['/srv/ct1/rootfs', '/srv/f']
    assert [tree['target'] for tree in work['unmount']] == ['/srv/ct2/rootfs', '/srv/gone']
    assert [item['name'] for item in work['persist']] == ['filesystems[0]', 'ct2']
    assert work['image_drivers'] == ['fuse', 'nbd']


@pytest.mark.parametrize('items, message', [
    ('nope', r'must be a list of items'),
    (['nope'], r'filesystems\[0\] must be a mapping with xml or filesystem'),
    ([{'filesystem': TREE, 'bogus': 1}], r'filesystems\[0\]: unknown key bogus'),
    ([{}], r'filesystems\[0\]: give exactly one of xml and filesystem'),
    ([{'filesystem': TREE, 'xml': XML}], r'give exactly one of xml and filesystem \(not both\)'),
    ([{'name': 'web', 'filesystem': TREE, 'state': 'gone'}], r"web.state: 'gone' is not one of mounted, unmounted, absent"),
    ([{'name': 'web', 'filesystem': TREE, 'persistence': 'rc.local'}], r"web.persistence: 'rc.local' is not one of"),
    ([{'name': 'web', 'filesystem': TREE, 'nofail': 'maybe'}], r'web.nofail must be true or false'),
    ([{'name': 'web', 'filesystem': TREE, 'required_by': ['libvirtd']}], r"web.required_by: 'libvirtd' is not a systemd unit"),
    ([{'name': 'web', 'filesystem': TREE, 'wanted_by': 'a b.service'}], r"web.wanted_by: 'a b.service' is not"),
    ([{'name': 'web', 'filesystem': ['/srv/a']}], r'web.filesystem must be a mapping'),
    ([{'name': 'web', 'filesystem': {'lower': ['/srv/a'], 'target': '/srv/m'}}],
     r'web.filesystem.lower: an overlay without an upper dir needs at least 2'),
    ([{'name': 'web', 'xml': "<filesystem type='overlay'><target dir='/m'/></filesystem>"}],
     r'web: .*/filesystem\[1\]'),
    ([{'name': 'web', 'xml': '<filesystem'}], r'web: '),
    ([{'filesystem': TREE}, {'name': 'again', 'filesystem': TREE}], r'target /srv/ct1/rootfs is also the target of'),
])
def test_bad_items_are_refused_naming_the_item_and_field(items, message):
    with pytest.raises(ItemError, match=message):
        normalize_items(items)


def test_unknown_defaults_are_refused():
    with pytest.raises(ItemError, match=r'unknown default bogus'):
        normalize_items([], {'bogus': 1})


def test_the_filter_plugin():
    from ansible.errors import AnsibleFilterError
    from ansible_collections.containerhost.overlayfs.plugins.filter.items import FilterModule

    overlay_mounts_items = FilterModule().filters()['overlay_mounts_items']
    work = overlay_mounts_items([{'filesystem': TREE}], persistence='auto', nofail=False, service_mgr='systemd')
    assert work['mount'] == [canonical(TREE)] and 'persist' not in work  # the role renders from its own items
    with pytest.raises(AnsibleFilterError, match=r'overlay_mounts_items: filesystems\[0\]: give exactly one'):
        overlay_mounts_items([{}])


def test_the_filter_refuses_what_the_persistence_cannot_carry_before_anything_is_mounted():
    from ansible.errors import AnsibleFilterError
    from ansible_collections.containerhost.overlayfs.plugins.filter.items import FilterModule

    overlay_mounts_items = FilterModule().filters()['overlay_mounts_items']
    spaced = overlay('/srv/m', ['/srv/a b', '/srv/c'])
    with pytest.raises(AnsibleFilterError, match=r"overlay_mounts_items: .*layer '/srv/a b' holds whitespace"):
        overlay_mounts_items([{'name': 'odd', 'filesystem': spaced, 'persistence': 'fstab'}])
    assert overlay_mounts_items([{'filesystem': spaced, 'persistence': 'systemd'}])['mount']
    assert overlay_mounts_items([{'filesystem': spaced}])['needs_service_mgr']  # checked once it is known
