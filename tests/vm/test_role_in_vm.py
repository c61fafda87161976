# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The overlay_mounts role's molecule scenario `vm` (extensions/molecule/vm), in the session's test VM:
converge, idempotence, verify, reboot, verify, then removal."""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXTENSIONS = os.path.join(REPO, 'extensions')


def test_the_role_scenario_survives_reboots_in_the_vm(vm):
    molecule = os.path.join(os.path.dirname(sys.executable), 'molecule')
    env = dict(os.environ, OVERLAYFS_VM_INVENTORY=vm.inventory(), ANSIBLE_NOCOLOR='1', NO_COLOR='1')
    subprocess.run([molecule, 'reset', '-s', 'vm'], cwd=EXTENSIONS, env=env, check=True, capture_output=True)
    completed = subprocess.run([molecule, 'test', '-s', 'vm'], cwd=EXTENSIONS, env=env, capture_output=True,
                               text=True, check=False)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-6000:]
    for action in ('converge', 'idempotence', 'verify', 'side_effect', 'cleanup'):
        assert '%s: Executed: Successful' % action in output
