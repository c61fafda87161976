# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The rendered persistence against the programs that read it: systemd-analyze verify (and the unit dump it prints
at debug level), systemctl --root enable, systemd-fstab-generator, findmnt --verify, mount -a and sh.

systemd is not PID 1 here: systemd-analyze verify loads unit files without it (with the directory of the files
given first in the unit path) and, with SYSTEMD_LOG_LEVEL=debug, prints every loaded unit's settings as systemd
parsed them. That dump is how these tests read what systemd makes of What=, Where=, Options= and
RequiresMountsFor=. mount -a runs in the session's private mount namespace on the host fixture's tmpfs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from conftest import mounts_under

from ansible_collections.containerhost.overlayfs.plugins.module_utils.persistence import (
    MARKER,
    NBD_TEMPLATE,
    QEMU_NBD,
    SYSTEMD_UNIT_DIR,
    render,
    unit_name_for_path,
)
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree import parse_filesystems, to_yaml
from tree_builders import overlay

GENERATOR = '/lib/systemd/system-generators/systemd-fstab-generator'
_ORIGIN = re.compile(r' \((?:origin|destination)-[a-z-]+(?: (?:origin|destination)-[a-z-]+)*\)$')


def require(*programs):
    missing = [program for program in programs if not (shutil.which(program) or os.access(program, os.X_OK))]
    if missing:
        pytest.skip('not installed: %s' % ', '.join(missing))


def canonical(raw):
    return to_yaml(parse_filesystems([raw])[0])


def write_units(directory, result):
    """The units, and the drop-ins among the files, as the role lays them out in /etc/systemd/system."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for name, text in result['units'].items():
        paths.append(os.path.join(directory, name))
        with open(paths[-1], 'w') as handle:
            handle.write(text)
    for path, text in result['files'].items():
        if path.startswith(SYSTEMD_UNIT_DIR + '/'):
            dest = os.path.join(directory, path[len(SYSTEMD_UNIT_DIR) + 1:])
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, 'w') as handle:
                handle.write(text)
    return paths


def verify(paths, debug=False):
    env = dict(os.environ, SYSTEMD_LOG_LEVEL='debug' if debug else 'notice', SYSTEMD_LOG_COLOR='0')
    return subprocess.run(['systemd-analyze', 'verify', '--man=no'] + list(paths),
                          capture_output=True, text=True, env=env, check=False)


def parse_dump(text):
    """{unit: {setting: [values]}} from the unit dump systemd-analyze verify prints at debug level."""
    units, current = {}, None
    for line in text.splitlines():
        match = re.match(r'^\t-> Unit (.+):$', line)
        if match:
            current = units[match.group(1)] = {}
        elif current is not None and line.startswith('\t\t') and not line.startswith('\t\t\t') and ': ' in line:
            key, value = line[2:].split(': ', 1)
            current.setdefault(key, []).append(_ORIGIN.sub('', value))
        elif current is not None and line.startswith('\t\t\tCommand Line: '):
            current.setdefault('Command Line', []).append(line[len('\t\t\tCommand Line: '):])
    return units


def assert_verify_clean(paths, names):
    """verify exits 0 and says nothing about our units: no parse warning, no ordering cycle, no name mismatch."""
    completed = verify(paths)
    output = completed.stdout + completed.stderr
    noise = [line for line in output.splitlines()
             if 'cycle' in line or any(name in line for name in names) or any(os.path.dirname(p) in line for p in paths)]
    assert completed.returncode == 0 and not noise, output


def dump_of(paths):
    completed = verify(paths, debug=True)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return parse_dump(completed.stdout)


def systemd_escape(path):
    return subprocess.run(['systemd-escape', '--path', '--suffix=mount', '--', path],
                          capture_output=True, text=True, check=True).stdout.rstrip('\n')


def unescape_specifiers(value):
    return value.replace('%%', '%')


def setting(text, key):
    return [line.split('=', 1)[1] for line in text.splitlines() if line.startswith(key + '=')]


# --- systemd units --------------------------------------------------------------------------------------

# Paths the renderer carries (none it refuses): spaces, tabs, '%', quotes, '#', ';', '=', colons in layers,
# commas and backslashes outside option strings, UTF-8.
HOSTILE = {
    'target': 'merged 100% #1;"q"',
    'lower': 'lo:wer \u00e9\tx',
    'bind_source': "src,with\\comma 'q'",
    'image': 'images/tools 50%.raw',
}


def systemd_trees(root):
    def path(name):
        return os.path.join(root, name)
    inner = overlay(path('inner'), [path(HOSTILE['lower']), path('i2')], path('iu'), path('iw'))
    loop_layer = {'type': 'file', 'source': path(HOSTILE['image']), 'format': 'raw', 'target': path('tools')}
    nbd_layer = {'type': 'file', 'source': path('images/base "x" $y `z` \\w.qcow2'), 'driver': 'nbd', 'format': 'qcow2',
                 'target': path('base')}
    bind_layer = {'type': 'mount', 'source': path(HOSTILE['bind_source']), 'target': path('bound')}
    block_layer = {'type': 'block', 'source': '/dev/vdz', 'target': path('blk')}
    top = overlay(path(HOSTILE['target']), [inner, loop_layer, nbd_layer, bind_layer, block_layer, path('plain')],
                  path('u'), path('w'), options={'index': 'off', 'xino': 'auto'})
    nofail = overlay(path('optional'), [path('o1'), path('o2')], readonly=True)
    devices = {path('base'): '/dev/nbd7'}
    return [{'tree': canonical(top), 'devices': devices}, {'tree': canonical(nofail), 'nofail': True}]


def test_units_pass_systemd_analyze_verify_and_systemd_reads_them_as_meant(host):
    require('systemd-analyze', 'systemd-escape', QEMU_NBD)
    trees = systemd_trees(host.root)
    result = render(trees)
    names = list(result['units'])
    paths = write_units(host.path('units'), result)
    instance = os.path.join(host.path('units'), 'containerhost-overlayfs-nbd@nbd7.service')
    assert_verify_clean(paths + [instance], names + ['containerhost-overlayfs-nbd@nbd7.service'])
    dump = dump_of([p for p in paths if not p.endswith('@.service')] + [instance])

    mounts = [name for name in names if name.endswith('.mount')]
    assert len(mounts) == 7
    for name in mounts:
        text = result['units'][name]
        seen = dump[name]
        where = unescape_specifiers(setting(text, 'Where')[0])
        # The name systemd wants for this Where= (it refuses a unit whose name does not match).
        assert name == systemd_escape(where) == unit_name_for_path(where, 'mount')
        assert seen['Where'] == [where]
        assert seen['What'] == [unescape_specifiers(setting(text, 'What')[0])]
        assert seen['Options'] == [unescape_specifiers(setting(text, 'Options')[0])]
        assert seen['Unit Load State'] == ['loaded']
    top_name = unit_name_for_path(host.path(HOSTILE['target']), 'mount')
    top = dump[top_name]
    layers = [host.path('inner'), host.path('tools'), host.path('base'), host.path('bound'), host.path('blk'),
              host.path('plain'), host.path('u'), host.path('w')]
    assert set(layers) <= set(top['RequiresMountsFor'])
    assert top['Options'] == ['lowerdir=%s,upperdir=%s,workdir=%s,index=off,xino=auto' % (
        ':'.join(layers[:6]), host.path('u'), host.path('w'))]
    # RequiresMountsFor= becomes Requires= and After= on the mount units of the layers this render mounts.
    for layer in ('inner', 'tools', 'base', 'bound', 'blk'):
        layer_unit = unit_name_for_path(host.path(layer), 'mount')
        assert layer_unit in top['Requires'] and layer_unit in top['After']
    inner = dump[unit_name_for_path(host.path('inner'), 'mount')]
    assert host.path(HOSTILE['lower']) in inner['RequiresMountsFor']
    assert inner['Options'] == ['lowerdir=%s:%s,upperdir=%s,workdir=%s' % (
        host.path(HOSTILE['lower']).replace(':', '\\:'), host.path('i2'), host.path('iu'), host.path('iw'))]
    tools = dump[unit_name_for_path(host.path('tools'), 'mount')]
    assert tools['What'] == [host.path(HOSTILE['image'])] and tools['Options'] == ['loop,ro']
    assert host.path(HOSTILE['image']) in tools['RequiresMountsFor']
    bound = dump[unit_name_for_path(host.path('bound'), 'mount')]
    assert bound['What'] == [host.path(HOSTILE['bind_source'])] and bound['Options'] == ['bind']
    base = dump[unit_name_for_path(host.path('base'), 'mount')]
    assert base['What'] == ['/dev/nbd7'] and base['Options'] == ['ro']
    assert 'containerhost-overlayfs-nbd@nbd7.service' in base['Requires']
    assert 'containerhost-overlayfs-nbd@nbd7.service' in base['After']
    assert 'dev-nbd7.device' in base['After']  # systemd waits for the device (udev: ready once connected)
    # A nofail mount is not ordered before local-fs.target (and [Install] only wants it: see the enable test).
    optional = dump[unit_name_for_path(host.path('optional'), 'mount')]
    assert optional['Options'] == ['lowerdir=%s:%s,ro,nofail' % (host.path('o1'), host.path('o2'))]
    assert 'local-fs.target' not in optional.get('Before', [])
    assert 'local-fs.target' in top['Before']

    service = dump['containerhost-overlayfs-nbd@nbd7.service']
    image = host.path('images/base "x" $y `z` \\w.qcow2')
    assert image in service['RequiresMountsFor']  # from the drop-in
    assert service['Type'] == ['forking']
    assert service['PIDFile'] == ['/run/containerhost-overlayfs-nbd7.pid']
    assert service['EnvironmentFile'] == ['/etc/containerhost-overlayfs/nbd/nbd7.env']
    assert service['Command Line'] == [
        '%s "--format=\\${FORMAT}" "\\$READONLY" --connect=/dev/nbd7 --pid-file=/run/containerhost-overlayfs-nbd7.pid '
        '-- "\\${IMAGE}"' % QEMU_NBD,
        '%s --disconnect /dev/nbd7' % QEMU_NBD]
    assert 'modprobe@nbd.service' in service['Requires'] and 'modprobe@nbd.service' in service['After']
    assert 'sysinit.target' not in service.get('After', [])  # DefaultDependencies=no: see the cycle test
    assert unit_name_for_path(host.path('base'), 'mount') in service['Before']


def test_verify_sees_the_cycle_default_dependencies_would_make(host):
    """Why the attach service has DefaultDependencies=no: without it, verify finds an ordering cycle."""
    require('systemd-analyze', QEMU_NBD)
    tree = overlay(host.path('merged'), [{'type': 'file', 'source': host.path('b.qcow2'), 'driver': 'nbd',
                                          'format': 'qcow2', 'target': host.path('base')}, host.path('l2')])
    result = render([{'tree': canonical(tree), 'devices': {host.path('base'): '/dev/nbd0'}}])
    result['units'][NBD_TEMPLATE] = result['units'][NBD_TEMPLATE].replace('DefaultDependencies=no\n', '')
    paths = write_units(host.path('units'), result)
    completed = verify([p for p in paths if p.endswith('.mount')])
    assert 'Found ordering cycle' in completed.stderr and 'containerhost-overlayfs-nbd@nbd0.service' in completed.stderr


def test_verify_refuses_a_unit_named_for_another_path(host):
    """The oracle catches a wrong unit name (so the clean runs above mean the names are right)."""
    require('systemd-analyze')
    result = render([canonical(overlay(host.path('m x'), [host.path('a'), host.path('b')]))])
    assert len(result['units']) == 1
    name, text = next(iter(result['units'].items()))
    wrong = os.path.join(host.path('units'), name.replace('\\x20', '-'))
    os.makedirs(os.path.dirname(wrong))
    with open(wrong, 'w') as handle:
        handle.write(text)
    completed = verify([wrong])
    assert completed.returncode != 0
    assert "Where= setting doesn't match unit name" in completed.stderr


@pytest.mark.parametrize('target', ['m\rx', 'm\nx', 'm x '])
def test_verify_breaks_on_the_paths_render_refuses(host, target):
    """Why a line break anywhere, or trailing whitespace, is refused: written into a unit, systemd misreads it."""
    require('systemd-analyze')
    where = host.path(target)
    name = unit_name_for_path(where, 'mount')
    host.write('units/' + name, '[Mount]\nWhat=/srv/x\nWhere=%s\nOptions=bind\n' % where)
    completed = verify([host.path('units/' + name)])
    assert completed.returncode != 0
    assert "Where= setting doesn't match unit name" in completed.stderr
    with pytest.raises(Exception, match=r'line break|ends in whitespace'):
        render([{'type': 'bind', 'source': host.path('s'), 'target': where}])


def test_systemctl_enable_links_nofail_mounts_as_wanted_and_others_as_required(host):
    require('systemctl')
    result = render([{'tree': canonical(overlay(host.path('req'), [host.path('a'), host.path('b')]))},
                     {'tree': canonical(overlay(host.path('opt'), [host.path('c'), host.path('d')])), 'nofail': True}])
    root = host.path('sysroot')
    write_units(root + SYSTEMD_UNIT_DIR, result)
    names = list(result['units'])
    completed = subprocess.run(['systemctl', '--root=' + root, 'enable'] + names, capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stderr
    required, optional = names
    assert os.path.islink(os.path.join(root + SYSTEMD_UNIT_DIR, 'local-fs.target.requires', required))
    assert os.path.islink(os.path.join(root + SYSTEMD_UNIT_DIR, 'local-fs.target.wants', optional))


def test_nbd_environment_file_reads_back_exactly(host):
    """The file is written in the double-quoted form whose escapes systemd's env file parser shares with sh."""
    require('sh')
    image = host.path('im ages/a "b" $HOME `id` \\n \\\\ \'c\' %i.qcow2')
    tree = {'type': 'file', 'source': image, 'driver': 'nbd', 'format': 'vmdk', 'target': host.path('disk')}
    result = render([{'tree': canonical(tree), 'devices': {host.path('disk'): '/dev/nbd12'}}])
    text = result['files']['/etc/containerhost-overlayfs/nbd/nbd12.env']
    assert text.startswith(MARKER + '\n')
    host.write('nbd12.env', text)
    completed = subprocess.run(['sh', '-c', 'set -a; . "$1"; printf "%s\\0" "$IMAGE" "$FORMAT" "$READONLY"', 'sh',
                                host.path('nbd12.env')], capture_output=True, text=True, check=True)
    assert completed.stdout.split('\0')[:3] == [image, 'vmdk', '']


# --- fstab ----------------------------------------------------------------------------------------------

def generate(host, lines):
    """Run systemd-fstab-generator on the lines; return (output dir, its stderr)."""
    fstab = host.path('gen/fstab')
    host.write('gen/fstab', '\n'.join(lines) + '\n')
    out = host.path('gen/out')
    os.makedirs(out)
    env = dict(os.environ, SYSTEMD_FSTAB=fstab, SYSTEMD_PROC_CMDLINE='', SYSTEMD_IN_INITRD='0', SYSTEMD_LOG_LEVEL='notice')
    completed = subprocess.run([GENERATOR, out, out, out], capture_output=True, text=True, env=env, check=False)
    assert completed.returncode == 0, completed.stderr
    return out, completed.stderr


def test_fstab_lines_through_systemd_fstab_generator_give_the_units_we_mean(host):
    require(GENERATOR, 'systemd-analyze', QEMU_NBD)
    path = host.path
    inner = overlay(path('inner'), [path('c:d'), path('e%f')], path('iu'), path('iw'))
    loop_layer = {'type': 'file', 'source': path('img 1.raw'), 'format': 'raw', 'target': path('tools')}
    nbd_layer = {'type': 'file', 'source': path('b.qcow2'), 'driver': 'nbd', 'format': 'qcow2', 'target': path('base')}
    top = overlay(path('merged two'), [inner, loop_layer, nbd_layer, path('plain')], path('u'), path('w'))
    bind = {'type': 'bind', 'source': path('src 2'), 'target': path('bound%'), 'readonly': True}
    result = render([{'tree': canonical(top), 'devices': {path('base'): '/dev/nbd2'}},
                     {'tree': canonical(bind), 'nofail': True}], {'persistence': 'fstab'})
    out, _stderr = generate(host, result['fstab'])
    by_target = {}
    for raw in [canonical(top), canonical(bind)]:
        for node in parse_filesystems([raw])[0].walk():
            if node.kind != 'dir':
                by_target[node.target] = node
    generated = sorted(name for name in os.listdir(out) if name.endswith('.mount'))
    assert generated == sorted(unit_name_for_path(target, 'mount') for target in by_target)
    # The attach service the fstab line requires is ours (a unit), with its drop-in.
    write_units(out, {'units': result['units'], 'files': result['files']})
    paths = [os.path.join(out, name) for name in generated]
    assert_verify_clean(paths, generated)
    dump = dump_of(paths)
    merged = dump[unit_name_for_path(path('merged two'), 'mount')]
    assert merged['Where'] == [path('merged two')]
    layers = [path('inner'), path('tools'), path('base'), path('plain'), path('u'), path('w')]
    assert set(layers) <= set(merged['RequiresMountsFor'])
    assert merged['Options'][0].startswith('lowerdir=%s,upperdir=%s,workdir=%s,x-systemd.requires-mounts-for=' % (
        ':'.join(layers[:4]), path('u'), path('w')))
    for layer in ('inner', 'tools', 'base'):
        assert unit_name_for_path(path(layer), 'mount') in merged['Requires']
    inner_unit = dump[unit_name_for_path(path('inner'), 'mount')]
    # The ':' escape survives libmount's unmangling and the generator's option filter; '%' is escaped by it.
    assert inner_unit['Options'][0].startswith('lowerdir=%s:%s,' % (path('c:d').replace(':', '\\:'), path('e%f')))
    assert {path('c:d'), path('e%f')} <= set(inner_unit['RequiresMountsFor'])
    tools = dump[unit_name_for_path(path('tools'), 'mount')]
    assert tools['What'] == [path('img 1.raw')] and tools['Options'] == ['loop,ro']
    assert path('img 1.raw') in tools['RequiresMountsFor']  # systemd's own, from What=
    base = dump[unit_name_for_path(path('base'), 'mount')]
    assert base['What'] == ['/dev/nbd2']
    assert 'containerhost-overlayfs-nbd@nbd2.service' in base['Requires']
    assert 'containerhost-overlayfs-nbd@nbd2.service' in base['After']
    bound_name = unit_name_for_path(path('bound%'), 'mount')
    assert dump[bound_name]['What'] == [path('src 2')] and dump[bound_name]['Where'] == [path('bound%')]
    # nofail: wanted by local-fs.target, not required (the same layout systemctl enable makes of our units).
    assert os.path.islink(os.path.join(out, 'local-fs.target.wants', bound_name))
    assert os.path.islink(os.path.join(out, 'local-fs.target.requires', unit_name_for_path(path('merged two'), 'mount')))


def test_generator_splits_requires_mounts_for_paths_with_whitespace(host):
    """Why fstab persistence refuses whitespace in layer paths: the generator writes them unquoted."""
    require(GENERATOR)
    out, _stderr = generate(host, ['overlay %s overlay lowerdir=%s:%s,x-systemd.requires-mounts-for=%s 0 0' % (
        host.path('m'), host.path('a\\040b'), host.path('c'), host.path('a\\040b'))])
    with open(os.path.join(out, unit_name_for_path(host.path('m'), 'mount'))) as handle:
        text = handle.read()
    assert 'RequiresMountsFor=%s\n' % host.path('a b') in text  # two words for systemd: the path and 'b'
    with pytest.raises(Exception, match=r'holds whitespace'):
        render([canonical(overlay(host.path('m'), [host.path('a b'), host.path('c')]))], {'persistence': 'fstab'})


def test_generator_consumes_a_level_of_backslashes_in_options(host):
    """Why layer paths with a backslash are refused: '\\\\' in an fstab option reaches the unit as '\\'."""
    require(GENERATOR)
    out, _stderr = generate(host, ['overlay %s overlay lowerdir=%s:%s 0 0' % (
        host.path('m'), host.path('a\\134\\134b'), host.path('c'))])
    with open(os.path.join(out, unit_name_for_path(host.path('m'), 'mount'))) as handle:
        text = handle.read()
    assert 'Options=lowerdir=%s:%s\n' % (host.path('a\\b'), host.path('c')) in text


def make_image(host, name, files):
    """A raw ext4 image holding files, made by mkfs.ext4 -d."""
    content = host.path(name + '.d')
    for relative, data in files.items():
        host.write(os.path.join(name + '.d', relative), data)
    subprocess.run(['mkfs.ext4', '-q', '-d', content, host.path(name), '8M'], check=True, capture_output=True)
    return host.path(name)


def test_fstab_lines_pass_findmnt_verify_and_mount_a_brings_the_trees_up_in_order(host):
    require('findmnt', 'mount', 'mkfs.ext4')
    path = host.path
    host.make_dirs('iu', 'iw', 'u', 'w', 'u2', 'w2', 'inner', 'tools', 'merged 1', 'flat%', 'bound',
                   **{'i:1/from-inner-lower': 'i1', 'i2/from-inner-lower2': 'i2', 'plain/from-plain': 'p',
                      'l1/from-l1': 'l1', 'l2/from-l2': 'l2', 'src dir/from-bind': 'b'})
    image = make_image(host, 'tools img.raw', {'from-image': 'img'})
    inner = overlay(path('inner'), [path('i:1'), path('i2')], path('iu'), path('iw'))
    loop_layer = {'type': 'file', 'source': image, 'format': 'raw', 'target': path('tools')}
    nested = overlay(path('merged 1'), [inner, loop_layer, path('plain')], path('u'), path('w'))
    flat = overlay(path('flat%'), [path('l1'), path('l2')], path('u2'), path('w2'), options={'index': 'on'})
    bind = {'type': 'bind', 'source': path('src dir'), 'target': path('bound'), 'readonly': True}
    result = render([{'tree': canonical(nested)}, {'tree': canonical(flat), 'nofail': True}, {'tree': canonical(bind)}],
                    {'persistence': 'fstab'})
    assert result['units'] == {} and result['files'] == {}
    assert [line.split()[1] for line in result['fstab']] == [
        path('inner'), path('tools'), path('merged\\0401'), path('flat%'), path('bound')]
    host.write('fstab', '\n'.join(result['fstab']) + '\n')

    completed = subprocess.run(['findmnt', '--verify', '--verbose', '--tab-file', path('fstab')],
                               capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert '0 parse errors, 0 errors' in completed.stdout + completed.stderr

    completed = subprocess.run(['mount', '-a', '-v', '-T', path('fstab')], capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    mounts = {entry.mountpoint: entry for entry in mounts_under(host.root)}
    assert sorted(mounts) == sorted([path('inner'), path('tools'), path('merged 1'), path('flat%'), path('bound')])
    assert mounts[path('inner')].overlay_layers() == ([path('i:1'), path('i2')], path('iu'), path('iw'))
    assert mounts[path('tools')].fstype == 'ext4' and mounts[path('tools')].readonly
    assert mounts[path('merged 1')].overlay_layers() == ([path('inner'), path('tools'), path('plain')], path('u'), path('w'))
    assert mounts[path('flat%')].overlay_layers() == ([path('l1'), path('l2')], path('u2'), path('w2'))
    assert mounts[path('flat%')].super_options.get('index') == 'on'
    assert 'x-systemd.requires-mounts-for' not in str(mounts[path('flat%')].super_options)  # stripped by libmount
    assert mounts[path('bound')].readonly
    # In the order that works: what a tree stands on was mounted before it (mount ids grow).
    order = [mounts[p].mount_id for p in (path('inner'), path('tools'), path('merged 1'))]
    assert order == sorted(order)
    assert sorted(os.listdir(path('merged 1'))) == ['from-image', 'from-inner-lower', 'from-inner-lower2', 'from-plain',
                                                    'lost+found']
    assert os.listdir(path('bound')) == ['from-bind']
