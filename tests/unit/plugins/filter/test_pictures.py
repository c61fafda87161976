# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""overlay_picture draws what the tree says, row by row, and the docs' pictures are the ones it draws."""

from __future__ import annotations

import glob
import itertools
import os
import re
from xml.etree import ElementTree

import pytest
import yaml
from hypothesis import given, strategies as st

from ansible.errors import AnsibleFilterError

from ansible_collections.containerhost.overlayfs.plugins.filter.pictures import overlay_picture
from ansible_collections.containerhost.overlayfs.plugins.filter.trees import overlay_trees
from ansible_collections.containerhost.overlayfs.tests.helpers import doc_pictures
from ansible_collections.containerhost.overlayfs.tests.helpers.trees import canonical, overlay

SVG = '{http://www.w3.org/2000/svg}'
SEEDS = sorted(glob.glob(os.path.join(doc_pictures.REPO, 'examples', 'seed', '*.xml')))


def svg_rows(svg):
    """The rows of a picture, top-down: each row's data-* attributes."""
    rows = ElementTree.fromstring(svg).iter(SVG + 'g')
    return [{name[len('data-'):]: value for name, value in row.attrib.items() if name.startswith('data-')}
            for row in rows if row.get('class') == 'layer']


def expected_rows(tree):
    """The rows a canonical YAML tree should get, walked here without the picture's code: the overlay's header,
    its upper dir (or the read-only row), then its lowers in order, a nested overlay's rows framed within."""
    if tree['type'] != 'overlay':
        return [{'role': 'overlay', 'depth': '0', 'path': tree['target']}, _source_row(tree, 1)]
    return _overlay_rows(tree, 0)


def _overlay_rows(tree, depth):
    rows = [{'role': 'overlay', 'depth': str(depth), 'path': tree['target']}]
    if 'upper' in tree:
        rows.append({'role': 'upper', 'depth': str(depth + 1), 'path': tree['upper'], 'work': tree['work']})
    else:
        rows.append({'role': 'readonly', 'depth': str(depth + 1)})
    for lower in tree['lower']:
        if isinstance(lower, str) or lower['type'] == 'dir':
            path = lower if isinstance(lower, str) else lower['target']
            rows.append({'role': 'dir', 'depth': str(depth + 1), 'path': path})
        elif lower['type'] == 'overlay':
            rows += _overlay_rows(lower, depth + 1)
        else:
            rows.append(_source_row(lower, depth + 1))
    return rows


def _source_row(tree, depth):
    row = {'role': tree['type'], 'depth': str(depth), 'path': tree['source'], 'target': tree['target']}
    if tree['type'] == 'file':
        row.update(format=tree['format'], driver=tree['driver'])
    return row


def without_flattened(rows):
    return [{name: value for name, value in row.items() if name != 'flattened'} for row in rows]


@st.composite
def trees(draw):
    """Valid trees of every kind and nesting, with paths that never overlap."""
    paths = ('/t/%d' % number for number in itertools.count())
    top = draw(st.sampled_from(['overlay'] * 4 + ['mount', 'bind', 'block', 'file']))
    if top != 'overlay':
        return dict(_mounted(draw, top, paths), accessmode='passthrough') if draw(st.booleans()) else \
            _mounted(draw, top, paths)
    return _overlay(draw, paths, draw(st.integers(0, 3)))


def _overlay(draw, paths, depth):
    kinds = ['dir', 'readonly dir', 'mount', 'block', 'file'] + (['overlay'] if depth else [])
    chosen = draw(st.lists(st.sampled_from(kinds), min_size=2, max_size=4))
    lowers = [_lower(draw, kind, paths, depth) for kind in chosen]
    if draw(st.booleans()):
        return overlay(next(paths), lowers, next(paths), next(paths))
    return overlay(next(paths), lowers)


def _lower(draw, kind, paths, depth):
    if kind == 'dir':
        return next(paths)
    if kind == 'readonly dir':
        return {'type': 'dir', 'target': next(paths), 'readonly': True}
    if kind == 'overlay':
        return _overlay(draw, paths, depth - 1)
    return _mounted(draw, kind, paths)


def _mounted(draw, kind, paths):
    tree = {'type': kind, 'source': next(paths), 'target': next(paths)}
    if kind == 'file':
        driver = draw(st.sampled_from(['loop', 'nbd', 'fuse']))
        tree.update(driver=driver, format='raw' if driver == 'loop' else draw(st.sampled_from(['raw', 'qcow2'])))
    return tree


@given(trees())
def test_the_rows_are_the_trees_layers_in_lookup_order(raw):
    tree = canonical(raw)
    assert without_flattened(svg_rows(overlay_picture(raw))) == expected_rows(tree)


@pytest.mark.parametrize('seed', SEEDS, ids=os.path.basename)
def test_a_seed_pictured_from_xml_is_the_one_pictured_from_its_yaml(seed):
    with open(seed, encoding='utf-8') as handle:
        xml = handle.read()
    tree, = overlay_trees(xml)
    assert overlay_picture(xml) == overlay_picture(tree)
    assert without_flattened(svg_rows(overlay_picture(xml))) == expected_rows(tree)


def test_the_overlays_flattened_into_the_one_above_are_marked():
    tree = '/t/base'
    for level in range(6, 0, -1):  # level 6 innermost; 1 the top
        tree = overlay('/t/%d/merged' % level, [tree, '/t/%d/lower' % level], '/t/%d/upper' % level,
                       '/t/%d/work' % level)
    rows = svg_rows(overlay_picture(tree))
    headers = [row for row in rows if row['role'] == 'overlay']
    # the kernel stacks two overlays: every nested overlay that already stacks two is read through its layers
    assert [row.get('flattened') for row in headers] == [None, 'true', 'true', 'true', 'true', None]
    assert [row['path'] for row in headers] == ['/t/%d/merged' % level for level in range(1, 7)]


def test_paths_with_control_and_markup_characters_are_escaped_and_read_back():
    tree = overlay('/t/a&b <c>', ["/t/it's \"quoted\"", '/t/tab\there'], '/t/up\x01per', '/t/work')
    rows = svg_rows(overlay_picture(tree))  # it parses: nothing XML cannot carry is in it
    assert [row['path'] for row in rows] == ['/t/a&b <c>', '/t/up\\x01per', "/t/it's \"quoted\"", '/t/tab\\x09here']


@pytest.mark.parametrize('value, message', [
    ([{'lower': ['/a', '/b'], 'target': '/m'}], 'takes one tree, a mapping or an XML string, not list'),
    ("<filesystems><filesystem type='mount'><source dir='/a'/><target dir='/b'/></filesystem>"
     "<filesystem type='mount'><source dir='/c'/><target dir='/d'/></filesystem></filesystems>",
     'the XML holds 2 filesystems; it takes one'),
    ({'lower': ['/a'], 'target': '/m'}, 'filesystem.lower: an overlay without an upper dir needs at least 2'),
    ("<filesystem type='overlay'><target dir='/m'/>", 'overlay_picture: '),
])
def test_bad_input_is_refused_naming_what_is_wrong(value, message):
    with pytest.raises(AnsibleFilterError, match='^overlay_picture: ') as error:
        overlay_picture(value)
    assert message in str(error.value)


def test_the_docs_pictures_are_the_ones_the_trees_draw():
    for path, text in doc_pictures.expected_files().items():
        assert os.path.exists(path), '%s is missing: run make pictures' % path
        with open(path, encoding='utf-8') as handle:
            assert handle.read() == text, '%s is not what make pictures writes' % path
    drawn = {path for path in doc_pictures.expected_files() if path.endswith('.svg')}
    assert set(glob.glob(os.path.join(doc_pictures.PICTURES, '*.svg'))) == drawn


def test_every_seed_example_and_every_recipe_page_is_pictured():
    pictured = {}
    for page in doc_pictures.pictured_pages():
        with open(os.path.join(doc_pictures.DOCS, page), encoding='utf-8') as handle:
            pictured[page] = doc_pictures.render(page, handle.read())[1]
    assert all(pictured[page] for page in pictured if page.startswith('recipe-')), pictured
    pictured_trees = [overlay_trees(picture.xml) for pictures in pictured.values() for picture in pictures]
    for seed in SEEDS:
        with open(seed, encoding='utf-8') as handle:
            assert overlay_trees(handle.read()) in pictured_trees, seed


def test_each_side_by_side_xml_and_yaml_are_one_tree():
    with open(os.path.join(doc_pictures.DOCS, 'reference.md'), encoding='utf-8') as handle:
        pairs = re.findall(r'```xml\n(<filesystem.*?)\n```\n\n</td><td>\n\n```yaml\n(.*?)\n```', handle.read(), re.S)
    assert len(pairs) >= 12
    for xml, text in pairs:
        assert overlay_trees(xml) == overlay_trees(yaml.safe_load(text)), xml


def test_an_idmapped_layer_shows_its_mapping_and_the_mount_its_overlay_reads():
    shift = {'uid': [{'start': 0, 'target': 100000, 'count': 65536}], 'gid': [{'start': 0, 'target': 100000, 'count': 65536}]}
    own = {'uid': [{'start': 0, 'target': 5, 'count': 1}], 'gid': [{'start': 0, 'target': 5, 'count': 1}]}
    tree = dict(overlay('/t/merged', ['/t/base', {'type': 'dir', 'target': '/t/own', 'idmap': own},
                                      overlay('/t/n', ['/t/a', '/t/b'])], '/t/upper', '/t/work'), idmap=shift)
    rows = svg_rows(overlay_picture(tree))
    assert [(row.get('path'), row.get('idmap')) for row in rows] == [
        ('/t/merged', None), ('/t/upper', None),
        ('/t/base', 'uid 0->100000 (65536), gid 0->100000 (65536)'), ('/t/own', 'uid 0->5 (1), gid 0->5 (1)'),
        ('/t/n', None), (None, None), ('/t/a', 'uid 0->100000 (65536), gid 0->100000 (65536)'),
        ('/t/b', 'uid 0->100000 (65536), gid 0->100000 (65536)')]
    assert all(row['idmapped-at'].startswith('/run/containerhost-overlayfs/idmap/') for row in rows if 'idmap' in row)
    assert "writes land here with the writer's host ids" in overlay_picture(tree)
