# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import copy
import posixpath

import pytest
import yaml
from hypothesis import given, strategies as st

from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._paths import fold_path, is_within, path_and_ancestors
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._overlay import MAX_LOWER_LAYERS
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._tree import TreeError, parse_filesystems, to_yaml
from ansible_collections.containerhost.overlayfs.tests.helpers.trees import overlay

# The seed's three overlay shapes, written as a playbook would.
SEED_SIMPLE = '''
- type: overlay
  accessmode: passthrough
  upper: /upper
  work: /work
  lower: [/lower1, /lower2, /lower3]
  target: /merged
'''

SEED_NESTED = '''
- upper: /upper
  work: /work
  lower:
    - type: overlay
      upper: /backing/upper
      work: /backing/work
      lower: [/backing/lower1, /backing/lower2]
      target: /backing/merged
    - /lower2
    - type: dir
      target: /lower3
  target: /merged
'''

SEED_IMAGE = '''
- type: overlay
  upper: /upper
  work: /work
  lower:
    - type: file
      driver: nbd
      format: qcow2
      source: /guest.img
      target: /lower1
  target: /merged
'''


def refused(raw_list, *fragments, **kwargs):
    with pytest.raises(TreeError) as error:
        parse_filesystems(raw_list, **kwargs)
    message = str(error.value)
    for fragment in fragments:
        assert fragment in message, 'expected %r in %r' % (fragment, message)
    return message


# --- the seed's shapes ----------------------------------------------------------------------------

def test_parse_seed_simple_overlay():
    [root] = parse_filesystems(yaml.safe_load(SEED_SIMPLE))
    assert root.kind == 'overlay'
    assert (root.upper, root.work, root.target) == ('/upper', '/work', '/merged')
    assert root.layer_paths() == ['/lower1', '/lower2', '/lower3']
    assert [lower.kind for lower in root.lowers] == ['dir', 'dir', 'dir']
    assert root.accessmode == 'passthrough'
    assert root.label == 'filesystems[0]'


def test_parse_seed_nested_overlay():
    [root] = parse_filesystems(yaml.safe_load(SEED_NESTED))
    assert root.kind == 'overlay'  # the default top-level type
    nested = root.lowers[0]
    assert nested.kind == 'overlay' and nested.is_layer
    assert (nested.upper, nested.work, nested.target) == ('/backing/upper', '/backing/work', '/backing/merged')
    assert nested.layer_paths() == ['/backing/lower1', '/backing/lower2']
    assert nested.label == 'filesystems[0].lower[0]'
    assert root.layer_paths() == ['/backing/merged', '/lower2', '/lower3']
    assert [node.target for node in root.walk()] == ['/merged', '/backing/merged', '/backing/lower1',
                                                     '/backing/lower2', '/lower2', '/lower3']


def test_parse_seed_image_backed_overlay():
    [root] = parse_filesystems(yaml.safe_load(SEED_IMAGE))
    [image] = root.lowers
    assert (image.kind, image.driver, image.image_format, image.source, image.target) == \
        ('file', 'nbd', 'qcow2', '/guest.img', '/lower1')
    assert image.is_mounted_node
    assert root.layer_paths() == ['/lower1']


def test_raw_file_defaults_to_the_loop_driver():
    [root] = parse_filesystems([overlay('/m', [{'type': 'file', 'source': '/i.img', 'format': 'raw', 'target': '/l'}],
                                        '/u', '/w')])
    assert (root.lowers[0].driver, root.lowers[0].image_format) == ('loop', 'raw')


@pytest.mark.parametrize('raw', [
    {'type': 'mount', 'source': '/path/on/host', 'target': '/path/in/container', 'accessmode': 'passthrough'},
    {'type': 'bind', 'source': '/path/in/container', 'target': '/other/path'},
    {'type': 'block', 'source': '/dev/sdb1', 'target': '/path/in/container', 'readonly': True},
    {'type': 'file', 'driver': 'nbd', 'format': 'qcow2', 'source': '/file/guest.img', 'target': '/p'},
])
def test_parse_lxc_top_level_types(raw):
    [root] = parse_filesystems([raw])
    assert root.kind == raw['type']
    assert root.source == raw['source']
    assert to_yaml(root)['type'] == raw['type']


def test_single_filesystem_label():
    message = refused([overlay('/m', ['rel'], '/u', '/w')], 'filesystem.lower[0].target', label='filesystem')
    assert 'filesystems' not in message


# --- every error names the field --------------------------------------------------------------------

NESTED_BAD_WORK = overlay('/m', ['/l0', overlay('/n', ['/nl'], '/nu', 'nw')], '/u', '/w')


@pytest.mark.parametrize('raw_list, fragments', [
    ([overlay('/m', ['/l'], 'u', '/w')], ['filesystems[0].upper', 'not an absolute path']),
    ([overlay('/m', ['/l', 'l2'], '/u', '/w')], ['filesystems[0].lower[1].target', 'not an absolute path']),
    ([NESTED_BAD_WORK], ['filesystems[0].lower[1].work', 'not an absolute path']),
    ([overlay('/m', ['/l'], '/u', '/w'), overlay('relative', ['/l'], '/u2', '/w2')],
     ['filesystems[1].target', 'not an absolute path']),
    ([overlay('/srv/../etc', ['/l'], '/u', '/w')], ['filesystems[0].target', "'..'"]),
    ([overlay('/m', ['/l/../../etc'], '/u', '/w')], ['filesystems[0].lower[0].target', "'..'"]),
    ([overlay('/m', ['/l\0x'], '/u', '/w')], ['filesystems[0].lower[0].target', 'NUL']),
    ([overlay('/m', ['/l'], '/u', '/w\0')], ['filesystems[0].work', 'NUL']),
    ([{'upper': '/u', 'work': '/w', 'lower': ['/l']}], ['filesystems[0].target is required']),
    ([overlay('/m', [{'type': 'dir'}], '/u', '/w')], ['filesystems[0].lower[0].target is required']),
    ([overlay('/m', [{'type': 'file', 'format': 'raw', 'target': '/t'}], '/u', '/w')],
     ['filesystems[0].lower[0].source is required']),
    ([overlay('/m', ['/l'], '/u', None)], ['filesystems[0]', 'upper and work go together']),
    ([{'work': '/w', 'lower': ['/a', '/b'], 'target': '/m'}], ['filesystems[0]', 'upper and work go together']),
    ([overlay('/m', ['/l'])], ['filesystems[0].lower', 'at least 2 lower layers']),
    ([overlay('/m', [], '/u', '/w')], ['filesystems[0].lower must be a non-empty list']),
    ([overlay('/m', '/l', '/u', '/w')], ['filesystems[0].lower must be a non-empty list']),
    ([overlay('/m', ['/l%d' % i for i in range(MAX_LOWER_LAYERS + 1)], '/u', '/w')],
     ['filesystems[0].lower has 501 layers', 'at most 500']),
    ([overlay('/m', ['/l'], '/u', '/w', color='red')], ['filesystems[0]', 'unknown key color']),
    ([overlay('/m', [{'type': 'dir', 'target': '/l', 'source': '/s'}], '/u', '/w')],
     ['filesystems[0].lower[0]', 'unknown key source']),
    ([{'type': 'tmpfs', 'target': '/m'}], ['filesystems[0].type', "'tmpfs'"]),
    ([overlay('/m', [{'type': 'bind', 'source': '/s', 'target': '/l'}], '/u', '/w')],
     ['filesystems[0].lower[0].type', "'bind'"]),
    ([overlay('/m', [{'type': 'file', 'source': '/i.img', 'target': '/l'}], '/u', '/w')],
     ['filesystems[0].lower[0].format is required', 'never probed']),
    ([overlay('/m', [{'type': 'file', 'driver': 'loop', 'format': 'qcow2', 'source': '/i', 'target': '/l'}],
              '/u', '/w')], ['filesystems[0].lower[0].format', 'loop', 'qcow2']),
    ([overlay('/m', [{'type': 'file', 'format': 'qcow2', 'source': '/i', 'target': '/l'}], '/u', '/w')],
     ['filesystems[0].lower[0].driver', 'nbd and fuse serve']),
    ([overlay('/m', [{'type': 'file', 'driver': 'qemu', 'format': 'raw', 'source': '/i', 'target': '/l'}],
              '/u', '/w')], ['filesystems[0].lower[0].driver', "'qemu'"]),
    ([overlay('/m', ['/l'], '/u', '/w', options={'index': 'maybe'})], ['filesystems[0].options.index']),
    ([overlay('/m', ['/l'], '/u', '/w', options={'metacopy': True, 'redirect_dir': 'off'})],
     ['filesystems[0].options', 'metacopy=on', 'redirect_dir=off']),
    ([overlay('/m', ['/a', overlay('/n', ['/b', '/c'], options={'volatile': True})], '/u', '/w')],
     ['filesystems[0].lower[1].options.volatile']),
    ([overlay('/m', ['/l'], '/u', '/w', readonly='maybe')], ['filesystems[0].readonly must be true or false']),
    ([overlay('/m', ['/l'], '/u', '/w', accessmode='squash')], ['filesystems[0].accessmode', "'squash'"]),
    ([overlay('/m', [{'type': 'dir', 'target': '/l', 'accessmode': 'passthrough'}], '/u', '/w')],
     ['filesystems[0].lower[0]']),
    ([overlay('/m', [42], '/u', '/w')], ['filesystems[0].lower[0] must be a mapping or a path string']),
    ([overlay('/m', ['/l'], '/u', '/w', mount_flags=['nodev', 'ro'])],
     ['filesystems[0].mount_flags: ro is not one of nodev, nosuid, noexec', 'readonly: true']),
    ([overlay('/m', ['/l'], '/u', '/w', mount_flags='nodev')], ['filesystems[0].mount_flags must be a list']),
    ([overlay('/m', [overlay('/n', ['/a', '/b'], mount_flags=['nosuid'])], '/u', '/w')],
     ['filesystems[0].lower[0].mount_flags: only a top-level filesystem has mount flags']),
    (['/just/a/path'], ['filesystems[0] must be a mapping']),
    ([overlay('/m', ['/l'], ['/u'], '/w')], ['filesystems[0].upper must be a path string']),
    ([overlay('/m', ['/l'], '/w/u', '/w')], ['filesystems[0]', 'separate subtrees']),
    ([overlay('/m', ['/l'], '/u', '/u')], ['filesystems[0]', 'separate subtrees']),
])
def test_errors_name_the_field(raw_list, fragments):
    refused(raw_list, *fragments)


@pytest.mark.parametrize('raw_list', [[], None, {'target': '/m'}, 'x'])
def test_batch_must_be_a_non_empty_list(raw_list):
    refused(raw_list, 'filesystems must be a non-empty list')


@pytest.mark.parametrize('given, flags, shown', [
    (None, ('nodev',), None),  # the default: nodev, as containers/storage mounts a container's root
    (['noexec', 'nodev', 'nosuid'], ('nodev', 'nosuid', 'noexec'), ['nodev', 'nosuid', 'noexec']),
    ([], (), []),
])
def test_mount_flags_default_to_nodev_and_read_back_only_when_other(given, flags, shown):
    raw = overlay('/m', ['/l', overlay('/n', ['/a', '/b'])], '/u', '/w')
    if given is not None:
        raw['mount_flags'] = given
    [root] = parse_filesystems([raw])
    assert (root.mount_flags, root.lowers[1].mount_flags) == (flags, ())
    assert to_yaml(root).get('mount_flags') == shown


def test_exactly_500_lower_layers_are_accepted():
    [root] = parse_filesystems([overlay('/m', ['/l%d' % i for i in range(MAX_LOWER_LAYERS)], '/u', '/w')])
    assert len(root.lowers) == 500


def test_two_lowers_without_upper_are_accepted():
    [root] = parse_filesystems([overlay('/m', ['/a', '/b'])])
    assert root.upper is None and root.work is None


def test_overlay_nesting_two_deep_is_accepted():
    [root] = parse_filesystems([overlay('/m', [overlay('/n1', ['/a'], '/u1', '/w1')], '/u', '/w')])
    assert root.lowers[0].kind == 'overlay'


def test_overlay_nesting_three_deep_is_refused_at_the_third_level_without_flattening():
    innermost = overlay('/n2', ['/a'], '/u2', '/w2')
    middle = overlay('/n1', [innermost], '/u1', '/w1')
    with pytest.raises(TreeError, match=r'filesystems\[0\]\.lower\[1\]\.lower\[0\]: overlays nest at most 2 deep '
                                        r'.*flatten=true mounts deeper trees'):
        parse_filesystems([overlay('/m', ['/x', middle], '/u', '/w')], flatten=False)


def nested(depth):
    """An overlay ``depth`` deep: level i has upper /uI, work /wI, target /tI, and its lowers are the next level
    (if any) and the dir /dI."""
    tree = overlay('/t%d' % (depth - 1), ['/d%d' % (depth - 1)], '/u%d' % (depth - 1), '/w%d' % (depth - 1))
    for level in reversed(range(depth - 1)):
        tree = overlay('/t%d' % level, [tree, '/d%d' % level], '/u%d' % level, '/w%d' % level)
    return tree


def test_a_six_deep_tree_is_flattened_where_it_would_stack_past_the_kernel():
    [root] = parse_filesystems([nested(6)])
    levels = [root]
    while levels[-1].lowers[0].kind == 'overlay':
        levels.append(levels[-1].lowers[0])
    assert [level.stack_depth for level in levels] == [2, 2, 2, 2, 2, 1]
    # the two deepest levels nest as the kernel allows; above them, the level below stands in by its own layers
    assert levels[4].layer_paths() == ['/t5', '/d4'] and levels[4].flattened == []
    assert levels[3].layer_paths() == ['/u4', '/t5', '/d4', '/d3']
    assert levels[3].flattened == ['filesystems[0].lower[0].lower[0].lower[0].lower[0]']
    assert root.layer_paths() == ['/u1', '/u2', '/u3', '/u4', '/t5', '/d4', '/d3', '/d2', '/d1', '/d0']
    assert [level.target for level in root.walk() if level.kind == 'overlay'] == ['/t%d' % n for n in range(6)]


def test_an_overlay_without_an_upper_is_flattened_into_its_lowers_alone():
    inner = {'type': 'overlay', 'lower': [overlay('/n', ['/a'], '/nu', '/nw'), '/b'], 'target': '/r'}
    [root] = parse_filesystems([overlay('/m', [inner], '/u', '/w')])
    assert root.lowers[0].stack_depth == 2 and root.layer_paths() == ['/n', '/b']


def test_nesting_counts_overlays_not_other_layers():
    image = {'type': 'file', 'format': 'raw', 'source': '/i.img', 'target': '/img'}
    [root] = parse_filesystems([overlay('/m', [overlay('/n', [image, '/a'], '/u1', '/w1')], '/u', '/w')])
    assert root.lowers[0].lowers[0].kind == 'file'


# --- targets and paths ------------------------------------------------------------------------------

def test_duplicate_targets_across_a_batch_are_refused():
    refused([overlay('/m', ['/a'], '/u1', '/w1'), overlay('/m', ['/b'], '/u2', '/w2')],
            'filesystems[1]', 'target /m', 'filesystems[0]')


def test_duplicate_nested_target_across_a_batch_is_refused():
    refused([overlay('/m1', [overlay('/shared', ['/a'], '/su', '/sw')], '/u1', '/w1'),
             overlay('/m2', [overlay('/shared/', ['/b'], '/su2', '/sw2')], '/u2', '/w2')],
            'filesystems[1].lower[0]', 'target /shared', 'filesystems[0].lower[0]')


def test_duplicate_targets_are_compared_after_normalization():
    refused([overlay('/srv/m', ['/a'], '/u1', '/w1'), overlay('//srv//m/', ['/b'], '/u2', '/w2')],
            'filesystems[1]', 'target /srv/m')


def test_a_dir_lower_shared_by_two_trees_is_fine():
    roots = parse_filesystems([overlay('/m1', ['/base'], '/u1', '/w1'), overlay('/m2', ['/base'], '/u2', '/w2')])
    assert [root.target for root in roots] == ['/m1', '/m2']


@pytest.mark.parametrize('raw', [
    overlay('/l/merged', ['/l'], '/u', '/w'),
    overlay('/u/merged', ['/l'], '/u', '/w'),
    overlay('/w/merged', ['/l'], '/u', '/w'),
    overlay('/m', ['/m'], '/u', '/w'),
    overlay('/m', ['/a', overlay('/m/n', ['/b'], '/nu', '/nw')], '/u', '/w'),
    overlay('/m', ['/a', overlay('/n', ['/m/deep'], '/nu', '/nw')], '/u', '/w'),
    {'type': 'mount', 'source': '/srv/data', 'target': '/srv/data/inside'},
])
def test_target_inside_its_own_layers_is_refused(raw):
    refused([raw], 'filesystems[0]', 'overlaps its own')


def test_upper_under_a_target_of_the_same_tree_is_refused():
    # the nested overlay's upper lies under the image layer the top overlay mounts at /img
    image = {'type': 'file', 'format': 'raw', 'source': '/i.img', 'target': '/img'}
    nested = overlay('/b/merged', ['/b/l1'], '/img/upper', '/img/work')
    refused([overlay('/merged', [image, nested], '/u', '/w')],
            'filesystems[0].lower[1]', 'upper /img/upper', 'filesystems[0].lower[0]', 'mounts over')


def test_work_under_a_nested_target_is_refused():
    inner_image = {'type': 'file', 'format': 'raw', 'source': '/i.img', 'target': '/n/img'}
    nested = overlay('/n/merged', [inner_image, '/n/l'], '/n/u', '/n/w')
    refused([overlay('/merged', [nested], '/u', '/n/img/work')], 'work /n/img/work', 'mounts over')


@pytest.mark.parametrize('lowers, upper, work, fragments', [
    (['/srv/u'], '/srv/u', '/srv/w', ['filesystems[0].upper', 'filesystems[0].lower[0]']),
    (['/srv/u/sub'], '/srv/u', '/srv/w', ['filesystems[0].upper', 'filesystems[0].lower[0]']),
    (['/srv/w/sub'], '/srv/u', '/srv/w', ['filesystems[0].work', 'filesystems[0].lower[0]']),
    (['/srv/l', '/srv/l'], '/srv/u', '/srv/w', ['filesystems[0].lower[1]', 'filesystems[0].lower[0]']),
    (['/srv/l', '/srv/x', '/srv/l/sub'], '/srv/u', '/srv/w', ['filesystems[0].lower[2]', 'filesystems[0].lower[0]']),
    (['/srv/l/sub', '/srv/l'], None, None, ['filesystems[0].lower[1]', 'filesystems[0].lower[0]']),
])
def test_repeated_or_nested_layers_are_refused_naming_both(lowers, upper, work, fragments):
    # measured on 6.18: the kernel refuses each of these with ELOOP (conflicting/overlapping lowerdir path)
    refused([overlay('/srv/m', lowers, upper, work)], 'overlaps', *fragments)


def test_layers_of_a_nested_overlay_are_checked_with_its_own_label():
    nested = overlay('/n', ['/a', '/a'])
    refused([overlay('/m', [nested], '/u', '/w')], 'filesystems[0].lower[0].lower[1]')


# --- ordering -----------------------------------------------------------------------------------------

PATHS = ['/', '/a', '/a/b', '/a/bc', '/a/b/c', '/ab', '/a/b/c d', '/\u00e9/x']


@pytest.mark.parametrize('path', PATHS)
def test_the_ancestors_of_a_path_are_the_paths_it_is_within(path):
    assert list(path_and_ancestors(path)) == [other for other in sorted(PATHS + ['/\u00e9'], key=len, reverse=True)
                                              if is_within(path, other)]


def test_a_tree_on_another_trees_target_comes_after_it_regardless_of_input_order():
    top = overlay('/ct/rootfs', ['/shared/merged', '/base'], '/ct/u', '/ct/w')
    shared = overlay('/shared/merged', ['/images/base'], '/shared/u', '/shared/w')
    other = overlay('/other', ['/x', '/y'])
    for batch in ([top, shared, other], [shared, top, other], [other, top, shared]):
        roots = parse_filesystems(copy.deepcopy(batch))
        targets = [root.target for root in roots]
        assert targets.index('/shared/merged') < targets.index('/ct/rootfs'), targets
        assert sorted(targets) == ['/ct/rootfs', '/other', '/shared/merged']


def test_ordering_keeps_positions_of_the_input():
    top = overlay('/ct/rootfs', ['/shared/merged/sub'], '/ct/u', '/ct/w')
    shared = overlay('/shared/merged', ['/images/base'], '/shared/u', '/shared/w')
    roots = parse_filesystems([top, shared])
    assert [(root.target, root.position) for root in roots] == [('/shared/merged', 1), ('/ct/rootfs', 0)]
    assert [root.label for root in roots] == ['filesystems[1]', 'filesystems[0]']


def test_upper_on_another_trees_target_orders_after_it():
    data = {'type': 'block', 'source': '/dev/sdb1', 'target': '/data'}
    ct = overlay('/ct/rootfs', ['/base'], '/data/ct/u', '/data/ct/w')
    roots = parse_filesystems([ct, data])
    assert [root.target for root in roots] == ['/data', '/ct/rootfs']


def test_image_on_another_trees_target_orders_after_it():
    store = {'type': 'mount', 'source': '/srv/images', 'target': '/images'}
    ct = overlay('/ct/rootfs', [{'type': 'file', 'format': 'raw', 'source': '/images/base.img', 'target': '/ct/l'}],
                 '/ct/u', '/ct/w')
    roots = parse_filesystems([ct, store])
    assert [root.target for root in roots] == ['/images', '/ct/rootfs']


def test_a_target_under_another_trees_target_comes_after_it():
    # mounted in input order, the outer mount would hide the inner one
    inner = overlay('/srv/a/b', ['/srv/l2'], '/srv/u2', '/srv/w2')
    outer = overlay('/srv/a', ['/srv/l1'], '/srv/u1', '/srv/w1')
    for batch in ([inner, outer], [outer, inner]):
        roots = parse_filesystems(copy.deepcopy(batch))
        assert [root.target for root in roots] == ['/srv/a', '/srv/a/b']


def test_a_nested_target_under_another_trees_target_comes_after_it():
    ct = overlay('/ct/rootfs', ['/base', overlay('/data/shared/merged', ['/images/a', '/images/b'])], '/ct/u', '/ct/w')
    data = {'type': 'block', 'source': '/dev/sdb1', 'target': '/data'}
    roots = parse_filesystems([ct, data])
    assert [root.target for root in roots] == ['/data', '/ct/rootfs']


def test_a_dependency_cycle_is_refused_and_named():
    one = overlay('/one', ['/two', '/x'])
    two = overlay('/two', ['/one', '/y'])
    message = refused([one, two], 'cycle', 'filesystems[0] (/one)', 'filesystems[1] (/two)')
    assert message.count('->') == 2


def test_a_three_tree_cycle_is_refused():
    refused([overlay('/a', ['/c/x', '/l']), overlay('/b', ['/a', '/l']), overlay('/c', ['/b', '/l'])], 'cycle')


# --- canonical YAML -----------------------------------------------------------------------------------

def canonical(raw_list):
    return [to_yaml(root) for root in sorted(parse_filesystems(raw_list), key=lambda root: root.position)]


ROUND_TRIP_CASES = [
    yaml.safe_load(SEED_SIMPLE),
    yaml.safe_load(SEED_NESTED),
    yaml.safe_load(SEED_IMAGE),
    [overlay('/m', [{'type': 'dir', 'target': '/l', 'readonly': True},
                    {'type': 'block', 'source': '/dev/sdb1', 'target': '/blk', 'readonly': True},
                    {'type': 'mount', 'source': '/host', 'target': '/bnd'},
                    {'type': 'file', 'format': 'raw', 'source': '/i.img', 'target': '/img'}],
             '/u', '/w', options={'index': False, 'volatile': True, 'redirect_dir': 'nofollow'},
             readonly=True, accessmode='passthrough')],
    [{'type': 'mount', 'source': '/a b', 'target': '/c,d:e'}, overlay('/x\ny', ['/p\\q', '/r=s'])],
]


@pytest.mark.parametrize('raw_list', ROUND_TRIP_CASES)
def test_to_yaml_round_trips(raw_list):
    first = canonical(copy.deepcopy(raw_list))
    second = canonical(copy.deepcopy(first))
    assert first == second
    assert canonical(yaml.safe_load(yaml.safe_dump(first))) == first


def test_to_yaml_canonical_form():
    [form] = canonical(yaml.safe_load(SEED_NESTED))
    assert form == {
        'type': 'overlay',
        'upper': '/upper',
        'work': '/work',
        'lower': [
            {'type': 'overlay', 'upper': '/backing/upper', 'work': '/backing/work',
             'lower': ['/backing/lower1', '/backing/lower2'], 'target': '/backing/merged'},
            '/lower2',
            '/lower3',
        ],
        'target': '/merged',
    }


def test_to_yaml_writes_options_in_kernel_spelling():
    [form] = canonical([overlay('/m', ['/l'], '/u', '/w', options={'index': False, 'volatile': True})])
    assert form['options'] == {'index': 'off', 'volatile': 'on'}


@pytest.mark.parametrize('given, normalized', [
    ('//srv//merged/', '/srv/merged'),
    ('/srv/merged/', '/srv/merged'),
    ('///srv/./merged//', '/srv/merged'),
    ('//srv', '/srv'),
])
def test_double_slash_and_trailing_slash_are_normalized(given, normalized):
    [form] = canonical([overlay(given, ['//lower//a/', '/lower/b/.'], '//u//x/', '/w/')])
    assert form['target'] == normalized
    assert form['lower'] == ['/lower/a', '/lower/b']
    assert form['upper'] == '/u/x'
    assert form['work'] == '/w'


@given(st.text(alphabet='/.a', max_size=12).map(lambda tail: '/' + tail).filter(lambda path: '..' not in path.split('/')))
def test_fold_path_agrees_with_normpath_on_every_spelling(path):
    """Its shortcut for paths already folded gives what normpath gives (less a leading '//'); '..' is refused
    before it."""
    folded = posixpath.normpath(path)
    assert fold_path(path) == '/' + folded.lstrip('/')


@pytest.mark.parametrize('spelling, value', [('yes', True), ('true', True), ('on', True), ('no', False), (0, False)])
def test_readonly_takes_the_boolean_spellings_ansible_takes(spelling, value):
    tree = parse_filesystems([{'lower': ['/a', '/b'], 'target': '/m', 'readonly': spelling}])[0]
    assert tree.readonly is value


@pytest.mark.parametrize('flatten, refused_at, rule', [
    (False, 2, 'at most 2 deep'),
    (True, 100, 'at most 100 deep, flattened'),
])
def test_a_tree_nested_thousands_deep_is_refused_before_descending_into_it(flatten, refused_at, rule):
    tree = {'lower': ['/a', '/b'], 'target': '/t'}
    for index in range(5000):
        tree = {'lower': [dict(tree, type='overlay'), '/x%d' % index], 'target': '/t%d' % index}
    with pytest.raises(TreeError, match=r'filesystems\[0\]%s: overlays nest %s' % (r'\.lower\[0\]' * refused_at, rule)):
        parse_filesystems([tree], flatten=flatten)


def test_flattening_past_the_kernel_lower_limit_is_refused_naming_what_was_flattened():
    with pytest.raises(TreeError, match=r'with the nested overlays filesystems\[0\]\.lower\[0\] flattened into it, it '
                                        r'has 501 layers; the kernel allows at most 500'):
        parse_filesystems([overlay('/m', [overlay('/n', [overlay('/o', ['/a'], '/ou', '/ow')] +
                                                  ['/l%d' % n for n in range(499)], '/nu', '/nw')], '/u', '/w')])


@pytest.mark.parametrize('second_upper, second_work', [
    ('/srv/a/upper', '/srv/b/work'),        # the same upper
    ('/srv/b/upper', '/srv/a/work'),        # the same work
    ('/srv/a/upper/deeper', '/srv/b/work'),  # inside the other's upper
    ('/srv/a', '/srv/b/work'),              # containing the other's upper and work
])
def test_two_overlays_of_a_batch_cannot_share_upper_or_work_dirs(second_upper, second_work):
    first = {'upper': '/srv/a/upper', 'work': '/srv/a/work', 'lower': ['/srv/l1'], 'target': '/srv/a/m'}
    second = {'upper': second_upper, 'work': second_work, 'lower': ['/srv/l1'], 'target': '/srv/b/m'}
    with pytest.raises(TreeError, match=r'filesystems\[1\]: (upper|work) .* overlaps the (upper|work) .* of '
                                        r'filesystems\[0\]; overlays cannot share upper or work dirs'):
        parse_filesystems([first, second])


def test_overlays_with_their_own_upper_dirs_side_by_side_are_fine():
    trees = [{'upper': '/srv/%s/upper' % name, 'work': '/srv/%s/work' % name, 'lower': ['/srv/l1'],
              'target': '/srv/%s/m' % name} for name in ('a', 'ab', 'b')]
    assert len(parse_filesystems(trees)) == 3


def test_a_flattened_upper_that_overlaps_a_layer_of_the_overlay_above_is_refused_naming_both():
    inner = overlay('/srv/n1', [overlay('/srv/n2', ['/srv/a'], '/srv/u2', '/srv/w2')], '/srv/x/u1', '/srv/w1')
    refused([overlay('/srv/m', [inner, '/srv/x'], '/srv/u', '/srv/w')],
            'filesystems[0].lower[1]: /srv/x overlaps filesystems[0].lower[0].upper /srv/x/u1; the kernel refuses '
            'repeated or nested layers')


def test_layers_are_checked_in_linear_time_a_500_layer_overlay_included():
    lowers = ['/srv/l%d/deeper/still' % number for number in range(499)] + ['/srv/l7/deeper']
    refused([overlay('/srv/m', lowers, '/srv/u', '/srv/w')],
            'filesystems[0].lower[499]: /srv/l7/deeper overlaps filesystems[0].lower[7] /srv/l7/deeper/still')
