# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The Galaxy tarball as a user gets it: built from the files git ships, installed with no network into an empty
collections path, and used from there (ansible-doc of every plugin and the role, and the demo), with the
checkout out of sight."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest

from ansible_collections.containerhost.overlayfs.tests.helpers.host import REPO, checked, mounts_under
from ansible_collections.containerhost.overlayfs.tests.helpers.toolchain import our_warnings

# What a user needs, and what stays in the repository (galaxy.yml build_ignore).
SHIPPED = ('plugins/modules/overlay_filesystem.py', 'plugins/action/overlay_filesystem.py', 'meta/runtime.yml',
           'roles/overlay_mounts/meta/main.yml', 'roles/overlay_mounts/meta/argument_specs.yml',
           'examples/demo.yml', 'docs/reference.md', 'docs/docsite/extra-docs.yml', 'docs/docsite/rst/reference.rst',
           'docs/pictures/reference-nested-overlay-seed.svg', 'requirements.txt', 'LICENSE', 'README.md')
NOT_SHIPPED = ('Makefile', 'scripts/', 'requirements/', 'tests/', '.ci/',
               'extensions/', 'benchmarks/bench_scale.py', 'docs/design.md', 'docs/testing-vm.md',
               'changelogs/fragments/', '.gitignore', '.cache/', '.venv/', '.ansible/')


@pytest.fixture(scope='module')
def installed(install):
    return install()


def test_the_tarball_holds_what_users_need_and_nothing_of_development(tarball):
    with tarfile.open(tarball) as archive:
        names = archive.getnames()
    for path in SHIPPED:
        assert path in names, path
    for path in NOT_SHIPPED:
        assert not [name for name in names if name == path.rstrip('/') or name.startswith(path)], path


def test_every_plugin_and_the_role_document_themselves_from_the_installed_copy(installed):
    collections, environment = installed
    root = os.path.join(str(collections), 'ansible_collections', 'containerhost', 'overlayfs')
    found = {'module': [], 'filter': [], 'role': ['overlay_mounts']}
    for kind in ('module', 'filter'):
        listing = checked(['ansible-doc', '-t', kind, '--list', '--json', 'containerhost.overlayfs'],
                          env=environment).stdout
        found[kind] = sorted(name.rsplit('.', 1)[1] for name in json.loads(listing))
    assert found['module'] == ['overlay_filesystem', 'overlay_filesystem_info', 'persistence_files']
    assert found['filter'] == ['overlay_mounts_items', 'overlay_persistence', 'overlay_picture', 'overlay_trees']
    for kind, names in found.items():
        for name in names:
            completed = checked(['ansible-doc', '-t', kind, 'containerhost.overlayfs.' + name], env=environment)
            assert root in completed.stdout or kind == 'role', completed.stdout[:500]  # read from the copy
            assert not our_warnings(completed.stderr), completed.stderr


def test_the_demo_runs_from_the_installed_copy(installed, host):
    collections, environment = installed
    demo = os.path.join(str(collections), 'ansible_collections', 'containerhost', 'overlayfs', 'examples', 'demo.yml')
    completed = subprocess.run(
        ['unshare', '--net', 'ansible-playbook', '-i', 'localhost,', '-c', 'local',
         '-e', 'ansible_python_interpreter=' + sys.executable, '-e', 'demo_root=' + host.root, demo],
        capture_output=True, text=True, env=environment, cwd=str(collections), check=False)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-2000:]
    assert 'failed=0' in completed.stdout
    assert mounts_under(host.root) == []  # the demo unmounts what it mounted


def test_tool_caches_at_any_depth_stay_out_of_git_and_so_out_of_the_tarball():
    # the tarball is made from the files git would commit (scripts/copy-tree.sh), so .gitignore keeps caches out
    caches = ['.ansible/x', 'roles/overlay_mounts/.ansible/x', 'extensions/molecule/localhost/.ansible/x',
              '.pytest_cache/x', 'tests/unit/.pytest_cache/x', '.hypothesis/x', 'tests/integration/.hypothesis/x']
    completed = checked(['git', 'check-ignore', '--no-index'] + caches, cwd=REPO)
    assert completed.stdout.split() == caches
