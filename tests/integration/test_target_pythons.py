# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The collection as a user of each ansible-core line gets it (the Galaxy tarball installed offline by that line's
ansible-galaxy), on the target Pythons (the Makefile's TARGET_PYTHONS, linked into .cache/pythons/bin by make setup;
3.14 is Debian's build, scripts/debian_python.py): every one with the newest line, the oldest and newest this machine
has with the others. A nested tree with a raw image layer and an idmapped layer is mounted, mounted again with no
change, drawn and printed by the filters, read back and fed back with no change, persisted by the role twice (the
second time changing nothing), and removed by the role, leaving nothing mounted and no loop device; no run prints a
warning."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from ansible_collections.containerhost.overlayfs.tests.helpers.host import (
    REPO,
    loops_backed_under,
    make_ext4_image,
    mounts_under,
)
from ansible_collections.containerhost.overlayfs.tests.helpers.toolchain import (
    ANSIBLE_LINES,
    TARGET_PYTHONS,
    target_python,
)

SHIFT = {'uid': [{'start': 0, 'target': 100000, 'count': 65536}], 'gid': [{'start': 0, 'target': 100000, 'count': 65536}]}

MODULE_AND_INFO = '''- hosts: localhost
  gather_facts: false
  tasks:
    - name: Mount the tree
      containerhost.overlayfs.overlay_filesystem:
        filesystem: "{{ tree }}"
      register: first
    - name: Mount it again
      containerhost.overlayfs.overlay_filesystem:
        filesystem: "{{ tree }}"
      register: again
    - name: Draw it and print it canonically
      ansible.builtin.set_fact:
        picture: "{{ tree | containerhost.overlayfs.overlay_picture }}"
        canonical: "{{ tree | containerhost.overlayfs.overlay_trees }}"
    - name: Read it back
      containerhost.overlayfs.overlay_filesystem_info:
        under: "{{ root }}"
      register: found
    - name: Feed it back
      containerhost.overlayfs.overlay_filesystem:
        filesystems: "{{ found.filesystems }}"
      register: fed
    - name: Keep the results for the test
      ansible.builtin.copy:
        content: "{{ {'first': first, 'again': again, 'found': found, 'fed': fed, 'picture': picture,
                      'canonical': canonical} | to_json }}"
        dest: "{{ result_file }}"
        mode: "0600"
'''

ROLE = '''- hosts: localhost
  gather_facts: false
  roles:
    - role: containerhost.overlayfs.overlay_mounts
      overlay_mounts_root: "{{ persist }}"
      overlay_mounts_persistence: systemd
      overlay_mounts_install_packages: false
      overlay_mounts_python: "{{ ansible_python_interpreter }}"
      overlay_mounts_filesystems:
        - name: ct
          state: "{{ state }}"
          filesystem: "{{ tree }}"
'''


def _cases():
    present = [version for version in TARGET_PYTHONS if target_python(version)]
    ends = sorted(set(present[:1] + present[-1:]), key=TARGET_PYTHONS.index)
    return [(ANSIBLE_LINES[-1], version) for version in TARGET_PYTHONS] + [
        (line, version) for line in ANSIBLE_LINES[:-1] for version in ends]


@pytest.fixture
def interpreter(version):
    path = target_python(version)
    if not path:
        how = subprocess.run([os.path.join(REPO, 'scripts', 'python-path.sh'), version], capture_output=True,
                             text=True, check=False)
        pytest.skip('%s; nor has make setup unpacked a Debian build of it (requirements/debian-python%s.lock)'
                    % (how.stderr.strip(), version))
    return path


@pytest.mark.parametrize('line, version', _cases())
def test_the_module_filters_info_module_and_role_of_each_line_run_on_the_target_python(
        host, install, line, interpreter):
    user = install(line)
    path = host.path
    host.make_dirs('images/debian/etc', 'images/shared/lib')
    host.write('images/debian/etc/os-release', 'debian')
    image = make_ext4_image(host, 'images/tools.img', {'bin/tool': 'a tool'})
    tree = {'upper': path('ct/upper'), 'work': path('ct/work'), 'target': path('ct/rootfs'), 'lower': [
        {'type': 'overlay', 'upper': path('base/upper'), 'work': path('base/work'), 'lower': [path('images/debian')],
         'target': path('base/merged')},
        {'type': 'file', 'source': image, 'format': 'raw', 'target': path('ct/tools')},
        {'type': 'dir', 'target': path('images/shared'), 'idmap': SHIFT}]}

    results = _play(user, host, interpreter, 'module-and-info', MODULE_AND_INFO, tree=tree)
    assert results['first']['changed'] is True, results['first'].get('msg')
    assert (results['again']['changed'], results['again']['plan']) == (False, [])
    [found] = results['found']['filesystems']
    assert found['target'] == tree['target'] and found['lower'][0]['target'] == path('base/merged')
    assert found['lower'][2] == tree['lower'][2]  # the idmapped layer, with its mapping
    assert (results['fed']['changed'], results['fed']['plan']) == (False, [])
    assert results['picture'].startswith('<svg') and path('images/shared') in results['picture']
    assert [canonical['target'] for canonical in results['canonical']] == [tree['target']]
    assert os.stat(path('ct/rootfs/lib')).st_uid == 100000  # the idmapped layer's root, as the container sees it
    with open(path('ct/rootfs/bin/tool')) as handle:
        assert handle.read() == 'a tool'

    persist = os.path.join(host.runs_dir, 'persist')
    for state, changed in (('mounted', True), ('mounted', False), ('absent', True)):
        recap = _play(user, host, interpreter, 'role-' + state, ROLE, tree=tree, state=state, persist=persist)
        assert (' changed=0 ' not in recap) is changed, recap
    assert mounts_under(host.root) == [] and loops_backed_under(host.root) == []
    assert not [name for _dir, _dirs, names in os.walk(persist) for name in names if name.endswith('.mount')]


def _play(user, host, interpreter, name, playbook, **variables):
    """Run a playbook on localhost as the user (the collections path and environment install() gave) with the
    target's Python; the results it keeps, or its recap. It must print no warning."""
    collections, environment = user
    result_file = os.path.join(host.runs_dir, name + '.json')
    vars_file = os.path.join(host.runs_dir, name + '-vars.json')
    with open(vars_file, 'w') as handle:
        json.dump(dict(variables, root=host.root, result_file=result_file), handle)
    path = os.path.join(host.runs_dir, name + '.yml')
    with open(path, 'w') as handle:
        handle.write(playbook)
    completed = subprocess.run(['ansible-playbook', '-i', 'localhost,', '-c', 'local', '-e',
                                'ansible_python_interpreter=' + interpreter, '-e', '@' + vars_file, path],
                               capture_output=True, text=True, cwd=str(collections), check=False,
                               env=dict(environment, ANSIBLE_DEPRECATION_WARNINGS='1'))  # a deprecation is a warning
    assert completed.returncode == 0, completed.stdout[-5000:] + completed.stderr[-2000:]
    assert 'WARNING' not in completed.stdout + completed.stderr, completed.stdout + completed.stderr
    if not os.path.exists(result_file):
        return completed.stdout[completed.stdout.rindex('PLAY RECAP'):]
    with open(result_file) as handle:
        return json.load(handle)
