# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Fixtures for tests that run in the Debian test VMs (see docs/testing-vm.md).

``vm`` is one TestVM per release for the whole session: every test that asks for it runs once on each
release that ``--vm-release`` names (default: bookworm and trixie, Debian 12 and 13), grouped so that each
release boots once. The image is built first when the cache is not current (tests/vm/build-image.sh), and
the VM is killed and its overlay removed when the session ends, whatever the tests did.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

import pytest

from ansible_collections.containerhost.overlayfs.tests.helpers.vm import RELEASES, TestVM, ensure_image

_TIMINGS = {}
_FAILED_STEPS = {}  # (module, release) -> the step that failed


def pytest_addoption(parser):
    parser.addoption('--vm-release', action='append', choices=RELEASES, default=[],
                     help='a Debian release to run the VM tests on (repeatable; default: %s)' % ', '.join(RELEASES))


def pytest_configure(config):
    config.addinivalue_line('markers', 'incremental: the tests of a module are steps; a failed step skips the rest '
                                       '(per release)')


def pytest_runtest_makereport(item, call):
    if call.excinfo is not None and call.when == 'call' and item.get_closest_marker('incremental'):
        _FAILED_STEPS.setdefault(_steps_of(item), item.name)


def pytest_runtest_setup(item):
    failed = _FAILED_STEPS.get(_steps_of(item))
    if failed and item.get_closest_marker('incremental'):
        pytest.skip('an earlier step failed: %s' % failed)


def _steps_of(item):
    """The sequence a step belongs to: its module, on one release."""
    callspec = getattr(item, 'callspec', None)
    return item.module.__name__, callspec.params.get('vm_release') if callspec else None


def pytest_generate_tests(metafunc):
    if 'vm_release' in metafunc.fixturenames:
        releases = metafunc.config.getoption('vm_release') or list(RELEASES)
        metafunc.parametrize('vm_release', releases, scope='session')


@pytest.fixture(scope='session')
def vm(vm_release):
    """The session's VM of one release (a TestVM): run(), copy_to(), reboot(), reset(), inventory()."""
    if os.geteuid() != 0:
        pytest.fail('the VM tests run as root (debootstrap, chroot, qemu); run `make vm-test` as root')
    started = time.monotonic()
    ensure_image(vm_release)
    _TIMINGS['%s: image check/build' % vm_release] = time.monotonic() - started
    started = time.monotonic()
    with TestVM(vm_release) as machine:
        _TIMINGS['%s: first boot to SSH' % vm_release] = time.monotonic() - started
        yield machine
        _TIMINGS['%s: boots (qemu start to SSH, s)' % vm_release] = machine.boot_seconds
        _TIMINGS['%s: reboot() calls (reboot to SSH, s)' % vm_release] = machine.reboot_seconds


@pytest.fixture(scope='session')
def ansible_bin():
    """Path of the `ansible` command: the one on PATH (the Makefile puts .venv/bin first), else next to python."""
    found = shutil.which('ansible') or os.path.join(os.path.dirname(sys.executable), 'ansible')
    if not os.path.exists(found):
        pytest.fail('no `ansible` on PATH or next to %s; run `make setup`' % sys.executable)
    return found


def pytest_terminal_summary(terminalreporter):
    if _TIMINGS:
        terminalreporter.write_sep('-', 'test VM timings')
        for name, value in _TIMINGS.items():
            if isinstance(value, float):
                value = '%.1f s' % value
            terminalreporter.write_line('%s: %s' % (name, value))
