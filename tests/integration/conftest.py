# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Integration fixtures: real ansible runs against localhost, real mounts, in a private mount namespace.

The whole session runs under ``unshare -m --propagation private`` (``make integration`` does that), so
every mount dies with the namespace. Loop devices are not namespaced: each test detaches the ones
backed by its files.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

from ansible_collections.containerhost.overlayfs.plugins.module_utils.devices import stop_export
from module_playbook import MODULE, module_playbook
from ansible_collections.containerhost.overlayfs.plugins.module_utils.mountinfo import read_mountinfo
from ansible_collections.containerhost.overlayfs.plugins.module_utils.hostfs import EXPORT_DIR

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, 'tests', 'vm'))

from vm import RELEASES, ensure_image  # noqa: E402  pylint: disable=wrong-import-position


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


def mounts_under(root):
    """Every mount below root, as the collection's own mountinfo reader decodes it."""
    return [entry for entry in read_mountinfo() if entry.mountpoint.startswith(root + '/')]


def loops_backed_under(path):
    """Loop devices whose backing file is path or lies under it."""
    out = subprocess.run(['losetup', '--list', '--noheadings', '--output', 'NAME,BACK-FILE'],
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split(None, 1) for line in out.splitlines()]
    return [row[0] for row in rows if len(row) == 2 and (row[1] == path or row[1].startswith(path + '/'))]


def stop_exports_of_images_under(root):
    """FUSE exports (and their loop devices) a failed test left behind: processes and /run are not namespaced."""
    for metafile in glob.glob(os.path.join(EXPORT_DIR, '*.json')):
        with open(metafile) as handle:
            if not json.load(handle)['image'].startswith(root + '/'):
                continue
        export = metafile[:-len('.json')] + '.img'
        for device in loops_backed_under(export):
            subprocess.run(['losetup', '--detach', device], check=False)
        stop_export(export, metafile[:-len('.json')] + '.pid', metafile)


class Host(object):
    """A scratch root on its own tmpfs, and ways to run the module against localhost."""

    def __init__(self, root, runs_dir):
        self.root = root
        self.runs_dir = runs_dir
        self.runs = 0

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def make_dirs(self, *names, **files):
        for name in names:
            os.makedirs(self.path(name), exist_ok=True)
        for name, content in files.items():
            self.write(name, content)

    def write(self, name, content):
        os.makedirs(os.path.dirname(self.path(name)), exist_ok=True)
        with open(self.path(name), 'w') as handle:
            handle.write(content)

    def play(self, check=False, diff=False, **module_args):
        """Run the module once through ansible-playbook; return the registered result."""
        self.runs += 1
        vars_file = os.path.join(self.runs_dir, 'run%d-vars.json' % self.runs)
        result_file = os.path.join(self.runs_dir, 'run%d-result.json' % self.runs)
        with open(vars_file, 'w') as handle:
            json.dump({'module_args': module_args, 'result_file': result_file}, handle)
        playbook = os.path.join(self.runs_dir, 'run%d.yml' % self.runs)
        with open(playbook, 'w') as handle:
            handle.write(module_playbook('localhost'))
        argv = ['ansible-playbook', '-i', 'localhost,', '-c', 'local', '-e', '@' + vars_file,
                '-e', 'ansible_python_interpreter=' + sys.executable, playbook]
        if check:
            argv.append('--check')
        if diff:
            argv.append('--diff')
        completed = run(argv)
        assert completed.returncode == 0, completed.stdout + completed.stderr
        with open(result_file) as handle:
            return json.load(handle)

    def adhoc(self, args, check=False):
        """Run the module ad hoc (``ansible localhost -m ... -a ARGS``); return (rc, parsed result)."""
        argv = ['ansible', 'localhost', '-i', 'localhost,', '-c', 'local', '-e',
                'ansible_python_interpreter=' + sys.executable, '-m', MODULE, '-a', args]
        if check:
            argv.append('--check')
        completed = run(argv, ANSIBLE_STDOUT_CALLBACK='minimal')
        text = completed.stdout
        return completed.returncode, json.loads(text[text.index(' => ') + 4:])


def run(argv, **env):
    environment = dict(os.environ, ANSIBLE_NOCOLOR='1', ANSIBLE_DEPRECATION_WARNINGS='0', **env)
    return subprocess.run(argv, capture_output=True, text=True, env=environment, cwd=REPO, check=False)


@pytest.fixture
def host():
    root = tempfile.mkdtemp(prefix='ovlfs-it-')
    runs_dir = tempfile.mkdtemp(prefix='ovlfs-it-runs-')
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'mode=0755', 'scratch', root], check=True)
    try:
        yield Host(root, runs_dir)
    finally:
        shutil.rmtree(runs_dir)
        stop_exports_of_images_under(root)
        # Before the unmount, while the kernel still shows their backing files under root: a loop device
        # still mounted is only marked to go when its last mount does.
        for device in loops_backed_under(root):
            subprocess.run(['losetup', '--detach', device], check=False)
        subprocess.run(['umount', '--recursive', '--lazy', root], check=False)
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


def relocate(xml, root):
    """Move every absolute path of an example under root: dir='/x' -> dir='ROOT/x'."""
    return re.sub(r"(dir|file|dev)='/", lambda match: "%s='%s/" % (match.group(1), root), xml)


class ReleaseRoot(object):
    """A Debian release's userland (its test VM image) as a throwaway chroot on this machine's kernel: its
    systemd-analyze, systemd-fstab-generator, systemctl, mount(8) and Python, with /srv a scratch tmpfs.

    The image is mounted read-only once per session; every test gets a fresh tmpfs overlay over it.
    """

    def __init__(self, release, root):
        self.release = release
        self.root = root

    def path(self, path):
        """The host path of a path inside the root."""
        return self.root + path

    def run(self, argv, **env):
        """Run a command inside the root, with a clean environment; output captured."""
        environment = ['PATH=/usr/sbin:/usr/bin:/sbin:/bin', 'LC_ALL=C.UTF-8'] + ['%s=%s' % pair for pair in env.items()]
        return subprocess.run(['chroot', self.root, 'env', '-i'] + environment + list(argv), capture_output=True,
                              text=True, check=False)

    def check(self, argv, **env):
        completed = self.run(argv, **env)
        assert completed.returncode == 0, '%s in %s exited %d\n%s%s' % (
            argv, self.release, completed.returncode, completed.stdout, completed.stderr)
        return completed.stdout

    def systemctl(self, argv):
        """A persistence_files systemctl runner: the release's own systemctl, offline in the root."""
        completed = self.run([arg for arg in argv if not arg.startswith('--root=')])
        return completed.returncode, completed.stdout, completed.stderr


@pytest.fixture(scope='session', params=RELEASES)
def release_image(request):
    """A release's VM image (built first when the cache is not current), mounted read-only."""
    image = os.path.join(ensure_image(request.param), 'base.img')
    lower = tempfile.mkdtemp(prefix='ovlfs-release-%s-' % request.param)
    subprocess.run(['mount', '-o', 'ro,loop', image, lower], check=True, capture_output=True)
    yield request.param, lower
    subprocess.run(['umount', lower], check=False)
    os.rmdir(lower)


@pytest.fixture
def release_root(release_image):
    release, lower = release_image
    scratch = tempfile.mkdtemp(prefix='ovlfs-release-root-')
    subprocess.run(['mount', '-t', 'tmpfs', 'release-root', scratch], check=True)
    try:
        for name in ('upper', 'work', 'root'):
            os.mkdir(os.path.join(scratch, name))
        root = os.path.join(scratch, 'root')
        subprocess.run(['mount', '-t', 'overlay', '-o', 'lowerdir=%s,upperdir=%s/upper,workdir=%s/work' % (
            lower, scratch, scratch), 'release-root', root], check=True, capture_output=True)
        for argv in (['mount', '-t', 'proc', 'proc', root + '/proc'], ['mount', '--rbind', '/dev', root + '/dev'],
                     ['mount', '-t', 'tmpfs', 'run', root + '/run'], ['mount', '-t', 'tmpfs', 'tmp', root + '/tmp'],
                     ['mount', '-t', 'tmpfs', '-o', 'mode=0755', 'srv', root + '/srv']):
            subprocess.run(argv, check=True, capture_output=True)
        yield ReleaseRoot(release, root)
    finally:
        stop_exports_of_images_under(scratch)
        for device in loops_backed_under(scratch):
            subprocess.run(['losetup', '--detach', device], check=False)
        subprocess.run(['umount', '--recursive', '--lazy', scratch], check=False)
        os.rmdir(scratch)
