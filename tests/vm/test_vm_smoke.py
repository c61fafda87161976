# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Smoke tests of the test VM: what the VM tests of the collection rely on.

Runs in file order on one VM, before the other VM tests (conftest.py). Reboots, with vm.reboot() and ansible.builtin.reboot, are in the persistence
tests and the role's molecule scenario.
"""

from __future__ import annotations

import os
import subprocess

# Builds a qcow2 image layer with an ext4 inside, attaches it read-only through nbd and puts a writable
# overlay on top, like the collection does; cleans up after itself even when a step fails.
NBD_OVERLAY_SCRIPT = r'''
set -eu
d=/var/tmp/smoke-nbd
cleanup() {
  umount "$d/merged" 2>/dev/null || true
  umount "$d/lower" 2>/dev/null || true
  qemu-nbd --disconnect /dev/nbd0 >/dev/null 2>&1 || true
}
trap cleanup EXIT
rm -rf "$d"; mkdir -p "$d/seed" "$d/lower" "$d/upper" "$d/work" "$d/merged"
cd "$d"
echo from-the-image >seed/hello.txt
truncate -s 64M base.raw
mkfs.ext4 -q -F -d seed base.raw
qemu-img convert -f raw -O qcow2 base.raw base.qcow2
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 layer.qcow2
modprobe nbd max_part=8
udevadm settle
for i in 1 2 3 4 5; do
  qemu-nbd --connect=/dev/nbd0 --read-only --format=qcow2 layer.qcow2 && break
  sleep 1
done
udevadm settle
mount -o ro /dev/nbd0 lower
cat lower/hello.txt
mount -t overlay smoke-overlay -o lowerdir=lower,upperdir=upper,workdir=work merged
cat merged/hello.txt
echo written >merged/new.txt
test -f upper/new.txt
echo writable-overlay-ok
'''


def _check(vm, cmd):
    return vm.run(cmd, check=True).stdout.strip()


def test_systemd_is_pid1(vm):
    assert _check(vm, 'cat /proc/1/comm') == 'systemd'
    state = vm.run('systemctl is-system-running --wait', timeout=180)
    assert state.stdout.strip() in ('running', 'degraded'), vm.run('systemctl --failed --no-pager').stdout


def test_modprobe_nbd_gives_devices(vm):
    # Earlier tests may have loaded nbd with other options (they are read-only once it is loaded).
    _check(vm, 'rmmod nbd 2>/dev/null; modprobe nbd max_part=8 && udevadm settle')
    assert _check(vm, 'test -b /dev/nbd0 && echo yes') == 'yes'
    # The driver rounds max_part up to 2^n - 1 (8 -> 15).
    assert int(_check(vm, 'cat /sys/module/nbd/parameters/max_part')) >= 8
    assert _check(vm, 'modprobe overlay && grep -w overlay /proc/filesystems').endswith('overlay')


def test_qcow2_layer_over_nbd_with_writable_overlay(vm):
    out = _check(vm, NBD_OVERLAY_SCRIPT)
    assert out.splitlines() == ['from-the-image', 'from-the-image', 'writable-overlay-ok']
    # The script's trap detached everything again.
    assert _check(vm, 'findmnt -n -o TARGET -S smoke-overlay || true') == ''
    assert _check(vm, 'cat /sys/block/nbd0/size') == '0'


def test_copy_to(vm, tmp_path):
    local = tmp_path / 'payload'
    local.mkdir()
    (local / 'a.txt').write_text('copied\n')
    vm.copy_to(str(local), '/var/tmp/payload')
    assert _check(vm, 'cat /var/tmp/payload/a.txt') == 'copied'


def test_ansible_ping(vm, ansible_bin):
    result = subprocess.run([ansible_bin, '-i', vm.inventory(), 'testvm', '-m', 'ansible.builtin.ping'],
                            capture_output=True, text=True, timeout=300, check=False,
                            env=dict(os.environ, ANSIBLE_NOCOLOR='1'))
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"ping": "pong"' in result.stdout
