# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Benchmark: the overlay_mounts role over N trees against the module's own batch over the same trees.

Measured in the same run, on the same host: the module's batch task (cold: everything mounted; unchanged), the
role with systemd persistence under a scratch root (cold: mounted and persisted; unchanged), and a play of three
no-op tasks against an empty play (their marginal cost). The targets (issue 7): the role costs at most
2 x the module's batch plus three no-op tasks, cold and unchanged. Also counts the role's tasks for 1 tree and
for N: a fixed number of tasks. Run as root with `make bench`, which enters a private mount namespace.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

COUNT = int(os.environ.get('BENCH_COUNT', '200'))
ROUNDS = int(os.environ.get('BENCH_ROUNDS', '5'))
PLAY = '- hosts: localhost\n  gather_facts: false\n'
PLAYBOOKS = {
    'module': PLAY + '''  tasks:
    - containerhost.overlayfs.overlay_filesystem:
        filesystems: "{{ trees }}"
        state: "{{ wanted }}"
''',
    'role': PLAY + '''  roles:
    - role: containerhost.overlayfs.overlay_mounts
      vars:
        overlay_mounts_filesystems: "{{ trees }}"
''',
    'noop3': PLAY + '  tasks:\n' + '    - ansible.builtin.meta: noop\n' * 3,
    'empty': PLAY + '  tasks: []\n',
}


def trees(root, name, count):
    for layer in ('base', 'runtime', 'app'):
        os.makedirs(os.path.join(root, layer), exist_ok=True)
    return [{'upper': '%s/%s/ct%d/upper' % (root, name, index), 'work': '%s/%s/ct%d/work' % (root, name, index),
             'lower': [root + '/app', root + '/runtime', root + '/base'],
             'target': '%s/%s/ct%d/rootfs' % (root, name, index)} for index in range(count)]


def run(root, playbook, name, count=COUNT, wanted='mounted'):
    """One ansible-playbook run; returns (seconds, number of tasks that ran)."""
    path = os.path.join(root, playbook + '.yml')
    with open(path, 'w') as handle:
        handle.write(PLAYBOOKS[playbook])
    variables = os.path.join(root, playbook + '.json')
    with open(variables, 'w') as handle:
        json.dump({'trees': [{'filesystem': tree} for tree in trees(root, name, count)] if playbook == 'role'
                   else trees(root, name, count), 'wanted': wanted,
                   'overlay_mounts_root': root + '/persist-' + name, 'overlay_mounts_persistence': 'systemd'}, handle)
    argv = ['ansible-playbook', '-i', 'localhost,', '-c', 'local', '-e', '@' + variables,
            '-e', 'ansible_python_interpreter=' + sys.executable, path]
    start = time.monotonic()
    completed = subprocess.run(argv, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - start
    if completed.returncode != 0:
        sys.exit('%s failed:\n%s%s' % (playbook, completed.stdout[-4000:], completed.stderr))
    tasks = len(re.findall(r'^TASK \[', completed.stdout, re.MULTILINE))
    return seconds, tasks


def main():
    root = tempfile.mkdtemp(prefix='overlayfs-bench-role-')
    subprocess.run(['mount', '-t', 'tmpfs', 'bench', root], check=True)
    try:
        empty = statistics.median(run(root, 'empty', 'x')[0] for _round in range(ROUNDS))
        noop3 = max(statistics.median(run(root, 'noop3', 'x')[0] for _round in range(ROUNDS)) - empty, 0.0)
        times = dict((key, []) for key in ('module cold', 'module unchanged', 'role cold', 'role unchanged'))
        for _round in range(ROUNDS):  # interleaved, so a noisy moment of the machine hits both
            times['module cold'].append(run(root, 'module', 'module')[0])
            times['module unchanged'].append(run(root, 'module', 'module')[0])
            run(root, 'module', 'module', wanted='unmounted')  # a mount costs more in a fuller table: both cold
            shutil.rmtree(root + '/persist-role', ignore_errors=True)  # runs start from the same one
            seconds, role_tasks = run(root, 'role', 'role')
            times['role cold'].append(seconds)
            times['role unchanged'].append(run(root, 'role', 'role')[0])
            run(root, 'module', 'role', wanted='unmounted')
        _seconds, one_tree_tasks = run(root, 'role', 'one', count=1)
        median = dict((key, statistics.median(values)) for key, values in times.items())
        print('%d trees (3 dir lowers each); seconds per ansible-playbook run, the median of %d rounds in this run'
              % (COUNT, ROUNDS))
        print('empty play %.2f s; three no-op tasks add %.2f s' % (empty, noop3))
        for label in ('cold', 'unchanged'):
            role, module = median['role ' + label], median['module ' + label]
            budget = 2 * module + noop3
            print('%-10s role %6.2f s   module batch %6.2f s   role / module %4.2f   role / (2 x module + 3 no-ops) %4.2f'
                  % (label, role, module, role / module, role / budget))
        print('tasks the role ran: %d for %d trees, %d for 1 tree' % (role_tasks, COUNT, one_tree_tasks))
    finally:
        subprocess.run(['umount', '--recursive', '--lazy', root], check=False)
        os.rmdir(root)


if __name__ == '__main__':
    main()
