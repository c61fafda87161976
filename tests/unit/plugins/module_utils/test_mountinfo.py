# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._mountinfo import (
    decode,
    parse,
    parse_line,
    read_mountinfo,
    split_options,
)

# FACTS.md: what the kernel printed for an overlay mounted on 6.18.
FACTS_LINE = ('66 43 0:39 / /srv/t1/m rw,relatime - overlay overlay '
              'rw,lowerdir=/srv/t1/l1:/srv/t1/l2,upperdir=/srv/t1/u,workdir=/srv/t1/w,uuid=on')

# Measured: mount data lowerdir=l1:l\:2:l\,3:l\\4:l 5:l<NL>6:l=7,upperdir=u\,x\:y as the kernel shows it.
REAL_ESCAPED_LINE = ('71 43 0:39 / /tmp/exp/r/m\\040t rw,relatime - overlay overlay rw,'
                     'lowerdir=/tmp/exp/r/l1:/tmp/exp/r/l\\134:2:/tmp/exp/r/l\\134\\0543:/tmp/exp/r/l\\134\\1344:'
                     '/tmp/exp/r/l\\0405:/tmp/exp/r/l\\0126:/tmp/exp/r/l=7,'
                     'upperdir=/tmp/exp/r/u\\134\\054x\\134:y,workdir=/tmp/exp/r/w,uuid=on')

# proc(5)'s example, with optional fields before the separator.
PROC5_LINE = '36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 shared:2 - ext3 /dev/root rw,errors=continue'


def test_parse_facts_example_line():
    [entry] = parse(FACTS_LINE + '\n')
    assert (entry.mount_id, entry.parent_id, entry.major, entry.minor) == (66, 43, 0, 39)
    assert entry.root == '/'
    assert entry.mountpoint == '/srv/t1/m'
    assert entry.mount_options == ['rw', 'relatime']
    assert not entry.readonly
    assert (entry.fstype, entry.source) == ('overlay', 'overlay')
    assert entry.super_options == {'rw': None, 'lowerdir': '/srv/t1/l1:/srv/t1/l2', 'upperdir': '/srv/t1/u',
                                   'workdir': '/srv/t1/w', 'uuid': 'on'}
    assert entry.overlay_layers() == (['/srv/t1/l1', '/srv/t1/l2'], '/srv/t1/u', '/srv/t1/w')


def test_parse_the_real_line_with_every_escape():
    entry = parse_line(REAL_ESCAPED_LINE)
    assert entry.mountpoint == '/tmp/exp/r/m t'
    lowers, upper, work = entry.overlay_layers()
    assert lowers == ['/tmp/exp/r/l1', '/tmp/exp/r/l:2', '/tmp/exp/r/l,3', '/tmp/exp/r/l\\4',
                      '/tmp/exp/r/l 5', '/tmp/exp/r/l\n6', '/tmp/exp/r/l=7']
    assert upper == '/tmp/exp/r/u,x:y'
    assert work == '/tmp/exp/r/w'
    assert entry.super_options['uuid'] == 'on'


@pytest.mark.parametrize('raw, decoded', [
    ('/a\\040b', '/a b'),
    ('/a\\011b', '/a\tb'),
    ('/a\\012b', '/a\nb'),
    ('/a\\134b', '/a\\b'),
    ('/a\\054b', '/a,b'),
    ('/a\\134040b', '/a\\040b'),  # a literal backslash followed by digits stays literal
    ('/a\\134\\134', '/a\\\\'),
    ('/plain', '/plain'),
    ('/a:b=c', '/a:b=c'),
])
def test_decode_octal_escapes(raw, decoded):
    assert decode(raw) == decoded


@pytest.mark.parametrize('field, expected', [
    ('/srv/m\\040t', '/srv/m t'),
    ('/srv/tab\\011x', '/srv/tab\tx'),
    ('/srv/nl\\012x', '/srv/nl\nx'),
    ('/srv/back\\134x', '/srv/back\\x'),
    ('/srv/-', '/srv/-'),
])
def test_mountpoint_and_root_fields_are_decoded(field, expected):
    entry = parse_line('30 1 8:1 %s %s rw - ext4 /dev/sda1 rw' % (field, field))
    assert entry.root == expected
    assert entry.mountpoint == expected


def test_source_and_fstype_are_decoded():
    entry = parse_line('30 1 0:50 / /mnt rw - fuse.my\\040fs my\\040source\\134x rw,user_id=0')
    assert entry.fstype == 'fuse.my fs'
    assert entry.source == 'my source\\x'


def test_optional_fields_before_the_separator():
    entry = parse_line(PROC5_LINE)
    assert (entry.root, entry.mountpoint) == ('/mnt1', '/mnt2')
    assert entry.mount_options == ['rw', 'noatime']
    assert (entry.fstype, entry.source) == ('ext3', '/dev/root')
    assert entry.super_options == {'rw': None, 'errors': 'continue'}
    assert entry.overlay_layers() is None


def test_a_mountpoint_named_dash_is_not_the_separator():
    entry = parse_line('30 1 0:50 / - rw shared:3 - tmpfs tmpfs rw')
    assert entry.mountpoint == '-'
    assert (entry.fstype, entry.source) == ('tmpfs', 'tmpfs')


def test_readonly_comes_from_the_per_mount_options():
    entry = parse_line('40 1 7:0 / /srv/lower3 ro,relatime - ext4 /dev/loop0 rw')
    assert entry.readonly
    assert entry.super_options == {'rw': None}


def test_lower_only_overlay_is_readonly_in_super_options_but_not_per_mount():
    entry = parse_line('67 43 0:41 / /tmp/kexp/r/m rw,relatime - overlay overlay '
                       'ro,lowerdir=/tmp/kexp/r/l1:/tmp/kexp/r/l2,redirect_dir=on')
    assert not entry.readonly
    assert entry.overlay_layers() == (['/tmp/kexp/r/l1', '/tmp/kexp/r/l2'], None, None)
    assert entry.super_options['redirect_dir'] == 'on'


def test_split_options_keeps_escaped_commas_inside_values():
    options = split_options('rw,upperdir=/a\\054b,workdir=/w,default_permissions')
    assert options == {'rw': None, 'upperdir': '/a,b', 'workdir': '/w', 'default_permissions': None}


def test_lowerdir_plus_repeated_entries_collect_in_order():
    # measured: mounted with lowerdir+=/tmp/kexp/r/l1,lowerdir+=/tmp/kexp/r/l:2 (raw colon is fine in lowerdir+)
    entry = parse_line('79 43 0:53 / /tmp/kexp/r/m5 rw,relatime - overlay overlay '
                       'rw,lowerdir+=/tmp/kexp/r/l1,lowerdir+=/tmp/kexp/r/l:2,datadir+=/tmp/kexp/r/d,'
                       'upperdir=/tmp/kexp/r/u,workdir=/tmp/kexp/r/w')
    assert entry.super_options['lowerdir+'] == ['/tmp/kexp/r/l1', '/tmp/kexp/r/l:2']
    assert entry.super_options['datadir+'] == ['/tmp/kexp/r/d']
    lowers, upper, work = entry.overlay_layers()
    assert lowers[:2] == ['/tmp/kexp/r/l1', '/tmp/kexp/r/l:2']
    assert (upper, work) == ('/tmp/kexp/r/u', '/tmp/kexp/r/w')


def test_lowerdir_plus_entry_with_space_and_comma():
    entry = parse_line('80 43 0:54 / /m rw - overlay overlay ro,lowerdir+=/a\\040b,lowerdir+=/c\\054d')
    assert entry.overlay_layers() == (['/a b', '/c,d'], None, None)


def test_lowerdir_plus_entry_keeps_a_literal_backslash():
    # measured on 6.18: lowerdir+=/tmp/kexp/r/a\b (fsconfig takes it verbatim) shows as a\134b
    entry = parse_line('79 43 0:53 / /tmp/kexp/r/m5 rw,relatime - overlay overlay '
                       'ro,lowerdir+=/tmp/kexp/r/a\\134b,lowerdir+=/tmp/kexp/r/l2,redirect_dir=on')
    assert entry.overlay_layers()[0] == ['/tmp/kexp/r/a\\b', '/tmp/kexp/r/l2']


def test_to_dict_reports_the_decoded_entry():
    entry = parse_line(FACTS_LINE)
    assert entry.to_dict() == {
        'mount_id': 66, 'target': '/srv/t1/m', 'fstype': 'overlay', 'source': 'overlay', 'device': '0:39',
        'options': 'rw,relatime',
        'super_options': 'rw,lowerdir=/srv/t1/l1:/srv/t1/l2,upperdir=/srv/t1/u,workdir=/srv/t1/w,uuid=on',
    }


def test_parse_skips_blank_lines_and_keeps_order():
    entries = parse('\n' + FACTS_LINE + '\n\n' + PROC5_LINE + '\n')
    assert [entry.mount_id for entry in entries] == [66, 36]


def test_read_mountinfo_from_a_file(tmp_path):
    path = tmp_path / 'mountinfo'
    path.write_text(FACTS_LINE + '\n' + REAL_ESCAPED_LINE + '\n')
    entries = read_mountinfo(str(path))
    assert [entry.mountpoint for entry in entries] == ['/srv/t1/m', '/tmp/exp/r/m t']


def test_read_mountinfo_survives_non_utf8_bytes(tmp_path):
    path = tmp_path / 'mountinfo'
    path.write_bytes(b'30 1 8:1 / /srv/\xff\xfe rw - ext4 /dev/sda1 rw\n')
    [entry] = read_mountinfo(str(path))
    assert os.fsencode(entry.mountpoint) == b'/srv/\xff\xfe'


# --- the real mount table ---------------------------------------------------------------------------

def _findmnt():
    findmnt = shutil.which('findmnt')
    if not findmnt:
        pytest.skip('findmnt (util-linux) is not installed')
    output = subprocess.run([findmnt, '--json', '--list', '-o', 'ID,TARGET,FSTYPE,SOURCE'],
                            check=True, capture_output=True, text=True, errors='surrogateescape').stdout
    return dict((int(item['id']), item) for item in json.loads(output)['filesystems'])


def _compare_with_findmnt():
    for _attempt in range(5):
        before = dict((entry.mount_id, entry) for entry in read_mountinfo())
        found = _findmnt()
        after = dict((entry.mount_id, entry) for entry in read_mountinfo())
        if set(before) == set(after) == set(found):
            return after, found
    pytest.fail('the mount table kept changing while it was read')


def test_read_mountinfo_agrees_with_findmnt_on_this_machine():
    ours, found = _compare_with_findmnt()
    assert ours, 'no mounts read from /proc/self/mountinfo'
    for mount_id, entry in ours.items():
        assert entry.mountpoint == found[mount_id]['target'], mount_id
        assert entry.fstype == found[mount_id]['fstype'], mount_id


NAMESPACE_SCRIPT = textwrap.dedent('''
    import json, os, subprocess, sys
    sys.path[:0] = json.loads(sys.argv[2])
    from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._mountinfo import read_mountinfo
    base = sys.argv[1]
    names = ['a b', 'tab\\tx', 'nl\\nx', 'back\\\\slash', 'comma,x', 'colon:x', 'oct\\\\040al', '-', 'eq=x']
    for name in names:
        path = os.path.join(base, name)
        os.mkdir(path)
        subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64k', 'src ' + name.replace(',', '_'), path], check=True)
    found = json.loads(subprocess.run(['findmnt', '--json', '--list', '-o', 'ID,TARGET,FSTYPE,SOURCE'],
                                      check=True, capture_output=True, text=True).stdout)['filesystems']
    ours = [dict(id=e.mount_id, target=e.mountpoint, fstype=e.fstype, source=e.source) for e in read_mountinfo()]
    print(json.dumps(dict(names=names, found=found, ours=ours)))
''')


def test_read_mountinfo_agrees_with_findmnt_on_hostile_mountpoints(tmp_path):
    """In a private mount namespace (root only): tmpfs mounts at paths full of escapes."""
    unshare = shutil.which('unshare')
    if os.geteuid() != 0 or not unshare or not shutil.which('findmnt') or not shutil.which('mount'):
        pytest.skip('needs root, unshare, mount and findmnt to make mounts in a private namespace')
    probe = subprocess.run([unshare, '-m', '--propagation', 'private', 'true'], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip('cannot enter a private mount namespace here: %s' % probe.stderr.decode(errors='replace'))
    result = subprocess.run([unshare, '-m', '--propagation', 'private', sys.executable, '-c', NAMESPACE_SCRIPT,
                             str(tmp_path), json.dumps(sys.path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    found = dict((int(item['id']), item) for item in report['found'])
    ours = dict((item['id'], item) for item in report['ours'])
    assert set(ours) == set(found)
    for mount_id, entry in ours.items():
        assert entry['target'] == found[mount_id]['target']
        assert entry['fstype'] == found[mount_id]['fstype']
    targets = set(entry['target'] for entry in ours.values())
    for name in report['names']:
        assert os.path.join(str(tmp_path), name) in targets
    sources = set(entry['source'] for entry in ours.values())
    assert 'src a b' in sources and 'src back\\slash' in sources


def test_only_a_newline_ends_a_line_of_the_mount_table(tmp_path):
    """The kernel escapes a newline in a path (\\012) but not \\r, \\x1c, \\x85 or \\u2028."""
    odd = '/srv/a\rb\x1cc\x85d\u2028e'
    table = tmp_path / 'mountinfo'
    table.write_bytes(('1 0 8:1 / / rw - ext4 /dev/sda1 rw\n70 1 0:41 / %s rw - tmpfs t rw\n' % odd).encode(
        'utf-8', 'surrogateescape'))
    assert [entry.mountpoint for entry in read_mountinfo(str(table))] == ['/', odd]
