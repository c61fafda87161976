# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Idmapped layers through the overlay_mounts role and a real reboot, on Debian 12 and 13.

One root-owned base dir, two trees over it in two id ranges (one persisted as a systemd unit, one in fstab). The
steps build on each other and run in file order: the role converges them and a second run changes nothing; each
merged view shows the base's files with its range's owners and takes a write from a process in a user namespace
of that range, which lands in its upper dir with the range's host ids; after a reboot both trees are back with
their mappings (the collection's mount helper makes the idmapped layers: on these kernels statmount(2) cannot read
a mapping back, 6.15+, so the owner of each layer's root is what is compared), the write is still there, and the
role changes nothing; then the trees are taken away, idmapped layers and all.
"""

from __future__ import annotations

import json
import shutil
import tempfile

import pytest

from ansible_collections.containerhost.overlayfs.tests.helpers.guest import idmapped_mounts, owners
from ansible_collections.containerhost.overlayfs.tests.helpers.vm import recap, run_role

pytestmark = pytest.mark.incremental

ROOT = '/srv/idm'
RANGES = {'a': 100000, 'b': 200000}
PERSISTENCE = {'a': 'systemd', 'b': 'fstab'}
COUNT = 65536

# In a user namespace whose root is host uid/gid START (the parent writes the maps, as newuidmap would), write a
# file through a merged view; stdin: {"start": START, "path": PATH, "text": TEXT}.
WRITE_AS_CONTAINER = r'''
import ctypes, json, os, sys
job = json.load(sys.stdin)
libc = ctypes.CDLL(None, use_errno=True)
ready, go = os.pipe(), os.pipe()
pid = os.fork()
if pid == 0:
    libc.unshare(0x10000000)
    os.write(ready[1], b'1')
    os.read(go[0], 1)
    os.setgid(0)
    os.setuid(0)
    with open(job['path'], 'w') as handle:
        handle.write(job['text'])
    os._exit(0)
os.read(ready[0], 1)
for name, text in (('uid_map', '0 %d 65536' % job['start']), ('setgroups', 'deny'), ('gid_map', '0 %d 65536' % job['start'])):
    with open('/proc/%d/%s' % (pid, name), 'w') as handle:
        handle.write(text)
os.write(go[1], b'1')
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
'''


def item(name, state='mounted'):
    start = RANGES[name]
    ranges = [{'start': 0, 'target': start, 'count': COUNT}]
    return {'name': 'idm-' + name, 'persistence': PERSISTENCE[name], 'state': state, 'filesystem': {
        'upper': '%s/%s/upper' % (ROOT, name), 'work': '%s/%s/work' % (ROOT, name),
        'target': '%s/%s/merged' % (ROOT, name), 'lower': ['%s/base' % ROOT],
        'idmap': {'uid': ranges, 'gid': list(ranges)}}}


class RoleGuest(object):
    """The idmapped trees in the VM, converged through the role."""

    def __init__(self, vm, workdir):
        self.vm = vm
        self.workdir = workdir
        self.runs = 0

    def converge(self, state='mounted'):
        self.runs += 1
        completed = run_role(self.vm, self.workdir, {'overlay_mounts_filesystems': [item(name, state) for name in RANGES]},
                             'idmapped%d' % self.runs)
        assert completed.returncode == 0, completed.stdout[-8000:] + completed.stderr
        return recap(completed.stdout)

    def assert_views_mapped(self):
        shown = owners(self.vm, ['%s/%s/merged/etc/conf' % (ROOT, name) for name in RANGES] + ['%s/base/etc/conf' % ROOT])
        assert shown == dict([('%s/base/etc/conf' % ROOT, (0, 0))] + [
            ('%s/%s/merged/etc/conf' % (ROOT, name), (start, start)) for name, start in RANGES.items()])
        assert len(idmapped_mounts(self.vm)) == 2


@pytest.fixture(scope='module')
def guest(vm):
    workdir = tempfile.mkdtemp(prefix='overlayfs-vm-idmapped-')
    vm.run(['sh', '-euc', 'mkdir -p %s/base/etc && echo base > %s/base/etc/conf' % (ROOT, ROOT)], check=True)
    yield RoleGuest(vm, workdir)
    shutil.rmtree(workdir)


def test_the_role_mounts_both_ranges_and_a_second_run_changes_nothing(guest):
    assert guest.converge()['changed'] >= 2
    assert guest.converge()['changed'] == 0
    guest.assert_views_mapped()
    spec = guest.vm.run(['sh', '-c', 'grep -l idmapped /etc/containerhost-overlayfs/overlays/*'], check=True).stdout
    assert len(spec.split()) == 2


def test_a_container_of_each_range_writes_into_its_own_upper_dir_with_its_host_ids(guest):
    for name, start in RANGES.items():
        guest.vm.run(['python3', '-c', WRITE_AS_CONTAINER], check=True, input=json.dumps(
            {'start': start, 'path': '%s/%s/merged/written' % (ROOT, name), 'text': name}))
    written = owners(guest.vm, ['%s/%s/upper/written' % (ROOT, name) for name in RANGES])
    assert written == dict(('%s/%s/upper/written' % (ROOT, name), (start, start)) for name, start in RANGES.items())


def test_after_a_reboot_both_trees_are_back_with_their_mappings_and_the_role_changes_nothing(guest):
    guest.vm.reboot()
    state = guest.vm.run('systemctl is-system-running --wait', timeout=300).stdout.strip()
    assert state in ('running', 'degraded'), state
    guest.assert_views_mapped()
    written = owners(guest.vm, ['%s/%s/merged/written' % (ROOT, name) for name in RANGES])
    assert written == dict(('%s/%s/merged/written' % (ROOT, name), (start, start)) for name, start in RANGES.items())
    assert guest.converge()['changed'] == 0


def test_absent_trees_take_their_idmapped_layers_and_persistence_with_them(guest):
    assert guest.converge(state='absent')['changed'] >= 2
    assert idmapped_mounts(guest.vm) == []
    left = guest.vm.run(['sh', '-c', 'grep -l idmapped /etc/containerhost-overlayfs/overlays/* 2>/dev/null; '
                                     'grep -c "%s" /etc/fstab || true' % ROOT], check=True).stdout.split()
    assert left == ['0']
