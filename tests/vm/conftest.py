# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Fixtures for tests that run in the Debian test VM (see docs/testing-vm.md).

``vm`` is one TestVM for the whole session: the image is built first when the cache is not current
(tests/vm/build-image.sh), the VM boots once, and it is killed and its overlay removed when the session
ends, whatever the tests did.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from vm import TestVM, ensure_image  # noqa: E402  pylint: disable=wrong-import-position

_TIMINGS = {}


@pytest.fixture(scope='session')
def vm():
    """The session's VM (a TestVM): run(), copy_to(), reboot(), inventory()."""
    if os.geteuid() != 0:
        pytest.fail('the VM tests run as root (debootstrap, chroot, qemu); run `make vm-test` as root')
    started = time.monotonic()
    ensure_image()
    _TIMINGS['image check/build'] = time.monotonic() - started
    started = time.monotonic()
    with TestVM() as machine:
        _TIMINGS['first boot to SSH'] = time.monotonic() - started
        yield machine
        _TIMINGS['boots (qemu start to SSH, s)'] = machine.boot_seconds
        _TIMINGS['reboot() calls (reboot to SSH, s)'] = machine.reboot_seconds


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
