# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The overlay_mounts role's persistence through real reboots, on Debian 12 and 13 (one VM each, booted once).

The steps build on each other and run in file order (a failed step skips the rest, see conftest.py):

1. the role converges a container host's trees (systemd units and fstab lines; nbd, loop and FUSE image layers;
   a nested overlay; a lowerdir well past 255 bytes; paths with space , : \\ % = and non-ASCII; a read-only tree
   with options; on Debian 13 500 layers past one page; the root of a libvirt LXC domain: a qcow2 base
   through nbd under a nested overlay) and a second run changes nothing;
2. three reboots in a row: every tree back with its layers, mounted after what it stands on, every write made
   through a merged view still there, a unit that requires a nofail tree started after it, the LXC domain
   autostarted by libvirtd after its tree, its writes in the tree's upper dir; then the role changes nothing;
3. a volatile tree: after a clean reboot it stays down and says why (the default), the role refuses it; a tree
   whose lower dir lies in the loop tree's container's view, and one whose upper and work dirs lie in the upper dir
   of an unprivileged container (its files owned by uid 100000), are mounted by fd; once each container swaps its
   dir for a link to a host dir, each stays down after the reboot and says why, the host dirs untouched;
4. with on_volatile_marker discard the role mounts it, and it comes back after an unclean reset; an image missing
   at that boot keeps only its tree down, the boot completes, the role names the image, and with the image back
   the next run mounts that tree and changes nothing else;
5. a tree made absent is unmounted and its persistence removed.

Everything runs through real ansible-playbook from this host; the guest is read with single shell commands.
"""

from __future__ import annotations

import json
import os
import shlex
import tempfile

import pytest

from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel import _mountinfo as mountinfo
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._options import options_match
from ansible_collections.containerhost.overlayfs.tests.helpers.trees import canonical, overlay
from ansible_collections.containerhost.overlayfs.tests.helpers.vm import recap, run_role

pytestmark = pytest.mark.incremental

ROOT = '/srv/p'
PROBE = 'overlay-probe.service'  # stands in for a container's unit: it needs ct-nbd's tree
STORAGE = ROOT + '/var/lib/containers/storage/overlay/%064d/diff'  # container-storage layer paths, 98 bytes each
AWKWARD = [ROOT + '/aw/sp ace', ROOT + '/aw/com,ma', ROOT + '/aw/co:lon', ROOT + '/aw/back\\slash',
           ROOT + '/aw/per%cent', ROOT + '/aw/eq=ual', ROOT + '/aw/\u00e9t\u00e9-\u4e2d']


def path(*parts):
    return '/'.join((ROOT,) + parts)


def image(name, driver, image_format, target):
    return {'type': 'file', 'driver': driver, 'format': image_format, 'source': path('images', name), 'target': target}


def trees_of(release):
    """The host's trees: (item, tree) pairs, the item's settings without its tree."""
    shared = overlay(path('shared', 'merged'), [path('base')], path('shared', 'upper'), path('shared', 'work'))
    lxc_base = overlay(path('lxc', 'base'), [image('busybox.qcow2', 'nbd', 'qcow2', path('lxc', 'image'))],
                       path('lxc', 'base-upper'), path('lxc', 'base-work'))
    items = [
        ({'name': 'ct-nbd', 'required_by': [PROBE]},
         overlay(path('ct-nbd', 'rootfs'), [image('tools.qcow2', 'nbd', 'qcow2', path('ct-nbd', 'tools')), shared,
                                            path('runtime')], path('ct-nbd', 'upper'), path('ct-nbd', 'work'))),
        ({'name': 'ct-fstab', 'persistence': 'fstab'},
         overlay(path('ct-fstab', 'rootfs'), [image('data.qcow2', 'nbd', 'qcow2', path('ct-fstab', 'data')),
                                              path('base')], path('ct-fstab', 'upper'), path('ct-fstab', 'work'))),
        ({'name': 'storage', 'nofail': False},
         overlay(path('storage', 'merged'), [STORAGE % number for number in range(1, 6)], path('storage', 'upper'),
                 path('storage', 'work'))),
        ({'name': 'storage-fstab', 'persistence': 'fstab'},
         overlay(path('storage-fstab', 'merged'), [STORAGE % number for number in range(3, 8)],
                 path('storage-fstab', 'upper'), path('storage-fstab', 'work'))),
        ({'name': 'awkward'},
         overlay(path('aw', 'merged 100% #1=\u00e9'), AWKWARD, path('aw', 'up per,1'), path('aw', 'wo:rk\\1'))),
        ({'name': 'loop', 'persistence': 'fstab'},
         overlay(path('loop', 'rootfs'), [image('tools.raw', 'loop', 'raw', path('loop', 'tools')), path('runtime')],
                 path('loop', 'upper'), path('loop', 'work'))),
        ({'name': 'readonly'},
         overlay(path('readonly', 'merged'), [path('base'), path('runtime')], path('readonly', 'upper'),
                 path('readonly', 'work'), readonly=True,
                 options={'index': 'off', 'redirect_dir': 'nofollow', 'xino': 'auto'})),
        ({'name': 'fuse'},
         overlay(path('fuse', 'rootfs'), [image('fused.qcow2', 'fuse', 'qcow2', path('fuse', 'image')), path('runtime')],
                 path('fuse', 'upper'), path('fuse', 'work'))),
        # a libvirt LXC container's root: a qcow2 base (busybox) through nbd, under a nested overlay
        ({'name': 'lxc', 'wanted_by': ['libvirtd.service']},
         overlay(path('lxc', 'rootfs'), [lxc_base], path('lxc', 'upper'), path('lxc', 'work'))),
    ]
    if release == 'trixie':  # Linux 6.12: lowerdir+ (6.8+) takes layer lists past one page
        many = [path('many', 'l%03d' % number) for number in range(500)]
        items.append(({'name': 'many'}, overlay(path('many', 'merged'), many, path('many', 'upper'), path('many', 'work'))))
    return [(settings, canonical(tree)) for settings, tree in items]


# Its lower dir lies in the merged view of the loop tree's container, which shapes it.
INSIDE = ({'name': 'inside'}, canonical(overlay(path('inside', 'merged'), [path('loop', 'rootfs', 'inner'), path('runtime')],
                                                path('inside', 'upper'), path('inside', 'work'))))
# Its upper and work dirs lie in the upper dir of an unprivileged container (not one of the role's trees), whose
# root maps to uid 100000: the dir its files are in is that uid's, so the container shapes it.
UNPRIVILEGED = ({'name': 'unprivileged'}, canonical(overlay(
    path('uctr', 'merged'), [path('base'), path('runtime')], path('uctr', 'upper', 'data', 'u'),
    path('uctr', 'upper', 'data', 'w'))))
VOLATILE = ({'name': 'volatile'}, canonical(overlay(path('vol', 'merged'), [path('base'), path('runtime')],
                                                    path('vol', 'upper'), path('vol', 'work'), options={'volatile': True})))


def walk(node):
    yield node
    if isinstance(node, dict):
        for lower in node.get('lower', []):
            yield from walk(lower)


def marker_name(layer):
    return 'in' + layer.replace('/', '_')


# --- the guest ----------------------------------------------------------------------------------------------

# Makes every lower dir (with a file named after it) and image the trees name; stdin: {"dirs": [], "images": []}.
PREPARE = r'''
import json, os, subprocess, sys, tempfile
spec = json.load(sys.stdin)
for path in spec['dirs']:
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, 'in' + path.replace('/', '_')), 'w') as handle:
        handle.write(path)
for image in spec['images']:
    if os.path.exists(image['source']):
        continue
    os.makedirs(os.path.dirname(image['source']), exist_ok=True)
    with tempfile.TemporaryDirectory() as content:
        with open(os.path.join(content, 'from-' + os.path.basename(image['source'])), 'w') as handle:
            handle.write(image['source'])
        raw = image['source'] if image['format'] == 'raw' else image['source'] + '.raw'
        subprocess.run(['mkfs.ext4', '-q', '-F', '-d', content, raw, '16M'], check=True)
        if raw != image['source']:
            subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', image['format'], raw, image['source']], check=True)
            os.unlink(raw)
'''
# Reads files; stdin: a JSON list of paths; stdout: {path: text or null}.
READ = r'''
import json, sys
out = {}
for path in json.load(sys.stdin):
    try:
        with open(path, encoding='utf-8') as handle:
            out[path] = handle.read()
    except OSError:
        out[path] = None
print(json.dumps(out))
'''
# Lists dirs; stdin: a JSON list of paths; stdout: {path: sorted names, or null}.
LIST = r'''
import json, os, sys
out = {}
for path in json.load(sys.stdin):
    try:
        out[path] = sorted(os.listdir(path))
    except OSError:
        out[path] = None
print(json.dumps(out))
'''
# Writes files; stdin: {path: text}.
WRITE = r'''
import json, sys
for path, text in json.load(sys.stdin).items():
    with open(path, 'w', encoding='utf-8') as handle:
        handle.write(text)
'''
# The container's root image: busybox, made in the guest.
BUSYBOX_IMAGE = r'''
set -e
image=%s
[ -e "$image" ] && exit 0
content=$(mktemp -d)
mkdir -p "$content/bin" "$(dirname "$image")"
cp /bin/busybox "$content/bin/"
for tool in sh sleep cat echo date; do ln -s busybox "$content/bin/$tool"; done
mkfs.ext4 -q -F -d "$content" "$image.raw" 16M
qemu-img convert -f raw -O qcow2 "$image.raw" "$image"
rm -rf "$image.raw" "$content"
''' % path('images', 'busybox.qcow2')
# libvirt's LXC driver, as Debian ships it: a domain whose root is the lxc tree, started at boot by libvirtd
# (which the tree's wanted_by orders after the tree). Each start appends a line to a file in its root.
LXC = 'virsh -q -c lxc:///system '
LXC_DOMAIN = '''<domain type='lxc'>
  <name>ct-lxc</name>
  <memory unit='MiB'>64</memory>
  <os>
    <type>exe</type>
    <init>/bin/sh</init>
    <initarg>-c</initarg>
    <initarg>echo started >> /written-by-container; exec sleep 100000000</initarg>
  </os>
  <devices>
    <filesystem type='mount'><source dir='%s'/><target dir='/'/></filesystem>
    <console type='pty'/>
  </devices>
</domain>
''' % path('lxc', 'rootfs')
PROBE_UNIT = '''[Unit]
Description=Stands in for a container whose root filesystem is the tree ct-nbd
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'findmnt -n -o FSTYPE %s > /run/overlay-probe.txt'
[Install]
WantedBy=multi-user.target
''' % path('ct-nbd', 'rootfs')


class Host(object):
    """The VM as the container host the role manages; what the tests remember between steps."""

    def __init__(self, vm, workdir):
        self.vm = vm
        self.workdir = workdir
        self.trees = trees_of(vm.release)
        self.writes = {}  # path in a merged view -> text written there
        self.runs = 0

    def python(self, script, data):
        return self.vm.run(['python3', '-c', script], input=json.dumps(data), check=True).stdout

    def role(self, items, **variables):
        """One ansible-playbook run of the role over these (settings, tree) items."""
        self.runs += 1
        filesystems = [dict(settings, filesystem=tree) for settings, tree in items]
        return run_role(self.vm, self.workdir, dict(variables, overlay_mounts_filesystems=filesystems),
                        'role%d' % self.runs)

    def converge(self, items, **variables):
        completed = self.role(items, **variables)
        assert completed.returncode == 0, completed.stdout[-8000:] + completed.stderr
        return recap(completed.stdout)

    def mounts(self):
        """Mount point -> entry, for everything under ROOT."""
        table = self.vm.run('cat /proc/self/mountinfo', check=True).stdout
        return dict((entry.mountpoint, entry) for entry in mountinfo.parse(table) if entry.mountpoint.startswith(ROOT + '/'))

    def read(self, paths):
        return json.loads(self.python(READ, sorted(paths)))

    def listings(self, paths):
        return json.loads(self.python(LIST, paths))

    def write_through_every_view(self, label):
        """A file in each writable merged view; later steps check it is still there."""
        files = {}
        for _settings, tree in self.trees:
            if tree.get('upper') and not tree.get('readonly'):
                files['%s/written-%s' % (tree['target'], label)] = '%s %s' % (tree['target'], label)
        self.python(WRITE, files)
        self.writes.update(files)

    def wait_for_boot(self):
        state = self.vm.run('systemctl is-system-running --wait', timeout=300).stdout.strip()
        assert state in ('running', 'degraded'), state
        return state


def problems_with(host, trees, mounts):
    """What is not as the trees say: every node mounted with its layers, after what it stands on."""
    problems = []
    nodes = [node for tree in trees for node in walk(tree) if isinstance(node, dict)]
    listings = host.listings([node['target'] for node in nodes])
    for node in nodes:
        entry = mounts.get(node['target'])
        if entry is None:
            problems.append('%s is not mounted' % node['target'])
            continue
        if node['type'] == 'overlay':
            lowers = [lower if isinstance(lower, str) else lower['target'] for lower in node['lower']]
            if entry.overlay_layers() != (lowers, node.get('upper'), node.get('work')):
                problems.append('%s has layers %s' % (node['target'], entry.overlay_layers()))
            if not options_match(node.get('options', {}), entry.super_options, 'upper' in node):
                problems.append('%s has options %s' % (node['target'], entry.super_options))
        elif entry.fstype != 'ext4' or not entry.readonly:
            problems.append('%s is %s %s' % (node['target'], entry.fstype, entry.mount_options))
        if entry.readonly != node.get('readonly', node['type'] == 'file'):
            problems.append('%s is mounted %s' % (node['target'], 'ro' if entry.readonly else 'rw'))
        # Mount IDs are reused, so they cannot tell the order; a tree mounted before its layer shows the empty
        # dir under the layer instead of the layer's files.
        for layer in [lower['target'] for lower in node.get('lower', []) if isinstance(lower, dict)]:
            if not listings[layer] or not set(listings[layer]) <= set(listings[node['target']] or ()):
                problems.append('%s does not show the files of its layer %s: %s, %s'
                                % (node['target'], layer, listings[node['target']], listings[layer]))
    return problems


def assert_trees_up(host, trees):
    mounts = host.mounts()
    assert not problems_with(host, trees, mounts), problems_with(host, trees, mounts)
    seen = {}
    for tree in trees:  # every dir layer's file, through the overlay it is a layer of
        for node in walk(tree):
            for lower in node.get('lower', []) if isinstance(node, dict) else []:
                if isinstance(lower, str):
                    seen['%s/%s' % (node['target'], marker_name(lower))] = lower
    files = host.read(list(seen) + list(host.writes))
    assert dict((name, files[name]) for name in seen) == seen
    assert dict((name, files[name]) for name in host.writes) == host.writes


# --- the steps ----------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def host(vm):
    workdir = tempfile.mkdtemp(prefix='overlayfs-vm-persistence-')
    machine = Host(vm, workdir)
    vm.run('sh -c %s' % shlex.quote(BUSYBOX_IMAGE), check=True)
    nodes = [node for _settings, tree in machine.trees + [VOLATILE] for node in walk(tree)]
    machine.python(PREPARE, {'dirs': sorted(set(node for node in nodes if isinstance(node, str))),
                             'images': [node for node in nodes if isinstance(node, dict) and node['type'] == 'file']})
    vm.run('cat > /etc/systemd/system/%s && systemctl enable --quiet %s' % (PROBE, PROBE), input=PROBE_UNIT, check=True)
    yield machine
    for name in os.listdir(workdir):
        os.remove(os.path.join(workdir, name))
    os.rmdir(workdir)


def test_the_role_converges_the_host_and_a_second_run_changes_nothing(host):
    first = host.converge(host.trees)
    assert first['changed'] >= 2 and first['failed'] == 0
    assert_trees_up(host, [tree for _settings, tree in host.trees])
    again = host.converge(host.trees)
    assert again['changed'] == 0, again
    units = host.vm.run('grep -l "^Type=overlay.containerhost" /etc/systemd/system/*.mount | wc -l; '
                        'grep -c " overlay.containerhost " /etc/fstab', check=True).stdout.split()
    assert int(units[0]) >= 5 and int(units[1]) == 3  # ct-fstab, storage-fstab, loop
    # the container: defined, autostarted by libvirtd at boot, started now
    host.vm.run('cat > /root/ct-lxc.xml && systemctl enable --now --quiet libvirtd.service && %s define /root/ct-lxc.xml '
                '&& %s autostart ct-lxc && %s start ct-lxc' % (LXC, LXC, LXC), input=LXC_DOMAIN, check=True)
    assert_container_ran(host, starts=1)


def assert_container_ran(host, starts):
    """The domain runs, and each start wrote through its root into the tree's upper dir."""
    state = host.vm.run(LXC + 'domstate ct-lxc', check=True).stdout.strip()
    written = path('lxc', 'upper', 'written-by-container')
    for _attempt in range(30):  # the container's shell writes a moment after libvirt says it runs
        lines = host.read([written])[written]
        if lines and lines.count('\n') >= starts:
            break
        host.vm.run('sleep 1')
    assert (state, lines) == ('running', 'started\n' * starts)


@pytest.mark.parametrize('boot', [1, 2, 3])
def test_every_tree_comes_back_after_a_reboot(host, boot):
    host.write_through_every_view('before-boot-%d' % boot)
    host.vm.reboot()
    host.wait_for_boot()
    assert_trees_up(host, [tree for _settings, tree in host.trees])
    # the unit that requires the nofail tree ct-nbd started after it was mounted
    assert host.read(['/run/overlay-probe.txt'])['/run/overlay-probe.txt'] == 'overlay\n'
    assert_container_ran(host, starts=1 + boot)  # libvirtd started it again, on its tree


def test_after_the_reboots_the_role_changes_nothing(host):
    assert host.converge(host.trees)['changed'] == 0


def boot_failures(host):
    """What failed at this boot and why: the failed units, and the journal's errors and each failed unit's lines
    (a unit that failed on a dependency names no reason of its own)."""
    return host.vm.run('systemctl --failed --no-pager --plain; journalctl -b -p warning --no-pager -o short-monotonic '
                       '| tail -n 80; for unit in $(systemctl --failed --plain --no-legend | cut -d" " -f1); do '
                       'journalctl -b -u "$unit" --no-pager -o short-monotonic | tail -n 20; done').stdout


def test_a_volatile_tree_stays_down_after_a_clean_reboot_and_says_why(host):
    inner = path('loop', 'rootfs', 'inner')
    data = path('uctr', 'upper', 'data')
    host.vm.run(['sh', '-euc', 'mkdir -p "$1" && echo container > "$1/file" && mkdir -p "$2" && chown 100000:100000 "$2"',
                 'sh', inner, data], check=True)
    host.converge(host.trees + [VOLATILE, INSIDE, UNPRIVILEGED])
    mounts = host.mounts()
    assert path('vol', 'merged') in mounts
    assert mounts[path('inside', 'merged')].overlay_layers()[0] == [inner, path('runtime')]
    assert mounts[path('uctr', 'merged')].overlay_layers()[1:] == (data + '/u', data + '/w')
    # each container swaps its dir for a link to a host dir: one through its view, one in its upper dir
    swap = 'mkdir -p "$1" && mv "$2" "$2.old" && ln -s "$1" "$2" && sync'
    host.vm.run(['sh', '-euc', swap, 'sh', path('hostdir'), inner], check=True)
    host.vm.run(['sh', '-euc', swap, 'sh', path('hostdir2'), data + '/u'], check=True)
    host.vm.reboot()
    host.wait_for_boot()
    mounts = host.mounts()
    assert not [target for target in (path('vol', 'merged'), path('inside', 'merged'), path('uctr', 'merged'))
                if target in mounts], sorted(mounts)
    log = host.vm.run('journalctl -b -u srv-p-inside-merged.mount --no-pager -o cat', check=True).stdout
    assert ('not mounting /srv/p/inside/merged: lower dir %s: %s is a symlink (to /srv/p/hostdir) inside the merged '
            'view of the overlay at /srv/p/loop/rootfs; symlinks there are not followed' % (inner, inner) in log), \
        log + boot_failures(host)
    log = host.vm.run('journalctl -b -u srv-p-uctr-merged.mount --no-pager -o cat', check=True).stdout
    assert ('not mounting /srv/p/uctr/merged: upper %s/u: %s/u is a symlink (to /srv/p/hostdir2) inside the dir %s, '
            'which uid 100000 owns; symlinks there are not followed' % (data, data, data) in log), log
    assert host.listings([path('hostdir'), path('hostdir2')]) == {path('hostdir'): [], path('hostdir2'): []}
    assert_trees_up(host, [tree for _settings, tree in host.trees])
    log = host.vm.run('journalctl -b -u srv-p-vol-merged.mount --no-pager -o cat', check=True).stdout
    assert 'not mounting /srv/p/vol/merged: work dir /srv/p/vol/work holds work/incompat/volatile' in log, log
    refused = host.role(host.trees + [VOLATILE])
    assert refused.returncode != 0
    assert 'work dir /srv/p/vol/work holds work/incompat/volatile' in refused.stdout
    assert 'on_volatile_marker: discard' in refused.stdout


def test_after_a_reset_a_discarded_volatile_tree_is_back_and_a_missing_image_keeps_only_its_tree_down(host):
    """With on_volatile_marker discard the role mounts the volatile tree; then its image gone, the host is reset
    (no clean shutdown): the volatile tree comes back, the image's tree does not, the boot completes."""
    discard = {'overlay_mounts_on_volatile_marker': 'discard'}
    host.converge(host.trees + [VOLATILE], **discard)
    assert path('vol', 'merged') in host.mounts()
    image = path('images', 'data.qcow2')
    # synced: a reset loses what the root filesystem has not committed, and the rename would be undone by it
    host.vm.run(['sh', '-c', 'mv "$1" "$1.away" && sync', 'mv', image], check=True)
    host.vm.reset()
    host.wait_for_boot()  # nofail: the boot completes (degraded: the attach service failed)
    log = host.vm.run('journalctl -b -u srv-p-vol-merged.mount --no-pager -o cat', check=True).stdout
    assert 'discarded the volatile marker /srv/p/vol/work/work/incompat/volatile' in log, log
    mounts = host.mounts()
    missing = [tree for settings, tree in host.trees if settings['name'] == 'ct-fstab']
    others = [tree for settings, tree in host.trees if settings['name'] != 'ct-fstab'] + [VOLATILE[1]]
    assert path('ct-fstab', 'rootfs') not in mounts and path('ct-fstab', 'data') not in mounts
    assert not problems_with(host, others, mounts)

    refused = host.role(host.trees + [VOLATILE], **discard)
    assert refused.returncode != 0
    assert 'image /srv/p/images/data.qcow2 does not exist' in refused.stdout, refused.stdout[-4000:]
    host.vm.run(['mv', image + '.away', image], check=True)
    before = dict((target, entry.mount_id) for target, entry in mounts.items())
    completed = host.role(host.trees + [VOLATILE], **discard)
    assert completed.returncode == 0, completed.stdout[-8000:]
    after = host.mounts()
    assert not problems_with(host, missing, after)
    assert dict((target, after[target].mount_id) for target in before) == before  # nothing else remounted
    persistence = completed.stdout.split('Write the persistence', 1)[1].split('\n\n', 1)[0]
    assert 'ok: [testvm]' in persistence, persistence  # the same files as before
    assert host.converge(host.trees + [VOLATILE], **discard)['changed'] == 0


def test_a_tree_taken_away_is_unmounted_and_its_persistence_goes(host):
    host.converge(host.trees + [({'name': 'volatile', 'state': 'absent'}, VOLATILE[1])])
    assert path('vol', 'merged') not in host.mounts()
    left = host.vm.run('ls /etc/systemd/system/srv-p-vol-merged.mount /etc/containerhost-overlayfs/overlays/'
                       'srv-p-vol-merged.conf 2>&1 || true', check=True).stdout
    assert left.count('No such file') == 2, left
