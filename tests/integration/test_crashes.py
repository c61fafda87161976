# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A run killed with SIGKILL at 10 points of a batch of 20 trees (nested overlays on raw images through loop and on
qcow2 images through FUSE), mounting and unmounting: the next run converges (one mount per target, one device per
image, nothing leaked, the lock free) and the run after it changes nothing. Real mounts, loop devices and
qemu-storage-daemon; each run in a process of its own, killed once it has mounted (or unmounted) a tenth, three
tenths, ... of the 60 mounts."""

from __future__ import annotations

import signal
import time

from ansible_collections.containerhost.overlayfs.plugins.module_utils.apply._converge import converge
from ansible_collections.containerhost.overlayfs.tests.helpers.host import (
    export_daemons,
    export_loops,
    in_own_process,
    loops_backed_under,
    make_ext4_image,
    make_qcow2,
    module_params,
    mounts_under,
    run_command,
)

TREES, FUSE_TREES, KILL_POINTS = 20, 2, 10


def container_trees(host):
    """Tree i: an overlay over a nested overlay on its own image (FUSE for the first FUSE_TREES, loop otherwise)
    and a shared base dir."""
    host.make_dirs('base')
    trees = []
    for number in range(TREES):
        name = 't%02d' % number
        if number < FUSE_TREES:
            image = {'type': 'file', 'driver': 'fuse', 'format': 'qcow2',
                     'source': make_qcow2(host, name + '.qcow2', {'which': name})}
        else:
            image = {'type': 'file', 'driver': 'loop', 'format': 'raw',
                     'source': make_ext4_image(host, name + '.img', {'which': name})}
        image['target'] = host.path(name, 'image')
        nested = {'type': 'overlay', 'upper': host.path(name, 'base-upper'), 'work': host.path(name, 'base-work'),
                  'lower': [image, host.path('base')], 'target': host.path(name, 'base')}
        trees.append({'upper': host.path(name, 'upper'), 'work': host.path(name, 'work'),
                      'lower': [nested], 'target': host.path(name, 'rootfs')})
    return trees


def targets(trees):
    nested = [tree['lower'][0] for tree in trees]
    return sorted([tree['target'] for tree in trees] + [node['target'] for node in nested]
                  + [node['lower'][0]['target'] for node in nested])


def assert_converged(host, trees, state):
    mounted = sorted(entry.mountpoint for entry in mounts_under(host.root))
    assert mounted == (targets(trees) if state == 'mounted' else []), 'one mount per target'
    loops = loops_backed_under(host.root)
    assert len(loops) == (TREES - FUSE_TREES if state == 'mounted' else 0), 'one loop device per raw image'
    fuse = (FUSE_TREES if state == 'mounted' else 0)
    assert (len(export_daemons()), len(export_loops())) == (fuse, fuse), 'one export and one loop per qcow2 image'


def killed_run(host, params, lock, reached):
    """Start a run and SIGKILL it once ``reached(number of mounts under the scratch root)`` holds; its exit status."""
    process = in_own_process(params, lock)
    while process.poll() is None and not reached(len(mounts_under(host.root))):
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    return process.returncode


def test_a_run_killed_at_any_point_is_converged_by_the_next_one(host, tmp_path):
    trees = container_trees(host)
    lock = str(tmp_path / 'lock')
    mount, unmount = module_params(filesystems=trees), module_params(filesystems=trees, state='unmounted')
    total = len(targets(trees))
    killed = 0
    for point in range(KILL_POINTS):
        share = int(total * (point + 0.5) / KILL_POINTS)  # 3, 9, ... 57 of the 60 mounts
        for state, params, reached in (('mounted', mount, lambda count: count >= share),
                                       ('unmounted', unmount, lambda count: count <= total - share)):
            if killed_run(host, params, lock, reached) == -signal.SIGKILL:
                killed += 1
            recovery = converge(params, run_command, False, lock_path=lock)  # would wait forever on a held lock
            assert not recovery.get('failed'), recovery
            assert converge(params, run_command, False, lock_path=lock)['changed'] is False, (state, share)
            assert_converged(host, trees, state)
    assert killed >= KILL_POINTS  # of the 20 runs, most die mid-run; a fast one may finish before it is seen
