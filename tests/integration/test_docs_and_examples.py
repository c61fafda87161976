# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Every plugin's and the role's documentation renders, and the modules' EXAMPLES run as written (paths moved under
a scratch root)."""

from __future__ import annotations

import json
import os
import sys

import yaml

import pytest

from ansible_collections.containerhost.overlayfs.plugins.modules import overlay_filesystem, persistence_files
from ansible_collections.containerhost.overlayfs.tests.helpers.host import checked, loops_backed_under, mounts_under, run
from ansible_collections.containerhost.overlayfs.tests.helpers.toolchain import our_warnings

COLLECTION = 'containerhost.overlayfs.'


@pytest.mark.parametrize('kind, name, texts', [
    ('module', 'overlay_filesystem', ('OPTIONS', 'on_drift', 'on_volatile_marker', 'EXAMPLES', 'RETURN VALUES',
                                      'backingStore')),
    ('module', 'overlay_filesystem_info', ('OPTIONS', 'targets', 'under', 'unexpressed', 'EXAMPLES')),
    ('module', 'persistence_files', ('OPTIONS', 'rendered', 'EXAMPLES', 'RETURN VALUES', 'daemon-reload')),
    ('filter', 'overlay_trees', ('canonical YAML',)),
    ('filter', 'overlay_picture', ('SVG', 'data-role')),
    ('filter', 'overlay_persistence', ('overlay.containerhost', 'mounts', 'on_volatile_marker')),
    ('filter', 'overlay_mounts_items', ('service_mgr', 'image_drivers')),
    ('role', 'overlay_mounts', ('overlay_mounts_filesystems', 'required_by', 'wanted_by',
                                'overlay_mounts_on_volatile_marker')),
])
def test_ansible_doc_renders(kind, name, texts):
    completed = run(['ansible-doc', '-t', kind, COLLECTION + name])
    assert completed.returncode == 0, completed.stderr
    assert not our_warnings(completed.stderr), completed.stderr  # no warning either
    for text in texts:
        assert text in completed.stdout, text


def test_module_examples_run_twice_without_change_the_second_time(host):
    examples = overlay_filesystem.EXAMPLES.replace('/srv/', host.root + '/srv/')
    for name in ('images/base', 'images/runtime'):
        host.write('srv/%s/%s.txt' % (name, os.path.basename(name)), name)
    os.makedirs(host.path('srv/image-content/bin'))
    checked(['mkfs.ext4', '-q', '-F', '-d', host.path('srv/image-content'), host.path('srv/images/tools.img'), '8M'])
    playbook = os.path.join(host.runs_dir, 'examples.yml')
    with open(playbook, 'w') as handle:
        yaml.safe_dump([{'hosts': 'localhost', 'gather_facts': False, 'tasks': yaml.safe_load(examples)}], handle)
    argv = ['ansible-playbook', '-i', 'localhost,', '-c', 'local', '-e', 'ansible_python_interpreter=' + sys.executable,
            playbook]
    first = run(argv)
    assert first.returncode == 0, first.stdout + first.stderr
    assert {entry.mountpoint for entry in mounts_under(host.root)} == {
        host.path('srv/ct1/rootfs'), host.path('srv/ct2/tools'), host.path('srv/shared/merged'),
        host.path('srv/ct2/rootfs'), host.path('srv/ct3/rootfs'), host.path('srv/ct5/rootfs'), host.path('srv/ct6/rootfs')}
    assert len(loops_backed_under(host.root)) == 1
    second = run(argv)
    assert second.returncode == 0, second.stdout + second.stderr
    # ct1 and ct2 are left alone; the batch mounts ct4 again, the check-mode preview would unmount ct3,
    # and the last example unmounts ct4 again: 3 changed tasks out of 6.
    assert 'ok=6 ' in second.stdout and 'changed=3 ' in second.stdout


def test_persistence_files_examples_run_and_write_under_the_root_they_are_given(host):
    """As written, with module_defaults giving the module a scratch root (systemctl --root enables the units)."""
    examples = persistence_files.EXAMPLES.replace('/srv/', host.root + '/srv/')
    host.write('srv/images/base/base.txt', 'base')
    root = host.path('sysroot')
    playbook = os.path.join(host.runs_dir, 'persistence-examples.yml')
    tasks = yaml.safe_load(examples) + [{'name': 'Keep the preview', 'ansible.builtin.copy': {
        'content': '{{ preview | to_json }}', 'dest': os.path.join(host.runs_dir, 'preview.json'), 'mode': '0600'}}]
    with open(playbook, 'w') as handle:
        yaml.safe_dump([{'hosts': 'localhost', 'gather_facts': False, 'tasks': tasks,
                         'module_defaults': {COLLECTION + 'persistence_files': {'root': root}}}], handle)
    argv = ['ansible-playbook', '-i', 'localhost,', '-c', 'local', '-e', 'ansible_python_interpreter=' + sys.executable,
            '--diff', playbook]
    first = run(argv)
    assert first.returncode == 0, first.stdout + first.stderr
    units = [unit_name(host.path('srv/ct%d/rootfs' % number)) for number in (1, 2)]
    for name in units:
        assert os.path.islink(os.path.join(root, 'etc/systemd/system/local-fs.target.wants', name))
    with open(os.path.join(host.runs_dir, 'preview.json')) as handle:
        preview = json.load(handle)
    assert preview['changed'] and root + '/etc/systemd/system/' + units[1] in preview['removed']
    assert preview['disabled'] == [units[1]]
    assert os.path.exists(os.path.join(root, 'etc/systemd/system', units[1]))  # check mode: still there
    second = run(argv)
    assert second.returncode == 0, second.stdout + second.stderr
    assert 'changed=1 ' in second.stdout  # only the check-mode preview reports a change


def unit_name(target):
    return checked(['systemd-escape', '--path', '--suffix=mount', '--', target]).stdout.strip()
