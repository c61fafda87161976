# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The rendered persistence against the programs of Debian 12 and 13 that read it, each release's own (the
userland of its test VM image, as a chroot on this machine's kernel; see release_root in conftest.py):
systemd-analyze verify (and the unit dump it prints at debug level), systemctl enable, systemd-fstab-generator,
findmnt --verify and mount(8), which runs the collection's mount helper for the overlays.

systemd is not PID 1 here: systemd-analyze verify loads unit files without it and, with SYSTEMD_LOG_LEVEL=debug,
prints every loaded unit's settings as systemd parsed them. That dump is how these tests read what systemd makes of
What=, Where=, Type= and RequiresMountsFor=. A unit is mounted the way systemd mounts it: ``mount WHAT WHERE -t TYPE
-o OPTIONS``. The VM tests (tests/vm/test_persistence_in_vm.py) do the same with systemd itself, through reboots.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from ansible_collections.containerhost.overlayfs.plugins.plugin_utils._persistence import helper_sources
from ansible_collections.containerhost.overlayfs.plugins.module_utils.boot import _boot as boot
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._mountinfo import read_mountinfo
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._options import options_match, volatile_marker
from ansible_collections.containerhost.overlayfs.plugins.module_utils.persist._persistence_files import (
    MARKER,
    SYSTEMD_UNIT_DIR,
    apply,
)
from ansible_collections.containerhost.overlayfs.plugins.plugin_utils._persistence import (
    NBD_TEMPLATE,
    PersistenceError,
    fstab_field,
    render,
    spec_file,
    unit_name_for_path,
)
from ansible_collections.containerhost.overlayfs.tests.helpers.host import checked
from ansible_collections.containerhost.overlayfs.tests.helpers.trees import canonical, overlay

GENERATOR = '/usr/lib/systemd/system-generators/systemd-fstab-generator'
_ORIGIN = re.compile(r' \((?:origin|destination)-[a-z-]+(?: (?:origin|destination)-[a-z-]+)*\)$')
SETTINGS = {'helper_sources': helper_sources()}


def rendered(items, **kwargs):
    return render(items, settings=dict(SETTINGS, **kwargs.pop('settings', {})), **kwargs)


def install(rr, result):
    """Write the persistence into the release root as the role does, with the release's own systemctl."""
    return apply(result, rr.root, systemctl=rr.systemctl)


def item(tree, **settings):
    result = {'filesystem': canonical(tree), 'nofail': False}
    result.update(settings)
    return result


def verify(rr, units, debug=False):
    return rr.run(['systemd-analyze', 'verify', '--man=no'] + [SYSTEMD_UNIT_DIR + '/' + name for name in units],
                  SYSTEMD_LOG_LEVEL='debug' if debug else 'notice', SYSTEMD_LOG_COLOR='0')


def parse_dump(text):
    """{unit: {setting: [values]}} from the unit dump systemd-analyze verify prints at debug level."""
    units, current = {}, None
    for line in text.splitlines():
        match = re.match(r'^\t(?:->|\u2192) Unit (.+):$', line)
        if match:
            current = units[match.group(1)] = {}
        elif current is not None and line.startswith('\t\t') and not line.startswith('\t\t\t') and ': ' in line:
            key, value = line[2:].split(': ', 1)
            current.setdefault(key, []).append(_ORIGIN.sub('', value))
        elif current is not None and line.startswith('\t\t\tCommand Line: '):
            current.setdefault('Command Line', []).append(line[len('\t\t\tCommand Line: '):])
    return units


def assert_verify_clean(rr, units):
    """verify exits 0 and says nothing about our units: no parse warning, no ordering cycle, no name mismatch."""
    completed = verify(rr, units)
    output = completed.stdout + completed.stderr
    noise = [line for line in output.splitlines() if 'cycle' in line or any(name in line for name in units)]
    assert completed.returncode == 0 and not noise, output


def dump_of(rr, units):
    completed = verify(rr, units, debug=True)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return parse_dump(completed.stdout)


def mount_as_systemd_does(rr, seen):
    """What systemd runs to start a mount unit, from the unit's settings as it parsed them."""
    argv = ['mount', seen['What'][0], seen['Where'][0]]
    if seen.get('File System Type', ['n/a'])[0] != 'n/a':
        argv += ['-t', seen['File System Type'][0]]
    options = [option for option in seen.get('Options', ['n/a'])[0].split(',') if option not in ('n/a', 'nofail')]
    return rr.check(argv + (['-o', ','.join(options)] if options else []))


def mounts_in(rr):
    """The mounts under the root's /srv, with paths as the chroot sees them."""
    return dict((entry.mountpoint[len(rr.root):], entry) for entry in read_mountinfo()
                if entry.mountpoint.startswith(rr.path('/srv/')))


def make_dirs(rr, *paths):
    for path in paths:
        os.makedirs(rr.path(path), exist_ok=True)


def mark(rr, path, text):
    make_dirs(rr, os.path.dirname(path))
    with open(rr.path(path), 'w', encoding='utf-8') as handle:
        handle.write(text)


# --- trees the renderer carries, with the paths that broke persistence before --------------------------

AWKWARD = ['/srv/sp ace', '/srv/com,ma', '/srv/co:lon', '/srv/back\\slash', '/srv/per%cent', '/srv/eq=ual',
           '/srv/\u00e9t\u00e9-\u4e2d']
STORAGE = '/srv/var/lib/containers/storage/overlay/%064d/diff'  # container-storage layer paths, 96 bytes each


def systemd_trees():
    """Trees the module mounts that systemd persistence must bring back: awkward paths everywhere, a lowerdir well
    past 255 bytes, a nested overlay, a raw image on loop, a bind layer, a read-only tree, options."""
    inner = overlay('/srv/inner', AWKWARD[:3], '/srv/iu', '/srv/iw')
    loop = {'type': 'file', 'source': '/srv/images/tools 50%.raw', 'format': 'raw', 'target': '/srv/tools'}
    bind = {'type': 'mount', 'source': '/srv/src,with\\comma', 'target': '/srv/bound'}
    awkward = overlay('/srv/merged 100% #1=\u00e9', [inner, loop, bind] + AWKWARD[3:], '/srv/u p', '/srv/w,k',
                      options={'index': 'off', 'redirect_dir': 'nofollow', 'xino': 'auto'})
    storage = overlay('/srv/storage/merged', [STORAGE % number for number in range(1, 6)], '/srv/storage/u',
                      '/srv/storage/w')
    readonly = overlay('/srv/ro', ['/srv/ro1', '/srv/ro2'], readonly=True)
    return [awkward, storage, readonly]


def prepare_layers(rr, trees):
    """Every dir the trees name, with a file in each lower dir, and the loop images."""
    for tree in trees:
        for node in _walk(canonical(tree)):
            if isinstance(node, str):
                mark(rr, node + '/' + marker_name(node), node)
            elif node.get('type') == 'overlay':
                make_dirs(rr, node['target'], *[node[key] for key in ('upper', 'work') if key in node])
            elif node.get('type') == 'file':
                make_dirs(rr, node['target'], node['source'] + '.d')
                mark(rr, node['source'] + '.d/from-image', 'image')
                checked(['mkfs.ext4', '-q', '-d', rr.path(node['source'] + '.d'), rr.path(node['source']), '8M'])
            else:
                make_dirs(rr, node['target'])
                mark(rr, node['source'] + '/from-bind', 'bind')


def marker_name(layer):
    """The file prepare_layers puts in a lower dir: named after the whole path, so no two layers share it."""
    return 'in' + layer.replace('/', '_')


def _walk(node):
    yield node
    if isinstance(node, dict):
        for lower in node.get('lower', []):
            yield from _walk(lower)


def assert_mounted_as_the_trees_say(rr, trees):
    mounts = mounts_in(rr)
    for tree in trees:
        for node in _walk(canonical(tree)):
            if isinstance(node, str):
                continue
            entry = mounts[node['target']]
            if node['type'] == 'overlay':
                lowers = [lower if isinstance(lower, str) else lower['target'] for lower in node['lower']]
                # the layers as the helper gave them, inside the root
                assert entry.overlay_layers() == (lowers, node.get('upper'), node.get('work'))
                assert options_match(node.get('options', {}), entry.super_options, 'upper' in node), entry.super_options
                assert entry.readonly == bool(node.get('readonly'))
            for lower in node.get('lower', []):
                if isinstance(lower, str):
                    with open(rr.path(node['target'] + '/' + marker_name(lower)), encoding='utf-8') as handle:
                        assert handle.read() == lower
                else:  # mounted before its layer, the overlay would show the empty dir under it
                    shown = set(os.listdir(rr.path(lower['target'])))
                    assert shown and shown <= set(os.listdir(rr.path(node['target']))), (node['target'], shown)


# --- systemd units ----------------------------------------------------------------------------------------

def test_units_pass_verify_and_systemd_reads_them_as_meant(release_root):
    rr = release_root
    nbd = {'type': 'file', 'source': '/srv/images/base "x" $y.qcow2', 'driver': 'nbd', 'format': 'qcow2',
           'target': '/srv/base'}
    fuse = {'type': 'file', 'source': '/srv/images/f,1.qcow2', 'driver': 'fuse', 'format': 'qcow2', 'target': '/srv/fused'}
    with_images = overlay('/srv/ct1/rootfs', [nbd, fuse, '/srv/plain'], '/srv/ct1/u', '/srv/ct1/w')
    trees = systemd_trees() + [with_images]
    result = rendered([item(tree) for tree in trees] + [item(overlay('/srv/optional', ['/srv/o1', '/srv/o2']), nofail=True)],
                      devices={'/srv/base': '/dev/nbd7'})
    install(rr, result)
    nbd_service, = [name for name in os.listdir(rr.path(SYSTEMD_UNIT_DIR)) if name.startswith('containerhost-overlayfs-nbd@')
                    and name.endswith('.d')]
    nbd_service = nbd_service[:-2]
    os.symlink(NBD_TEMPLATE, rr.path(SYSTEMD_UNIT_DIR + '/' + nbd_service))  # an instance, as systemd loads it
    export_service = [name[:-2] for name in os.listdir(rr.path(SYSTEMD_UNIT_DIR))
                      if name.startswith('containerhost-overlayfs-export@') and name.endswith('.d')][0]
    os.symlink('containerhost-overlayfs-export@.service', rr.path(SYSTEMD_UNIT_DIR + '/' + export_service))
    units = result['units'] + [nbd_service, export_service]
    assert_verify_clean(rr, units)
    dump = dump_of(rr, units)

    for name in result['units']:
        seen = dump[name]
        assert seen['Unit Load State'] == ['loaded']
        # The name systemd wants for this Where= (it refuses a unit whose name does not match).
        assert rr.check(['systemd-escape', '--path', '--suffix=mount', '--', seen['Where'][0]]).strip() == name
        assert name == unit_name_for_path(seen['Where'][0], 'mount')
    top = dump[unit_name_for_path('/srv/merged 100% #1=\u00e9', 'mount')]
    assert top['What'] == [spec_file('/srv/merged 100% #1=\u00e9')]
    assert top['File System Type'] == ['overlay.containerhost']
    layers = ['/srv/inner', '/srv/tools', '/srv/bound'] + AWKWARD[3:] + ['/srv/u p', '/srv/w,k', boot.HELPER_LIB]
    assert set(layers) <= set(top['RequiresMountsFor'])
    for layer in ('/srv/inner', '/srv/tools', '/srv/bound'):  # RequiresMountsFor= is Requires= and After= on these
        assert unit_name_for_path(layer, 'mount') in top['Requires'] and unit_name_for_path(layer, 'mount') in top['After']
    assert set(AWKWARD[:3]) <= set(dump[unit_name_for_path('/srv/inner', 'mount')]['RequiresMountsFor'])
    tools = dump[unit_name_for_path('/srv/tools', 'mount')]
    assert tools['What'] == ['/srv/images/tools 50%.raw'] and tools['Options'] == ['loop,ro']
    assert dump[unit_name_for_path('/srv/bound', 'mount')]['What'] == ['/srv/src,with\\comma']
    base = dump[unit_name_for_path('/srv/base', 'mount')]
    assert base['What'] == ['/dev/nbd7'] and nbd_service in base['Requires'] and nbd_service in base['After']
    assert 'dev-nbd7.device' in base['After']  # systemd waits for the device (udev: ready once connected)
    fused = dump[unit_name_for_path('/srv/fused', 'mount')]
    assert fused['Options'] == ['loop,ro'] and export_service in fused['Requires']
    # A nofail mount is not ordered before local-fs.target.
    assert 'local-fs.target' not in dump[unit_name_for_path('/srv/optional', 'mount')].get('Before', [])
    assert 'local-fs.target' in top['Before']

    service = dump[nbd_service]
    assert '/srv/images/base "x" $y.qcow2' in service['RequiresMountsFor']  # from the drop-in
    assert service['Type'] == ['forking'] and service['PIDFile'] == ['/run/containerhost-overlayfs-nbd7.pid']
    assert 'modprobe@nbd.service' in service['Requires'] and 'sysinit.target' not in service.get('After', [])
    export = dump[export_service]
    assert export['Type'] == ['oneshot'] and '/srv/images/f,1.qcow2' in export['RequiresMountsFor']
    assert [line.split(' ', 2)[:2] for line in export['Command Line']] == [
        [boot.EXPORT_HELPER, 'start'], [boot.EXPORT_HELPER, 'stop']]

    # systemctl enable (done by persistence_files): required, or wanted when nofail.
    assert os.path.islink(rr.path(SYSTEMD_UNIT_DIR + '/local-fs.target.requires/' + result['units'][0]))
    assert os.path.islink(rr.path(SYSTEMD_UNIT_DIR + '/local-fs.target.wants/srv-optional.mount'))


def test_units_mount_with_the_releases_mount_and_the_helper_and_not_twice(release_root):
    """What systemd does at boot, unit by unit in their order: mount(8) runs the helper for the overlays. The
    overlays' layers include a lowerdir of 485 bytes, which mount(8) of Debian 13 cannot pass as an option."""
    rr = release_root
    trees = systemd_trees()
    prepare_layers(rr, trees)
    result = rendered([item(tree) for tree in trees])
    install(rr, result)
    dump = dump_of(rr, result['units'])
    for name in result['units']:
        mount_as_systemd_does(rr, dump[name])
    assert_mounted_as_the_trees_say(rr, trees)
    assert sorted(os.listdir(rr.path('/srv/merged 100% #1=\u00e9'))) == sorted(
        ['from-bind', 'from-image', 'lost+found'] + [marker_name(path) for path in AWKWARD])
    before = sorted((entry.mount_id, path) for path, entry in mounts_in(rr).items())
    for name in result['units']:  # started again (mount -a, a restart): nothing is stacked
        if dump[name]['File System Type'] == ['overlay.containerhost']:
            mount_as_systemd_does(rr, dump[name])
    assert sorted((entry.mount_id, path) for path, entry in mounts_in(rr).items()) == before
    if rr.release == 'trixie':
        storage = ':'.join(STORAGE % number for number in range(1, 6))
        refused = rr.run(['mount', '-t', 'overlay', 'overlay', '-o', 'lowerdir=%s,upperdir=/srv/storage/u,workdir='
                          '/srv/storage/w' % storage, '/srv/inner'])
        assert refused.returncode == 32, refused.stderr  # why the helper: fsconfig(2) stops at 255 bytes


def test_five_hundred_layers_past_a_page_come_back_through_the_helper(release_root):
    rr = release_root
    lowers = ['/srv/layers/%03d-%s' % (number, 'x' * 20) for number in range(500)]
    for path in lowers:
        make_dirs(rr, path)
    mark(rr, lowers[499] + '/bottom', 'bottom')
    make_dirs(rr, '/srv/many', '/srv/mu', '/srv/mw')
    result = rendered([item(overlay('/srv/many', lowers, '/srv/mu', '/srv/mw'))])
    install(rr, result)
    mount_as_systemd_does(rr, dump_of(rr, result['units'])['srv-many.mount'])
    entry = mounts_in(rr)['/srv/many']
    assert entry.overlay_layers()[0] == lowers
    assert 'lowerdir+' in entry.super_options  # fsconfig(2), one layer at a time
    with open(rr.path('/srv/many/bottom')) as handle:
        assert handle.read() == 'bottom'


@pytest.mark.parametrize('policy', ['fail', 'discard'])
def test_the_helper_follows_the_volatile_choice(release_root, policy):
    rr = release_root
    make_dirs(rr, '/srv/v/l1', '/srv/v/l2', '/srv/v/u', volatile_marker('/srv/v/w'), '/srv/v/m')
    mark(rr, volatile_marker('/srv/v/w') + '/dirty', '')  # as the kernel leaves it
    result = rendered([item(overlay('/srv/v/m', ['/srv/v/l1', '/srv/v/l2'], '/srv/v/u', '/srv/v/w',
                                    options={'volatile': True}))], settings={'on_volatile_marker': policy})
    install(rr, result)
    completed = rr.run(['mount', spec_file('/srv/v/m'), '/srv/v/m', '-t', boot.FSTYPE])
    if policy == 'fail':
        assert completed.returncode == 32
        assert 'not mounting /srv/v/m: work dir /srv/v/w holds work/incompat/volatile' in completed.stderr
        assert 'even after a clean reboot' in completed.stderr
        assert '/srv/v/m' not in mounts_in(rr)
    else:
        assert completed.returncode == 0, completed.stderr
        assert 'discarded the volatile marker' in completed.stderr
        assert mounts_in(rr)['/srv/v/m'].fstype == 'overlay'


def test_verify_sees_the_cycle_default_dependencies_would_make(release_root):
    """Why the attach service has DefaultDependencies=no: without it, verify finds an ordering cycle."""
    rr = release_root
    tree = overlay('/srv/merged', [{'type': 'file', 'source': '/srv/b.qcow2', 'driver': 'nbd', 'format': 'qcow2',
                                    'target': '/srv/base'}, '/srv/l2'])
    result = rendered([item(tree)], devices={'/srv/base': '/dev/nbd0'})
    template = SYSTEMD_UNIT_DIR + '/' + NBD_TEMPLATE
    result['files'][template] = result['files'][template].replace('DefaultDependencies=no\n', '')
    install(rr, result)
    completed = verify(rr, result['units'])
    assert 'Found ordering cycle' in completed.stderr and 'containerhost-overlayfs-nbd@nbd0.service' in completed.stderr


def test_verify_refuses_a_unit_named_for_another_path(release_root):
    """The oracle catches a wrong unit name (so the clean runs above mean the names are right)."""
    rr = release_root
    mark(rr, SYSTEMD_UNIT_DIR + '/srv-m-x.mount', '[Mount]\nWhat=/srv/a\nWhere=/srv/m x\nOptions=bind\n')
    completed = verify(rr, ['srv-m-x.mount'])
    assert completed.returncode != 0 and "Where= setting doesn't match unit name" in completed.stderr


@pytest.mark.parametrize('target', ['/srv/m\rx', '/srv/m\nx', '/srv/m x '])
def test_verify_breaks_on_the_targets_render_refuses(release_root, target):
    """Why a line break anywhere, or trailing whitespace, is refused: written into a unit, systemd misreads it."""
    rr = release_root
    name = unit_name_for_path(target, 'mount')
    mark(rr, SYSTEMD_UNIT_DIR + '/' + name, '[Mount]\nWhat=/srv/x\nWhere=%s\nOptions=bind\n' % target)
    completed = verify(rr, [name])
    assert completed.returncode != 0 and "Where= setting doesn't match unit name" in completed.stderr
    with pytest.raises(PersistenceError, match=r'line break|ends in whitespace'):
        rendered([{'filesystem': {'type': 'bind', 'source': '/srv/s', 'target': target}}])


# --- fstab ------------------------------------------------------------------------------------------------

def generate(rr):
    """Run the release's systemd-fstab-generator on the root's /etc/fstab; return its output dir (in the root)."""
    os.makedirs(rr.path('/run/gen'))
    rr.check([GENERATOR, '/run/gen', '/run/gen', '/run/gen'], SYSTEMD_FSTAB='/etc/fstab', SYSTEMD_PROC_CMDLINE='',
             SYSTEMD_IN_INITRD='0', SYSTEMD_LOG_LEVEL='notice')
    return '/run/gen'


def fstab_trees():
    """What fstab persistence carries: awkward paths in targets, sources and images, the ordering paths plain."""
    inner = overlay('/srv/inner', ['/srv/c:d', '/srv/e%f', '/srv/\u00e9=1'], '/srv/iu', '/srv/iw')
    loop = {'type': 'file', 'source': '/srv/img 1,\\x.raw', 'format': 'raw', 'target': '/srv/tools'}
    top = overlay('/srv/merged two,%', [inner, loop, '/srv/plain'], '/srv/u', '/srv/w', options={'index': 'on'})
    storage = overlay('/srv/storage/merged', [STORAGE % number for number in range(1, 6)], '/srv/storage/u',
                      '/srv/storage/w')
    bind = {'type': 'bind', 'source': '/srv/src 2', 'target': '/srv/bound%', 'readonly': True}
    return [top, storage, bind]


def test_fstab_lines_through_the_generator_give_the_units_we_mean(release_root):
    rr = release_root
    nbd = {'type': 'file', 'source': '/srv/b.qcow2', 'driver': 'nbd', 'format': 'qcow2', 'target': '/srv/base'}
    trees = fstab_trees() + [overlay('/srv/ct/rootfs', [nbd, '/srv/l'], '/srv/ct/u', '/srv/ct/w')]
    result = rendered([item(tree, persistence='fstab') for tree in trees[:2]] +
                      [item(trees[2], persistence='fstab', nofail=True), item(trees[3], persistence='fstab')],
                      devices={'/srv/base': '/dev/nbd2'})
    assert result['units'] == []
    install(rr, result)
    completed = rr.run(['findmnt', '--verify', '--verbose', '--tab-file', '/etc/fstab'])
    assert '0 parse errors' in completed.stdout + completed.stderr, completed.stdout + completed.stderr
    out = generate(rr)
    generated = sorted(name for name in os.listdir(rr.path(out)) if name.endswith('.mount') and name != '-.mount')
    targets = [node['target'] for tree in trees for node in _walk(canonical(tree)) if isinstance(node, dict)]
    assert generated == sorted(unit_name_for_path(target, 'mount') for target in targets)
    for name in generated:  # next to our attach service and its drop-in, as systemd would load them
        shutil.move(rr.path(out + '/' + name), rr.path(SYSTEMD_UNIT_DIR + '/' + name))
    assert_verify_clean(rr, generated)
    dump = dump_of(rr, generated)
    top = dump[unit_name_for_path('/srv/merged two,%', 'mount')]
    assert top['Where'] == ['/srv/merged two,%'] and top['What'] == [spec_file('/srv/merged two,%')]
    assert top['File System Type'] == ['overlay.containerhost']
    assert {'/srv/inner', '/srv/tools', '/srv/plain', '/srv/u', '/srv/w', boot.HELPER_LIB} <= set(top['RequiresMountsFor'])
    assert {'/srv/c:d', '/srv/e%f', '/srv/\u00e9=1'} <= set(dump[unit_name_for_path('/srv/inner', 'mount')]['RequiresMountsFor'])
    for layer in ('/srv/inner', '/srv/tools'):
        assert unit_name_for_path(layer, 'mount') in top['Requires']
    tools = dump[unit_name_for_path('/srv/tools', 'mount')]
    assert tools['What'] == ['/srv/img 1,\\x.raw'] and tools['Options'][0].startswith('loop,ro')
    base = dump[unit_name_for_path('/srv/base', 'mount')]
    assert base['What'] == ['/dev/nbd2'] and 'containerhost-overlayfs-nbd@nbd2.service' in base['Requires']
    bound = dump[unit_name_for_path('/srv/bound%', 'mount')]
    assert bound['What'] == ['/srv/src 2'] and bound['Where'] == ['/srv/bound%']
    assert os.path.islink(rr.path(out + '/local-fs.target.wants/' + unit_name_for_path('/srv/bound%', 'mount')))
    assert os.path.islink(rr.path(out + '/local-fs.target.requires/' + unit_name_for_path('/srv/merged two,%', 'mount')))


def test_mount_a_brings_the_fstab_trees_up_in_order_and_only_once(release_root):
    rr = release_root
    trees = fstab_trees()
    prepare_layers(rr, trees)
    install(rr, rendered([item(tree, persistence='fstab') for tree in trees]))
    for _attempt in range(2):
        rr.check(['mount', '-a', '-v'])
    assert_mounted_as_the_trees_say(rr, trees)
    mounts = mounts_in(rr)
    assert sorted(mounts) == sorted(['/srv/inner', '/srv/tools', '/srv/merged two,%', '/srv/storage/merged',
                                     '/srv/bound%'])  # once each: the second mount -a stacked nothing
    assert mounts['/srv/bound%'].readonly and mounts['/srv/tools'].readonly
    assert 'x-systemd.requires-mounts-for' not in str(mounts['/srv/merged two,%'].super_options)


@pytest.mark.parametrize('path, refusal', [
    ('/srv/a b', r'holds whitespace'),  # two words for systemd, '/srv/a' and 'b' (which it drops)
    ('/srv/a\\b', r'holds a backslash'),  # a level of backslashes consumed
    ('/srv/"q"', r'holds a quote'),  # quotes taken as quoting
])
def test_why_fstab_cannot_order_on_some_paths(release_root, path, refusal):
    """Written as the renderer writes any fstab option, the path is not the one systemd orders on."""
    rr = release_root
    mark(rr, '/etc/fstab', '/srv/s /srv/m none %s 0 0\n' % fstab_field('bind,x-systemd.requires-mounts-for=' + path))
    out = generate(rr)
    shutil.move(rr.path(out + '/srv-m.mount'), rr.path(SYSTEMD_UNIT_DIR + '/srv-m.mount'))
    seen = dump_of(rr, ['srv-m.mount'])['srv-m.mount']['RequiresMountsFor']
    assert path not in seen and '/srv/s' in seen, seen
    with pytest.raises(PersistenceError, match=refusal):
        rendered([item(overlay('/srv/merged', [path, '/srv/l2']), persistence='fstab')])


def test_the_nbd_environment_file_reads_back_exactly(release_root):
    """The file is written in the double-quoted form whose escapes systemd's env file parser shares with sh."""
    rr = release_root
    image = '/srv/im ages/a "b" $HOME `id` \\n \\\\ \'c\' %i.qcow2'
    tree = {'type': 'file', 'source': image, 'driver': 'nbd', 'format': 'vmdk', 'target': '/srv/disk'}
    result = rendered([{'filesystem': tree}], devices={'/srv/disk': '/dev/nbd12'})
    install(rr, result)
    out = rr.check(['sh', '-c', 'set -a; . /etc/containerhost-overlayfs/nbd/nbd12.env; '
                    'printf "%s\\0" "$IMAGE" "$FORMAT" "$READONLY"'])
    assert out.split('\0')[:3] == [image, 'vmdk', '']


def test_the_spec_is_what_the_helper_reads(release_root):
    rr = release_root
    result = rendered([item(overlay('/srv/m', AWKWARD, '/srv/u', '/srv/w'))])
    install(rr, result)
    with open(rr.path(spec_file('/srv/m')), encoding='utf-8') as handle:
        text = handle.read()
    assert text.startswith(MARKER + '\n')
    assert json.loads(text.split('\n', 2)[2])['lowers'] == AWKWARD
