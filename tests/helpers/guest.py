# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Helpers of the tests that run the module in a test VM (tests/vm): a test's scratch root in the guest, the module
run against it through ansible-playbook from this host, and what the guest shows (mounts, owners, idmapped layers).
Every command captures its output, and a failed one shows it."""

from __future__ import annotations

import itertools
import json
import os
import shlex

from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._idmap import IDMAP_DIR
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._mountinfo import parse
from ansible_collections.containerhost.overlayfs.tests.helpers.playbooks import info_round_trip_playbook, module_playbook
from ansible_collections.containerhost.overlayfs.tests.helpers.vm import ansible_playbook

# The owner (uid, gid) of each path of stdin's JSON list, as JSON.
STAT = r'''
import json, os, sys
print(json.dumps(dict((path, list(os.stat(path)[4:6])) for path in json.load(sys.stdin))))
'''


class Guest(object):
    """One test's scratch root in the VM, and module runs against it through ansible-playbook."""

    def __init__(self, vm, root, workdir):
        self.vm = vm
        self.root = root
        self.workdir = workdir
        self.run_numbers = itertools.count(1)  # next() is atomic: runs may come from threads

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def sh(self, script, check=True):
        return self.vm.run(script, check=check)

    def dirs(self, *names):
        self.sh('mkdir -p ' + ' '.join(shlex.quote(self.path(name)) for name in names))

    def play(self, **module_args):
        """Run the module once in the VM; return its registered result."""
        number = next(self.run_numbers)
        remote_result = '/tmp/overlayfs-test-result-%d.json' % number
        return self._playbook('run%d' % number, module_playbook('testvm'),
                              {'module_args': module_args, 'result_file': remote_result}, remote_result)

    def read_back(self):
        """overlay_filesystem_info over the root, and its trees fed to the module: {'found': ..., 'fed': ...}."""
        remote_result = '/tmp/overlayfs-test-info.json'
        return self._playbook('info', info_round_trip_playbook('testvm'),
                              {'root': self.root, 'result_file': remote_result}, remote_result)

    def _playbook(self, name, playbook, variables, remote_result):
        base = os.path.join(self.workdir, name)
        with open(base + '.json', 'w') as handle:
            json.dump(variables, handle)
        with open(base + '.yml', 'w') as handle:
            handle.write(playbook)
        completed = ansible_playbook(self.vm, base + '.yml', base + '.json')
        assert completed.returncode == 0, completed.stdout + completed.stderr
        return json.loads(self.sh('cat %s' % remote_result).stdout)

    def mount_ids(self):
        """(mount id, mount point) of every mount under the root: a remount shows as a new id."""
        return sorted((entry.mount_id, entry.mountpoint) for entry in mountinfo(self.vm)
                      if entry.mountpoint.startswith(self.root))


def unmount_everything_under(root):
    """Shell: unmount every mount under ``root``, deepest first (what a failed test may leave)."""
    return "findmnt -rn -o TARGET | grep -F %s | sort -r | xargs -r -d '\\n' umount -l" % shlex.quote(root)


def converge_twice(guest, **args):
    """The first run changes; the second plans nothing and leaves every mount as it was."""
    first = guest.play(**args)
    assert not first.get('failed'), first.get('msg')
    assert first['changed'] is True
    mounted = guest.mount_ids()
    second = guest.play(**args)
    assert not second.get('failed'), second.get('msg')
    assert (second['changed'], second['plan']) == (False, [])
    assert guest.mount_ids() == mounted
    return first


def owners(vm, paths):
    """{path: (uid, gid)} of each path in the guest."""
    out = vm.run(['python3', '-c', STAT], input=json.dumps(paths), check=True).stdout
    return dict((path, tuple(owner)) for path, owner in json.loads(out).items())


def mountinfo(vm):
    """The guest's mount table, read with the collection's parser."""
    return parse(vm.run(['cat', '/proc/self/mountinfo'], check=True).stdout)


def idmapped_mounts(vm):
    """The mount points of the idmapped layers the collection mounted in the guest."""
    return [entry.mountpoint for entry in mountinfo(vm)
            if entry.mountpoint.startswith(IDMAP_DIR + '/') and 'idmapped' in entry.mount_options]
