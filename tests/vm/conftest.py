# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Fixtures for tests that run in the Debian test VMs (see docs/testing-vm.md).

``vm`` is one TestVM per release for the whole session: every test that asks for it runs once on each
release that ``--vm-release`` names (default: bookworm and trixie, Debian 12 and 13), grouped so that each
release boots once. The image is built first when the cache is not current (tests/vm/build-image.sh), and
the VM is killed and its overlay removed when the session ends, whatever the tests did.

A test marked ``one_release(RELEASE)`` runs on that release only, and is skipped, saying so, in a session that does
not boot it: its subject (the module's own undo and recovery, say) is the same on every release, and the two
releases' sessions, which run at the same time, then take about as long as each other (docs/testing-vm.md).

``--vm-arch arm64`` runs the tests marked ``arm64`` (the smoke run) in an arm64 guest, on trixie unless
``--vm-release`` says otherwise, and nothing else; the default, amd64, runs every other test.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

import pytest

from ansible_collections.containerhost.overlayfs.tests.helpers.vm import ARCHES, RELEASES, TestVM, ensure_image

_TIMINGS = {}
# A foreign architecture's guest is emulated instruction by instruction: the smoke run there needs one release.
DEFAULT_RELEASES = {'amd64': RELEASES, 'arm64': ('trixie',)}
_FAILED_STEPS = {}  # (module, release) -> the step that failed


def pytest_addoption(parser):
    parser.addoption('--vm-release', action='append', choices=RELEASES, default=[],
                     help='a Debian release to run the VM tests on (repeatable; default: %s)' % ', '.join(RELEASES))
    parser.addoption('--vm-arch', choices=ARCHES, default=ARCHES[0],
                     help="the guests' architecture (default: %s); arm64 runs only the tests marked arm64" % ARCHES[0])


def pytest_configure(config):
    config.addinivalue_line('markers', 'incremental: the tests of a module are steps; a failed step skips the rest '
                                       '(per release)')
    config.addinivalue_line('markers', 'arm64: the arm64 smoke run, which only --vm-arch arm64 runs (and nothing else)')
    config.addinivalue_line('markers', 'one_release(release): runs on that release only (skipped in a session that '
                                       'does not boot it), for a test whose subject is the same on every release')


@pytest.hookimpl(tryfirst=True)  # before pytest groups the tests by release, which keeps this order within each
def pytest_collection_modifyitems(config, items):
    arm64 = config.getoption('vm_arch') == 'arm64'
    deselected = [item for item in items if bool(item.get_closest_marker('arm64')) != arm64]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item not in deselected]
    # The smoke tests first, on a guest no other test has touched: the persistence tests leave their trees mounted
    # (on nbd devices too), and come back at every boot. Stable: every other test keeps its order.
    items.sort(key=lambda item: item.module.__name__ != 'test_vm_smoke')


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
        arch = metafunc.config.getoption('vm_arch')
        releases = metafunc.config.getoption('vm_release') or list(DEFAULT_RELEASES[arch])
        one_release = metafunc.definition.get_closest_marker('one_release')
        if one_release:
            own = one_release.args[0]
            releases = [own if own in releases else pytest.param(own, marks=pytest.mark.skip(
                reason='runs on %s only, which this session does not boot (one_release)' % own))]
        metafunc.parametrize('vm_release', releases, scope='session')


@pytest.fixture(scope='session')
def vm(vm_release, pytestconfig):
    """The session's VM of one release (a TestVM): run(), copy_to(), reboot(), reset(), inventory()."""
    if os.geteuid() != 0:
        pytest.fail('the VM tests run as root (debootstrap, chroot, qemu); run `make vm-test` as root')
    arch = pytestconfig.getoption('vm_arch')
    name = vm_release if arch == ARCHES[0] else '%s %s' % (vm_release, arch)
    started = time.monotonic()
    ensure_image(vm_release, arch=arch)
    _TIMINGS['%s: image check/build' % name] = time.monotonic() - started
    started = time.monotonic()
    with TestVM(vm_release, arch=arch) as machine:
        _TIMINGS['%s: first boot to SSH' % name] = time.monotonic() - started
        yield machine
        _TIMINGS['%s: boots (qemu start to SSH, s)' % name] = machine.boot_seconds
        _TIMINGS['%s: reboot() calls (reboot to SSH, s)' % name] = machine.reboot_seconds


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
