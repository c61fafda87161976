# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Builders of YAML trees for the tests."""

from __future__ import annotations


def overlay(target, lower, upper=None, work=None, **extra):
    """An overlay node in the YAML form; upper and work only when given."""
    raw = {'type': 'overlay', 'lower': lower, 'target': target}
    if upper:
        raw.update(upper=upper, work=work)
    raw.update(extra)
    return raw
