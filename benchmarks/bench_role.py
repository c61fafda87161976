# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Benchmark: the overlay_mounts role over N trees against the module's own batch over the same trees.

For each N (BENCH_ROLE_SIZES, default 200,1000,2000,5000), measured in the same run, on the same host: the
module's batch task (cold: everything mounted; unchanged), the role with systemd persistence under a scratch root
(cold: mounted and persisted; unchanged), and a play of three no-op tasks against an empty play (their marginal
cost). The target (issue 7, held at every N by issue 9): the role costs at most 2 x the module's batch plus three
no-op tasks, cold and unchanged, in a fixed number of tasks. Writes benchmarks/results/role.txt. Run as root with
``make bench``, which enters a private mount namespace.
"""

from __future__ import annotations

import os
import statistics

from _common import MODULE, PLAY, container_trees, machine, playbook, release, scratch, write_result

SIZES = [int(size) for size in os.environ.get('BENCH_ROLE_SIZES', '200,1000,2000,5000').split(',')]
ROUNDS = int(os.environ.get('BENCH_ROUNDS', '3'))
ROLE = PLAY % 'localhost' + '''  roles:
    - role: containerhost.overlayfs.overlay_mounts
      vars:
        overlay_mounts_filesystems: "{{ trees }}"
'''
NOOP3 = PLAY % 'localhost' + '  tasks:\n' + '    - ansible.builtin.meta: noop\n' * 3
EMPTY = PLAY % 'localhost' + '  tasks: []\n'


def role_vars(root, name, trees):
    return {'trees': [{'filesystem': tree} for tree in trees], 'overlay_mounts_root': root + '/persist-' + name,
            'overlay_mounts_persistence': 'systemd'}


def measure(root, size):
    """Module and role, cold then unchanged, interleaved round by round (a noisy moment hits both)."""
    times = dict((key, []) for key in ('module cold', 'module unchanged', 'role cold', 'role unchanged'))
    tasks = 0
    for number in range(ROUNDS):
        module_trees = container_trees(root, size, 'm%d-%d' % (size, number))
        times['module cold'].append(playbook(root, MODULE, {'trees': module_trees})[0])
        times['module unchanged'].append(playbook(root, MODULE, {'trees': module_trees})[0])
        release(os.path.join(root, 'm%d-%d' % (size, number)))  # a mount costs more in a fuller table
        name = 'r%d-%d' % (size, number)
        variables = role_vars(root, name, container_trees(root, size, name))
        seconds, tasks = playbook(root, ROLE, variables)
        times['role cold'].append(seconds)
        times['role unchanged'].append(playbook(root, ROLE, variables)[0])
        release(os.path.join(root, name))
    return dict((key, statistics.median(values)) for key, values in times.items()), tasks


def main():
    lines = ['Machine: %s' % machine(), 'Seconds per ansible-playbook run, the median of %d rounds in this run; '
             'trees of 2 dir lowers; the role with systemd persistence under a scratch root' % ROUNDS, '']
    with scratch('overlayfs-bench-role-') as root:
        empty = statistics.median(playbook(root, EMPTY, {})[0] for _round in range(ROUNDS))
        noop3 = max(statistics.median(playbook(root, NOOP3, {})[0] for _round in range(ROUNDS)) - empty, 0.0)
        one_tree_tasks = playbook(root, ROLE, role_vars(root, 'one', container_trees(root, 1, 'one')))[1]
        lines += ['empty play %.2f s; three no-op tasks add %.2f s; the role ran %d tasks for 1 tree'
                  % (empty, noop3, one_tree_tasks), '',
                  '| N | module cold | role cold | role / (2 x module + 3 no-ops), cold | module unchanged | '
                  'role unchanged | role / (2 x module + 3 no-ops), unchanged | role tasks |',
                  '| --- | --- | --- | --- | --- | --- | --- | --- |']
        for size in SIZES:
            median, tasks = measure(root, size)
            cells = [str(size)]
            for label in ('cold', 'unchanged'):
                module, role = median['module ' + label], median['role ' + label]
                cells += ['%.2f' % module, '%.2f' % role, '%.2f' % (role / (2 * module + noop3))]
            lines.append('| ' + ' | '.join(cells + [str(tasks)]) + ' |')
            print(lines[-1], flush=True)
    text = '\n'.join(lines) + '\n'
    print(text)
    print('written: %s' % write_result('role.txt', text))


if __name__ == '__main__':
    main()
