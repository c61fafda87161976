# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Runs at once over overlapping batches: the host lock serialises them, so all succeed and each target holds one
mount. Separate processes (the lock is a file lock), converge() in each, real overlays, 4 at a time, 20 rounds."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ansible_collections.containerhost.overlayfs.tests.helpers.host import checked, mounts_under, quietly

RUNS_AT_ONCE, ROUNDS, TREES = 4, 20, 6
RUN = '''
import json, subprocess, sys
sys.path[:0] = json.loads(sys.argv[1])
from ansible_collections.containerhost.overlayfs.plugins.module_utils._converge import ConvergeError, converge

def run_command(argv):
    completed = subprocess.run(argv, capture_output=True, text=True, check=False)
    return completed.returncode, completed.stdout, completed.stderr

params = json.loads(sys.argv[2])
try:
    result = converge(params, run_command, False, lock_path=sys.argv[3])
except ConvergeError as error:
    print(json.dumps({'failed': True, 'msg': str(error)}))
    sys.exit(1)
print(json.dumps({'changed': result['changed']}))
'''


def test_runs_at_once_over_overlapping_batches_all_succeed_with_one_mount_per_target(tmp_path):
    root = str(tmp_path / 'root')
    os.mkdir(root)
    checked(['mount', '-t', 'tmpfs', 'concurrent', root])
    try:
        trees = []
        for number in range(TREES):
            base = os.path.join(root, 't%d' % number)
            for name in ('l1', 'l2'):
                os.makedirs(os.path.join(base, name))
            trees.append({'upper': base + '/upper', 'work': base + '/work', 'target': base + '/merged',
                          'lower': [base + '/l1', base + '/l2']})
        lock = str(tmp_path / 'lock')
        for round_number in range(ROUNDS):
            state = 'mounted' if round_number % 2 == 0 else 'unmounted'
            runs = []
            for run in range(RUNS_AT_ONCE):  # run i takes trees i .. i+2: every tree is in two or three batches
                batch = [trees[(run + offset) % TREES] for offset in range(3)]
                params = dict(filesystems=batch, filesystem=None, state=state, on_drift='fail', create_dirs=True,
                              on_volatile_marker='fail')
                runs.append(subprocess.Popen([sys.executable, '-c', RUN, json.dumps(sys.path), json.dumps(params), lock],
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            for process in runs:
                out, err = process.communicate(timeout=120)
                assert process.returncode == 0, 'round %d: %s %s' % (round_number, out, err)
            targets = [entry.mountpoint for entry in mounts_under(root)]
            wanted = sorted(tree['target'] for tree in trees[:RUNS_AT_ONCE + 2]) if state == 'mounted' else []
            assert sorted(targets) == wanted, 'round %d (%s)' % (round_number, state)  # one mount per target
    finally:
        quietly(['umount', '--recursive', '--lazy', root])
