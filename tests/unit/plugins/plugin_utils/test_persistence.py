# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import pytest

from ansible_collections.containerhost.overlayfs.plugins.plugin_utils._persistence import helper_sources
from ansible_collections.containerhost.overlayfs.plugins.module_utils.boot import _boot as boot
from ansible_collections.containerhost.overlayfs.plugins.module_utils.host._hostfs import export_files
from ansible_collections.containerhost.overlayfs.plugins.plugin_utils._persistence import (
    EXPORT_TEMPLATE,
    MARKER,
    NBD_MODPROBE,
    NBD_MODULES_LOAD,
    NBD_TEMPLATE,
    PersistenceError,
    env_value,
    fstab_field,
    nbd_service_name,
    render,
    spec_file,
    unit_name_for_path,
    unit_word,
)
from ansible_collections.containerhost.overlayfs.tests.helpers.trees import canonical, overlay

SYSTEMD_ESCAPE = shutil.which('systemd-escape')
needs_systemd_escape = pytest.mark.skipif(SYSTEMD_ESCAPE is None, reason='systemd-escape is not installed')

ESCAPE_PATHS = [
    '/', '//', '/srv', '/srv/', '/srv//a///b/', '/srv/./a/.', '/./.', '/srv/a b', '/srv/a,b', '/srv/a:b,c',
    '/srv/a-b', '/-', '/srv/-/x', '/srv/a\\b', '/srv/trailing\\', '/.hidden', '/.hidden/x', '/srv/.hidden',
    '/srv/.x.', '/...', '/a/.../b', '/a/..b', '/srv/a.b_c:d', '/srv/\u00e9\u4e2d', '/srv/t\tb', '/srv/n\nl',
    '/srv/%i', '/srv/~x', '/srv/"q"', "/srv/'q'", '/srv/#;=@+!$&()[]{}<>|*?`', '/srv/\x01\x7f', '/srv/\x1b[0m',
    '/ABC/xyz/019', '/srv/emoji-\U0001f600', 'relative/path', 'a//b/', './a', '', '_', '-', '.a', '...',
    '/' + 'a' * 255, '/' + '/'.join(['b' * 200] * 20), '/srv/surrogate-\udcff',
]
ESCAPE_INVALID = ['/srv/..', '/srv/../a', '..', '.', './', '/' + 'a' * 256, '/' + '/'.join(['c' * 250] * 17)]


def systemd_escape(path, suffix=None):
    argv = [SYSTEMD_ESCAPE, '--path'] + (['--suffix=' + suffix] if suffix else []) + ['--', path]
    completed = subprocess.run(argv, capture_output=True, check=False)
    return completed.returncode, completed.stdout.decode('utf-8', 'surrogateescape').rstrip('\n')


@needs_systemd_escape
@pytest.mark.parametrize('path', ESCAPE_PATHS)
@pytest.mark.parametrize('suffix', [None, 'mount'])
def test_unit_name_for_path_is_what_systemd_escape_prints(path, suffix):
    rc, expected = systemd_escape(path, suffix)
    assert rc == 0
    assert unit_name_for_path(path, suffix) == expected


@needs_systemd_escape
@pytest.mark.parametrize('path', ESCAPE_INVALID)
def test_unit_name_for_path_refuses_what_systemd_escape_refuses(path):
    rc, out = systemd_escape(path, 'mount')
    assert rc != 0 and out == ''
    with pytest.raises(ValueError):
        unit_name_for_path(path, 'mount')


def test_unit_name_for_path_known_names():
    # FACTS.md, measured with systemd-escape: these hold without the binary too.
    assert unit_name_for_path('/srv/merged two', 'mount') == 'srv-merged\\x20two.mount'
    assert unit_name_for_path('/srv/a:b,c', 'mount') == 'srv-a:b\\x2cc.mount'
    assert unit_name_for_path('/', 'mount') == '-.mount'
    assert unit_name_for_path('/.x/y') == '\\x2ex-y'
    assert unit_name_for_path('/srv/\u00e9') == 'srv-\\xc3\\xa9'
    with pytest.raises(ValueError):
        unit_name_for_path('/a\0b')


# --- rendering -------------------------------------------------------------------------------------------

UNIT_DIR = '/etc/systemd/system/'
SETTINGS = {'helper_sources': helper_sources()}


def item(tree, **settings):
    result = {'filesystem': canonical(tree), 'nofail': False}
    result.update(settings)
    return result


def rendered(*items, **kwargs):
    kwargs.setdefault('settings', SETTINGS)
    return render(list(items), **kwargs)


def unit(result, name):
    assert name in result['units'] or name.endswith('.service'), name
    return result['files'][UNIT_DIR + name]


def setting(text, key):
    values = [line.split('=', 1)[1] for line in text.splitlines() if line.startswith(key + '=')]
    assert len(values) == 1, (key, text)
    return values[0]


def spec(result, target):
    text = result['files'][spec_file(target)]
    assert text.startswith(MARKER + '\n')
    return json.loads(text.split('\n', 2)[2])


def not_helper(paths):
    return sorted(path for path in paths if not path.startswith(boot.HELPER_LIB + '/') and path != boot.MOUNT_HELPER)


SIMPLE = overlay('/srv/merged', ['/srv/l1', '/srv/l2'], '/srv/u', '/srv/w')
NBD_LAYER = {'type': 'file', 'source': '/srv/images/base.qcow2', 'driver': 'nbd', 'format': 'qcow2', 'target': '/srv/base'}
LOOP_LAYER = {'type': 'file', 'source': '/srv/images/tools.raw', 'format': 'raw', 'target': '/srv/tools'}
FUSE_LAYER = dict(NBD_LAYER, driver='fuse', target='/srv/fused')


def test_an_overlay_is_a_mount_of_its_spec_by_the_helper():
    result = rendered(item(SIMPLE))
    assert result['units'] == ['srv-merged.mount'] and result['fstab'] == []
    assert unit(result, 'srv-merged.mount').splitlines() == [
        MARKER,
        '[Unit]',
        'Description=Overlay filesystem /srv/merged (containerhost.overlayfs)',
        'RequiresMountsFor=/srv/l1 /srv/l2 /srv/u /srv/w /usr/local/lib/containerhost-overlayfs',
        '',
        '[Mount]',
        'What=/etc/containerhost-overlayfs/overlays/srv-merged.conf',
        'Where=/srv/merged',
        'Type=overlay.containerhost',
        '',
        '[Install]',
        'RequiredBy=local-fs.target',
    ]
    assert spec(result, '/srv/merged') == {'target': '/srv/merged', 'lowers': ['/srv/l1', '/srv/l2'], 'upper': '/srv/u',
                                           'work': '/srv/w', 'options': {}, 'readonly': False,
                                           'mount_flags': ['nodev'], 'on_volatile_marker': 'fail', 'idmapped': [], 'views': {}}


def test_a_tree_nested_three_deep_persists_the_flattened_layers_the_module_mounts():
    innermost = overlay('/srv/n2', ['/srv/a'], '/srv/u2', '/srv/w2')
    tree = overlay('/srv/m', [overlay('/srv/n1', [innermost], '/srv/u1', '/srv/w1')], '/srv/u', '/srv/w')
    result = rendered(item(tree))
    assert spec(result, '/srv/m')['lowers'] == ['/srv/u1', '/srv/n2']  # /srv/n1 stacks 2 deep: its layers instead
    assert spec(result, '/srv/n1')['lowers'] == ['/srv/n2']
    assert setting(unit(result, 'srv-m.mount'), 'RequiresMountsFor').split()[:2] == ['/srv/u1', '/srv/n2']


def test_the_helper_and_its_modules_come_with_any_overlay():
    result = rendered(item(SIMPLE))
    package = boot.HELPER_LIB + '/' + boot.PACKAGE.replace('.', '/')
    for name, source in helper_sources().items():
        text = result['files']['%s/%s.py' % (package, name.replace('.', '/'))]
        assert text == MARKER + '\n' + source
    assert result['files'][package + '/__init__.py'] == MARKER + '\n'
    assert result['files'][package + '/kernel/__init__.py'] == MARKER + '\n'
    assert result['files'][boot.HELPER_LIB + '/ansible_collections/__init__.py'] == MARKER + '\n'
    assert result['executables'] == [boot.MOUNT_HELPER, boot.EXPORT_HELPER, boot.NBD_HELPER]
    launcher = result['files'][boot.MOUNT_HELPER]
    assert launcher.splitlines()[:2] == ['#!/usr/bin/python3 -I', MARKER]
    assert rendered(item(SIMPLE), settings=dict(SETTINGS, python='/opt/py/bin/python3'))['files'][
        boot.MOUNT_HELPER].startswith('#!/opt/py/bin/python3 -I\n')
    bind = {'type': 'bind', 'source': '/srv/a', 'target': '/srv/b'}
    assert not_helper(rendered(item(bind))['files']) == sorted(rendered(item(bind))['files'])


def test_an_overlay_as_an_fstab_line():
    result = rendered(item(SIMPLE, persistence='fstab'))
    assert result['units'] == []
    assert result['fstab'] == [
        '/etc/containerhost-overlayfs/overlays/srv-merged.conf /srv/merged overlay.containerhost '
        'x-systemd.requires-mounts-for=/srv/l1,x-systemd.requires-mounts-for=/srv/l2,'
        'x-systemd.requires-mounts-for=/srv/u,x-systemd.requires-mounts-for=/srv/w,'
        'x-systemd.requires-mounts-for=/usr/local/lib/containerhost-overlayfs 0 0']
    assert spec(result, '/srv/merged')['lowers'] == ['/srv/l1', '/srv/l2']


def test_options_readonly_and_the_volatile_choice_go_in_the_spec():
    tree = dict(overlay('/srv/ro', ['/srv/a', '/srv/b'], readonly=True,
                        options={'redirect_dir': 'nofollow', 'userxattr': True}), mount_flags=['noexec', 'nosuid'])
    result = rendered(item(tree), settings=dict(SETTINGS, on_volatile_marker='discard'))
    assert spec(result, '/srv/ro') == {'target': '/srv/ro', 'lowers': ['/srv/a', '/srv/b'], 'upper': None, 'work': None,
                                       'options': {'redirect_dir': 'nofollow', 'userxattr': 'on'}, 'readonly': True,
                                       'mount_flags': ['nosuid', 'noexec'], 'on_volatile_marker': 'discard', 'idmapped': [], 'views': {}}
    assert 'Options=' not in unit(result, 'srv-ro.mount')
    assert setting(unit(result, 'srv-ro.mount'), 'RequiresMountsFor') == '/srv/a /srv/b /usr/local/lib/containerhost-overlayfs'


def test_defaults_persistence_systemd_and_nofail_true():
    result = rendered({'filesystem': SIMPLE})
    assert result['units'] == ['srv-merged.mount']
    assert setting(unit(result, 'srv-merged.mount'), 'Options') == 'nofail'
    assert setting(unit(result, 'srv-merged.mount'), 'WantedBy') == 'local-fs.target'


def test_persistence_auto_follows_the_service_manager_setting():
    other = dict(SETTINGS, service_mgr='openrc')
    assert rendered(item(SIMPLE, persistence='auto'), settings=other)['units'] == []
    assert len(rendered(item(SIMPLE, persistence='auto'), settings=other)['fstab']) == 1
    assert rendered(item(SIMPLE, persistence='auto'))['units'] == ['srv-merged.mount']


def test_absent_items_and_persistence_none_render_nothing():
    result = rendered(item(SIMPLE), item(overlay('/srv/other', ['/srv/o1', '/srv/o2']), persistence='none'),
                      item(overlay('/srv/gone', ['/srv/g1', '/srv/g2']), state='absent'))
    assert result['units'] == ['srv-merged.mount']
    assert spec_file('/srv/other') not in result['files'] and spec_file('/srv/gone') not in result['files']


def test_items_with_several_trees_as_the_role_passes_them():
    second = overlay('/srv/two', ['/srv/t1', '/srv/t2'])
    result = rendered({'name': 'both', 'state': 'mounted', 'trees': [canonical(SIMPLE), canonical(second)],
                       'persistence': 'systemd', 'nofail': False, 'required_by': [], 'wanted_by': []})
    assert result['units'] == ['srv-merged.mount', 'srv-two.mount']


def test_nofail_unit_is_wanted_not_required():
    text = unit(rendered(item(SIMPLE, nofail=True)), 'srv-merged.mount')
    assert setting(text, 'Options') == 'nofail'
    assert setting(text, 'WantedBy') == 'local-fs.target'
    assert 'RequiredBy=' not in text


def test_nested_overlay_comes_first_and_is_required_by_path():
    inner = overlay('/srv/inner', ['/srv/i1', '/srv/i2'], '/srv/iu', '/srv/iw')
    outer = overlay('/srv/outer', [inner, '/srv/o2'], '/srv/ou', '/srv/ow')
    result = rendered(item(outer))
    assert result['units'] == ['srv-inner.mount', 'srv-outer.mount']
    assert setting(unit(result, 'srv-outer.mount'), 'RequiresMountsFor') == (
        '/srv/inner /srv/o2 /srv/ou /srv/ow /usr/local/lib/containerhost-overlayfs')
    fstab = rendered(item(outer, persistence='fstab'))['fstab']
    assert [line.split()[1] for line in fstab] == ['/srv/inner', '/srv/outer']
    assert 'x-systemd.requires-mounts-for=/srv/inner,' in fstab[1]


def test_trees_come_up_in_dependency_order_whatever_the_input_order():
    base = overlay('/srv/base', ['/srv/b1', '/srv/b2'])
    on_top = overlay('/srv/top', ['/srv/base/sub', '/srv/t2'])
    assert rendered(item(on_top), item(base))['units'] == ['srv-base.mount', 'srv-top.mount']


def test_loop_image_layer():
    tree = overlay('/srv/merged', [LOOP_LAYER, '/srv/l2'], '/srv/u', '/srv/w')
    result = rendered(item(tree))
    assert result['units'] == ['srv-tools.mount', 'srv-merged.mount']
    text = unit(result, 'srv-tools.mount')
    assert setting(text, 'What') == '/srv/images/tools.raw'
    assert setting(text, 'Options') == 'loop,ro'
    assert setting(text, 'RequiresMountsFor') == '/srv/images/tools.raw'
    assert 'Type=' not in text
    assert rendered(item(tree, persistence='fstab'))['fstab'][0] == '/srv/images/tools.raw /srv/tools auto loop,ro 0 0'


def test_top_level_loop_image_is_read_write_unless_readonly():
    top = dict(LOOP_LAYER, target='/srv/disk')
    assert setting(unit(rendered(item(top)), 'srv-disk.mount'), 'Options') == 'loop,rw,nodev'
    top['readonly'] = True
    assert setting(unit(rendered(item(top)), 'srv-disk.mount'), 'Options') == 'loop,ro,nodev'


def test_nbd_image_layer_systemd():
    tree = overlay('/srv/merged', [NBD_LAYER, '/srv/l2'], '/srv/u', '/srv/w')
    result = rendered(item(tree), devices={'/srv/base': '/dev/nbd3', '/srv/elsewhere': '/dev/nbd9'},
                      settings=dict(SETTINGS, nbd_options={'nbds_max': 16, 'max_part': 0}))
    assert result['units'] == ['srv-base.mount', 'srv-merged.mount']
    mount = unit(result, 'srv-base.mount')
    assert setting(mount, 'What') == '/dev/nbd3'
    assert setting(mount, 'Options') == 'ro'
    assert setting(mount, 'Requires') == 'containerhost-overlayfs-nbd@nbd3.service'
    assert setting(mount, 'After') == 'containerhost-overlayfs-nbd@nbd3.service'
    template = unit(result, NBD_TEMPLATE)
    assert template.startswith(MARKER + '\n')
    assert setting(template, 'Type') == 'forking'
    assert setting(template, 'PIDFile') == '/run/containerhost-overlayfs-%i.pid'
    # the helper gives qemu-nbd the image as the module does (pinned below an open dir), and the pid file
    assert setting(template, 'ExecStart') == (boot.NBD_HELPER + ' start /dev/%i /run/containerhost-overlayfs-%i.pid '
                                              '${IMAGE} ${FORMAT} $READONLY')
    assert boot.NBD_HELPER in result['executables']
    assert setting(template, 'ExecStop') == '/usr/bin/qemu-nbd --disconnect /dev/%i'
    assert setting(template, 'Requires') == 'modprobe@nbd.service'
    assert '[Install]' not in template  # pulled in by the mount units' Requires=
    files = result['files']
    assert files['/etc/containerhost-overlayfs/nbd/nbd3.env'] == '\n'.join([
        MARKER, '# What containerhost-overlayfs-nbd@nbd3.service serves',
        'IMAGE="/srv/images/base.qcow2"', 'FORMAT=qcow2', 'READONLY=--read-only']) + '\n'
    assert files['/etc/systemd/system/containerhost-overlayfs-nbd@nbd3.service.d/containerhost-overlayfs.conf'] == '\n'.join([
        MARKER, '[Unit]', 'RequiresMountsFor=/srv/images/base.qcow2']) + '\n'
    assert files[NBD_MODULES_LOAD] == MARKER + '\nnbd\n'
    assert files[NBD_MODPROBE] == MARKER + '\noptions nbd max_part=0 nbds_max=16\n'


def test_nbd_image_layer_fstab_still_needs_the_attach_service():
    tree = overlay('/srv/merged', [NBD_LAYER, '/srv/l2'], '/srv/u', '/srv/w')
    result = rendered(item(tree, persistence='fstab'), devices={'/srv/base': '/dev/nbd0'})
    assert result['units'] == []
    assert UNIT_DIR + NBD_TEMPLATE in result['files']
    assert '/etc/containerhost-overlayfs/nbd/nbd0.env' in result['files']
    assert result['fstab'][0] == '/dev/nbd0 /srv/base auto ro,x-systemd.requires=containerhost-overlayfs-nbd@nbd0.service 0 0'
    assert result['fstab'][1].split()[1] == '/srv/merged'


def test_nbd_template_is_rendered_once_and_top_level_nbd_is_writable():
    first = overlay('/srv/m1', [NBD_LAYER, '/srv/l2'])
    second = dict(NBD_LAYER, target='/srv/disk', source='/srv/images/disk.qcow2')
    result = rendered(item(first), item(second), devices={'/srv/base': '/dev/nbd1', '/srv/disk': '/dev/nbd2'})
    assert result['units'] == ['srv-base.mount', 'srv-m1.mount', 'srv-disk.mount']
    assert setting(unit(result, 'srv-disk.mount'), 'Options') == 'rw,nodev'
    assert 'READONLY=\n' in result['files']['/etc/containerhost-overlayfs/nbd/nbd2.env']
    assert 'options nbd' not in result['files'][NBD_MODPROBE]  # no options given


@pytest.mark.parametrize('devices, message', [
    ({'/srv/base': '/dev/loop0'}, r"'/dev/loop0' is not an nbd device"),
    ({'/srv/base': '/dev/nbd0p1'}, r'is not an nbd device'),
])
def test_nbd_device_refusals(devices, message):
    with pytest.raises(PersistenceError, match=message):
        rendered(item(overlay('/srv/merged', [NBD_LAYER, '/srv/l2'])), devices=devices)


def test_a_layer_on_no_device_now_takes_the_lowest_device_nothing_pins_the_same_every_time():
    unmounted = overlay('/srv/merged', [NBD_LAYER, '/srv/l2'])
    mounted = overlay('/srv/other', [dict(NBD_LAYER, target='/srv/disk', source='/srv/images/disk.qcow2'), '/srv/l3'])
    result = rendered(item(unmounted), item(mounted), devices={'/srv/disk': '/dev/nbd0'})
    assert nbd_service_name('/dev/nbd1') in setting(unit(result, 'srv-base.mount'), 'Requires')
    assert '/etc/containerhost-overlayfs/nbd/nbd1.env' in result['files']
    assert rendered(item(unmounted), item(mounted), devices={'/srv/disk': '/dev/nbd0'}) == result


def test_one_nbd_device_for_two_layers_is_refused():
    tree = overlay('/srv/merged', [NBD_LAYER, dict(NBD_LAYER, target='/srv/other')])
    with pytest.raises(PersistenceError, match=r'nbd device /dev/nbd0 is also given to'):
        rendered(item(tree), devices={'/srv/base': '/dev/nbd0', '/srv/other': '/dev/nbd0'})


def test_a_fuse_image_layer_is_a_loop_mount_of_its_export_after_the_export_service():
    tree = overlay('/srv/merged', [FUSE_LAYER, '/srv/l2'], '/srv/u', '/srv/w')
    result = rendered(item(tree))
    export, _pidfile, _metafile = export_files('/srv/images/base.qcow2', 'qcow2')
    instance = export.rsplit('/', 1)[1][:-len('.img')]
    service = 'containerhost-overlayfs-export@%s.service' % instance
    mount = unit(result, 'srv-fused.mount')
    assert setting(mount, 'What') == export  # the file the module's own export has
    assert setting(mount, 'Options') == 'loop,ro'
    assert setting(mount, 'Requires') == service and setting(mount, 'After') == service
    template = unit(result, EXPORT_TEMPLATE)
    assert setting(template, 'Type') == 'oneshot' and setting(template, 'RemainAfterExit') == 'yes'
    assert setting(template, 'ExecStart') == boot.EXPORT_HELPER + ' start ${IMAGE} ${FORMAT}'
    assert setting(template, 'ExecStop') == boot.EXPORT_HELPER + ' stop ${IMAGE} ${FORMAT}'
    assert setting(template, 'Requires') == 'modprobe@fuse.service'
    assert result['files']['/etc/containerhost-overlayfs/exports/%s.env' % instance] == '\n'.join([
        MARKER, '# What %s serves' % service, 'IMAGE="/srv/images/base.qcow2"', 'FORMAT=qcow2']) + '\n'
    assert setting(result['files'][UNIT_DIR + service + '.d/containerhost-overlayfs.conf'],
                   'RequiresMountsFor') == '/srv/images/base.qcow2'
    assert boot.EXPORT_HELPER in result['executables']
    line = rendered(item(tree, persistence='fstab'))['fstab'][0]
    assert line == '%s /srv/fused auto loop,ro,x-systemd.requires=%s 0 0' % (export, service)


def test_two_layers_on_one_image_share_one_export_service():
    tree = overlay('/srv/merged', [FUSE_LAYER, dict(FUSE_LAYER, target='/srv/fused2')])
    result = rendered(item(tree))
    services = [path for path in result['files'] if '/containerhost-overlayfs-export@' in path and path.endswith('.conf')]
    assert len(services) == 1


def test_required_by_and_wanted_by_units_get_drop_ins_on_the_top_mount():
    nested = overlay('/srv/ct1/rootfs', [overlay('/srv/base', ['/srv/b1', '/srv/b2']), '/srv/l'], '/srv/ct1/u', '/srv/ct1/w')
    result = rendered(item(nested, required_by=['systemd-nspawn@ct1.service'], wanted_by=['libvirtd.service']),
                      item(overlay('/srv/ct2/rootfs', ['/srv/b1', '/srv/c2']), persistence='fstab',
                           wanted_by=['libvirtd.service']))
    assert result['files'][UNIT_DIR + 'systemd-nspawn@ct1.service.d/containerhost-overlayfs.conf'].splitlines() == [
        MARKER, '[Unit]', 'Requires=srv-ct1-rootfs.mount', 'After=srv-ct1-rootfs.mount']
    # the fstab tree's unit has the same name (systemd-fstab-generator names it after its target too)
    assert result['files'][UNIT_DIR + 'libvirtd.service.d/containerhost-overlayfs.conf'].splitlines() == [
        MARKER, '[Unit]', 'Wants=srv-ct1-rootfs.mount srv-ct2-rootfs.mount',
        'After=srv-ct1-rootfs.mount srv-ct2-rootfs.mount']


def test_block_and_bind_nodes():
    block_layer = {'type': 'block', 'source': '/dev/vdb', 'target': '/srv/blk'}
    tree = overlay('/srv/merged', [block_layer, {'type': 'mount', 'source': '/srv/src', 'target': '/srv/bound'}])
    result = rendered(item(tree))
    assert setting(unit(result, 'srv-blk.mount'), 'What') == '/dev/vdb'
    assert setting(unit(result, 'srv-blk.mount'), 'Options') == 'ro'
    assert setting(unit(result, 'srv-bound.mount'), 'What') == '/srv/src'
    assert setting(unit(result, 'srv-bound.mount'), 'Options') == 'bind'
    bind = {'type': 'bind', 'source': '/srv/a b', 'target': '/srv/c d', 'readonly': True}
    assert rendered(item(bind, persistence='fstab'))['fstab'] == ['/srv/a\\040b /srv/c\\040d none bind,ro,nodev 0 0']
    assert setting(unit(rendered(item(bind)), 'srv-c\\x20d.mount'), 'Options') == 'bind,ro,nodev'


def test_every_file_carries_the_marker():
    tree = overlay('/srv/merged', [NBD_LAYER, LOOP_LAYER, FUSE_LAYER], '/srv/u', '/srv/w')
    result = rendered(item(tree, required_by=['x.service']), devices={'/srv/base': '/dev/nbd0'})
    for path, text in result['files'].items():
        assert MARKER in text.splitlines()[:2], path
        if path not in result['executables']:
            assert text.splitlines()[0] == MARKER, path


def test_hostile_but_carried_paths_reach_the_spec_verbatim():
    lowers = ['/srv/a b', '/srv/c:d', "/srv/q'\"uote", '/srv/e,f', '/srv/g\\h', '/srv/%i', '/srv/\u00e9=x']
    tree = overlay('/srv/merged 100%', lowers, '/srv/u\tx', '/srv/w=y')
    result = rendered(item(tree))
    text = unit(result, 'srv-merged\\x20100\\x25.mount')
    assert setting(text, 'Where') == '/srv/merged 100%%'
    assert setting(text, 'Description') == 'Overlay filesystem /srv/merged 100%% (containerhost.overlayfs)'
    assert setting(text, 'RequiresMountsFor') == (
        '"/srv/a b" /srv/c:d "/srv/q\'\\"uote" /srv/e,f "/srv/g\\\\h" /srv/%%i /srv/\u00e9=x "/srv/u\tx" /srv/w=y '
        '/usr/local/lib/containerhost-overlayfs')
    assert spec(result, '/srv/merged 100%') == {'target': '/srv/merged 100%', 'lowers': lowers, 'upper': '/srv/u\tx',
                                                'work': '/srv/w=y', 'options': {}, 'readonly': False, 'mount_flags': ['nodev'],
                                                'on_volatile_marker': 'fail', 'idmapped': [], 'views': {}}
    line = rendered(item(overlay('/srv/m t', ['/srv/c:d', '/srv/e%f', '/srv/\u00e9=x']), persistence='fstab'))['fstab'][0]
    digest = hashlib.sha256(b'/srv/m t').hexdigest()[:16]
    assert line == ('/etc/containerhost-overlayfs/overlays/srv-m_x20t@' + digest + '.conf /srv/m\\040t overlay.containerhost '
                    'x-systemd.requires-mounts-for=/srv/c:d,x-systemd.requires-mounts-for=/srv/e%f,'
                    'x-systemd.requires-mounts-for=/srv/\u00e9=x,'
                    'x-systemd.requires-mounts-for=/usr/local/lib/containerhost-overlayfs 0 0')


@pytest.mark.parametrize('lower, message', [
    ('/srv/a,b', r"filesystems\[0\] \(overlay at /srv/merged\): layer '/srv/a,b' holds a ','"),
    ('/srv/a\\b', r'holds a backslash'),
    ('/srv/a b', r'holds whitespace.*use persistence systemd'),
])
def test_fstab_cannot_order_on_some_layer_paths(lower, message):
    tree = overlay('/srv/merged', [lower, '/srv/l2'])
    rendered(item(tree))  # systemd persistence carries it
    with pytest.raises(PersistenceError, match=message):
        rendered(item(tree, name=None, persistence='fstab'))


@pytest.mark.parametrize('persistence', ['systemd', 'fstab'])
@pytest.mark.parametrize('lower', ['/srv/a\nb', '/srv/a\rb'])
def test_a_line_break_in_a_layer_is_refused(persistence, lower):
    with pytest.raises(PersistenceError, match=r'holds a line break'):
        rendered(item(overlay('/srv/merged', [lower, '/srv/l2']), persistence=persistence))


@pytest.mark.parametrize('persistence', ['systemd', 'fstab'])
@pytest.mark.parametrize('target, message', [
    ('/srv/m\nx', r'target .* holds a line break'),
    ('/srv/ab ', r'ends in whitespace'),
    ('/srv/ab\\', r'ends in a backslash'),
])
def test_targets_a_unit_line_cannot_carry_are_refused(persistence, target, message):
    with pytest.raises(PersistenceError, match=message):
        rendered(item(overlay(target, ['/srv/a', '/srv/b']), persistence=persistence))


def test_commas_and_backslashes_outside_options_are_fine():
    bind = {'type': 'bind', 'source': '/srv/a,b\\c', 'target': '/srv/d,e\\f'}
    assert rendered(item(bind, persistence='fstab'))['fstab'] == ['/srv/a,b\\134c /srv/d,e\\134f none bind,nodev 0 0']
    text = unit(rendered(item(bind)), 'srv-d\\x2ce\\x5cf.mount')
    assert setting(text, 'What') == '/srv/a,b\\c' and setting(text, 'Where') == '/srv/d,e\\f'


def test_unit_name_too_long_is_refused_for_systemd_only_and_its_spec_name_is_hashed():
    target = '/srv/' + '-' * 100  # every '-' is \x2d in the unit name
    tree = overlay(target, ['/srv/a', '/srv/b'])
    with pytest.raises(PersistenceError, match=r'use persistence fstab'):
        rendered(item(tree))
    line = rendered(item(tree, persistence='fstab'))['fstab'][0]
    assert len(line.split()[0].rsplit('/', 1)[1]) == 180 + 1 + 16 + len('.conf')


def test_long_layer_lists_need_no_special_case():
    lowers = ['/srv/%s/%03d' % ('x' * 200, index) for index in range(25)]  # 5 kB of lowerdir
    result = rendered(item(overlay('/srv/merged', lowers)))
    assert spec(result, '/srv/merged')['lowers'] == lowers


@pytest.mark.parametrize('items, settings, message', [
    ('nope', None, r'must be a list'),
    (['nope'], None, r'filesystems\[0\] must be a mapping'),
    ([{'persistence': 'fstab'}], None, r'give exactly one of xml and filesystem'),
    ([{'filesystem': SIMPLE, 'persistence': 'rc.local'}], None,
     r"persistence: 'rc.local' is not one of auto, systemd, fstab, none"),
    ([], {'on_volatile_marker': 'keep'}, r"on_volatile_marker: 'keep' is not one of fail, discard"),
    ([], {'bogus': 1}, r'unknown setting bogus'),
    ([{'filesystem': {'lower': ['/a'], 'target': '/m'}, 'name': 'web'}], None,
     r'web.filesystem.lower: an overlay without an upper dir'),
])
def test_bad_input(items, settings, message):
    with pytest.raises(PersistenceError, match=message):
        render(items, settings=settings)


def test_a_tree_with_an_overlay_needs_the_helper_sources():
    with pytest.raises(PersistenceError, match=r'the boot helper needs the sources of boot\._boot and the modules it imports'):
        render([item(SIMPLE)])


def test_the_helper_sources_must_hold_the_whole_import_closure():
    sources = dict(helper_sources())
    del sources['kernel._verify']
    with pytest.raises(PersistenceError, match=r'missing: kernel\._verify$'):
        render([item(SIMPLE)], settings=dict(SETTINGS, helper_sources=sources))


def test_duplicate_targets_across_items_are_refused():
    with pytest.raises(PersistenceError, match=r'target /srv/merged is also the target of'):
        rendered(item(SIMPLE), item(SIMPLE, persistence='fstab'))


def test_quoting_helpers():
    assert unit_word('/srv/plain') == '/srv/plain'
    assert unit_word('/srv/a b') == '"/srv/a b"'
    assert unit_word('/srv/a"b\\c%d') == '"/srv/a\\"b\\\\c%%d"'
    assert fstab_field('/a b\tc\nd\\e') == '/a\\040b\\011c\\012d\\134e'
    assert env_value('/a "b" $c `d` \\e') == '"/a \\"b\\" \\$c \\`d\\` \\\\e"'


def test_filter_plugin_reads_the_helper_and_pins_nbd_devices_from_the_mount_table():
    from ansible.errors import AnsibleFilterError
    from ansible_collections.containerhost.overlayfs.plugins.filter.persistence import FilterModule

    overlay_persistence = FilterModule().filters()['overlay_persistence']
    tree = overlay('/srv/merged', [NBD_LAYER, '/srv/l2'])
    mounts = [{'target': '/srv/base', 'source': '/dev/nbd5'}, {'target': '/srv/merged', 'source': 'overlay'}]
    result = overlay_persistence([item(tree)], mounts=mounts)
    assert '/etc/containerhost-overlayfs/nbd/nbd5.env' in result['files']
    assert boot.MOUNT_HELPER in result['files']
    with pytest.raises(AnsibleFilterError, match=r'overlay_persistence: .*is not one of fail, discard'):
        overlay_persistence([item(tree)], on_volatile_marker='keep')


def test_spec_files_are_one_to_one_with_targets_and_a_shared_name_fails_the_render(monkeypatch):
    """The issue's pair: an escaped target's hashed name and a plain target that spells it."""
    escaped = spec_file('/srv/c-1/rootfs')
    plain = '/srv/%s' % escaped.rsplit('/', 1)[1][len('srv-'):-len('.conf')].replace('-', '/').replace('@', '-')
    assert spec_file(plain) != escaped
    result = rendered(item(overlay('/srv/c-1/rootfs', ['/srv/l1', '/srv/l2'])), item(overlay(plain, ['/srv/l1', '/srv/l2'])))
    assert len([path for path in result['files'] if path.startswith(boot.SPEC_DIR)]) == 2
    import ansible_collections.containerhost.overlayfs.plugins.plugin_utils._persistence as persistence
    monkeypatch.setattr(persistence, 'spec_file', lambda target: boot.SPEC_DIR + '/one.conf')  # were it not so
    with pytest.raises(PersistenceError, match=r'two trees would write /etc/containerhost-overlayfs/overlays/one.conf, '
                                               r'each with its own content: .*/srv/c-1/rootfs.* and .*%s' % plain):
        rendered(item(overlay('/srv/c-1/rootfs', ['/srv/l1', '/srv/l2'])), item(overlay(plain, ['/srv/l1', '/srv/l2'])))


@pytest.mark.parametrize('settings, message', [
    ({'python': '/usr/bin/python3\nimport os'}, r"python: '/usr/bin/python3\\nimport os' is not an absolute path"),
    ({'python': 'python3'}, r"python: 'python3' is not an absolute path"),
    ({'nbd_options': {'max_part': '8\ninstall nbd /bin/sh'}}, r"nbd_options: max_part: .* is not a module option"),
    ({'nbd_options': {'max part': 8}}, r"nbd_options: 'max part' is not a module option name"),
    ({'nbd_options': {'nbds_max': True}}, r"nbd_options: nbds_max: True is not a module option value"),
])
def test_admin_settings_that_would_add_lines_to_a_file_are_refused(settings, message):
    tree = overlay('/srv/ct/rootfs', [NBD_LAYER], '/srv/ct/u', '/srv/ct/w')
    with pytest.raises(PersistenceError, match=message):
        rendered(item(tree), devices={'/srv/base': '/dev/nbd0'}, settings=dict(SETTINGS, **settings))


def test_a_unit_trees_are_required_by_and_wanted_by_gets_one_drop_in_with_both():
    result = rendered(item(overlay('/srv/a', ['/srv/l1', '/srv/l2']), required_by=['x.service']),
                      item(overlay('/srv/b', ['/srv/l1', '/srv/l2']), wanted_by=['x.service']))
    assert result['files'][UNIT_DIR + 'x.service.d/containerhost-overlayfs.conf'].splitlines() == [
        MARKER, '[Unit]', 'Requires=srv-a.mount', 'After=srv-a.mount', 'Wants=srv-b.mount', 'After=srv-b.mount']


def test_a_spec_names_the_persisted_views_its_paths_lie_in():
    """At boot the container's overlay may come up after this tree: its upper dir is a view all the same."""
    container = overlay('/srv/ct/rootfs', ['/srv/base', '/srv/extra'], '/srv/ct/upper', '/srv/ct/work')
    inside = overlay('/srv/v/merged', ['/srv/ct/rootfs/usr', '/srv/base'], '/srv/ct/upper/in/u', '/srv/ct/upper/in/w')
    result = rendered(item(container), item(inside))
    assert spec(result, '/srv/v/merged')['views'] == {
        '/srv/ct/rootfs': 'the merged view of the overlay at /srv/ct/rootfs',
        '/srv/ct/upper': 'the upper dir of the overlay at /srv/ct/rootfs'}
    assert spec(result, '/srv/ct/rootfs')['views'] == {}
