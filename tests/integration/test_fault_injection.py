# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Every step of a plan that holds every step kind this host can run fails in turn, three ways; the host must end as
it was before the run (or, when the undo is made to fail too, the report says so and the next run converges).

The seam is the executor's ``run``: the step is replaced by the fault, so the real steps before it and the real
undo run. converge() is called in process (the session's private mount namespace), with real overlays, loop devices
and FUSE exports. The outcomes make the first part of docs/reliability.md (tests/helpers/reliability.py): the test
fails when it is not what the test found, and RELIABILITY_UPDATE=1 writes it.
"""

from __future__ import annotations

import collections
import difflib
import errno
import glob
import json
import os
import shutil

import pytest

from ansible_collections.containerhost.overlayfs.plugins.module_utils.apply import _converge
from ansible_collections.containerhost.overlayfs.plugins.module_utils.apply._converge import ConvergeError, converge
from ansible_collections.containerhost.overlayfs.plugins.module_utils.apply._executor import Executor
from ansible_collections.containerhost.overlayfs.plugins.module_utils.host._hostfs import EXPORT_DIR, process_alive
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._idmap import IDMAP_DIR
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._options import volatile_marker
from ansible_collections.containerhost.overlayfs.tests.helpers.host import (
    checked,
    make_ext4_image,
    make_qcow2,
    module_params,
    mounts_under,
    run_command,
)
from ansible_collections.containerhost.overlayfs.tests.helpers.reliability import check_part

FAULTS = (
    ('error', 'the step fails (`OSError` EIO in its place)'),
    ('bug', 'the step raises an unexpected exception (`RuntimeError`)'),
    ('undo', 'the step fails, and so does the first undo step'),
)
# uuid=auto, the kernel's default, shows uuid=on or nothing by the upper dir's history; the tree leaves it unset
KERNEL_CHOSEN = ('uuid',)
OUTCOMES = {
    'error': 'as before',
    'bug': 'as before; the message names `RuntimeError`',
    'undo': 'left as reported',
    'undo-nothing': 'as before (no step before it)',
}


class FaultyExecutor(Executor):
    """Runs steps and undo steps for real, except the calls numbered in ``failing``, which raise ``error``."""

    def __init__(self, run_command, failing, error):
        super(FaultyExecutor, self).__init__(run_command)
        self.failing = failing
        self.error = error
        self.calls = 0

    def run(self, one):
        self.calls += 1
        if self.calls in self.failing:
            raise self.error
        return super(FaultyExecutor, self).run(one)


def every_kind_tree(host):
    """A top overlay over a nested overlay (on a raw image through loop and a qcow2 through FUSE), a bind and an
    idmapped dir. The nested overlay's work dir holds a volatile marker, which the run discards (a step of its own)."""
    raw = make_ext4_image(host, 'raw.img', {'from-raw': 'raw'})
    qcow2 = make_qcow2(host, 'disk.qcow2', {'from-qcow2': 'qcow2'})
    host.make_dirs('base', 'bound-source', 'upper', volatile_marker(host.path('nested-work')))
    host.write('upper/kept', 'upper dirs are sacred')
    host.write('bound-source/from-bind', 'bind')
    nested = {'type': 'overlay', 'upper': host.path('nested-upper'), 'work': host.path('nested-work'),
              'target': host.path('nested'),
              'lower': [{'type': 'file', 'driver': 'loop', 'format': 'raw', 'source': raw, 'target': host.path('raw')},
                        {'type': 'file', 'driver': 'fuse', 'format': 'qcow2', 'source': qcow2,
                         'target': host.path('qcow2')}]}
    bind = {'type': 'mount', 'source': host.path('bound-source'), 'target': host.path('bound')}
    shift = [{'start': 0, 'target': 100000, 'count': 65536}]
    base = {'type': 'dir', 'target': host.path('base'), 'idmap': {'uid': shift, 'gid': shift}}
    return {'upper': host.path('upper'), 'work': host.path('work'), 'target': host.path('merged'),
            'lower': [nested, bind, base]}


def host_state(host, work_dirs):
    """What a run may change: mounts (device names resolved to what backs them; siblings in any order), loop devices, FUSE export daemons,
    and every file under the scratch root; of a work dir only whether it holds the volatile marker (the kernel keeps
    its own scratch entries there)."""
    loops = dict((row.split()[0], row.split()[1:]) for row in checked(  # all of them: a leaked one may show '/'
        ['losetup', '--list', '--noheadings', '--output', 'NAME,AUTOCLEAR,RO,BACK-FILE']).stdout.splitlines())
    mounts = [(entry.mountpoint, entry.fstype, tuple(loops.get(entry.source, [entry.source])), entry.readonly,
               tuple(sorted((key, value) for key, value in entry.super_options.items() if key not in KERNEL_CHOSEN)))
              for entry in mounts_under(host.root) + mounts_under(IDMAP_DIR)]
    exports = []
    for metafile in sorted(glob.glob(os.path.join(EXPORT_DIR, '*.json'))):
        with open(metafile) as handle:
            image = json.load(handle)['image']
        with open(metafile[:-len('.json')] + '.pid') as handle:
            exports.append((image, process_alive(int(handle.read()))))
    files, markers = [], []
    for directory, dirs, names in os.walk(host.root):
        if directory in work_dirs:
            markers.append((directory, os.path.isdir(volatile_marker(directory))))
            dirs[:] = []
            continue
        for name in sorted(dirs + names):
            path = os.path.join(directory, name)
            info = os.lstat(path)
            files.append((path, oct(info.st_mode), info.st_size if os.path.isfile(path) else 0))
    idmapped = sorted(os.listdir(IDMAP_DIR)) if os.path.isdir(IDMAP_DIR) else []  # mount points of idmapped layers
    return dict(mounts=sorted(mounts), loops=sorted(loops.values()), exports=exports, files=sorted(files),
                markers=sorted(markers), idmapped=idmapped)


def differences(before, after):
    lines = []
    for key in sorted(before):
        lines.extend(difflib.unified_diff([repr(item) for item in before[key]], [repr(item) for item in after[key]],
                                          key + ' before', key + ' after', lineterm=''))
    return '\n'.join(lines)


def run_with_fault(monkeypatch, params, lock, failing, error):
    monkeypatch.setattr(_converge, 'Executor', lambda run: FaultyExecutor(run, failing, error))
    try:
        with pytest.raises(ConvergeError) as failure:
            converge(params, run_command, False, lock_path=lock)
    finally:
        monkeypatch.undo()
    return str(failure.value)


def converges(params, lock):
    assert converge(params, run_command, False, lock_path=lock)['changed'] is True
    assert converge(params, run_command, False, lock_path=lock)['changed'] is False


def step_kind(step):
    if step['action'] == 'mount':
        return 'mount (%s)' % step['kind']
    if step['action'] == 'unmount':
        return 'unmount (%s)' % step['restore'].get('kind', 'unknown')
    return step['action']


def fault_every_step(host, monkeypatch, params, lock, work_dirs, reset):
    """Fail each step of the plan in turn, each way; return {step kind: {fault: set of outcomes}}."""
    steps = converge(params, run_command, True, lock_path=lock)['steps']
    before = host_state(host, work_dirs)
    outcomes = collections.defaultdict(lambda: collections.defaultdict(set, count=0))
    for number, one in enumerate(steps, 1):
        outcomes[step_kind(one)]['count'] += 1
        where = 'step %d of %d (%s)' % (number, len(steps), one['description'])
        for fault, _meaning in FAULTS:
            error = RuntimeError('injected bug') if fault == 'bug' else OSError(errno.EIO, 'injected fault')
            failing = {number, number + 1} if fault == 'undo' else {number}
            message = run_with_fault(monkeypatch, params, lock, failing, error)
            assert message.startswith(where + ' failed'), message
            if fault == 'undo' and 'could not undo' in message:
                assert message.endswith('so it and the steps before it are left as they are'), message
                try:
                    converges(params, lock)
                    reset()
                except ConvergeError as error:
                    pytest.fail('%s, fault %s: %s\nthen: %s' % (where, fault, message, error))
                outcome = 'undo'
            else:
                assert 'could not undo' not in message, message
                assert fault != 'bug' or 'RuntimeError: injected bug' in message, message
                outcome = 'undo-nothing' if fault == 'undo' else fault
            after = host_state(host, work_dirs)
            assert after == before, '%s, fault %s: %s\n%s' % (where, fault, message, differences(before, after))
            outcomes[step_kind(one)][fault].add(OUTCOMES[outcome])
    return outcomes


def test_each_step_failing_in_turn_leaves_the_host_as_before(host, monkeypatch, tmp_path):
    tree = every_kind_tree(host)
    lock = str(tmp_path / 'lock')
    mount = module_params(filesystem=tree, on_volatile_marker='discard')
    unmount = module_params(filesystem=tree, state='unmounted')
    work_dirs = {host.path('work'), host.path('nested-work')}
    created = set()

    def back_to_nothing():
        converge(unmount, run_command, False, lock_path=lock)
        for path in sorted(set(path for path, *_rest in host_state(host, work_dirs)['files']) - created,
                           reverse=True):  # only what the runs created: dirs, empty but for the kernel's work entries
            if path in work_dirs:
                shutil.rmtree(path)
            else:
                os.rmdir(path)
        os.makedirs(volatile_marker(host.path('nested-work')), exist_ok=True)

    def back_to_mounted():
        converge(mount, run_command, False, lock_path=lock)

    created = set(path for path, *_rest in host_state(host, work_dirs)['files'])
    tables = [('mounted', fault_every_step(host, monkeypatch, mount, lock, work_dirs, back_to_nothing))]
    back_to_mounted()
    tables.append(('unmounted', fault_every_step(host, monkeypatch, unmount, lock, work_dirs, back_to_mounted)))
    converge(unmount, run_command, False, lock_path=lock)
    assert mounts_under(host.root) == []

    check_part(render(tables), first=True)


def render(tables):
    lines = [
        '# Reliability: each step failing in turn',
        '',
        '<!-- Written by tests/integration/test_fault_injection.py and tests/vm/test_nbd_images.py',
        '     (RELIABILITY_UPDATE=1); do not edit by hand. -->',
        '',
        'A plan that holds every step kind this machine can run (a top overlay over a nested overlay on a raw',
        'image through `loop` and a qcow2 image through a FUSE export, a bind and an idmapped dir; the nested work',
        'dir holds a volatile marker, discarded with `on_volatile_marker: discard`) is run once per step and fault,',
        'with that step failing. Then the host is compared with the host before the run: the mounts (with the image',
        'each device serves; the idmapped layer\'s too, and its mount point), the loop devices, the FUSE export',
        'daemons and every file under the scratch root,',
        'upper dirs included; of a work dir only the volatile marker, since the kernel keeps its own entries',
        'there; of an overlay\'s options all but `uuid`, which the tree leaves to the kernel (its default,',
        '`uuid=auto`, shows `uuid=on` or nothing by the upper dir\'s history).',
        '',
        'Faults:',
        '',
    ]
    lines.extend('- %s: %s' % pair for pair in FAULTS)
    lines.extend([
        '',
        'Outcomes:',
        '',
        '- as before: the run failed naming the step, undid every step before it, and the host is as it was.',
        '- left as reported: the run failed naming the step and the undo step that failed too (`could not undo',
        '  step I (…)`); undoing stops there, so steps 1 to I are left done, which is what the message',
        '  says. The next run converges and the one after it changes nothing; unmounting then leaves the mounts,',
        '  loop devices and exports as they were.',
    ])
    for state, outcomes in tables:
        lines.extend(['', '## `state: %s`' % state, '',
                      '| step | steps of the kind in the plan | %s |' % ' | '.join(fault for fault, _meaning in FAULTS),
                      '| --- | --- |' + ' --- |' * len(FAULTS)])
        for kind in sorted(outcomes):
            cells = ['<br>'.join(sorted(outcomes[kind][fault])) for fault, _meaning in FAULTS]
            lines.append('| `%s` | %d | %s |' % (kind, outcomes[kind]['count'], ' | '.join(cells)))
    lines.extend(['', 'The nbd steps need a kernel with nbd: they are in the part below, from the test VMs.', '', ''])
    return '\n'.join(lines)
