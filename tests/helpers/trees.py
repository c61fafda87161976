# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Builders of YAML trees for the tests."""

from __future__ import annotations

from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._tree import parse_filesystems, to_yaml


def overlay(target, lower, upper=None, work=None, **extra):
    """An overlay node in the YAML form; upper and work only when given."""
    raw = {'type': 'overlay', 'lower': lower, 'target': target}
    if upper:
        raw.update(upper=upper, work=work)
    raw.update(extra)
    return raw


def canonical(raw):
    """What the module returns for a tree: its canonical YAML form."""
    return to_yaml(parse_filesystems([raw])[0])
