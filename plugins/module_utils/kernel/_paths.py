# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Paths as the tree, the mount table and the boot helper compare them. Pure, standard library only (the boot
helper's bundle holds it)."""

from __future__ import annotations

import posixpath


def fold_path(path: str) -> str:
    """'//a/./b/' -> '/a/b': how the tree and mountinfo compare paths (posixpath keeps a leading '//')."""
    if '//' not in path and '/./' not in path and not path.endswith(('/', '/.')):
        return path
    folded = posixpath.normpath(path)
    return '/' + folded.lstrip('/') if folded.startswith('/') else folded
