# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A tree's layer stack as an SVG picture: what is mounted where, from which image or device, in which order.

Pure: a parsed tree (module_utils.tree._tree.Node) in, SVG text out. Each row of the picture is a ``<g>`` whose
``data-*`` attributes say what it shows (role, path, depth; for an image its format, driver and mount point; for
a nested overlay the kernel reads through its layers, flattened; for an idmapped layer its mapping and the path of
its idmapped mount), so a test can read the picture back and compare
it with the tree. Rows run top-down in the order overlayfs looks files up: the upper dir first, then the lowers in
order; a nested overlay is a framed stack of its own.
"""

from __future__ import annotations

from typing import NamedTuple, Optional
from xml.sax.saxutils import escape, quoteattr

from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._tree import IDMAPPED

ROW_HEIGHT = 26
INDENT = 18
MARGIN = 8
CHAR_WIDTH = 7.3  # 12px monospace
COLOURS = {  # fill, text
    'overlay': ('#37474f', '#ffffff'),
    'upper': ('#e8f5e9', '#1b5e20'),
    'readonly': ('#f5f5f5', '#424242'),
    'dir': ('#eceff1', '#263238'),
    'file': ('#fff3e0', '#e65100'),
    'block': ('#e3f2fd', '#0d47a1'),
    'mount': ('#f3e5f5', '#4a148c'),
    'bind': ('#f3e5f5', '#4a148c'),
}
MOUNT_KINDS = {'mount': 'bind mount', 'bind': 'bind mount inside the container', 'block': 'block device',
               'file': 'image'}
IMAGE_DRIVERS = {'loop': 'a loop device', 'nbd': 'qemu-nbd', 'fuse': "qemu-storage-daemon's FUSE export"}


class Row(NamedTuple):
    depth: int
    role: str  # a key of COLOURS
    text: str
    path: Optional[str]  # the path the row shows: a target, the upper dir, a lower dir, a source
    extra: tuple = ()  # further (name, value) data attributes


class Frame(NamedTuple):
    depth: int
    first: int  # row index of the overlay's header
    last: int


def printable(path):
    """A path as the picture shows it: control characters (which XML cannot carry) as \\xNN escapes."""
    return ''.join(char if ' ' <= char != '\x7f' else '\\x%02x' % ord(char) for char in path)


def layer_stack_svg(node):
    """The SVG picture of one parsed tree."""
    rows, frames = [], []
    if node.kind == 'overlay':
        _overlay_rows(node, 0, 'overlay', rows, frames)
        footer = 'files are looked up from the top row down; the first layer that has one wins'
    else:
        rows.append(Row(0, 'overlay', '%s at %s' % (MOUNT_KINDS[node.kind], printable(node.target)), node.target))
        rows.append(_source_row(node, 1, 'from ', at_target=False))
        frames.append(Frame(0, 0, 1))
        footer = 'one mount, no layers'
    return _svg(rows, frames, _title(node), footer)


def _title(node):
    kind = 'overlay' if node.kind == 'overlay' else MOUNT_KINDS[node.kind]
    return 'Layer stack of the %s at %s' % (kind, printable(node.target))


def _overlay_rows(node, depth, name, rows, frames, flattened=False):
    first = len(rows)
    note = '; flattened: the overlay above reads its layers directly' if flattened else ''
    rows.append(Row(depth, 'overlay', '%s at %s%s%s' % (name, printable(node.target), _options(node), note),
                    node.target, (('flattened', 'true'),) if flattened else ()))
    if node.upper:
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
        lower = layer.as_given
        if lower.kind == 'overlay':
            _overlay_rows(lower, depth + 1, name + 'overlay', rows, frames, lower.label in node.flattened)
        elif lower.kind == 'dir':
            mode = ' (read-only)' if lower.readonly else ''
            rows.append(_idmapped(Row(depth + 1, 'dir', '%sdir %s%s' % (name, printable(lower.target), mode),
                                      lower.target), layer))
        else:
            rows.append(_idmapped(_source_row(lower, depth + 1, name), layer))
    frames.append(Frame(depth, first, len(rows) - 1))


def _idmapped(row, layer):
    """A lower's row; for an idmapped layer, with the mapping its files' owners show through."""
    if layer.kind != IDMAPPED:
        return row
    return row._replace(text='%s; owners shown %s' % (row.text, layer.idmap.summary()),
                        extra=row.extra + (('idmap', layer.idmap.summary()), ('idmapped-at', layer.target)))


def _source_row(node, depth, prefix, at_target=True):
    """The row of a node mounted from something: an image, a block device, a host dir (``at_target``: where it is
    mounted, unless the row above says so)."""
    mode = (', at %s' % printable(node.target) if at_target else '') + (', read-only' if node.mounted_readonly else '')
    if node.kind == 'file':
        via = IMAGE_DRIVERS[node.driver]
        text = '%s%s image %s, through %s%s' % (prefix, node.image_format, printable(node.source), via, mode)
        extra = (('target', node.target), ('format', node.image_format), ('driver', node.driver))
    else:
        text = '%s%s %s%s' % (prefix, MOUNT_KINDS[node.kind], printable(node.source), mode)
        extra = (('target', node.target),)
    return Row(depth, node.kind, text, node.source, extra)


def _options(node):
    shown = ['%s=%s' % (key, value) if value is not True else key for key, value in sorted(node.options.items())]
    shown += ['read-only'] if node.readonly else []
    return ' (%s)' % ', '.join(shown) if shown else ''


def _svg(rows, frames, title, footer):
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
