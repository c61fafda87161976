# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import shutil
import subprocess

import pytest

from ansible_collections.containerhost.overlayfs.plugins.module_utils.persistence import (
    MARKER,
    NBD_TEMPLATE,
    PersistenceError,
    env_value,
    fstab_field,
    nbd_service_name,
    render,
    unit_name_for_path,
    unit_word,
)
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree import parse_filesystems, to_yaml
from tree_builders import overlay

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

def canonical(raw):
    """What the module returns for a tree: its canonical YAML form."""
    return to_yaml(parse_filesystems([raw])[0])


def item(tree, **settings):
    result = {'tree': canonical(tree)}
    result.update(settings)
    return result


def unit_lines(text):
    return text.splitlines()


def setting(text, key):
    values = [line.split('=', 1)[1] for line in text.splitlines() if line.startswith(key + '=')]
    assert len(values) == 1, (key, text)
    return values[0]


SIMPLE = overlay('/srv/merged', ['/srv/l1', '/srv/l2'], '/srv/u', '/srv/w')
NBD_LAYER = {'type': 'file', 'source': '/srv/images/base.qcow2', 'driver': 'nbd', 'format': 'qcow2', 'target': '/srv/base'}
LOOP_LAYER = {'type': 'file', 'source': '/srv/images/tools.raw', 'format': 'raw', 'target': '/srv/tools'}


def test_plain_overlay_unit():
    result = render([item(SIMPLE)])
    assert result['fstab'] == [] and result['files'] == {}
    assert list(result['units']) == ['srv-merged.mount']
    text = result['units']['srv-merged.mount']
    assert unit_lines(text) == [
        MARKER,
        '[Unit]',
        'Description=Overlay filesystem /srv/merged (containerhost.overlayfs)',
        'RequiresMountsFor=/srv/l1 /srv/l2 /srv/u /srv/w',
        '',
        '[Mount]',
        'What=overlay',
        'Where=/srv/merged',
        'Type=overlay',
        'Options=lowerdir=/srv/l1:/srv/l2,upperdir=/srv/u,workdir=/srv/w',
        '',
        '[Install]',
        'RequiredBy=local-fs.target',
    ]


def test_plain_overlay_fstab():
    result = render([item(SIMPLE, persistence='fstab')])
    assert result['units'] == {} and result['files'] == {}
    assert result['fstab'] == [
        'overlay /srv/merged overlay lowerdir=/srv/l1:/srv/l2,upperdir=/srv/u,workdir=/srv/w,'
        'x-systemd.requires-mounts-for=/srv/l1,x-systemd.requires-mounts-for=/srv/l2,'
        'x-systemd.requires-mounts-for=/srv/u,x-systemd.requires-mounts-for=/srv/w 0 0']


def test_overlay_options_readonly_and_no_upper():
    tree = overlay('/srv/ro', ['/srv/a', '/srv/b'], readonly=True, options={'redirect_dir': 'nofollow', 'userxattr': True})
    text = render([item(tree)])['units']['srv-ro.mount']
    assert setting(text, 'Options') == 'lowerdir=/srv/a:/srv/b,redirect_dir=nofollow,userxattr,ro'
    assert setting(text, 'RequiresMountsFor') == '/srv/a /srv/b'


def test_bare_trees_and_defaults_from_options():
    result = render([canonical(SIMPLE)], {'persistence': 'fstab', 'nofail': True})
    assert result['units'] == {}
    assert result['fstab'][0].startswith('overlay /srv/merged overlay lowerdir=/srv/l1:/srv/l2,upperdir=/srv/u,workdir=/srv/w,nofail,')


def test_item_settings_win_over_defaults_and_none_renders_nothing():
    result = render([item(SIMPLE, persistence='systemd'),
                     item(overlay('/srv/other', ['/srv/o1', '/srv/o2']), persistence='none')], {'persistence': 'fstab'})
    assert list(result['units']) == ['srv-merged.mount'] and result['fstab'] == []


def test_items_with_several_trees_as_the_role_passes_them():
    second = overlay('/srv/two', ['/srv/t1', '/srv/t2'])
    result = render([{'name': 'both', 'state': 'mounted', 'trees': [canonical(SIMPLE), canonical(second)],
                      'persistence': 'systemd', 'nofail': False, 'devices': {}}])
    assert list(result['units']) == ['srv-merged.mount', 'srv-two.mount']


def test_nofail_unit_is_wanted_not_required():
    text = render([item(SIMPLE, nofail=True)])['units']['srv-merged.mount']
    assert setting(text, 'Options').endswith(',nofail')
    assert setting(text, 'WantedBy') == 'local-fs.target'
    assert 'RequiredBy=' not in text


def test_nested_overlay_comes_first_and_is_required_by_path():
    inner = overlay('/srv/inner', ['/srv/i1', '/srv/i2'], '/srv/iu', '/srv/iw')
    outer = overlay('/srv/outer', [inner, '/srv/o2'], '/srv/ou', '/srv/ow')
    result = render([item(outer)])
    assert list(result['units']) == ['srv-inner.mount', 'srv-outer.mount']
    assert setting(result['units']['srv-outer.mount'], 'RequiresMountsFor') == '/srv/inner /srv/o2 /srv/ou /srv/ow'
    fstab = render([item(outer, persistence='fstab')])['fstab']
    assert [line.split()[1] for line in fstab] == ['/srv/inner', '/srv/outer']
    assert 'x-systemd.requires-mounts-for=/srv/inner,' in fstab[1]


def test_trees_come_up_in_dependency_order_whatever_the_input_order():
    base = overlay('/srv/base', ['/srv/b1', '/srv/b2'])
    on_top = overlay('/srv/top', ['/srv/base/sub', '/srv/t2'])
    result = render([item(on_top), item(base)])
    assert list(result['units']) == ['srv-base.mount', 'srv-top.mount']


def test_loop_image_layer():
    tree = overlay('/srv/merged', [LOOP_LAYER, '/srv/l2'], '/srv/u', '/srv/w')
    result = render([item(tree)])
    assert list(result['units']) == ['srv-tools.mount', 'srv-merged.mount']
    text = result['units']['srv-tools.mount']
    assert setting(text, 'What') == '/srv/images/tools.raw'
    assert setting(text, 'Options') == 'loop,ro'
    assert setting(text, 'RequiresMountsFor') == '/srv/images/tools.raw'
    assert 'Type=' not in text
    fstab = render([item(tree, persistence='fstab')])['fstab']
    assert fstab[0] == '/srv/images/tools.raw /srv/tools auto loop,ro 0 0'


def test_top_level_loop_image_is_read_write_unless_readonly():
    top = dict(LOOP_LAYER, target='/srv/disk')
    assert setting(render([item(top)])['units']['srv-disk.mount'], 'Options') == 'loop,rw'
    top['readonly'] = True
    assert setting(render([item(top)])['units']['srv-disk.mount'], 'Options') == 'loop,ro'


def test_nbd_image_layer_systemd():
    tree = overlay('/srv/merged', [NBD_LAYER, '/srv/l2'], '/srv/u', '/srv/w')
    result = render([item(tree, devices={'/srv/base': '/dev/nbd3', '/srv/elsewhere': '/dev/nbd9'})])
    assert list(result['units']) == [NBD_TEMPLATE, 'srv-base.mount', 'srv-merged.mount']
    mount = result['units']['srv-base.mount']
    assert setting(mount, 'What') == '/dev/nbd3'
    assert setting(mount, 'Options') == 'ro'
    assert setting(mount, 'Requires') == 'containerhost-overlayfs-nbd@nbd3.service'
    assert setting(mount, 'After') == 'containerhost-overlayfs-nbd@nbd3.service'
    template = result['units'][NBD_TEMPLATE]
    assert template.startswith(MARKER + '\n')
    assert setting(template, 'Type') == 'forking'
    assert setting(template, 'PIDFile') == '/run/containerhost-overlayfs-%i.pid'
    assert setting(template, 'ExecStart') == ('/usr/bin/qemu-nbd --format=${FORMAT} $READONLY --connect=/dev/%i '
                                              '--pid-file=/run/containerhost-overlayfs-%i.pid -- ${IMAGE}')
    assert setting(template, 'ExecStop') == '/usr/bin/qemu-nbd --disconnect /dev/%i'
    assert setting(template, 'Requires') == 'modprobe@nbd.service'
    assert '[Install]' not in template  # pulled in by the mount units' Requires=
    assert result['files'] == {
        '/etc/containerhost-overlayfs/nbd/nbd3.env': '\n'.join([
            MARKER, '# What containerhost-overlayfs-nbd@nbd3.service serves on /dev/nbd3',
            'IMAGE="/srv/images/base.qcow2"', 'FORMAT=qcow2', 'READONLY=--read-only']) + '\n',
        '/etc/systemd/system/containerhost-overlayfs-nbd@nbd3.service.d/containerhost-overlayfs.conf': '\n'.join([
            MARKER, '[Unit]', 'RequiresMountsFor=/srv/images/base.qcow2']) + '\n',
    }


def test_nbd_image_layer_fstab_still_needs_the_attach_service():
    tree = overlay('/srv/merged', [NBD_LAYER, '/srv/l2'], '/srv/u', '/srv/w')
    result = render([item(tree, persistence='fstab', devices={'/srv/base': '/dev/nbd0'})])
    assert list(result['units']) == [NBD_TEMPLATE]
    assert sorted(result['files']) == [
        '/etc/containerhost-overlayfs/nbd/nbd0.env',
        '/etc/systemd/system/containerhost-overlayfs-nbd@nbd0.service.d/containerhost-overlayfs.conf']
    assert result['fstab'][0] == '/dev/nbd0 /srv/base auto ro,x-systemd.requires=containerhost-overlayfs-nbd@nbd0.service 0 0'
    assert result['fstab'][1].split()[1] == '/srv/merged'


def test_nbd_template_is_rendered_once_and_top_level_nbd_is_writable():
    first = overlay('/srv/m1', [NBD_LAYER, '/srv/l2'])
    second = dict(NBD_LAYER, target='/srv/disk', source='/srv/images/disk.qcow2')
    result = render([item(first, devices={'/srv/base': '/dev/nbd1'}), item(second, devices={'/srv/disk': '/dev/nbd2'})])
    assert list(result['units']) == [NBD_TEMPLATE, 'srv-base.mount', 'srv-m1.mount', 'srv-disk.mount']
    assert setting(result['units']['srv-disk.mount'], 'Options') == 'rw'
    assert 'READONLY=\n' in result['files']['/etc/containerhost-overlayfs/nbd/nbd2.env']


@pytest.mark.parametrize('devices, message', [
    ({'/srv/base': '/dev/loop0'}, r"'/dev/loop0' is not an nbd device"),
    ({'/srv/base': '/dev/nbd0p1'}, r'is not an nbd device'),
])
def test_nbd_device_refusals(devices, message):
    tree = overlay('/srv/merged', [NBD_LAYER, '/srv/l2'])
    with pytest.raises(PersistenceError, match=message):
        render([item(tree, devices=devices)])


def test_a_layer_on_no_device_now_takes_the_lowest_device_nothing_pins_the_same_every_time():
    unmounted = overlay('/srv/merged', [NBD_LAYER, '/srv/l2'])
    mounted = overlay('/srv/other', [dict(NBD_LAYER, target='/srv/disk', source='/srv/images/disk.qcow2'), '/srv/l3'])
    items = [item(unmounted), item(mounted, devices={'/srv/disk': '/dev/nbd0'})]
    result = render(items)
    assert nbd_service_name('/dev/nbd1') in setting(result['units']['srv-base.mount'], 'Requires')
    assert '/etc/containerhost-overlayfs/nbd/nbd1.env' in result['files']
    assert render(items) == result


def test_one_nbd_device_for_two_layers_is_refused():
    tree = overlay('/srv/merged', [NBD_LAYER, dict(NBD_LAYER, target='/srv/other')])
    with pytest.raises(PersistenceError, match=r'nbd device /dev/nbd0 is also given to'):
        render([item(tree, devices={'/srv/base': '/dev/nbd0', '/srv/other': '/dev/nbd0'})])


def test_fuse_image_layer_is_refused_naming_the_node():
    tree = overlay('/srv/merged', [dict(NBD_LAYER, driver='fuse'), '/srv/l2'])
    with pytest.raises(PersistenceError, match=r'trees\[0\]\.lower\[0\] \(file at /srv/base\).*driver fuse.*use driver nbd'):
        render([item(tree)])


def test_block_and_bind_nodes():
    block_layer = {'type': 'block', 'source': '/dev/vdb', 'target': '/srv/blk'}
    tree = overlay('/srv/merged', [block_layer, {'type': 'mount', 'source': '/srv/src', 'target': '/srv/bound'}])
    units = render([item(tree)])['units']
    assert setting(units['srv-blk.mount'], 'What') == '/dev/vdb'
    assert setting(units['srv-blk.mount'], 'Options') == 'ro'
    assert setting(units['srv-bound.mount'], 'What') == '/srv/src'
    assert setting(units['srv-bound.mount'], 'Options') == 'bind'
    bind = {'type': 'bind', 'source': '/srv/a b', 'target': '/srv/c d', 'readonly': True}
    assert render([item(bind, persistence='fstab')])['fstab'] == ['/srv/a\\040b /srv/c\\040d none bind,ro 0 0']
    assert setting(render([item(bind)])['units']['srv-c\\x20d.mount'], 'Options') == 'bind,ro'


def test_every_unit_and_file_carries_the_marker():
    tree = overlay('/srv/merged', [NBD_LAYER, LOOP_LAYER], '/srv/u', '/srv/w')
    result = render([item(tree, devices={'/srv/base': '/dev/nbd0'})])
    for text in list(result['units'].values()) + list(result['files'].values()):
        assert text.splitlines()[0] == MARKER


def test_hostile_but_carried_paths():
    tree = overlay('/srv/merged 100%', ['/srv/a b', '/srv/c:d', "/srv/q'\"uote"], '/srv/u\tx', '/srv/w=y')
    text = render([item(tree)])['units']['srv-merged\\x20100\\x25.mount']
    assert setting(text, 'Where') == '/srv/merged 100%%'
    assert setting(text, 'Description') == 'Overlay filesystem /srv/merged 100%% (containerhost.overlayfs)'
    assert setting(text, 'Options') == 'lowerdir=/srv/a b:/srv/c\\:d:/srv/q\'"uote,upperdir=/srv/u\tx,workdir=/srv/w=y'
    assert setting(text, 'RequiresMountsFor') == '"/srv/a b" /srv/c:d "/srv/q\'\\"uote" "/srv/u\tx" /srv/w=y'
    line = render([item(overlay('/srv/m t', ['/srv/c:d', '/srv/e%f']), persistence='fstab')])['fstab'][0]
    assert line == ('overlay /srv/m\\040t overlay lowerdir=/srv/c\\134:d:/srv/e%f,'
                    'x-systemd.requires-mounts-for=/srv/c:d,x-systemd.requires-mounts-for=/srv/e%f 0 0')


@pytest.mark.parametrize('persistence', ['systemd', 'fstab'])
@pytest.mark.parametrize('lower, message', [
    ('/srv/a,b', r"trees\[0\] \(overlay at /srv/merged\): lower '/srv/a,b' holds a ','"),
    ('/srv/a\\b', r'holds a backslash'),
    ('/srv/a\nb', r'holds a line break'),
    ('/srv/a\rb', r'holds a line break'),
    ('/srv/ab ', r'ends in whitespace'),
    ('/srv/ab\\', r'ends in a backslash'),
])
def test_paths_the_files_cannot_carry_are_refused(persistence, lower, message):
    with pytest.raises(PersistenceError, match=message):
        render([item(overlay('/srv/merged', [lower, '/srv/l2']), persistence=persistence)])


def test_whitespace_in_layer_paths_only_with_fstab():
    tree = overlay('/srv/merged', ['/srv/a b', '/srv/l2'])
    render([item(tree)])
    with pytest.raises(PersistenceError, match=r"lower '/srv/a b' holds whitespace.*use persistence systemd"):
        render([item(tree, persistence='fstab')])


def test_commas_and_backslashes_outside_options_are_fine():
    bind = {'type': 'bind', 'source': '/srv/a,b\\c', 'target': '/srv/d,e\\f'}
    assert render([item(bind, persistence='fstab')])['fstab'] == ['/srv/a,b\\134c /srv/d,e\\134f none bind 0 0']
    text = render([item(bind)])['units']['srv-d\\x2ce\\x5cf.mount']
    assert setting(text, 'What') == '/srv/a,b\\c' and setting(text, 'Where') == '/srv/d,e\\f'


def test_target_newline_refused_for_both():
    for persistence in ('systemd', 'fstab'):
        with pytest.raises(PersistenceError, match=r'target .* holds a line break'):
            render([item(overlay('/srv/m\nx', ['/srv/a', '/srv/b']), persistence=persistence)])


def test_unit_name_too_long_is_refused_for_systemd_only():
    target = '/srv/' + '-' * 100  # every '-' is \x2d in the unit name
    tree = overlay(target, ['/srv/a', '/srv/b'])
    with pytest.raises(PersistenceError, match=r'use persistence fstab'):
        render([item(tree)])
    assert render([item(tree, persistence='fstab')])['fstab']


def test_too_long_overlay_options_are_refused():
    lowers = ['/srv/%s/%03d' % ('x' * 200, index) for index in range(25)]
    with pytest.raises(PersistenceError, match=r'longer than the 4095 bytes mount\(8\)'):
        render([item(overlay('/srv/merged', lowers))])


@pytest.mark.parametrize('trees, options, message', [
    ('nope', None, r'must be a list'),
    (['nope'], None, r'trees\[0\] must be a mapping'),
    ([{'persistence': 'fstab'}], None, r'tree \(or trees\) is required'),
    ([{'tree': {}, 'trees': []}], None, r'not both'),
    ([{'tree': {}, 'bogus': 1}], None, r'unknown key bogus'),
    ([{'tree': {}, 'persistence': 'rc.local'}], None, r"'rc.local' is not one of systemd, fstab, none"),
    ([{'tree': {}, 'nofail': 'maybe'}], None, r'nofail must be true or false'),
    ([{'tree': {}, 'devices': ['/dev/nbd0']}], None, r'devices must be a mapping'),
    ([], {'persistence': 'none'}, r"options.persistence: 'none' is not one of systemd, fstab"),
    ([], {'bogus': 1}, r'unknown option bogus'),
    ([{'tree': {'lower': ['/a'], 'target': '/m'}, 'name': 'web'}], None, r'web.lower: an overlay without an upper dir'),
])
def test_bad_input(trees, options, message):
    with pytest.raises(PersistenceError, match=message):
        render(trees, options)


def test_duplicate_targets_across_items_are_refused():
    with pytest.raises(PersistenceError, match=r'target /srv/merged is also the target of'):
        render([item(SIMPLE), item(SIMPLE, persistence='fstab')])


def test_quoting_helpers():
    assert unit_word('/srv/plain') == '/srv/plain'
    assert unit_word('/srv/a b') == '"/srv/a b"'
    assert unit_word('/srv/a"b\\c%d') == '"/srv/a\\"b\\\\c%%d"'
    assert fstab_field('/a b\tc\nd\\e') == '/a\\040b\\011c\\012d\\134e'
    assert env_value('/a "b" $c `d` \\e') == '"/a \\"b\\" \\$c \\`d\\` \\\\e"'


def test_filter_plugin_raises_ansible_filter_error():
    from ansible.errors import AnsibleFilterError
    from ansible_collections.containerhost.overlayfs.plugins.filter.persistence import FilterModule

    overlay_persistence = FilterModule().filters()['overlay_persistence']
    assert list(overlay_persistence([canonical(SIMPLE)])['units']) == ['srv-merged.mount']
    assert overlay_persistence([canonical(SIMPLE)], persistence='fstab')['fstab']
    with pytest.raises(AnsibleFilterError, match=r'overlay_persistence: .*driver fuse'):
        overlay_persistence([overlay('/srv/m', [dict(NBD_LAYER, driver='fuse'), '/srv/l'])])
