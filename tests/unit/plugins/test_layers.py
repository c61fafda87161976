# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The layers of docs/design.md are the code's: every plugin file lies in a layer's folder, and imports only the
layers its layer's row allows. The table is the rule; this test reads it."""

from __future__ import annotations

import ast
import glob
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DESIGN = os.path.join(REPO, 'docs', 'design.md')
COLLECTION = 'ansible_collections.containerhost.overlayfs.'


def layer_table():
    """{layer: (its folders, the layers it may import)} from the design's table whose header has 'may import'."""
    with open(DESIGN, encoding='utf-8') as handle:
        lines = handle.read().split('\n')
    start = next(index for index, line in enumerate(lines) if line.startswith('| layer | folder |'))
    table = {}
    for line in lines[start + 2:]:
        if not line.startswith('|'):
            break
        layer, folders, _job, allowed = [cell.strip() for cell in line.strip('|').split('|')]
        table[layer] = (re.findall(r'`([^`]+)`', folders), set(name.strip() for name in allowed.split(',') if name.strip()))
    return table


def layer_of(path, table):
    """The layer whose folder holds the file (a folder's own files, not its subfolders')."""
    folder = os.path.dirname(os.path.relpath(path, REPO))
    return next((layer for layer, (folders, _allowed) in table.items() if folder in folders), None)


def collection_imports(path):
    """The plugin files a source imports, by their path in the repository (a module or a package)."""
    with open(path, encoding='utf-8') as handle:
        tree = ast.parse(handle.read())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            found.append('relative import in %s' % path)  # layer_of() places it in no layer: a failure
        elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith(COLLECTION):
            module = os.path.join(REPO, *node.module[len(COLLECTION):].split('.'))
            found += [module + '.py'] if os.path.exists(module + '.py') else [
                os.path.join(module, alias.name + '.py') for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [os.path.join(REPO, *alias.name[len(COLLECTION):].split('.')) + '.py'
                      for alias in node.names if alias.name.startswith(COLLECTION)]
    return found


def plugin_files():
    return sorted(path for path in glob.glob(os.path.join(REPO, 'plugins', '**', '*.py'), recursive=True)
                  if os.path.basename(path) != '__init__.py' and '/doc_fragments/' not in path)


def test_the_table_has_the_layers():
    table = layer_table()
    assert {'kernel', 'host', 'boot', 'steps', 'tree', 'plan', 'apply', 'controller'} <= set(table)
    for layer, (_folders, allowed) in table.items():
        assert allowed <= set(table), (layer, allowed - set(table))


def test_every_plugin_file_lies_in_a_layer():
    table = layer_table()
    assert [os.path.relpath(path, REPO) for path in plugin_files() if layer_of(path, table) is None] == []


def test_no_import_goes_against_the_grain():
    table = layer_table()
    against = []
    for path in plugin_files():
        layer = layer_of(path, table)
        for imported in collection_imports(path):
            other = layer_of(imported, table)
            if other != layer and other not in table[layer][1]:
                against.append('%s (%s) imports %s (%s)' % (os.path.relpath(path, REPO), layer,
                                                            os.path.relpath(imported, REPO), other))
    assert against == []


@pytest.mark.parametrize('source, allowed', [
    ('from ansible_collections.containerhost.overlayfs.plugins.module_utils.plan._planner import plan\n', False),
    ('from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel import _options\n', True),
    ('from ._options import OverlayPayload\n', False),
])
def test_the_check_catches_an_import_against_the_grain(tmp_path, source, allowed):
    """A kernel module importing the planner is against the grain, and a relative import goes nowhere the table
    allows; importing a kernel module is not."""
    table = layer_table()
    probe = tmp_path / '_probe.py'
    probe.write_text(source)
    [imported] = collection_imports(str(probe))
    assert (layer_of(imported, table) in table['kernel'][1] | {'kernel'}) is allowed
