# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The module's documentation renders, and its EXAMPLES run as written (paths moved under a scratch root)."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

from ansible_collections.containerhost.overlayfs.plugins.modules import overlay_filesystem
from conftest import MODULE, loops_backed_under, mounts_under, run


def test_ansible_doc_renders_the_module():
    completed = run(['ansible-doc', MODULE])
    assert completed.returncode == 0, completed.stderr
    for text in ('OPTIONS', 'on_drift', 'EXAMPLES', 'RETURN VALUES', 'backingStore'):
        assert text in completed.stdout


def test_module_examples_run_twice_without_change_the_second_time(host):
    examples = overlay_filesystem.EXAMPLES.replace('/srv/', host.root + '/srv/')
    for name in ('images/base', 'images/runtime'):
        host.write('srv/%s/%s.txt' % (name, os.path.basename(name)), name)
    os.makedirs(host.path('srv/image-content/bin'))
    subprocess.run(['mkfs.ext4', '-q', '-F', '-d', host.path('srv/image-content'), host.path('srv/images/tools.img'),
                    '8M'], check=True)
    playbook = os.path.join(host.runs_dir, 'examples.yml')
    with open(playbook, 'w') as handle:
        yaml.safe_dump([{'hosts': 'localhost', 'gather_facts': False, 'tasks': yaml.safe_load(examples)}], handle)
    argv = ['ansible-playbook', '-i', 'localhost,', '-c', 'local', '-e', 'ansible_python_interpreter=' + sys.executable,
            playbook]
    first = run(argv)
    assert first.returncode == 0, first.stdout + first.stderr
    assert {entry.mountpoint for entry in mounts_under(host.root)} == {
        host.path('srv/ct1/rootfs'), host.path('srv/ct2/tools'), host.path('srv/shared/merged'),
        host.path('srv/ct2/rootfs'), host.path('srv/ct3/rootfs')}
    assert len(loops_backed_under(host.root)) == 1
    second = run(argv)
    assert second.returncode == 0, second.stdout + second.stderr
    # ct1 and ct2 are left alone; the batch mounts ct4 again, the check-mode preview would unmount ct3,
    # and the last example unmounts ct4 again: 3 changed tasks out of 5.
    assert 'ok=5 ' in second.stdout and 'changed=3 ' in second.stdout
