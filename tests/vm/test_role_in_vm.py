# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The overlay_mounts role's molecule scenario `vm` (extensions/molecule/vm), in the session's test VM:
converge, idempotence, verify, reboot, verify, then removal."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXTENSIONS = os.path.join(REPO, 'extensions')


# The role's reboots on each release are test_persistence_in_vm's; this is the scenario a user runs with molecule.
@pytest.mark.one_release('bookworm')
def test_the_role_scenario_survives_reboots_in_the_vm(vm, tmp_path):
    molecule = os.path.join(os.path.dirname(sys.executable), 'molecule')
    # Its own ephemeral directory (inventory, state): `make vm-test` runs this for both releases at once, and the
    # default one is per scenario, so one release's run could take the other's inventory.
    env = dict(os.environ, OVERLAYFS_VM_INVENTORY=vm.inventory(), ANSIBLE_NOCOLOR='1', NO_COLOR='1',
               MOLECULE_EPHEMERAL_DIRECTORY=str(tmp_path / 'molecule'))
    reset = subprocess.run([molecule, 'reset', '-s', 'vm'], cwd=EXTENSIONS, env=env, capture_output=True, text=True,
                           check=False)
    assert reset.returncode == 0, reset.stdout + reset.stderr
    completed = subprocess.run([molecule, 'test', '-s', 'vm'], cwd=EXTENSIONS, env=env, capture_output=True,
                               text=True, check=False)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-6000:]
    for action in ('converge', 'idempotence', 'verify', 'side_effect', 'cleanup'):
        assert '%s: Executed: Successful' % action in output
