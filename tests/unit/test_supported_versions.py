# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The supported range is stated once, in meta/runtime.yml (ansible-core) and the Makefile's TARGET_PYTHONS (target
Python); every other place that names it says the same, and the tests run each ansible-core line it admits."""

from __future__ import annotations

import os
import re

import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from ansible_collections.containerhost.overlayfs.tests.helpers.toolchain import ANSIBLE_LINES, REPO, TARGET_PYTHONS


def _read(path):
    with open(os.path.join(REPO, path), encoding='utf-8') as handle:
        return handle.read()


def _ansible_lines():
    """The ansible-core lines requires_ansible admits: 2.N for each N from its lower bound up to its upper one."""
    specifier = SpecifierSet(yaml.safe_load(_read('meta/runtime.yml'))['requires_ansible'])
    lower = min(Version(spec.version) for spec in specifier if spec.operator == '>=')
    return ['2.%d' % minor for minor in range(lower.minor, 100)
            if specifier.contains('2.%d.0' % minor) or specifier.contains('2.%d.0rc1' % minor, prereleases=True)]


def test_each_ansible_core_line_has_its_lock_and_ansible_test_runs_it():
    lines = _ansible_lines()
    assert lines == ['2.20', '2.21', '2.22']
    assert ANSIBLE_LINES == lines
    for line in lines:
        pinned = re.search(r'^ansible-core==(\S+)$', _read('requirements/ansible-test-%s.txt' % line), re.M).group(1)
        assert Version(pinned).release[:2] == Version(line).release, (line, pinned)


def test_every_place_that_names_the_range_says_the_same():
    lines = _ansible_lines()
    ansible = 'ansible-core %s to %s' % (lines[0], lines[-1])
    pythons = TARGET_PYTHONS
    python = 'Python %s to %s' % (pythons[0], pythons[-1])
    assert yaml.safe_load(_read('roles/overlay_mounts/meta/main.yml'))['galaxy_info']['min_ansible_version'] == lines[0]
    assert 'For %s.' % ansible in ' '.join(yaml.safe_load(_read('galaxy.yml'))['description'].split())
    readme = ' '.join(_read('README.md').split())
    assert ansible in readme and 'targets with %s' % python in readme
    guide = _read('docs/getting-started.md')
    assert '| ansible-core | %s to %s (`requires_ansible: "%s"`) |' % (
        lines[0], lines[-1], yaml.safe_load(_read('meta/runtime.yml'))['requires_ansible']) in guide
    assert '| target Python | %s to %s |' % (pythons[0], pythons[-1]) in guide
    assert ansible in ' '.join(guide.split())
    assert yaml.safe_load(_read('.ansible-lint'))['supported_ansible_also'] == ['%s.' % lines[0]]  # meta-runtime's
