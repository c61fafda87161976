# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The user guides of docs/*.md as the RST pages of the docsite (docs/docsite/rst), which antsibull-docs takes.

The Markdown in docs/ is the one source; this converts it with pandoc (pinned, from pypandoc-binary in
requirements/docs.txt) and rewrites what RST on the docsite reaches differently: links between guides go to their
pages, links to other files of the repository to the repository, and each layer-stack picture is inlined as SVG
(antsibull-docs copies only the .rst files). Each page gets the label antsibull-docs requires.

    python scripts/docsite.py write   # rewrite docs/docsite/rst (make docs-rst)
    python scripts/docsite.py check   # fail if what is committed is not what write writes (make docs)
    python scripts/docsite.py links HTML_DIR   # every link of the built guides reaches a page and a section
"""

from __future__ import annotations

import functools
import glob
import html.parser
import json
import os
import posixpath
import re
import sys

import pypandoc
import yaml
from docutils.nodes import make_id

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, 'docs')
RST = os.path.join(DOCS, 'docsite', 'rst')
LABEL = 'ansible_collections.containerhost.overlayfs.docsite.'


def guides():
    """The guides the docsite shows: those docs/docsite/extra-docs.yml lists (contributor docs stay on GitHub)."""
    with open(os.path.join(DOCS, 'docsite', 'extra-docs.yml'), encoding='utf-8') as handle:
        sections = yaml.safe_load(handle)['sections']
    return [name for section in sections for name in section['toctree']]


@functools.lru_cache(maxsize=None)
def repository():
    """galaxy.yml's repository: where the docsite's links to other files of the repository go."""
    with open(os.path.join(REPO, 'galaxy.yml'), encoding='utf-8') as handle:
        return yaml.safe_load(handle)['repository']


def blob_url(relative):
    return '%s/blob/main/%s' % (repository(), relative)


def plain_text(inlines):
    """Pandoc inlines as the text a heading shows."""
    parts = []
    for item in inlines:
        if item['t'] in ('Str', 'Code', 'Math', 'RawInline'):
            parts.append(item['c'] if item['t'] == 'Str' else item['c'][1])
        elif item['t'] in ('Space', 'SoftBreak', 'LineBreak'):
            parts.append(' ')
        elif item['t'] in ('Emph', 'Strong', 'Strikeout', 'Underline', 'SmallCaps'):
            parts.append(plain_text(item['c']))
        elif item['t'] in ('Link', 'Span', 'Quoted', 'Cite'):
            parts.append(plain_text(item['c'][1]))
    return ''.join(parts)


def github_slug(text):
    """The anchor GitHub gives a heading (what the Markdown links use)."""
    return re.sub(r'[^\w\- ]', '', text.lower()).replace(' ', '-')


def section_ids(tree):
    """{GitHub's anchor of each heading: the id docutils gives that section}."""
    return {github_slug(plain_text(block['c'][2])): make_id(plain_text(block['c'][2]))
            for block in tree['blocks'] if block['t'] == 'Header'}


def rewrite_target(url, ids, here):
    """A Markdown link target as the docsite reaches it (``ids``: section_ids of every guide)."""
    if url.startswith(('http://', 'https://', 'mailto:')):
        return url
    path, anchor = (url.split('#', 1) + [''])[:2]
    stem = path[:-len('.md')] if path.endswith('.md') and '/' not in path else None
    if not path or stem in ids:  # a guide's section
        section = ids[stem or here].get(anchor, make_id(anchor)) if anchor else ''
        return (stem + '.html' if path else '') + ('#' + section if section else '')
    return blob_url(posixpath.normpath(posixpath.join('docs', path))) + ('#' + anchor if anchor else '')


def picture_block(node):
    """A paragraph holding only a docs/pictures image -> the SVG itself, as raw HTML."""
    if node['t'] != 'Para' or len(node['c']) != 1 or node['c'][0]['t'] != 'Image':
        return None
    inlines = node['c']
    url = inlines[0]['c'][2][0]
    if not url.startswith('pictures/') or not url.endswith('.svg'):
        return None
    with open(os.path.join(DOCS, url), encoding='utf-8') as handle:
        return {'t': 'RawBlock', 'c': ['html', handle.read().strip()]}


def rewrite(node, ids, here):
    """Walk pandoc's JSON AST of guide ``here`` in place."""
    if isinstance(node, list):
        for index, item in enumerate(node):
            replacement = picture_block(item) if isinstance(item, dict) and 't' in item else None
            if replacement:
                node[index] = replacement
            else:
                rewrite(item, ids, here)
    elif isinstance(node, dict):
        if node.get('t') == 'Link':
            node['c'][2][0] = rewrite_target(node['c'][2][0], ids, here)
            # RST cannot nest inline markup: code in a link's text is shown as plain text
            node['c'][1] = [{'t': 'Str', 'c': item['c'][1]} if item['t'] == 'Code' else item for item in node['c'][1]]
        elif node.get('t') == 'Image':  # an image of the repository (a plot) becomes a link to it
            node['t'] = 'Link'
            node['c'][2][0] = rewrite_target(node['c'][2][0], ids, here)
        for value in node.values():
            rewrite(value, ids, here)


def markdown_tree(name):
    with open(os.path.join(DOCS, name + '.md'), encoding='utf-8') as handle:
        return json.loads(pypandoc.convert_text(handle.read(), 'json', format='gfm-gfm_auto_identifiers'))


def page(name, tree, ids):
    rewrite(tree['blocks'], ids, name)
    text = pypandoc.convert_text(json.dumps(tree), 'rst', format='json', extra_args=['--wrap=preserve'])
    header = '..\n  Made by scripts/docsite.py from docs/%s.md: edit that, then run make docs-rst.\n\n' % name
    return header + '.. _%s%s:\n\n%s' % (LABEL, name.replace('-', '_'), text.replace('\r\n', '\n'))


def expected():
    trees = {name: markdown_tree(name) for name in guides()}
    ids = {name: section_ids(tree) for name, tree in trees.items()}
    return {os.path.join(RST, name + '.rst'): page(name, tree, ids) for name, tree in trees.items()}


class _Anchors(html.parser.HTMLParser):
    """The ids a page defines and the links it makes."""

    def __init__(self):
        super().__init__()
        self.ids, self.hrefs = set(), []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if attributes.get('id'):
            self.ids.add(attributes['id'])
        if tag == 'a' and attributes.get('href'):
            self.hrefs.append(attributes['href'])


@functools.lru_cache(maxsize=None)  # a page is the target of many links
def _read_anchors(path):
    parser = _Anchors()
    with open(path, encoding='utf-8') as handle:
        parser.feed(handle.read())
    return parser


def broken_links(html_dir):
    """Links of the guides' built pages to pages or sections of the site that do not exist."""
    pages = glob.glob(os.path.join(html_dir, 'collections', 'containerhost', 'overlayfs', 'docsite', '*.html'))
    broken, checked = [], 0
    for page_path in sorted(pages):
        for href in _read_anchors(page_path).hrefs:
            if href.startswith(('http://', 'https://', 'mailto:')):
                continue
            checked += 1
            target, anchor = (href.split('#', 1) + [''])[:2]
            target_path = os.path.normpath(os.path.join(os.path.dirname(page_path), target)) if target else page_path
            if not os.path.exists(target_path) or (anchor and anchor not in _read_anchors(target_path).ids):
                broken.append('%s: %s' % (os.path.basename(page_path), href))
    return broken, checked


def _text_of(path):
    """A file's text, or None if it is missing."""
    if not os.path.exists(path):
        return None
    with open(path, encoding='utf-8') as handle:
        return handle.read()


def main(command, *arguments):
    if command == 'links':
        broken, checked = broken_links(arguments[0])
        print('%d links of the guides checked; broken: %s' % (checked, ', '.join(broken) or 'none'))
        return 1 if broken or not checked else 0
    files = expected()
    if command == 'write':
        os.makedirs(RST, exist_ok=True)
        for stale in set(glob.glob(os.path.join(RST, '*.rst'))) - set(files):
            os.remove(stale)
        for path, text in files.items():
            with open(path, 'w', encoding='utf-8') as handle:
                handle.write(text)
        return 0
    stale = [os.path.relpath(path, REPO) for path, text in files.items() if _text_of(path) != text]
    stale += [os.path.relpath(path, REPO) for path in set(glob.glob(os.path.join(RST, '*.rst'))) - set(files)]
    if stale:
        print('not what docs/*.md make (run make docs-rst): ' + ', '.join(sorted(stale)), file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main(*(sys.argv[1:] or ['check'])))
