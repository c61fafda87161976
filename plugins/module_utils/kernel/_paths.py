# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Paths as the tree, the mount table and the boot helper compare them. Pure, standard library only (the boot
helper's bundle holds it)."""

from __future__ import annotations

import functools
import posixpath
from typing import Tuple

# A path below an open dir (confine): that dir, and the rest of the path below it, reached from it without following
# a symlink.
Beneath = Tuple[str, str]


def fold_path(path: str) -> str:
    """'//a/./b/' -> '/a/b': how the tree and mountinfo compare paths (posixpath keeps a leading '//')."""
    if '//' not in path and '/./' not in path and not path.endswith(('/', '/.')):
        return path
    folded = posixpath.normpath(path)
    return '/' + folded.lstrip('/') if folded.startswith('/') else folded


def is_within(path: str, ancestor: str) -> bool:
    return path == ancestor or path.startswith(ancestor.rstrip('/') + '/')


def related(a: str, b: str) -> bool:
    """One path is the other or lies inside it."""
    return is_within(a, b) or is_within(b, a)


@functools.lru_cache(maxsize=1 << 16)
def path_and_ancestors(path: str) -> Tuple[str, ...]:
    """'/a/b' -> ('/a/b', '/a', '/'): every path a normalized path is_within. Cached: the paths of a batch share
    their ancestors, and each rule looks them up."""
    ancestors = [path]
    while path != '/':
        path = path.rsplit('/', 1)[0] or '/'
        ancestors.append(path)
    return tuple(ancestors)
