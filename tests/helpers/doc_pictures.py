# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The docs' layer-stack pictures: one SVG per tree, drawn by the overlay_picture filter, linked below its tree.

The pictured trees are the ```xml blocks holding a ``<filesystem>`` in the reference's "Examples side by side"
section and on every recipe page. Each picture goes to docs/pictures/PAGE-SECTION[-K].svg and its link right below
the block (below the table that holds it, for the side-by-side tables). ``make pictures`` writes them; a unit test
checks that what is committed is what this writes.
"""

from __future__ import annotations

import glob
import os
import re
import sys
from xml.etree import ElementTree
from typing import NamedTuple

from ansible_collections.containerhost.overlayfs.plugins.filter.pictures import overlay_picture

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = os.path.join(REPO, 'docs')
PICTURES = os.path.join(DOCS, 'pictures')
SECTIONS = {'reference.md': 'Examples side by side'}  # pages pictured in one "## " section only; recipes: whole
LINK = re.compile(r'^!\[Layer stack[^\]]*\]\(pictures/[^)]+\.svg\)$')
SVG_TITLE = '{http://www.w3.org/2000/svg}title'


class Picture(NamedTuple):
    name: str  # file name under docs/pictures
    xml: str  # the tree, as the page shows it
    svg: str


def pictured_pages():
    return ['reference.md'] + sorted(os.path.basename(path) for path in glob.glob(os.path.join(DOCS, 'recipe-*.md')))


def render(page, text):
    """A page's text with a link below each pictured tree (old links dropped), and the pictures."""
    lines = _without_links(text.split('\n'))
    pictures, inserts, heading, count = [], [], None, {}
    section = SECTIONS.get(page)
    inside = section is None
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith('```'):
            end = lines.index('```', index + 1)  # headings and links are looked for outside code only
            if inside and line == '```xml' and lines[index + 1].startswith('<filesystem'):
                stem = '%s-%s' % (page[:-len('.md')], _slug(heading))
                count[stem] = count.get(stem, 0) + 1
                name = stem + ('-%d' % count[stem] if count[stem] > 1 else '') + '.svg'
                xml = '\n'.join(lines[index + 1:end])
                svg = overlay_picture(xml)
                pictures.append(Picture(name, xml, svg))
                inserts.append((_below(lines, end), '![%s](pictures/%s)' % (_title(svg), name)))
            index = end
        elif line.startswith('#'):
            heading = line.lstrip('#').strip()
            if line.startswith('## '):
                inside = section is None or heading == section
        index += 1
    for after, link in reversed(inserts):
        lines[after + 1:after + 1] = ['', link]
    return '\n'.join(lines), pictures


def _without_links(lines):
    kept = []
    for line in lines:
        if LINK.match(line):
            if kept and kept[-1] == '':
                kept.pop()
            continue
        kept.append(line)
    return kept


def _below(lines, end):
    """The line a block's picture goes after: the block's closing fence, or the end of the table it is in."""
    following = next((line for line in lines[end + 1:] if line.strip()), '')
    if following == '</td><td>':
        return next(index for index in range(end, len(lines)) if lines[index] == '</td></tr></table>')
    return end


def _slug(heading):
    return re.sub(r'[^a-z0-9]+', '-', heading.lower()).strip('-')


def _title(svg):
    return ElementTree.fromstring(svg).find(SVG_TITLE).text


def expected_files():
    """Every file the pictures make: {path: text}, the pages with their links included."""
    files = {}
    for page in pictured_pages():
        with open(os.path.join(DOCS, page), encoding='utf-8') as handle:
            text, pictures = render(page, handle.read())
        files[os.path.join(DOCS, page)] = text
        files.update((os.path.join(PICTURES, picture.name), picture.svg) for picture in pictures)
    return files


def main():
    files = expected_files()
    os.makedirs(PICTURES, exist_ok=True)
    for stale in set(glob.glob(os.path.join(PICTURES, '*.svg'))) - set(files):
        os.remove(stale)
    for path, text in sorted(files.items()):
        with open(path, 'w', encoding='utf-8') as handle:
            handle.write(text)
    print('%d pictures in %s' % (sum(path.endswith('.svg') for path in files), os.path.relpath(PICTURES, REPO)))


if __name__ == '__main__':
    sys.exit(main())
