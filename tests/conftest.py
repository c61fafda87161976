# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Make ``ansible_collections.containerhost.overlayfs`` importable when pytest runs from the repo root.

If the repo already lives at .../ansible_collections/containerhost/overlayfs, the directory above
``ansible_collections`` goes on sys.path. Otherwise the same layout the Makefile's
``collection-layout`` target creates is made here (idempotently): the relative symlink
``.cache/collections/ansible_collections/containerhost/overlayfs -> ../../../..``, and
``.cache/collections`` goes on sys.path.
"""

from __future__ import annotations

import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMESPACE, NAME = 'containerhost', 'overlayfs'
LINK_TARGET = '../../../..'  # what the Makefile's collection-layout target uses


def _collections_root(repo_root):
    parts = repo_root.rstrip(os.sep).split(os.sep)
    if parts[-3:] == ['ansible_collections', NAMESPACE, NAME]:
        return os.sep.join(parts[:-3]) or os.sep
    root = os.path.join(repo_root, '.cache', 'collections')
    link = os.path.join(root, 'ansible_collections', NAMESPACE, NAME)
    if os.path.islink(link) and os.readlink(link) == LINK_TARGET:
        return root
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if os.path.islink(link) or os.path.isfile(link):
        os.unlink(link)
    elif os.path.isdir(link):
        raise RuntimeError('%s is a directory, not the symlink to the repo root the tests need; remove it '
                           '(make clean) and run again' % link)
    try:
        os.symlink(LINK_TARGET, link)
    except FileExistsError:  # a concurrent run (e.g. pytest-xdist) made it first
        pass
    return root


COLLECTIONS_ROOT = _collections_root(REPO_ROOT)
if COLLECTIONS_ROOT not in sys.path:
    sys.path.insert(0, COLLECTIONS_ROOT)
