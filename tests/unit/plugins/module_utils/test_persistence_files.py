# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""persistence_files.apply under a scratch root, with the real systemctl --root where units are enabled."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess

import pytest

from ansible_collections.containerhost.overlayfs.plugins.module_utils.persist._persistence_files import (
    FSTAB_BEGIN,
    FSTAB_END,
    MARKER,
    PersistenceFilesError,
    apply,
    fstab_with_block,
)

UNIT = '/etc/systemd/system/srv-m.mount'
UNIT_TEXT = '%s\n[Mount]\nWhat=/srv/a\nWhere=/srv/m\nOptions=bind\n\n[Install]\nRequiredBy=local-fs.target\n' % MARKER
SPEC = '/etc/containerhost-overlayfs/overlays/srv-m.conf'
HELPER = '/sbin/mount.overlay.containerhost'
needs_systemctl = pytest.mark.skipif(shutil.which('systemctl') is None, reason='systemctl is not installed')


def persistence(files=None, executables=(), fstab=(), units=()):
    return {'files': dict(files or {}), 'executables': list(executables), 'fstab': list(fstab), 'units': list(units)}


class Systemctl(object):
    """The real systemctl, with every call it gets kept."""

    def __init__(self):
        self.calls = []

    def __call__(self, argv):
        self.calls.append(argv[1:])
        completed = subprocess.run(argv, capture_output=True, text=True, check=False)
        return completed.returncode, completed.stdout, completed.stderr


def read(root, path):
    with open(str(root) + path) as handle:
        return handle.read()


def write(root, path, text):
    os.makedirs(os.path.dirname(str(root) + path), exist_ok=True)
    with open(str(root) + path, 'w') as handle:
        handle.write(text)


def mode(root, path):
    return stat.S_IMODE(os.stat(str(root) + path).st_mode)


def test_files_are_written_with_their_modes_then_left_alone(tmp_path):
    wanted = persistence({SPEC: MARKER + '\n{}\n', HELPER: '#!/usr/bin/python3\n' + MARKER + '\n'}, [HELPER])
    first = apply(wanted, str(tmp_path))
    assert first.changed and sorted(first.written) == sorted([str(tmp_path) + SPEC, str(tmp_path) + HELPER])
    assert read(tmp_path, SPEC) == MARKER + '\n{}\n'
    assert (mode(tmp_path, SPEC), mode(tmp_path, HELPER)) == (0o644, 0o755)
    assert mode(tmp_path, '/etc/containerhost-overlayfs/overlays') == 0o755
    assert not apply(wanted, str(tmp_path)).changed
    os.chmod(str(tmp_path) + HELPER, 0o644)
    assert apply(wanted, str(tmp_path)).written == [str(tmp_path) + HELPER]
    assert not [name for name in os.listdir(str(tmp_path) + '/etc/containerhost-overlayfs/overlays') if name.startswith('.')]


def test_stale_files_of_ours_go_and_others_stay(tmp_path):
    ours_stale = '/etc/containerhost-overlayfs/overlays/old.conf'
    dropin = '/etc/systemd/system/libvirtd.service.d/containerhost-overlayfs.conf'
    old_nbd = '/etc/modprobe.d/nbd.conf'  # what an earlier version of the role wrote
    foreign = '/etc/modprobe.d/other.conf'
    elsewhere = '/etc/other/ours-but-elsewhere.conf'
    for path in (ours_stale, dropin, old_nbd, elsewhere):
        write(tmp_path, path, MARKER + '\nx\n')
    write(tmp_path, foreign, 'options loop max_loop=8\n# ' + MARKER + '\n')
    write(tmp_path, '/etc/systemd/system/libvirtd.service.d/admin.conf', '[Unit]\n')
    change = apply(persistence({SPEC: MARKER + '\n'}), str(tmp_path))
    assert sorted(change.removed) == sorted(str(tmp_path) + path for path in (ours_stale, dropin, old_nbd))
    assert os.path.exists(str(tmp_path) + foreign) and os.path.exists(str(tmp_path) + elsewhere)
    assert os.listdir(str(tmp_path) + '/etc/systemd/system/libvirtd.service.d') == ['admin.conf']  # kept: not empty


def test_emptied_directories_of_ours_are_pruned(tmp_path):
    dropin = '/etc/systemd/system/containerhost-overlayfs-nbd@nbd0.service.d/containerhost-overlayfs.conf'
    lib = '/usr/local/lib/containerhost-overlayfs/ansible_collections/__init__.py'
    for path in (dropin, lib, SPEC):
        write(tmp_path, path, MARKER + '\n')
    apply(persistence(), str(tmp_path))
    assert os.listdir(str(tmp_path) + '/etc/systemd/system') == []
    assert not os.path.exists(str(tmp_path) + '/etc/containerhost-overlayfs')
    assert os.listdir(str(tmp_path) + '/usr/local/lib') == []


def test_the_fstab_block_is_added_changed_and_removed_and_the_rest_stays(tmp_path):
    host_lines = '# /etc/fstab\nUUID=1 / ext4 defaults 0 1\n/dev/vdb /data ext4 noatime 0 2'  # no newline at the end
    write(tmp_path, '/etc/fstab', host_lines)
    apply(persistence(fstab=['a /m1 none bind 0 0']), str(tmp_path))
    assert read(tmp_path, '/etc/fstab') == host_lines + '\n%s\na /m1 none bind 0 0\n%s\n' % (FSTAB_BEGIN, FSTAB_END)
    change = apply(persistence(fstab=['a /m1 none bind 0 0', 'b /m2 none bind 0 0']), str(tmp_path))
    assert change.fstab_changed
    assert read(tmp_path, '/etc/fstab').count(FSTAB_BEGIN) == 1
    assert not apply(persistence(fstab=['a /m1 none bind 0 0', 'b /m2 none bind 0 0']), str(tmp_path)).changed
    apply(persistence(), str(tmp_path))
    assert read(tmp_path, '/etc/fstab') == host_lines + '\n'


def test_no_fstab_is_created_for_no_lines_and_a_backup_is_kept_when_asked(tmp_path):
    assert not apply(persistence(), str(tmp_path)).changed
    assert not os.path.exists(str(tmp_path) + '/etc/fstab')
    write(tmp_path, '/etc/fstab', 'host line\n')
    backups = []
    apply(persistence(fstab=['x /m none bind 0 0']), str(tmp_path), backup=True, backup_file=backups.append)
    assert backups == [str(tmp_path) + '/etc/fstab']


def test_an_unclosed_block_is_refused():
    with pytest.raises(PersistenceFilesError, match=r'without "# END'):
        fstab_with_block('%s\nline\n' % FSTAB_BEGIN, [])


def test_check_mode_reports_the_same_change_and_makes_none(tmp_path):
    write(tmp_path, '/etc/containerhost-overlayfs/overlays/old.conf', MARKER + '\n')
    write(tmp_path, '/etc/fstab', 'host\n')
    wanted = persistence({SPEC: MARKER + '\n'}, fstab=['x /m none bind 0 0'])
    checked = apply(wanted, str(tmp_path), check_mode=True)
    assert os.listdir(str(tmp_path) + '/etc/containerhost-overlayfs/overlays') == ['old.conf']
    assert read(tmp_path, '/etc/fstab') == 'host\n'
    applied = apply(wanted, str(tmp_path))
    assert checked.to_dict() == applied.to_dict() and applied.changed
    assert [entry['after_header'] for entry in checked.diff] == [
        str(tmp_path) + SPEC, str(tmp_path) + '/etc/containerhost-overlayfs/overlays/old.conf (absent)',
        str(tmp_path) + '/etc/fstab']
    assert checked.diff[2]['after'] == 'host\n%s\nx /m none bind 0 0\n%s\n' % (FSTAB_BEGIN, FSTAB_END)


@needs_systemctl
def test_units_are_enabled_once_reenabled_when_changed_and_disabled_when_stale(tmp_path):
    root = str(tmp_path)
    systemctl = Systemctl()
    first = apply(persistence({UNIT: UNIT_TEXT}, units=['srv-m.mount']), root, systemctl=systemctl)
    assert first.enabled == ['srv-m.mount'] and not first.reloaded  # a root: systemd is not told
    assert os.path.islink(root + '/etc/systemd/system/local-fs.target.requires/srv-m.mount')
    assert systemctl.calls == [['--root=' + root, 'enable', '--', 'srv-m.mount']]  # a new file: no old links

    systemctl.calls[:] = []
    assert not apply(persistence({UNIT: UNIT_TEXT}, units=['srv-m.mount']), root, systemctl=systemctl).changed
    assert systemctl.calls == []  # its link is there: systemctl is not asked

    os.unlink(root + '/etc/systemd/system/local-fs.target.requires/srv-m.mount')  # disabled by hand
    assert apply(persistence({UNIT: UNIT_TEXT}, units=['srv-m.mount']), root, systemctl=systemctl).enabled == ['srv-m.mount']
    assert os.path.islink(root + '/etc/systemd/system/local-fs.target.requires/srv-m.mount')

    nofail = UNIT_TEXT.replace('RequiredBy=', 'WantedBy=')
    systemctl.calls[:] = []
    assert apply(persistence({UNIT: nofail}, units=['srv-m.mount']), root, systemctl=systemctl).enabled == ['srv-m.mount']
    assert systemctl.calls == [['--root=' + root, 'reenable', '--', 'srv-m.mount']]  # rewritten: the old link goes
    assert os.path.islink(root + '/etc/systemd/system/local-fs.target.wants/srv-m.mount')
    assert not os.path.lexists(root + '/etc/systemd/system/local-fs.target.requires/srv-m.mount')

    systemctl.calls[:] = []
    gone = apply(persistence(), root, systemctl=systemctl)
    assert gone.disabled == ['srv-m.mount'] and gone.removed == [root + UNIT]
    assert not os.path.lexists(root + '/etc/systemd/system/local-fs.target.wants/srv-m.mount')
    assert [call[1] for call in systemctl.calls] == ['is-enabled', 'disable']


def test_a_failing_systemctl_fails_with_its_message(tmp_path):
    def broken(argv):
        return 1, '', 'Failed to connect to bus'
    with pytest.raises(PersistenceFilesError, match=r'systemctl --root=.* enable -- srv-m.mount exited 1: Failed to connect'):
        apply(persistence({UNIT: UNIT_TEXT}, units=['srv-m.mount']), str(tmp_path), systemctl=broken)


@pytest.mark.parametrize('rendered, message', [
    ({'files': {}}, r'rendered must be what the overlay_persistence filter returns'),
    (persistence({'etc/x': 'y'}), r"rendered.files: 'etc/x' is not an absolute path"),
    (persistence({'/etc/../x': 'y'}), r'is not an absolute path'),
    (persistence({'/etc/x': 'y'}, ['/etc/z']), r'rendered.executables: /etc/z not in rendered.files'),
])
def test_bad_input_is_refused(tmp_path, rendered, message):
    with pytest.raises(PersistenceFilesError, match=message):
        apply(rendered, str(tmp_path))


def test_a_directory_where_a_file_goes_is_refused(tmp_path):
    os.makedirs(str(tmp_path) + SPEC)
    with pytest.raises(PersistenceFilesError, match=r'is a directory'):
        apply(persistence({SPEC: MARKER + '\n'}), str(tmp_path))
