# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A tree's layer stack as an SVG picture: what is mounted where, from which image or device, in which order.

Pure: a parsed tree (module_utils.tree._node.Node) in, SVG text out. Each row of the picture is a ``<g>`` whose
``data-*`` attributes say what it shows (role, path, depth; for an image its format, driver and mount point; for
a nested overlay the kernel reads through its layers, flattened; for an idmapped layer its mapping and the path of
its idmapped mount), so a test can read the picture back and compare
it with the tree. Rows run top-down in the order overlayfs looks files up: the upper dir first, then the lowers in
order; a nested overlay is a framed stack of its own.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple
from xml.sax.saxutils import escape, quoteattr

from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._kinds import BY_TYPE
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._node import Node
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._overlay import Overlay

ROW_HEIGHT = 26
INDENT = 18
MARGIN = 8
CHAR_WIDTH = 7.3  # 12px monospace
# fill, text: of the rows of an overlay's upper dir (or its absence), then of each kind's rows
COLOURS = dict({
    'upper': ('#e8f5e9', '#1b5e20'),
    'readonly': ('#f5f5f5', '#424242'),
}, **dict((name, kind.PICTURE_COLOURS) for name, kind in BY_TYPE.items()))


class Row(NamedTuple):
    depth: int
    role: str  # a key of COLOURS
    text: str
    path: Optional[str]  # the path the row shows: a target, the upper dir, a lower dir, a source
    extra: Tuple[Tuple[str, str], ...] = ()  # further (name, value) data attributes


class Frame(NamedTuple):
    depth: int
    first: int  # row index of the overlay's header
    last: int


def printable(path: str) -> str:
    """A path as the picture shows it: control characters (which XML cannot carry) as \\xNN escapes."""
    return ''.join(char if ' ' <= char != '\x7f' else '\\x%02x' % ord(char) for char in path)


def layer_stack_svg(node: Node) -> str:
    """The SVG picture of one parsed tree."""
    rows: List[Row] = []
    frames: List[Frame] = []
    if isinstance(node, Overlay):  # a stack of layers; any other kind is one mount
        _overlay_rows(node, 0, 'overlay', rows, frames)
        footer = 'files are looked up from the top row down; the first layer that has one wins'
    else:
        rows.append(Row(0, 'overlay', '%s at %s' % (node.PICTURE_NAME, printable(node.target)), node.target))
        rows.append(_row(node, 1, 'from ', at_target=False))
        frames.append(Frame(0, 0, 1))
        footer = 'one mount, no layers'
    return _svg(rows, frames, 'Layer stack of the %s at %s' % (node.PICTURE_NAME, printable(node.target)), footer)


def _overlay_rows(node: Overlay, depth: int, name: str, rows: List[Row], frames: List[Frame],
                  flattened: bool = False) -> None:
    first = len(rows)
    note = '; flattened: the overlay above reads its layers directly' if flattened else ''
    rows.append(Row(depth, 'overlay', '%s at %s%s%s' % (name, printable(node.target), _options(node), note),
                    node.target, (('flattened', 'true'),) if flattened else ()))
    if node.upper and node.work:  # they go together
        # a nested overlay's upper takes the writes made through that overlay's own target, not the tree's
        writes = ': writes land here' if depth == 0 else ''
        if depth == 0 and node.idmap:
            writes += " with the writer's host ids"
        rows.append(Row(depth + 1, 'upper', 'upper %s%s (work dir %s)'
                        % (printable(node.upper), writes, printable(node.work)), node.upper, (('work', node.work),)))
    else:
        rows.append(Row(depth + 1, 'readonly', 'no upper dir: read-only', None))
    for position, layer in enumerate(node.lowers, 1):
        name = 'lower %d: ' % position
        if isinstance(layer, Overlay):  # a nested overlay is used as it is (never idmapped itself)
            _overlay_rows(layer, depth + 1, name + 'overlay', rows, frames, layer.label in node.flattened)
        else:
            rows.append(_row(layer, depth + 1, name))
    frames.append(Frame(depth, first, len(rows) - 1))


def _row(node: Node, depth: int, prefix: str, at_target: bool = True) -> Row:
    """The row of a node that is not a stack: its kind's (``at_target``: the row says where it is mounted, unless
    the row above does)."""
    text, path, extra = node.picture_row(at_target)
    return Row(depth, node.as_given.kind, printable(prefix + text), path, extra)


def _options(node: Overlay) -> str:
    shown = ['%s=%s' % (key, value) if value is not True else key for key, value in sorted(node.options.items())]
    shown += ['read-only'] if node.readonly else []
    return ' (%s)' % ', '.join(shown) if shown else ''


def _svg(rows: List[Row], frames: List[Frame], title: str, footer: str) -> str:
    width = int(max([MARGIN * 2 + row.depth * INDENT + 16 + len(row.text) * CHAR_WIDTH for row in rows]
                    + [MARGIN * 2 + len(footer) * CHAR_WIDTH]))
    height = MARGIN * 2 + len(rows) * ROW_HEIGHT + ROW_HEIGHT
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
             'font-family="monospace" font-size="12" role="img">' % (width, height, width, height),
             '<title>%s</title>' % escape(title)]
    for frame in frames:
        x = MARGIN + frame.depth * INDENT
        parts.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#37474f" stroke-width="1.5"/>'
                     % (x, MARGIN + frame.first * ROW_HEIGHT, width - MARGIN - x,
                        (frame.last - frame.first + 1) * ROW_HEIGHT))
    for index, row in enumerate(rows):
        fill, ink = COLOURS[row.role]
        x, y = MARGIN + row.depth * INDENT, MARGIN + index * ROW_HEIGHT
        attributes = [('role', row.role), ('depth', str(row.depth))] + ([('path', row.path)] if row.path else [])
        attributes += list(row.extra)
        parts.append('<g class="layer" %s>' % ' '.join('data-%s=%s' % (name, quoteattr(printable(value)))
                                                       for name, value in attributes))
        parts.append('<rect x="%d" y="%d" width="%d" height="%d" fill="%s"/>'
                     % (x + 1, y + 1, width - MARGIN - x - 2, ROW_HEIGHT - 2, fill))
        parts.append('<text x="%d" y="%d" fill="%s">%s</text></g>' % (x + 8, y + 17, ink, escape(row.text)))
    parts.append('<text x="%d" y="%d" fill="#546e7a" font-size="11">%s</text>' % (MARGIN, height - MARGIN - 6, footer))
    parts.append('</svg>')
    return '\n'.join(parts) + '\n'
