# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the benchmarks share: a scratch tmpfs, container trees on it, and timed ansible-playbook runs.

Every benchmark runs as root inside a private mount namespace (``make bench`` enters one), so its mounts die with
it; nothing here touches the host's mount table, /etc/fstab or systemd.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')
PLAY = '- hosts: %s\n  gather_facts: false\n'
NOOP = PLAY % 'all' + '  tasks:\n    - ansible.builtin.ping:\n'
MODULE = PLAY % 'all' + '''  tasks:
    - containerhost.overlayfs.overlay_filesystem:
        filesystems: "{{ trees }}"
        state: "{{ wanted | default('mounted') }}"
        report: "{{ report | default('full') }}"
      register: result
    - ansible.builtin.copy:
        content: "{{ result | to_json }}"
        dest: "{{ result_file }}"
        mode: "0600"
      when: result_file is defined
'''


@contextlib.contextmanager
def scratch(prefix):
    """A tmpfs of its own, unmounted (with all below it) at the end."""
    root = tempfile.mkdtemp(prefix=prefix)
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=4g', 'bench', root], check=True)
    try:
        yield root
    finally:
        release(root)
        os.rmdir(root)


def container_trees(root, count, name='ct'):
    """``count`` container root filesystems on a tmpfs of their own at ROOT/NAME (``release`` takes them all away):
    two shared lowers each, upper and work dirs made beforehand (every peer gets the same prepared dirs; the
    module still creates the targets)."""
    for layer in ('base', 'runtime'):
        os.makedirs(os.path.join(root, layer), exist_ok=True)
    os.makedirs(os.path.join(root, name), exist_ok=True)
    subprocess.run(['mount', '-t', 'tmpfs', name, os.path.join(root, name)], check=True)
    trees = []
    for index in range(count):
        base = '%s/%s/%s%d' % (root, name, name, index)
        for part in ('upper', 'work'):
            os.makedirs(os.path.join(base, part), exist_ok=True)
        trees.append({'upper': base + '/upper', 'work': base + '/work', 'lower': [root + '/runtime', root + '/base'],
                      'target': base + '/rootfs'})
    return trees


class Run(NamedTuple):
    seconds: float
    tasks: int  # how many tasks ran (TASK lines of the output)


def playbook(root, text, variables, inventory='localhost,', forks=None, interpreter=sys.executable):
    """Run a playbook (local connection unless the inventory says otherwise); fail loudly, else its Run.
    ``interpreter=None`` leaves the Python interpreter to the inventory."""
    path = os.path.join(root, 'play-%d.yml' % time.monotonic_ns())
    with open(path, 'w') as handle:
        handle.write(text)
    with open(path + '.json', 'w') as handle:
        json.dump(variables, handle)
    argv = ['ansible-playbook', '-i', inventory, '-c', 'local', '-e', '@' + path + '.json', path]
    if interpreter:
        argv[-1:-1] = ['-e', 'ansible_python_interpreter=' + interpreter]
    if forks:
        argv += ['--forks', str(forks)]
    start = time.monotonic()
    completed = subprocess.run(argv, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - start
    if completed.returncode != 0:
        sys.exit('%s failed:\n%s\n%s' % (path, completed.stdout[-6000:], completed.stderr[-3000:]))
    return Run(seconds, len(re.findall(r'^TASK \[', completed.stdout, re.MULTILINE)))


def release(path):
    """Unmount the mount at ``path`` and everything below it: one umount2(MNT_DETACH) takes the whole subtree
    (umount --recursive would unmount each mount in turn, rereading a table of 50,000 mounts each time)."""
    subprocess.run(['umount', '--lazy', path], capture_output=True, check=False)


def mount_count():
    with open('/proc/self/mountinfo') as handle:
        return sum(1 for _line in handle)


def timed(argv):
    start = time.monotonic()
    completed = subprocess.run(argv, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        sys.exit('%s failed: %s' % (argv[:3], completed.stderr[-3000:]))
    return time.monotonic() - start


def machine():
    """One line on where the figures come from."""
    with open('/proc/cpuinfo') as handle:
        models = [line.split(':', 1)[1].strip() for line in handle if line.startswith('model name')]
    model = models[0] if models else '?'
    return '%s, %d CPU(s) (%s), Python %s' % (platform.platform(), os.cpu_count(), model, platform.python_version())


def write_result(name, text):
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, name)
    with open(path, 'w') as handle:
        handle.write(text)
    return path
