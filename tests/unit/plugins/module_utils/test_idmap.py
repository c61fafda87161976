# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""idmap: the ranges of an <idmap>, checked as the kernel checks them, and the tree's idmapped layers."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel import _mountinfo as mountinfo
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._idmap import (
    IDMAP_DIR,
    OVERFLOW_ID,
    IdMapError,
    IdRange,
    idmap_mount_path,
    idmap_shortfalls,
    kernel_map,
    parse_idmap,
    parse_kernel_map,
)
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._idmapped import IdmappedLayer
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._tree import TreeError, parse_filesystems, to_yaml

IDMAPPED = IdmappedLayer.kind

SHIFT = {'uid': [{'start': 0, 'target': 100000, 'count': 65536}], 'gid': [{'start': 0, 'target': 100000, 'count': 65536}]}
IDMAPPED_LINE = '60 1 8:1 /srv/base /run/containerhost-overlayfs/idmap/x rw,relatime,idmapped - ext4 /dev/sda1 rw'
PLAIN_LINE = '61 1 8:1 /srv/base /run/containerhost-overlayfs/idmap/x rw,relatime - ext4 /dev/sda1 rw'


def ranges(*triples):
    return [{'start': start, 'target': target, 'count': count} for start, target, count in triples]


def test_a_mapping_parses_into_ranges_and_maps_owners():
    idmap = parse_idmap({'uid': ranges((0, 100000, 1000), (1000, 5, 10)), 'gid': ranges((0, 200000, 65536))}, 'x')
    assert idmap.uid == (IdRange(0, 100000, 1000), IdRange(1000, 5, 10))
    assert idmap.map_owner(0, 0) == (100000, 200000)
    assert idmap.map_owner(1009, 65535) == (14, 265535)
    assert idmap.map_owner(1010, 65536) == (OVERFLOW_ID, OVERFLOW_ID)  # outside every range
    assert idmap.summary() == 'uid 0->100000 (1000) 1000->5 (10), gid 0->200000 (65536)'


def test_xml_text_values_are_taken_as_numbers():
    assert parse_idmap({'uid': ranges(('0', '100000', '65536')), 'gid': ranges((0, 1, 1))}, 'x').uid[0].count == 65536


@pytest.mark.parametrize('raw, message', [
    ('0:100000:65536', r'^f.idmap must be a mapping with uid and gid lists$'),
    ({'uid': SHIFT['uid']}, r'^f.idmap.gid: an idmap needs at least one gid range'),
    ({'gid': SHIFT['gid'], 'uid': []}, r'^f.idmap.uid: an idmap needs at least one uid range'),
    (dict(SHIFT, both=[]), r'^f.idmap: unknown key both \(allowed: uid, gid\)$'),
    ({'uid': {'start': 0}, 'gid': SHIFT['gid']}, r'^f.idmap.uid must be a list of ranges'),
    ({'uid': [{'start': 0, 'target': 1}], 'gid': SHIFT['gid']}, r'^f.idmap.uid\[0\] must be a mapping of exactly start, target and count$'),
    ({'uid': ranges((0, -1, 1)), 'gid': SHIFT['gid']}, r'^f.idmap.uid\[0\].target must be a non-negative integer, not -1$'),
    ({'uid': ranges((0, True, 1)), 'gid': SHIFT['gid']}, r'^f.idmap.uid\[0\].target must be a non-negative integer'),
    ({'uid': ranges((0, 'x', 1)), 'gid': SHIFT['gid']}, r"^f.idmap.uid\[0\].target must be a non-negative integer, not 'x'$"),
    ({'uid': ranges((0, 1, 0)), 'gid': SHIFT['gid']}, r'^f.idmap.uid\[0\].count must be at least 1$'),
    ({'uid': SHIFT['uid'], 'gid': ranges((0, 4294901760, 65536))},
     r'^f.idmap.gid\[0\]: target 4294901760 \+ count 65536 runs past the last id 4294967294'),
    ({'uid': ranges((4294967295, 0, 1)), 'gid': SHIFT['gid']}, r'^f.idmap.uid\[0\]: start 4294967295 \+ count 1 runs past'),
    ({'uid': ranges((0, 100, 10), (5, 500, 10)), 'gid': SHIFT['gid']},
     r'^f.idmap.uid\[0\] and f.idmap.uid\[1\] overlap on the start side \(0..9 and 5..14\); the kernel refuses'),
    ({'uid': SHIFT['uid'], 'gid': ranges((100, 0, 10), (0, 5, 10))},
     r'^f.idmap.gid\[0\] and f.idmap.gid\[1\] overlap on the target side \(0..9 and 5..14\)'),
    ({'uid': ranges(*((index, index, 1) for index in range(341))), 'gid': SHIFT['gid']},
     r'^f.idmap.uid has 341 ranges; the kernel takes at most 340$'),
])
def test_a_bad_mapping_is_refused_naming_the_field(raw, message):
    with pytest.raises(IdMapError, match=message):
        parse_idmap(raw, 'f.idmap')


@given(st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 5000), st.integers(1, 50)), min_size=1, max_size=8))
def test_accepted_ranges_never_overlap_on_either_side(triples):
    try:
        idmap = parse_idmap({'uid': ranges(*triples), 'gid': ranges((0, 0, 1))}, 'x')
    except IdMapError:
        return
    for side in ('start', 'target'):
        seen = set()
        for one in idmap.uid:
            ids = set(range(getattr(one, side), getattr(one, side) + one.count))
            assert not ids & seen
            seen |= ids


def test_the_kernel_text_reads_back_as_the_same_ranges():
    idmap = parse_idmap({'uid': ranges((0, 100000, 65536), (65536, 7, 2)), 'gid': ranges((0, 1, 1))}, 'x')
    assert kernel_map(idmap.uid) == '0 100000 65536\n65536 7 2\n'
    assert parse_kernel_map(kernel_map(idmap.uid).splitlines()) == idmap.uid


def test_each_tree_and_layer_has_its_own_short_idmapped_mount_path():
    paths = {idmap_mount_path(root, layer) for root in ('/srv/a', '/srv/b') for layer in ('/srv/base', '/srv/base2')}
    assert len(paths) == 4
    assert all(path.startswith(IDMAP_DIR + '/') and len(path) < 80 for path in paths)
    assert idmap_mount_path('/srv/a', '/srv/base') == idmap_mount_path('/srv/a', '/srv/base')  # stable across runs


def test_shortfalls_compare_the_mapping_read_back_or_else_the_owner_of_the_root():
    idmap = parse_idmap(SHIFT, 'x')
    other = parse_idmap({'uid': ranges((0, 200000, 65536)), 'gid': ranges((0, 200000, 65536))}, 'x')
    entry = mountinfo.parse_line(IDMAPPED_LINE)
    assert idmap_shortfalls(entry, idmap, idmap, None, True) == []
    assert idmap_shortfalls(entry, idmap, other, None, True) == ['it maps uid 0->200000 (65536), gid 0->200000 (65536)']
    assert idmap_shortfalls(entry, idmap, None, ((0, 0), (100000, 100000)), True) == []
    assert idmap_shortfalls(entry, idmap, None, ((0, 0), (200000, 200000)), True) == [
        'its root, owned by 0:0 on disk, shows as 200000:200000, not 100000:100000']
    assert idmap_shortfalls(mountinfo.parse_line(PLAIN_LINE), idmap, None, ((0, 0), (0, 0)), True) == [
        'ext4 from /dev/sda1 is mounted there, not idmapped']
    assert idmap_shortfalls(None, idmap, None, None, True) == ['nothing is mounted there']


# --- in the tree ----------------------------------------------------------------------------------------------

def tree(**top):
    return dict({'upper': '/srv/u', 'work': '/srv/w', 'target': '/srv/t', 'lower': ['/srv/base']}, **top)


def test_the_top_level_idmap_applies_to_every_lower_without_its_own_nested_ones_too():
    own = {'uid': ranges((0, 5, 1)), 'gid': ranges((0, 5, 1))}
    nested = {'type': 'overlay', 'target': '/srv/n', 'lower': ['/srv/c', '/srv/d']}
    lowers = [{'type': 'dir', 'target': '/srv/b', 'idmap': own}, nested, {'type': 'mount', 'source': '/srv/s', 'target': '/srv/m'}]
    root = parse_filesystems([tree(idmap=SHIFT, lower=lowers)])[0]
    mapped = [node for node in root.walk() if node.kind == IDMAPPED]
    assert [(node.source, node.idmap.uid[0].target) for node in mapped] == [
        ('/srv/b', 5), ('/srv/c', 100000), ('/srv/d', 100000), ('/srv/m', 100000)]
    assert root.layer_paths() == [mapped[0].target, '/srv/n', mapped[3].target]
    assert root.lowers[1].layer_paths() == [mapped[1].target, mapped[2].target]
    assert [node.label for node in mapped][0] == 'filesystems[0].lower[0].idmap'


def test_an_idmapped_tree_renders_back_as_given():
    raw = tree(idmap=SHIFT, lower=[{'type': 'dir', 'target': '/srv/b', 'idmap': SHIFT}, '/srv/c',
                                   {'type': 'file', 'source': '/i.img', 'format': 'raw', 'target': '/srv/i',
                                    'idmap': SHIFT}])
    rendered = to_yaml(parse_filesystems([raw])[0])
    assert rendered['idmap'] == SHIFT
    assert rendered['lower'][0] == {'type': 'dir', 'target': '/srv/b', 'idmap': SHIFT}
    assert rendered['lower'][1] == '/srv/c'
    assert rendered['lower'][2]['idmap'] == SHIFT
    assert to_yaml(parse_filesystems([rendered])[0]) == rendered


def test_an_idmapped_layer_of_a_read_only_image_is_read_only():
    image = {'type': 'file', 'source': '/i.img', 'format': 'raw', 'target': '/srv/i'}
    mapped = parse_filesystems([tree(idmap=SHIFT, lower=[image, '/srv/c'])])[0].lowers[0]
    assert (mapped.kind, mapped.mounted_readonly) == (IDMAPPED, True)


@pytest.mark.parametrize('raw, message', [
    ({'type': 'mount', 'source': '/srv/s', 'target': '/srv/t', 'idmap': SHIFT},
     r'^filesystems\[0\].idmap: a top-level mount filesystem has no lower layers to idmap'),
    (tree(lower=[{'type': 'overlay', 'target': '/srv/n', 'lower': ['/srv/c', '/srv/d'], 'idmap': SHIFT}]),
     r'^filesystems\[0\].lower\[0\].idmap: an overlay cannot be idmapped itself'),
    (tree(idmap={'uid': SHIFT['uid']}), r'^filesystems\[0\].idmap.gid: an idmap needs at least one gid range'),
    (tree(lower=[{'type': 'dir', 'target': '/srv/b', 'idmap': {'uid': ranges((0, 1, 2), (1, 9, 1)), 'gid': SHIFT['gid']}}]),
     r'^filesystems\[0\].lower\[0\].idmap.uid\[0\] and filesystems\[0\].lower\[0\].idmap.uid\[1\] overlap'),
    (tree(idmap=SHIFT, lower=['/srv/b', '/srv/b/c']), r'^filesystems\[0\].lower\[1\]: /srv/b/c overlaps filesystems\[0\].lower\[0\]'),
])
def test_a_meaningless_or_bad_idmap_is_refused_before_anything_changes(raw, message):
    with pytest.raises(TreeError, match=message):
        parse_filesystems([raw])
