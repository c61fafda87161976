# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Integration fixtures: real ansible runs against localhost, real mounts, in a private mount namespace.

The whole session runs under ``unshare -m --propagation private`` (``make integration`` does that), so
every mount dies with the namespace. Loop devices are not namespaced: each test detaches the ones
backed by its files.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile

import pytest

from ansible_collections.containerhost.overlayfs.tests.helpers.host import (
    REPO,
    Host,
    ReleaseRoot,
    checked,
    quietly,
    release_scratch,
)
from ansible_collections.containerhost.overlayfs.tests.helpers.toolchain import line_bin
from ansible_collections.containerhost.overlayfs.tests.helpers.vm import RELEASES, ensure_image


def pytest_sessionstart(session):
    if os.geteuid() != 0:
        pytest.exit('integration tests mount filesystems: run them as root', returncode=3)
    if _root_mount_propagates():
        pytest.exit('integration tests must run in a private mount namespace: '
                    'unshare -m --propagation private python -m pytest tests/integration (make integration does)',
                    returncode=3)


def _root_mount_propagates():
    """True unless '/' is a private mount (no 'shared:N' peer group), as after unshare --propagation private."""
    with open('/proc/self/mountinfo') as handle:
        for line in handle:
            fields = line.split(' ')
            if fields[4] == '/':
                return any(field.startswith('shared:') for field in fields[6:fields.index('-')])
    return True


@pytest.fixture
def host():
    root = tempfile.mkdtemp(prefix='ovlfs-it-')
    runs_dir = tempfile.mkdtemp(prefix='ovlfs-it-runs-')
    checked(['mount', '-t', 'tmpfs', '-o', 'mode=0755', 'scratch', root])
    try:
        yield Host(root, runs_dir)
    finally:
        shutil.rmtree(runs_dir)
        release_scratch(root)
        os.rmdir(root)


@pytest.fixture
def seed_examples():
    """The seed's <filesystem> examples as examples/seed keeps them (a unit test checks they are the seed's)."""
    paths = sorted(glob.glob(os.path.join(REPO, 'examples', 'seed', '*.xml')))
    assert len(paths) == 7
    texts = []
    for path in paths:
        with open(path) as handle:
            texts.append(handle.read())
    return texts


@pytest.fixture(scope='session', params=RELEASES)
def release_image(request):
    """A release's VM image (built first when the cache is not current), mounted read-only."""
    image = os.path.join(ensure_image(request.param), 'base.img')
    lower = tempfile.mkdtemp(prefix='ovlfs-release-%s-' % request.param)
    checked(['mount', '-o', 'ro,loop', image, lower])
    yield request.param, lower
    quietly(['umount', lower])
    os.rmdir(lower)


@pytest.fixture
def release_root(release_image):
    release, lower = release_image
    scratch = tempfile.mkdtemp(prefix='ovlfs-release-root-')
    checked(['mount', '-t', 'tmpfs', 'release-root', scratch])
    try:
        for name in ('upper', 'work', 'root'):
            os.mkdir(os.path.join(scratch, name))
        root = os.path.join(scratch, 'root')
        checked(['mount', '-t', 'overlay', '-o', 'lowerdir=%s,upperdir=%s/upper,workdir=%s/work' % (
            lower, scratch, scratch), 'release-root', root])
        for argv in (['mount', '-t', 'proc', 'proc', root + '/proc'], ['mount', '--rbind', '/dev', root + '/dev'],
                     ['mount', '-t', 'tmpfs', 'run', root + '/run'], ['mount', '-t', 'tmpfs', 'tmp', root + '/tmp'],
                     ['mount', '-t', 'tmpfs', '-o', 'mode=0755', 'srv', root + '/srv']):
            checked(argv)
        yield ReleaseRoot(release, root)
    finally:
        release_scratch(scratch)
        os.rmdir(scratch)


@pytest.fixture(scope='session')
def tarball(tmp_path_factory):
    """The tarball scripts/build-tarball.sh builds (what `make galaxy-importer` checks)."""
    output = tmp_path_factory.mktemp('built')
    return checked([os.path.join(REPO, 'scripts', 'build-tarball.sh'), str(output)]).stdout.strip()


@pytest.fixture(scope='session')
def install(tarball, tmp_path_factory):
    """install(line): the tarball installed offline, in a network namespace of its own (no network at all), by
    that ansible-core line's ansible-galaxy (.venv's by default) into an empty path; returns that path and the
    environment of a user of that line who finds only that copy."""
    installed = {}

    def install_with(line=None):
        if line not in installed:
            collections = tmp_path_factory.mktemp('collections')
            environment = user_environment(collections, line)
            checked(['unshare', '--net', 'ansible-galaxy', 'collection', 'install', '--offline', '-p',
                     str(collections), tarball], env=environment)
            installed[line] = collections, environment
        return installed[line]
    return install_with


def user_environment(collections, line=None):
    """A shell of a user who installed the collection: no PYTHONPATH into the checkout, only ``collections``, and
    the ansible commands of ``line`` first on PATH."""
    environment = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collections), ANSIBLE_NOCOLOR='1',
                       ANSIBLE_DEPRECATION_WARNINGS='0')
    environment.pop('PYTHONPATH', None)
    if line:
        environment['PATH'] = line_bin(line) + ':' + os.environ['PATH']
    return environment
