# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Correctness at scale: 2000 trees in one batch through ansible-playbook. How long it takes is the benchmarks'
to say (benchmarks/bench_scale.py), not a test's."""

from __future__ import annotations

import collections

from ansible_collections.containerhost.overlayfs.tests.helpers.host import mounts_under

TREES = 2000


def test_two_thousand_trees_mount_once_each_and_rerun_unchanged(host):
    host.make_dirs('base', 'runtime')
    trees = [{'upper': host.path('ct%d' % number, 'upper'), 'work': host.path('ct%d' % number, 'work'),
              'lower': [host.path('runtime'), host.path('base')], 'target': host.path('ct%d' % number, 'rootfs')}
             for number in range(TREES)]
    first = host.play(filesystems=trees, report='summary')
    assert not first.get('failed'), first.get('msg')
    assert first['summary'] == {'filesystems': TREES, 'changed': TREES, 'steps': 4 * TREES}  # mkdir target, upper, work; mount
    mounted = collections.Counter(entry.mountpoint for entry in mounts_under(host.root))
    assert mounted == collections.Counter(tree['target'] for tree in trees), 'each target mounted once'
    again = host.play(filesystems=trees, report='changed')
    assert (again['changed'], again['summary']['changed'], again['plan'], again['filesystems']) == (False, 0, [], [])
    assert collections.Counter(entry.mountpoint for entry in mounts_under(host.root)) == mounted
    down = host.play(filesystems=trees, state='unmounted', report='summary')
    assert not down.get('failed') and down['summary']['changed'] == TREES, down.get('msg')
    assert mounts_under(host.root) == []
