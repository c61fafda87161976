# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Helpers of the tests that mount for real on this machine (integration) or in a release's chroot.

Every command a helper runs captures its output; ``checked`` fails with the command, its exit status and what it
printed, so a failure can be diagnosed from the test report alone.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import time

from ansible_collections.containerhost.overlayfs.plugins.module_utils.host._devices import stop_export
from ansible_collections.containerhost.overlayfs.plugins.module_utils.host._hostfs import EXPORT_DIR, process_alive
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._idmap import IDMAP_DIR
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._mountinfo import read_mountinfo
from ansible_collections.containerhost.overlayfs.plugins.module_utils.arguments._arguments import OVERLAY_FILESYSTEM
from ansible_collections.containerhost.overlayfs.tests.helpers.playbooks import MODULE, module_playbook

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONVERGE_RUN = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'converge_run.py')


def checked(argv, **kwargs):
    """Run a command, output captured; fail showing its exit status, stdout and stderr unless it succeeds."""
    completed = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    assert completed.returncode == 0, '%s exited %d\nstdout: %s\nstderr: %s' % (
        argv, completed.returncode, completed.stdout, completed.stderr)
    return completed


def run_command(argv):
    """AnsibleModule.run_command's contract, for converge() called without a module: (rc, stdout, stderr)."""
    completed = subprocess.run(argv, capture_output=True, text=True, check=False)
    return completed.returncode, completed.stdout, completed.stderr


def module_params(**args):
    """The module's parameters as AnsibleModule hands them to converge(): its defaults, then args."""
    params = dict((name, spec.get('default')) for name, spec in OVERLAY_FILESYSTEM.items())
    params.update(args)
    return params


def in_own_process(params, lock_path):
    """Start one run of converge() in a process of its own (tests/helpers/converge_run.py); output is piped."""
    return subprocess.Popen([sys.executable, CONVERGE_RUN, json.dumps(sys.path), json.dumps(params), lock_path],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def quietly(argv):
    """Run a clean-up command whose failure is expected at times (output captured, not shown)."""
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def mounts_under(root):
    """Every mount below root, as the collection's own mountinfo reader decodes it."""
    return [entry for entry in read_mountinfo() if entry.mountpoint.startswith(root + '/')]


def loops_backed_under(path):
    """Loop devices whose backing file is path or lies under it."""
    out = checked(['losetup', '--list', '--noheadings', '--output', 'NAME,BACK-FILE']).stdout
    rows = [line.split(None, 1) for line in out.splitlines()]
    return [row[0] for row in rows if len(row) == 2 and (row[1] == path or row[1].startswith(path + '/'))]


def release_scratch(root):
    """Everything a test left on its scratch root: loop devices, mounts, idmapped layers, FUSE exports (processes,
    loop devices and /run are not namespaced). Loop devices first, while the kernel still shows their backing files
    under root (one still mounted is only marked to go when its mount does); then the mounts; then the exports,
    once the loop devices on them are gone."""
    exports = _exports_of_images_under(root)
    for device in loops_backed_under(root) + [device for export, _pid, _meta in exports
                                              for device in loops_backed_under(export)]:
        quietly(['losetup', '--detach', device])
    quietly(['umount', '--recursive', '--lazy', root])
    for entry in reversed(read_mountinfo()):  # the idmapped layers left in this namespace (they are the tests')
        if entry.mountpoint.startswith(IDMAP_DIR + '/'):
            quietly(['umount', '--lazy', entry.mountpoint])
            quietly(['rmdir', entry.mountpoint])  # only these: another namespace's mount point would go with it
    for export, pidfile, metafile in exports:
        for _attempt in range(50):
            if not loops_backed_under(export):
                break
            time.sleep(0.1)
        stop_export(export, pidfile, metafile)


def _exports_of_images_under(root):
    exports = []
    for metafile in glob.glob(os.path.join(EXPORT_DIR, '*.json')):
        with open(metafile) as handle:
            if json.load(handle)['image'].startswith(root + '/'):
                base = metafile[:-len('.json')]
                exports.append((base + '.img', base + '.pid', metafile))
    return exports


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

    def play(self, check=False, diff=False, env=None, **module_args):
        """Run the module once through ansible-playbook (with ``env`` added to its environment); return the
        registered result."""
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
        completed = run(argv, **(env or {}))
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


def relocate(xml, root):
    """Move every absolute path of an example under root: dir='/x' -> dir='ROOT/x'."""
    return re.sub(r"(dir|file|dev)='/", lambda match: "%s='%s/" % (match.group(1), root), xml)


def snapshot(host):
    """The mount table below the scratch root: mount ids included, so a remount shows."""
    return [(entry.mount_id, entry.mountpoint, entry.fstype, tuple(sorted(entry.super_options.items(),
                                                                          key=lambda item: item[0])))
            for entry in mounts_under(host.root)]


def converge_twice(host, **args):
    """First run changes; the second plans nothing and mounts nothing; check mode after them plans nothing."""
    first = host.play(**args)
    assert not first.get('failed'), first.get('msg')
    assert first['changed'] is True
    before = snapshot(host)
    for check in (False, True):
        again = host.play(check=check, **args)
        assert not again.get('failed'), again.get('msg')
        assert (again['changed'], again['plan']) == (False, []), 'check mode: %s' % check
        assert snapshot(host) == before
    return first


def tree_digest(path):
    """Names, modes, contents and device numbers (overlay whiteouts are 0:0 char devices) of a tree."""
    digest = hashlib.sha256()
    for directory, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(directory, name)
            info = os.lstat(full)
            digest.update(('%s %o %d\n' % (full, info.st_mode, info.st_rdev)).encode('utf-8', 'surrogateescape'))
            if stat.S_ISREG(info.st_mode):
                with open(full, 'rb') as handle:
                    digest.update(handle.read())
    return digest.hexdigest()


def make_ext4_image(host, name, files):
    """A raw ext4 image holding the given files (mkfs.ext4 -d, no mount needed)."""
    content = host.path(name + '.content')
    for relative, text in files.items():
        host.write(os.path.join(name + '.content', relative), text)
    image = host.path(name)
    checked(['mkfs.ext4', '-q', '-F', '-d', content, image, '8M'])
    return image


def make_qcow2(host, name, files):
    raw = make_ext4_image(host, name + '.raw', files)
    image = host.path(name)
    checked(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', raw, image])
    os.remove(raw)
    return image


def export_daemons():
    pids = []
    for pidfile in glob.glob(os.path.join(EXPORT_DIR, '*.pid')):
        with open(pidfile) as handle:
            pids.append(int(handle.read()))
    return [pid for pid in pids if process_alive(pid)]


def export_loops():
    out = checked(['losetup', '--list', '--noheadings', '--output', 'NAME,BACK-FILE']).stdout
    return [line.split()[0] for line in out.splitlines() if EXPORT_DIR in line]


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
