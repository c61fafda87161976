# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Every message the reference documents is one the code can still produce.

The reference's rule tables have a ``message`` column; each message in it must be an instance of a string literal
of the plugins, its ``%s``-style placeholders filled in. `…` stands for the label or path a run puts there, and a
leading `…: ` for the node a plan error names before the rule's own message.
"""

from __future__ import annotations

import ast
import glob
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
REFERENCE = os.path.join(REPO, 'docs', 'reference.md')
PLACEHOLDER = re.compile(r'%(?:\([a-z_]+\))?[-0-9.]*[sdrx]')


def code_patterns():
    literals = set()
    for path in glob.glob(os.path.join(REPO, 'plugins', '**', '*.py'), recursive=True):
        with open(path, encoding='utf-8') as handle:
            tree = ast.parse(handle.read())
        literals.update(node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
                        and isinstance(node.value, str) and len(PLACEHOLDER.sub('', node.value)) >= 12)
    return [re.compile('.*?'.join(re.escape(part.replace('%%', '%')) for part in PLACEHOLDER.split(literal)), re.S)
            for literal in literals]


def as_produced(message):
    """A documented message with its stand-ins filled in as a run would: with and without its node prefix."""
    filled = message.replace('…', 'X').replace('\\|', '|')
    return [filled, filled[len('X: '):]] if message.startswith('…: ') else [filled]


def documented_messages():
    """The messages of every table in the reference whose header has a ``message`` column."""
    with open(REFERENCE, encoding='utf-8') as handle:
        lines = handle.read().split('\n')
    messages, column = [], None
    for line in lines:
        if not line.startswith('|'):
            column = None
            continue
        cells = [cell.strip() for cell in re.split(r'(?<!\\)\|', line)[1:-1]]
        if 'message' in cells:
            column = cells.index('message')
        elif column is not None and not set(line) <= set('|- ') and len(cells) > column:
            messages += re.findall(r'`([^`]+)`', cells[column])
    return messages


def test_the_reference_documents_messages():
    assert len(documented_messages()) >= 50


def test_every_documented_message_is_one_the_code_produces():
    patterns = code_patterns()
    missing = [message for message in documented_messages()
               if not any(pattern.fullmatch(text) for pattern in patterns for text in as_produced(message))]
    assert missing == [], 'documented in docs/reference.md, but no string in plugins/ makes them:\n' + '\n'.join(missing)


def test_the_layout_tables_name_every_plugin_file():
    """README's layout and design.md's layers name each plugin file, by its path or (in a listed folder) its name."""
    with open(os.path.join(REPO, 'README.md'), encoding='utf-8') as handle:
        named = handle.read()
    with open(os.path.join(REPO, 'docs', 'design.md'), encoding='utf-8') as handle:
        named += handle.read()
    unnamed = []
    for path in sorted(glob.glob(os.path.join(REPO, 'plugins', '**', '*.py'), recursive=True)):
        if os.path.basename(path) == '__init__.py':
            continue
        relative = os.path.relpath(path, REPO)
        stem = os.path.splitext(os.path.basename(path))[0].lstrip('_')  # a private module is named without its _
        names = ('`%s`' % relative, '`%s`' % stem, '`%s.py`' % stem, '`%s`' % os.path.basename(path))
        if not any(name in named for name in names):
            unnamed.append(relative)
    assert unnamed == []
