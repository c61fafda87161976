# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""What the tests run with, as make setup lays it out: the ansible-core lines (a lock and a venv each) and the target
Pythons (the Makefile's TARGET_PYTHONS, linked into .cache/pythons/bin)."""

from __future__ import annotations

import glob
import os
import re

from packaging.version import Version

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHONS_DIR = os.path.join(REPO, '.cache', 'pythons', 'bin')

# oldest first
ANSIBLE_LINES = sorted((os.path.basename(path)[len('ansible-test-'):-len('.txt')]
                        for path in glob.glob(os.path.join(REPO, 'requirements', 'ansible-test-*.txt'))), key=Version)

with open(os.path.join(REPO, 'Makefile'), encoding='utf-8') as _makefile:
    TARGET_PYTHONS = re.search(r'^TARGET_PYTHONS := (.*)$', _makefile.read(), re.M).group(1).split()


def line_bin(line):
    """Where the ansible commands of an ansible-core line are; fails when make setup has not made its venv, rather
    than let another line's commands on PATH answer for it."""
    path = os.path.join(REPO, '.cache', 'ansible-test-%s-venv' % line, 'bin')
    assert os.path.exists(os.path.join(path, 'ansible-playbook')), 'no venv of ansible-core %s: run make setup' % line
    return path


def target_python(version):
    """The interpreter of a target Python, or None when this machine has none."""
    path = os.path.join(PYTHONS_DIR, 'python' + version)
    return path if os.path.exists(path) else None


# ansible-doc -t role warns that ansible-core's own internal collection has no version, in every line from 2.20 to 2.22
# (ansible/ansible#85689; the fix proposed in ansible/ansible#86815 was not merged). Not ours: the one warning the
# tests let through.
_PROTOMATTER_WARNING = re.compile(r"^\[WARNING\]: Collection at '[^']*/ansible/_internal/ansible_collections/ansible/"
                                  r"_protomatter' does not have a MANIFEST\.json file, nor has it galaxy\.yml: "
                                  r"cannot detect version\.\n?", re.M)


def our_warnings(stderr):
    """A command's stderr, less ansible-core's own warning about its internal collection; empty when all is well."""
    return _PROTOMATTER_WARNING.sub('', stderr).strip()
