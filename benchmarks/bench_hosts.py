# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Benchmark: one playbook over many inventory hosts, each with its own trees, as the number of hosts grows.

The hosts (BENCH_HOSTS, default 10,30,60,120) are local connections, each with its own scratch root, its own
BENCH_TREES (default 20) trees and its own mount namespace, as separate machines have their own mount tables (a
persistent namespace per host, which its interpreter enters: a script running ``nsenter --mount=NS python``), run
with --forks BENCH_FORKS (default 10). For each number of hosts: the module's batch task cold and unchanged, and
one no-op task (ansible.builtin.ping) over the same inventory. Prints the controller's cost per host per task,
(seconds - no-op seconds) / hosts, which must not grow with the number of hosts, and checks that every host
converged (a third, untimed run changes nothing and finds each of the host's trees mounted once). Writes
benchmarks/results/hosts.txt. Run as root with ``make bench``.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

from _common import MODULE, NOOP, container_trees, machine, playbook, release, scratch, write_result

HOSTS = [int(count) for count in os.environ.get('BENCH_HOSTS', '10,30,60,120').split(',')]
TREES = int(os.environ.get('BENCH_TREES', '20'))
FORKS = int(os.environ.get('BENCH_FORKS', '10'))
PER_HOST = MODULE.replace('{{ trees }}', '{{ host_trees }}').replace('{{ result_file }}',
                                                                     '{{ result_file }}.{{ inventory_hostname }}')


def inventory(root, count):
    """An inventory of ``count`` local hosts, each with its own trees under its own root, in its own mount namespace
    (made after the host's scratch tmpfs, which it holds a copy of)."""
    hosts = {}
    os.makedirs(os.path.join(root, 'ns'), exist_ok=True)
    for number in range(count):
        name = 'host%02d' % number
        trees = container_trees(os.path.join(root, '%d-hosts' % count, name), TREES)
        namespace = os.path.join(root, 'ns', '%d-%s' % (count, name))
        open(namespace, 'w').close()
        subprocess.run(['unshare', '--mount=' + namespace, '--propagation', 'private', 'true'], check=True)
        interpreter = namespace + '.python'  # Ansible takes an interpreter path, not a command line
        with open(interpreter, 'w') as handle:
            handle.write('#!/bin/sh\nexec nsenter --mount=%s %s "$@"\n' % (namespace, sys.executable))
        os.chmod(interpreter, 0o755)
        hosts[name] = {'ansible_connection': 'local', 'host_trees': trees, 'ansible_python_interpreter': interpreter}
    path = os.path.join(root, 'inventory-%d.json' % count)
    with open(path, 'w') as handle:
        json.dump({'all': {'hosts': hosts}}, handle)
    return path, hosts


def converged(root, hosts):
    """Every host's third run: no failure, nothing to change, and its own trees all mounted there."""
    for name in hosts:
        with open(os.path.join(root, 'result.json.' + name)) as handle:
            result = json.load(handle)
        targets = sorted(entry['target'] for entry in result.get('mounts', []))
        wanted = sorted(tree['target'] for tree in hosts[name]['host_trees'])
        if result.get('failed') or result['changed'] or targets != wanted:
            sys.exit('%s did not converge: %s' % (name, result.get('msg') or targets))


def main():
    rows = []
    with scratch('overlayfs-bench-hosts-') as root:
        result_file = os.path.join(root, 'result.json')
        for count in HOSTS:
            path, hosts = inventory(root, count)
            run = functools.partial(playbook, root, inventory=path, forks=FORKS, interpreter=None)
            noop = run(NOOP, {}).seconds
            cold = run(PER_HOST, {}).seconds
            unchanged = run(PER_HOST, {}).seconds
            run(PER_HOST, {'result_file': result_file})  # untimed: results
            converged(root, hosts)
            for name in hosts:  # the namespace goes, and its mounts with it
                release(os.path.join(root, 'ns', '%d-%s' % (count, name)))
                release(os.path.join(root, '%d-hosts' % count, name, 'ct'))
            rows.append((count, noop, cold, unchanged))
            print('%d hosts: no-op %.2f s, cold %.2f s, unchanged %.2f s' % (count, noop, cold, unchanged), flush=True)
    lines = ['Machine: %s' % machine(),
             '%d trees per host, --forks %d; seconds per ansible-playbook run, and the cost per host of the module '
             'task: (run - no-op run) / hosts' % (TREES, FORKS), '',
             '| hosts | no-op task | cold | unchanged | cold per host | unchanged per host |',
             '| --- | --- | --- | --- | --- | --- |']
    for count, noop, cold, unchanged in rows:
        per_host = ((cold - noop) / count, (unchanged - noop) / count)
        lines.append('| %d | %.2f | %.2f | %.2f | %.3f | %.3f |' % ((count, noop, cold, unchanged) + per_host))
    first, last = rows[0], rows[-1]
    lines += ['', 'per-host cost at %d hosts / at %d: cold %.2f, unchanged %.2f (flat is 1 or less)'
              % (last[0], first[0], ((last[2] - last[1]) / last[0]) / ((first[2] - first[1]) / first[0]),
                 ((last[3] - last[1]) / last[0]) / ((first[3] - first[1]) / first[0]))]
    text = '\n'.join(lines) + '\n'
    print(text)
    print('written: %s' % write_result('hosts.txt', text))


if __name__ == '__main__':
    main()
