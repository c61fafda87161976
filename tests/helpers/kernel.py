# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""What a test expects of a kernel by its release (`uname -r`); the collection itself probes and never compares
versions."""

from __future__ import annotations


def reads_idmap_back(release):
    """Whether statmount(2) returns an idmapped mount's mapping: from Linux 6.15 on."""
    return tuple(int(part) for part in release.split('.')[:2]) >= (6, 15)
