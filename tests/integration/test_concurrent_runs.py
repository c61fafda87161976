# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Runs at once over overlapping batches: the host lock serialises them, so all succeed and each target holds one
mount. Separate processes (the lock is a file lock), converge() in each, real overlays, 4 at a time, 20 rounds."""

from __future__ import annotations

import os

from ansible_collections.containerhost.overlayfs.tests.helpers.host import (
    checked,
    in_own_process,
    module_params,
    mounts_under,
    quietly,
)

RUNS_AT_ONCE, ROUNDS, TREES = 4, 20, 6


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
                runs.append(in_own_process(module_params(filesystems=batch, state=state), lock))
            for process in runs:
                out, err = process.communicate(timeout=120)
                assert process.returncode == 0, 'round %d: %s %s' % (round_number, out, err)
            targets = [entry.mountpoint for entry in mounts_under(root)]
            wanted = sorted(tree['target'] for tree in trees[:RUNS_AT_ONCE + 2]) if state == 'mounted' else []
            assert sorted(targets) == wanted, 'round %d (%s)' % (round_number, state)  # one mount per target
    finally:
        quietly(['umount', '--recursive', '--lazy', root])
