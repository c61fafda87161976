# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Each lock file (requirements/*.txt) agrees with the .in it was compiled from (scripts/lock.sh, make lock): every
pin is exact, every requirement of the .in (and of the files it takes in with -r) is pinned at a version it allows,
for the Python the lock is for, and every constraint holds. The lock's header is the command that made it."""

from __future__ import annotations

import glob
import importlib.util
import os
import re

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REQUIREMENTS = os.path.join(REPO, 'requirements')
CONSTRAINTS = 'constraints.txt'
LOCKS = sorted(os.path.basename(path) for path in glob.glob(os.path.join(REQUIREMENTS, '*.txt'))
               if os.path.basename(path) != CONSTRAINTS)
COMMAND = re.compile(r'^#    uv pip compile (?P<options>.*) (?P<source>\S+\.in) -o (?P<lock>\S+\.txt)$', re.M)
PIN = re.compile(r'^(?P<name>[A-Za-z0-9._-]+)==(?P<version>\S+)$')


def _script(name):
    """A module of scripts/, which is no package."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, 'scripts', name + '.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DEBIAN_PYTHON = _script('debian_python')


def _lines(path):
    """The requirement lines of a pip requirements file, comments and blanks dropped."""
    with open(path, encoding='utf-8') as handle:
        lines = [line.split(' #', 1)[0].strip() for line in handle]
    return [line for line in lines if line and not line.startswith('#')]


def _requirements(path):
    """The requirements of an .in and of the files it takes in with -r (a -c names constraints, not requirements)."""
    found = []
    for line in _lines(path):
        if line.startswith('-r '):
            found += _requirements(os.path.normpath(os.path.join(os.path.dirname(path), line[3:].strip())))
        elif not line.startswith('-'):
            found.append(Requirement(line))
    return found


def _header(lock):
    with open(os.path.join(REQUIREMENTS, lock), encoding='utf-8') as handle:
        match = COMMAND.search(handle.read(600))
    assert match, '%s does not start with the uv pip compile command that made it (run make lock)' % lock
    options = match.group('options').split()
    return match.group('source'), options[options.index('--python-version') + 1], options


def _pins(lock):
    pins = {}
    for line in _lines(os.path.join(REQUIREMENTS, lock)):
        match = PIN.match(line)
        assert match, '%s: %r is not an exact pin' % (lock, line)
        pins[_normal(match.group('name'))] = Version(match.group('version'))
    return pins


def _normal(name):
    return re.sub(r'[-_.]+', '-', name).lower()


def test_every_in_file_is_compiled_or_taken_in_by_one_that_is():
    compiled = {_header(lock)[0] for lock in LOCKS}
    taken_in = {os.path.basename(line[3:].strip()) for source in compiled
                for line in _lines(os.path.join(REQUIREMENTS, source)) if line.startswith('-r ')}
    sources = {os.path.basename(path) for path in glob.glob(os.path.join(REQUIREMENTS, '*.in'))}
    assert sources <= compiled | taken_in


@pytest.mark.parametrize('lock', LOCKS)
def test_a_lock_pins_what_its_in_file_asks_for_and_holds_to_the_constraints(lock):
    source, python, options = _header(lock)
    assert options[options.index('-c') + 1] == CONSTRAINTS
    pins = _pins(lock)
    environment = {'python_version': python, 'python_full_version': python + '.0', 'sys_platform': 'linux',
                   'platform_system': 'Linux', 'platform_machine': 'x86_64', 'implementation_name': 'cpython',
                   'platform_python_implementation': 'CPython', 'os_name': 'posix'}
    wanted = [requirement for requirement in _requirements(os.path.join(REQUIREMENTS, source))
              if requirement.marker is None or requirement.marker.evaluate(environment)]
    for requirement in wanted:
        name = _normal(requirement.name)
        assert name in pins, '%s asks for %s, which %s does not pin (run make lock)' % (source, requirement, lock)
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            '%s pins %s %s, which %s does not allow (run make lock)' % (lock, name, pins[name], requirement))
    for constraint in _requirements(os.path.join(REQUIREMENTS, CONSTRAINTS)):
        pinned = pins.get(_normal(constraint.name))
        assert pinned is None or constraint.specifier.contains(pinned, prereleases=True), (lock, constraint)


def test_the_venvs_of_the_newest_line_run_the_same_ansible_core():
    lines = sorted((lock for lock in LOCKS if lock.startswith('ansible-test-')), key=lambda lock: Version(lock[13:-4]))
    newest = _pins(lines[-1])['ansible-core']
    for lock in ('dev.txt', 'docs.txt', 'bench.txt'):
        assert _pins(lock)['ansible-core'] == newest, lock


@pytest.mark.parametrize('listing', sorted(glob.glob(os.path.join(REQUIREMENTS, 'debian-python*.list'))))
def test_a_debian_lock_pins_each_package_of_its_list_from_its_suite(listing):
    version = os.path.basename(listing)[len('debian-python'):-len('.list')]
    suite, packages = DEBIAN_PYTHON.read_list(version)
    locked_suite, arch, pins = DEBIAN_PYTHON.parse_lock(version, DEBIAN_PYTHON.read_lock(version))
    assert (locked_suite, arch) == (suite, 'amd64'), 'run make lock'
    assert [pin[0] for pin in pins] == packages, 'run make lock'
    for package, _version, path, sha256 in pins:
        assert path.startswith('pool/main/') and path.endswith('.deb') and '/%s_' % package in path, path
        assert re.match(r'^[0-9a-f]{64}$', sha256), package
