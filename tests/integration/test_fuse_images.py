# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Image layers without nbd: qemu-storage-daemon exports the image read-only through FUSE, a loop device
stands on the export. Real qemu-storage-daemon, real FUSE, real loop devices, on this host."""

from __future__ import annotations

import os
import signal

from ansible_collections.containerhost.overlayfs.plugins.module_utils.host._hostfs import export_files
from ansible_collections.containerhost.overlayfs.tests.helpers.host import (
    converge_twice,
    export_daemons,
    export_loops,
    loops_backed_under,
    make_qcow2,
    mounts_under,
)


def fuse_tree(host, image):
    return {'upper': host.path('upper'), 'work': host.path('work'), 'target': host.path('merged'),
            'lower': [{'type': 'file', 'driver': 'fuse', 'format': 'qcow2', 'source': image,
                       'target': host.path('image')}, host.path('base')]}


def test_a_qcow2_layer_through_fuse_mounts_idempotently_and_leaves_nothing_when_unmounted(host):
    image = make_qcow2(host, 'guest, v1.qcow2', {'etc/motd': 'from the qcow2 image'})
    host.make_dirs(**{'base/b': 'base'})
    tree = fuse_tree(host, image)
    result = converge_twice(host, filesystem=tree)
    assert [step['action'] for step in result['steps'] if step['action'] != 'mkdir'] == [
        'start_export', 'attach_loop', 'mount', 'mount']
    with open(host.path('merged/etc/motd')) as handle:
        assert handle.read() == 'from the qcow2 image'
    assert len(export_daemons()) == 1 and len(export_loops()) == 1
    layer = [entry for entry in mounts_under(host.root) if entry.mountpoint == host.path('image')][0]
    assert layer.readonly
    result = host.play(filesystem=tree, state='unmounted')
    assert [step['action'] for step in result['steps']] == ['unmount', 'unmount', 'detach_loop', 'stop_export']
    assert mounts_under(host.root) == [] and export_daemons() == [] and export_loops() == []
    assert not any(os.path.exists(path) for path in export_files(image, 'qcow2'))


def test_a_killed_export_daemon_is_detected_and_repaired_on_the_next_run(host):
    image = make_qcow2(host, 'guest.qcow2', {'data': 'still here'})
    host.make_dirs('base')
    tree = fuse_tree(host, image)
    converge_twice(host, filesystem=tree)
    for pid in export_daemons():
        os.kill(pid, signal.SIGKILL)
    repaired = host.play(filesystem=tree)
    assert not repaired.get('failed'), repaired.get('msg')
    assert [(one['action'], one['lazy']) for one in repaired['steps'][:2]] == [('unmount', False)] * 2
    assert 'start_export' in [step['action'] for step in repaired['steps']]
    with open(host.path('merged/data')) as handle:
        assert handle.read() == 'still here'
    assert host.play(filesystem=tree)['changed'] is False
    host.play(filesystem=tree, state='unmounted')
    assert export_daemons() == [] and export_loops() == [] and loops_backed_under(host.root) == []
