# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""qcow2 image layers through qemu-nbd, in the Debian test VM (real kernel nbd, real systemd, real udev),
driven by real ansible-playbook runs from this host."""

from __future__ import annotations

import glob
import os
import re
import shlex
import sys
import tempfile
import textwrap
import threading

import pytest
from ansible_collections.containerhost.overlayfs.tests.helpers.guest import Guest, converge_twice, unmount_everything_under
from ansible_collections.containerhost.overlayfs.tests.helpers.host import relocate
from ansible_collections.containerhost.overlayfs.tests.helpers.reliability import MARKER, check_part

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Builds ext4 content into raw files and converts them to qcow2, in the guest.
MAKE_IMAGE = '''
set -e
mkdir -p "$(dirname "$2")" "$1.content"
printf '%s' "$3" > "$1.content/$4"
mkfs.ext4 -q -F -d "$1.content" "$1.raw" 16M
qemu-img convert -f raw -O qcow2 "$1.raw" "$2"
rm -rf "$1.raw" "$1.content"
'''


# Put in /usr/local/sbin, ahead of the real command in root's PATH: fails when the fault file names the command or
# one of its arguments, otherwise runs the real one.
FAULTY_COMMAND = """#!/bin/sh
fault=$(cat /run/overlayfs-test-fault 2>/dev/null)
for arg in "${0##*/}" "$@"; do
    if [ -n "$fault" ] && [ "${arg%%=*}" = "$fault" ]; then
        echo "injected fault: ${0##*/} $*" >&2
        exit 1
    fi
done
PATH=/usr/sbin:/usr/bin:/sbin:/bin exec "${0##*/}" "$@"
"""
# (state, what fails, the step whose command it is)
NBD_FAULTS = (('mounted', 'modprobe', 'load_module'), ('mounted', '--connect', 'attach_nbd'),
              ('unmounted', '--disconnect', 'detach_nbd'))


class NbdGuest(Guest):
    """A test's scratch root in the VM, with its qcow2 images and the guest's nbd devices."""

    def qcow2(self, name, file_name, text):
        image = self.path(name)
        self.sh('bash -c %s _ %s %s %s %s' % (shlex.quote(MAKE_IMAGE), shlex.quote(self.path('.build', name)),
                                              shlex.quote(image), shlex.quote(text), shlex.quote(file_name)))
        return image

    def connected_nbds(self):
        out = self.sh('for d in /sys/block/nbd*; do [ -e "$d/pid" ] && echo "${d##*/} $(cat "$d/pid")"; done; true')
        return [line.split() for line in out.stdout.splitlines()]

    def qemu_nbd_processes(self):
        return self.sh('pgrep -a qemu-nbd || true').stdout.splitlines()

    def state(self, work_dirs):
        """Mounts under the root (with their options but uuid, which the kernel picks), whether nbd is loaded, nbd devices and qemu-nbd processes,
        and every file under the root but in the work dirs (the kernel keeps its own entries there)."""
        prune = ' -o '.join('-path %s' % shlex.quote(path) for path in work_dirs)
        return self.sh('findmnt -rn -o TARGET,FSTYPE,OPTIONS | grep -F %s | sed "s/,uuid=[a-z]*//" | sort; '
                       'ls -d /sys/module/nbd 2>&1; '
                       'echo nbd: $(cat /sys/block/nbd*/size | grep -vc "^0$"); echo qemu-nbd: $(pgrep -c qemu-nbd); '
                       'find %s \\( %s \\) -prune -o -printf "%%p %%y %%s\\n" | sort'
                       % (shlex.quote(self.root), shlex.quote(self.root), prune)).stdout


@pytest.fixture
def guest(vm, request):
    root = '/srv/t-%s' % request.node.name.replace('[', '-').replace(']', '')[:60]
    workdir = tempfile.mkdtemp(prefix='overlayfs-vm-test-')
    vm.run('mkdir -p %s' % shlex.quote(root), check=True)
    yield NbdGuest(vm, root, workdir)
    # Whatever the test left: unmount below root (deepest first), disconnect nbd devices serving its images.
    vm.run(unmount_everything_under(root) + '; '
           'for d in /sys/block/nbd*; do [ -e "$d/pid" ] && grep -qF %s "/proc/$(cat "$d/pid")/cmdline" '
           '&& qemu-nbd --disconnect "/dev/${d##*/}"; done; true' % shlex.quote(root))
    for path in glob.glob(os.path.join(workdir, '*')):
        os.remove(path)
    os.rmdir(workdir)


def seed_example(name):
    with open(os.path.join(REPO, 'examples', 'seed', name)) as handle:
        return handle.read()


# --- tests ----------------------------------------------------------------------------------------------


def test_the_seed_qcow2_example_loads_nbd_attaches_read_only_and_is_idempotent(guest):
    guest.sh('qemu-nbd --disconnect /dev/nbd0 >/dev/null 2>&1; rmmod nbd 2>/dev/null; true')
    guest.qcow2('guest.img', 'hello', 'from the qcow2 image')
    first = converge_twice(guest, xml=relocate(seed_example('7-overlay-qcow2.xml'), guest.root))
    assert [step['action'] for step in first['steps'] if step['action'] != 'mkdir'][:3] == [
        'load_module', 'attach_nbd', 'mount']
    assert guest.sh('cat %s' % guest.path('merged', 'hello')).stdout == 'from the qcow2 image'
    (device, pid), = guest.connected_nbds()
    assert guest.sh('cat /sys/block/%s/ro' % device).stdout.strip() == '1'
    cmdline = guest.sh("tr '\\0' ' ' < /proc/%s/cmdline" % pid).stdout
    assert '--format=qcow2' in cmdline and '--read-only' in cmdline


def tree_with_three_kinds_of_lowers(guest, image):
    return {
        'upper': guest.path('upper'), 'work': guest.path('work'), 'target': guest.path('rootfs'),
        'lower': [
            {'type': 'file', 'driver': 'nbd', 'format': 'qcow2', 'source': image, 'target': guest.path('tools')},
            {'type': 'overlay', 'upper': guest.path('shared/upper'), 'work': guest.path('shared/work'),
             'lower': [guest.path('base')], 'target': guest.path('shared/merged')},
            guest.path('runtime'),
        ],
    }


def test_qcow2_nested_overlay_and_dir_lowers_then_unmount_detaches_exactly_those_devices(guest):
    image = guest.qcow2('tools.qcow2', 'tool', 'a tool')
    guest.dirs('base', 'runtime')
    guest.sh('echo base > %s; echo runtime > %s' % (guest.path('base', 'b'), guest.path('runtime', 'r')))
    bystander = guest.qcow2('bystander.qcow2', 'x', 'not ours')
    guest.sh('modprobe nbd; qemu-nbd --format=qcow2 --read-only --connect=/dev/nbd15 %s' % shlex.quote(bystander))
    tree = tree_with_three_kinds_of_lowers(guest, image)
    converge_twice(guest, filesystem=tree)
    assert guest.sh('ls %s' % guest.path('rootfs')).stdout.split() == ['b', 'lost+found', 'r', 'tool']
    guest.sh('echo written > %s' % guest.path('rootfs', 'new-file'))
    digest = guest.sh('cd %s && find . -type f -exec sha256sum {} + | sort' % guest.path('upper')).stdout
    result = guest.play(filesystem=tree, state='unmounted')
    assert [step['action'] for step in result['steps']] == ['unmount', 'unmount', 'unmount', 'detach_nbd']
    assert guest.mount_ids() == []
    assert [device for device, _pid in guest.connected_nbds()] == ['nbd15']  # the bystander stays
    assert guest.sh('cd %s && find . -type f -exec sha256sum {} + | sort' % guest.path('upper')).stdout == digest
    assert guest.play(filesystem=tree, state='unmounted')['changed'] is False
    guest.sh('qemu-nbd --disconnect /dev/nbd15')


def test_a_partitioned_image_is_refused_by_name_and_nothing_is_left(guest):
    # an MBR partition table and no filesystem on the whole disk
    guest.sh(textwrap.dedent('''\
        set -e
        mkdir -p {root}
        python3 -c "
        import struct
        mbr = bytearray(512)
        mbr[446:462] = struct.pack('<B3sB3sII', 0, b'\\\\0\\\\0\\\\0', 0x83, b'\\\\0\\\\0\\\\0', 2048, 30720)
        mbr[510:512] = b'\\\\x55\\\\xaa'
        open('{root}/disk.raw', 'wb').write(bytes(mbr) + bytes(16 * 1024 * 1024 - 512))
        "
        qemu-img convert -f raw -O qcow2 {root}/disk.raw {root}/disk.qcow2
        ''').format(root=guest.path()))
    guest.dirs('base')
    tree = {'lower': [{'type': 'file', 'driver': 'nbd', 'format': 'qcow2', 'source': guest.path('disk.qcow2'),
                       'target': guest.path('disk')}, guest.path('base')], 'target': guest.path('m')}
    result = guest.play(filesystem=tree)
    assert result['failed'] and 'partition table' in result['msg'] and 'not supported' in result['msg']
    assert guest.connected_nbds() == [] and guest.qemu_nbd_processes() == []
    assert guest.sh('ls %s' % guest.path()).stdout.split() == ['base', 'disk.qcow2', 'disk.raw']


def test_a_killed_qemu_nbd_is_detected_and_repaired_on_the_next_run(guest):
    image = guest.qcow2('tools.qcow2', 'tool', 'still readable')
    guest.dirs('base', 'runtime')
    tree = tree_with_three_kinds_of_lowers(guest, image)
    converge_twice(guest, filesystem=tree)
    (device, pid), = guest.connected_nbds()
    guest.sh('kill -9 %s; sleep 1' % pid)
    repaired = guest.play(filesystem=tree)
    assert not repaired.get('failed'), repaired.get('msg')
    actions = [(step['action'], step.get('lazy')) for step in repaired['steps']]
    assert actions[:3] == [('unmount', False), ('unmount', False), ('detach_nbd', None)]  # none lazy
    assert ('attach_nbd', None) in actions
    assert guest.sh('cat %s' % guest.path('rootfs', 'tool')).stdout.strip() == 'still readable'
    assert guest.play(filesystem=tree)['changed'] is False


def nbd_trees(guest, names):
    """Tree NAME: an overlay over a qcow2 image through nbd (holding the file `which`) and a dir of its own."""
    trees = []
    for name in names:
        image = guest.qcow2('%s.qcow2' % name, 'which', name)
        guest.dirs('%s/base' % name)
        trees.append({'upper': guest.path(name, 'upper'), 'work': guest.path(name, 'work'),
                      'target': guest.path(name, 'rootfs'),
                      'lower': [{'type': 'file', 'driver': 'nbd', 'format': 'qcow2', 'source': image,
                                 'target': guest.path(name, 'image')}, guest.path(name, 'base')]})
    return trees


def test_two_concurrent_runs_attach_different_images_to_different_devices(guest):
    trees = nbd_trees(guest, ('a', 'b'))
    results = {}
    threads = [threading.Thread(target=lambda tree=tree: results.setdefault(tree['target'], guest.play(filesystem=tree)))
               for tree in trees]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(result['changed'] and not result.get('failed') for result in results.values()), results
    for name in ('a', 'b'):
        assert guest.sh('cat %s' % guest.path(name, 'rootfs', 'which')).stdout == name
    assert len(set(device for device, _pid in guest.connected_nbds())) == 2


@pytest.mark.one_release('bookworm')  # the module's undo; the nbd steps themselves run on both releases
def test_each_nbd_step_failing_leaves_the_guest_as_before(guest):
    """The nbd steps of docs/reliability.md: each one's command fails in turn (a wrapper in /usr/local/sbin)."""
    image = guest.qcow2('tools.qcow2', 'tool', 'a tool')
    guest.dirs('base', 'runtime')
    tree = tree_with_three_kinds_of_lowers(guest, image)
    work_dirs = (guest.path('work'), guest.path('shared/work'))
    for command in ('qemu-nbd', 'modprobe'):
        guest.sh('cat > /usr/local/sbin/%s <<"EOF"\n%sEOF\nchmod 755 /usr/local/sbin/%s'
                 % (command, FAULTY_COMMAND, command))
    rows = []
    try:
        for state, fault, action in NBD_FAULTS:
            guest.play(filesystem=tree, state='unmounted' if state == 'mounted' else 'mounted')  # work for the run
            if action == 'load_module':
                guest.sh('modprobe -r nbd')  # so the plan loads it
            before = guest.state(work_dirs)
            guest.sh('echo %s > /run/overlayfs-test-fault' % shlex.quote(fault))
            failed = guest.play(filesystem=tree, state=state)
            guest.sh('rm /run/overlayfs-test-fault')
            assert failed.get('failed'), failed
            number = int(re.match(r'step (\d+) of', failed['msg']).group(1))
            assert failed['steps'][number - 1]['action'] == action, failed['msg']
            assert 'injected fault' in failed['msg'], failed['msg']
            assert guest.state(work_dirs) == before, failed['msg']
            rows.append('| `%s` | %s | as before |' % (action, state))
            converge_twice(guest, filesystem=tree, state=state)
    finally:
        guest.sh('rm -f /usr/local/sbin/qemu-nbd /usr/local/sbin/modprobe /run/overlayfs-test-fault')
    check_part(MARKER + '\n'.join([
        '', '## nbd steps, in the test VMs', '',
        'The tree of the nbd VM tests (a qcow2 image through nbd, a nested overlay and a dir under an overlay), in',
        'the Debian 12 and 13 VMs. The command behind each nbd step fails in its place (a wrapper in',
        '`/usr/local/sbin`, ahead of the real one in root\'s `PATH`, exits 1), and the guest is compared with',
        'the guest before the run: the mounts with their options (but `uuid`, which the kernel picks), whether',
        'the nbd module is loaded, the nbd devices in use, the qemu-nbd processes and every file of the tree but',
        'the work dirs\' own entries. `load_module` fails with nbd unloaded first. The next run then converges.', '',
        '| step | state | its command fails |', '| --- | --- | --- |'] + rows) + '\n', first=False)


@pytest.mark.one_release('trixie')  # the module's recovery; a killed qemu-nbd is found on both releases
def test_a_run_killed_at_any_point_over_nbd_trees_is_converged_by_the_next_one(guest):
    """The nbd side of tests/integration/test_crashes.py: the module killed (SIGKILL, in the guest) once it has
    mounted or unmounted a share of its mounts; the next run converges with one nbd device and one qemu-nbd per
    image, and the run after it changes nothing."""
    trees = nbd_trees(guest, ['c%d' % number for number in range(3)])
    total = 2 * len(trees)
    killed = 0
    for share in (2, 4):  # of the 6 mounts: an nbd tree half done, then a tree and a half
        for state, until in (('mounted', '-ge %d' % share), ('unmounted', '-le %d' % (total - share))):
            # ansible pipelines the module: its process is a bare /usr/bin/python3 reading the module from stdin
            guest.sh('nohup sh -c %s >/dev/null 2>&1 &' % shlex.quote(
                'echo $$ > /run/overlayfs-test-killer; '
                'for i in $(seq 1200); do if [ $(grep -cF %s /proc/self/mountinfo) %s ]; then '
                'pkill -9 -fx /usr/bin/python3 && touch /run/overlayfs-test-killed; break; fi; '
                'sleep 0.05; done' % (shlex.quote(guest.root + '/'), until)))
            guest.play(filesystems=trees, state=state)  # killed: a MODULE FAILURE, or done before the kill
            killed += guest.sh('rm /run/overlayfs-test-killed', check=False).returncode == 0
            guest.sh('kill $(cat /run/overlayfs-test-killer) 2>/dev/null; rm -f /run/overlayfs-test-killer; true')
            recovered = guest.play(filesystems=trees, state=state)
            assert not recovered.get('failed'), recovered.get('msg')
            assert guest.play(filesystems=trees, state=state)['changed'] is False, (state, share)
            mounted = [target for _id, target in guest.mount_ids()]
            assert len(mounted) == len(set(mounted)) == (total if state == 'mounted' else 0)
            serving = len(trees) if state == 'mounted' else 0
            assert (len(guest.connected_nbds()), len(guest.qemu_nbd_processes())) == (serving, serving), state
    assert killed >= 2  # of the 4 runs, most die mid-run


def test_an_nbd_tree_set_up_by_hand_reads_back_with_its_image_and_format_and_plans_nothing(guest):
    guest.qcow2('base.qcow2', 'hello', 'from the qcow2 image')
    guest.dirs('image', 'runtime', 'upper', 'work', 'merged')
    # qemu-nbd as a user would start it: short options, the image relative to its working dir
    guest.sh('set -e; modprobe nbd; cd %(root)s; qemu-nbd -f qcow2 -r -c /dev/nbd13 base.qcow2; udevadm settle; '
             'mount -o ro /dev/nbd13 %(root)s/image; mount -t overlay overlay -o lowerdir=%(root)s/image:%(root)s/'
             'runtime,upperdir=%(root)s/upper,workdir=%(root)s/work %(root)s/merged' % {'root': shlex.quote(guest.root)})
    mounted = guest.mount_ids()
    results = guest.read_back()
    assert results['found']['filesystems'] == [{
        'type': 'overlay', 'upper': guest.path('upper'), 'work': guest.path('work'),
        'lower': [{'type': 'file', 'source': guest.path('base.qcow2'), 'driver': 'nbd', 'format': 'qcow2',
                   'target': guest.path('image')}, guest.path('runtime')],
        'target': guest.path('merged'), 'mount_flags': []}], results['found']  # mounted without nodev
    assert (results['fed']['changed'], results['fed']['plan']) == (False, []), results['fed']
    assert guest.mount_ids() == mounted
    assert [device for device, _pid in guest.connected_nbds()] == ['nbd13']


def test_an_nbd_image_in_a_users_dir_is_served_from_the_file_pinned_and_without_the_backing_file_it_names(guest):
    """A dir a local user owns is open: the image there is the user's, and so is its header. qemu-nbd gets the file
    pinned (its name is the export's description, which the next run reads back) and no backing file: a chained
    image naming the host's own image would otherwise serve the host's data as the user's layer."""
    secret = guest.qcow2('host/secret.qcow2', 'secret', 'the host\'s own')
    guest.sh('mkdir -p %s && chown 1000:1000 %s' % ((shlex.quote(guest.path('user')),) * 2))
    image = guest.qcow2('user/layer.qcow2', 'layer', 'from the user\'s image')
    tree = {'upper': guest.path('upper'), 'work': guest.path('work'), 'target': guest.path('merged'),
            'lower': [{'type': 'file', 'driver': 'nbd', 'format': 'qcow2', 'source': image,
                       'target': guest.path('image')}, guest.path('runtime')]}
    guest.dirs('runtime')
    converge_twice(guest, filesystem=tree)
    assert guest.sh('cat %s' % guest.path('merged', 'layer')).stdout == 'from the user\'s image'
    (argv,) = [argv for argv in (guest.sh("tr '\\0' '\\n' < /proc/%s/cmdline" % pid).stdout.splitlines()
                                 for _device, pid in guest.connected_nbds()) if '--description=' + image in argv]
    assert argv[-2] == '--' and argv[-1].startswith('json:'), argv
    assert '"backing": null' in argv[-1] and '/proc/' in argv[-1], argv
    assert not guest.play(filesystem=tree, state='unmounted').get('failed')

    chained = guest.path('user', 'chained.qcow2')
    guest.sh('qemu-img create -q -f qcow2 -b %s -F qcow2 %s' % (shlex.quote(secret), shlex.quote(chained)))
    # the control: by its name, the chained image reads as the host's
    assert guest.sh('qemu-img compare %s %s' % (shlex.quote(chained), shlex.quote(secret))).returncode == 0
    refused = guest.play(filesystem=dict(tree, lower=[dict(tree['lower'][0], source=chained)] + tree['lower'][1:]))
    assert refused.get('failed'), refused  # a qcow2 with nothing of its own: no filesystem on the device
    assert guest.mount_ids() == [] and not [pid for _device, pid in guest.connected_nbds()
                                            if guest.root in guest.sh('cat /proc/%s/cmdline' % pid).stdout]


if __name__ == '__main__':
    sys.exit(pytest.main([__file__, '-q']))
