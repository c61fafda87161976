# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Benchmark: converging N container root filesystems in one batch task vs one task per filesystem (a loop).

Both are measured in the same run, on the same host, for the first run (everything mounted) and the
second run (nothing to do). Prints seconds and the ratio loop/batch. Run as root with `make bench`, which
enters a private mount namespace; the trees live on a scratch tmpfs that dies with it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

COUNT = int(os.environ.get('BENCH_COUNT', '50'))
PLAYBOOKS = {
    'batch': '''- hosts: localhost
  gather_facts: false
  tasks:
    - containerhost.overlayfs.overlay_filesystem:
        filesystems: "{{ trees }}"
        state: "{{ wanted }}"
''',
    'loop': '''- hosts: localhost
  gather_facts: false
  tasks:
    - containerhost.overlayfs.overlay_filesystem:
        filesystem: "{{ item }}"
        state: "{{ wanted }}"
      loop: "{{ trees }}"
''',
}


def trees(root, name):
    os.makedirs(os.path.join(root, 'base'), exist_ok=True)
    os.makedirs(os.path.join(root, 'runtime'), exist_ok=True)
    return [{'upper': '%s/%s/ct%d/upper' % (root, name, index), 'work': '%s/%s/ct%d/work' % (root, name, index),
             'lower': [root + '/runtime', root + '/base'], 'target': '%s/%s/ct%d/rootfs' % (root, name, index)}
            for index in range(COUNT)]


def timed_run(root, name, wanted):
    playbook = os.path.join(root, name + '.yml')
    with open(playbook, 'w') as handle:
        handle.write(PLAYBOOKS[name])
    variables = os.path.join(root, name + '.json')
    with open(variables, 'w') as handle:
        json.dump({'trees': trees(root, name), 'wanted': wanted}, handle)
    start = time.monotonic()
    subprocess.run(['ansible-playbook', '-i', 'localhost,', '-c', 'local', '-e', '@' + variables,
                    '-e', 'ansible_python_interpreter=' + sys.executable, playbook],
                   check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def main():
    root = tempfile.mkdtemp(prefix='overlayfs-bench-')
    subprocess.run(['mount', '-t', 'tmpfs', 'bench', root], check=True)
    try:
        print('%d filesystems; seconds per ansible-playbook run (ratio = one task per filesystem / one batch task)'
              % COUNT)
        for label, wanted in (('first run (mount)', 'mounted'), ('second run (no change)', 'mounted'),
                              ('unmount', 'unmounted')):
            batch = timed_run(root, 'batch', wanted)
            loop = timed_run(root, 'loop', wanted)
            print('%-24s batch %6.2f s   loop %6.2f s   ratio %5.1f' % (label, batch, loop, loop / batch))
    finally:
        subprocess.run(['umount', '--recursive', '--lazy', root], check=False)
        os.rmdir(root)


if __name__ == '__main__':
    main()
