# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Benchmark: the module's batch task as the number of trees grows, against its peers in the same run.

For N trees (BENCH_SIZES, default 200,500,1000,2000,5000), each an overlay over two shared dir lowers:

- the module, one batch task: cold (everything mounted), unchanged (the same again), unchanged with
  report=summary;
- the floor: a bash script of ``mkdir -p`` and ``mount -t overlay`` per tree, and one no-op task (a play of one
  ansible.builtin.ping, the cost of any task that runs a module on the host), alone and with the N trees in the
  play's vars (what loading them costs, whatever task gets them);
- the echo task: a module that takes the N trees and returns them unchanged (benchmarks/library/echo_trees.py),
  what ansible-core charges any module for carrying them in and back out, with no work of its own;
- the usual peer, where N <= BENCH_POSIX_MAX (default 200; it takes about half a second per tree): a loop of
  ansible.posix.mount (state ephemeral) over the same trees, cold and unchanged.

Then the size of the result per tree for each ``report``, and an unchanged batch of 50 trees on an empty mount
table against the same on a table with BENCH_OTHER_MOUNTS (default 50000) unrelated bind mounts.

Prints a growth table and the issue's targets as ratios; writes them to benchmarks/results/scale.txt and the curves
to benchmarks/results/scale.png. Asserts nothing. Run as root with ``make bench`` (a private mount namespace).
"""

from __future__ import annotations

import ctypes
import json
import os
import statistics
import subprocess

from _common import (
    MODULE,
    NOOP,
    container_trees,
    machine,
    mount_count,
    playbook,
    release,
    scratch,
    timed,
    write_result,
)

SIZES = [int(size) for size in os.environ.get('BENCH_SIZES', '200,500,1000,2000,5000').split(',')]
POSIX_MAX = int(os.environ.get('BENCH_POSIX_MAX', '200'))
OTHER_MOUNTS = int(os.environ.get('BENCH_OTHER_MOUNTS', '50000'))
ROUNDS = int(os.environ.get('BENCH_ROUNDS', '3'))
POSIX_LOOP = '''- hosts: all
  gather_facts: false
  tasks:
    - ansible.posix.mount:
        path: "{{ item.target }}"
        src: overlay
        fstype: overlay
        opts: "lowerdir={{ item.lower | join(':') }},upperdir={{ item.upper }},workdir={{ item.work }}"
        state: ephemeral
      loop: "{{ trees }}"
'''
ECHO = '''- hosts: all
  gather_facts: false
  tasks:
    - echo_trees:
        filesystems: "{{ trees }}"
'''
LIBRARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'library')
MS_BIND = 4096


def bash_loop(root, trees):
    script = os.path.join(root, 'mount-loop.sh')
    with open(script, 'w') as handle:
        handle.write('set -e\n')
        for tree in trees:
            handle.write("mkdir -p '%s'\nmount -t overlay overlay -o 'lowerdir=%s,upperdir=%s,workdir=%s' '%s'\n"
                         % (tree['target'], ':'.join(tree['lower']), tree['upper'], tree['work'], tree['target']))
    return timed(['bash', script])


def median_of(function):
    return statistics.median(function() for _round in range(ROUNDS))


def growth(root, noop):
    rows = []
    for size in SIZES:
        row = {'N': size}
        trees = container_trees(root, size, 'm%d' % size)
        row['module cold'] = playbook(root, MODULE, {'trees': trees}).seconds
        row['module unchanged'] = median_of(lambda: playbook(root, MODULE, {'trees': trees}).seconds)
        summary = {'trees': trees, 'report': 'summary'}
        row['module unchanged, summary'] = median_of(lambda: playbook(root, MODULE, summary).seconds)
        # What the play costs with the trees in its vars and no task using them: loading them is the playbook's
        # cost whatever task gets them
        row['no-op task, trees in vars'] = median_of(lambda: playbook(root, NOOP, {'trees': trees}).seconds)
        row['echo task'] = median_of(lambda: playbook(root, ECHO, {'trees': trees}).seconds)
        release(os.path.join(root, 'm%d' % size))
        row['bash mount loop'] = bash_loop(root, container_trees(root, size, 'b%d' % size))
        release(os.path.join(root, 'b%d' % size))
        if size <= POSIX_MAX:
            trees = container_trees(root, size, 'p%d' % size)
            row['ansible.posix.mount loop cold'] = playbook(root, POSIX_LOOP, {'trees': trees}).seconds
            row['ansible.posix.mount loop unchanged'] = playbook(root, POSIX_LOOP, {'trees': trees}).seconds
            release(os.path.join(root, 'p%d' % size))
        row['no-op task'] = noop
        rows.append(row)
        print(' '.join('%s=%s' % (key, '%.2f' % value if isinstance(value, float) else value)
                       for key, value in row.items()), flush=True)
    return rows


def result_sizes(root, size=2000):
    """Bytes per tree of the registered result (what Ansible carries back, the action plugin's xml included)."""
    trees = container_trees(root, size, 's')
    sizes = {}
    for label, report, wanted in (('cold, full', 'full', 'mounted'), ('unchanged, full', 'full', 'mounted'),
                                  ('unchanged, changed', 'changed', 'mounted'),
                                  ('unchanged, summary', 'summary', 'mounted')):
        result_file = os.path.join(root, 'result.json')
        playbook(root, MODULE, {'trees': trees, 'report': report, 'wanted': wanted, 'result_file': result_file})
        sizes[label] = os.path.getsize(result_file)
    release(os.path.join(root, 's'))
    return size, sizes


def other_mounts(root, count):
    """``count`` bind mounts of one dir, made with mount(2) directly (a mount(8) per mount would take minutes)."""
    libc = ctypes.CDLL(None, use_errno=True)
    source = os.path.join(root, 'other-source')
    os.makedirs(source)
    os.makedirs(os.path.join(root, 'other'))
    subprocess.run(['mount', '-t', 'tmpfs', 'other', os.path.join(root, 'other')], check=True)
    for index in range(count):
        target = os.path.join(root, 'other', str(index))
        os.makedirs(target)
        if libc.mount(source.encode(), target.encode(), None, MS_BIND, None) != 0:
            raise OSError(ctypes.get_errno(), 'mount --bind %s' % target)


def big_table(root):
    trees = container_trees(root, 50, 'big')
    playbook(root, MODULE, {'trees': trees})
    before = mount_count()
    empty = median_of(lambda: playbook(root, MODULE, {'trees': trees}).seconds)
    other_mounts(root, OTHER_MOUNTS)
    full = median_of(lambda: playbook(root, MODULE, {'trees': trees}).seconds)
    after = mount_count()
    release(os.path.join(root, 'other'))
    release(os.path.join(root, 'big'))
    return empty, full, before, after


def report(rows, noop, sizes, table):
    by_size = dict((row['N'], row) for row in rows)
    columns = [key for key in rows[0] if key != 'N']
    columns += [key for row in rows for key in row if key not in columns and key != 'N']
    lines = ['Machine: %s' % machine(), 'Seconds per ansible-playbook run (unchanged: the median of %d runs), all '
             'measured in this run; one no-op task: %.2f s' % (ROUNDS, noop), '',
             '| N | ' + ' | '.join(columns) + ' |', '| --- ' * (len(columns) + 1) + '|']
    for row in rows:
        lines.append('| %d | ' % row['N'] + ' | '.join('%.2f' % row[key] if key in row else '' for key in columns)
                     + ' |')
    lines += ['', 'Targets (issue 9), as ratios of figures of this run:']
    for size, row in sorted(by_size.items()):
        per_tree = (row['module unchanged'] - noop) / size * 1000
        per_tree_vars = (row['module unchanged'] - row['no-op task, trees in vars']) / size * 1000
        per_tree_echo = (row['module unchanged'] - row['echo task']) / size * 1000
        cold = (row['module cold'] - noop) / row['bash mount loop']
        lines.append('- N=%d: unchanged costs the no-op task + %.3f ms per tree (target <= 1), the no-op task with '
                     'the trees in its vars + %.3f ms, the echo task + %.3f ms; cold costs the no-op task + %.2f x '
                     'the bash loop (target <= 1.3)' % (size, per_tree, per_tree_vars, per_tree_echo, cold))
        if 'ansible.posix.mount loop cold' in row:
            lines.append('  ansible.posix.mount loop / module: %.1fx cold, %.1fx unchanged'
                         % (row['ansible.posix.mount loop cold'] / row['module cold'],
                            row['ansible.posix.mount loop unchanged'] / row['module unchanged']))
    if 500 in by_size and 5000 in by_size:
        lines.append('- unchanged time(5000) / time(500) = %.2f (target <= 11)'
                     % (by_size[5000]['module unchanged'] / by_size[500]['module unchanged']))
    empty, full, before, after = table
    lines.append('- 50 trees unchanged on a table of %d mounts / on one of %d (theirs and the host\'s): %.2f s / '
                 '%.2f s = %.2f (target <= 1.5)' % (after, before, full, empty, full / empty))
    size, per_tree = sizes
    lines += ['', 'Result size per tree, %d trees (the registered result as JSON, xml included):' % size]
    lines += ['- %s: %d bytes, %.0f per tree' % (label, total, total / size) for label, total in per_tree.items()]
    return '\n'.join(lines) + '\n'


def plot(rows, path):
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot
    figure, axes = pyplot.subplots(figsize=(8, 5))
    for key in [key for key in rows[0] if key != 'N'] + ['ansible.posix.mount loop cold']:
        points = [(row['N'], row[key]) for row in rows if key in row]
        if points:
            axes.plot(*zip(*points), marker='o', label=key)
    axes.set_xlabel('trees in the batch (N)')
    axes.set_ylabel('seconds per ansible-playbook run')
    axes.set_title('overlay_filesystem against its peers, one run on one machine')
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main():
    os.environ['ANSIBLE_LIBRARY'] = LIBRARY
    with scratch('overlayfs-bench-scale-') as root:
        noop = median_of(lambda: playbook(root, NOOP, {}).seconds)
        rows = growth(root, noop)
        sizes = result_sizes(root)
        table = big_table(root)
        text = report(rows, noop, sizes, table)
    print(text)
    print('written: %s' % write_result('scale.txt', text))
    picture = os.path.join(os.path.dirname(write_result('scale.json', json.dumps(rows, indent=1))), 'scale.png')
    plot(rows, picture)
    print('written: %s' % picture)


if __name__ == '__main__':
    main()
