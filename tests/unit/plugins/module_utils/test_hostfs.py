# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import os
import subprocess

import pytest

from ansible_collections.containerhost.overlayfs.plugins.module_utils.host import _hostfs as hostfs
from ansible_collections.containerhost.overlayfs.plugins.module_utils.host._hostfs import (
    EXPORT_DIR,
    discard_volatile_marker,
    has_volatile_marker,
    export_files,
    restore_volatile_marker,
)
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._options import volatile_marker


def kernels_marker(work):
    """What a volatile overlay leaves in its work dir: work/incompat/volatile with an empty file dirty."""
    os.makedirs(os.path.dirname(volatile_marker(work)))
    restore_volatile_marker(work)
    return volatile_marker(work)


def test_the_kernels_volatile_marker_is_discarded_and_restored(tmp_path):
    marker = kernels_marker(str(tmp_path / 'work'))
    assert os.listdir(marker) == ['dirty'] and os.path.getsize(os.path.join(marker, 'dirty')) == 0
    assert has_volatile_marker(str(tmp_path / 'work'))
    discard_volatile_marker(str(tmp_path / 'work'))
    assert os.listdir(os.path.dirname(marker)) == []
    assert not has_volatile_marker(str(tmp_path / 'work'))


def test_a_marker_holding_anything_else_is_not_discarded(tmp_path):
    marker = kernels_marker(str(tmp_path / 'work'))
    (tmp_path / 'work' / 'work' / 'incompat' / 'volatile' / 'mine').write_text('x')
    with pytest.raises(OSError, match=r'holds more than the kernel leaves there \(mine\)'):
        discard_volatile_marker(str(tmp_path / 'work'))
    assert sorted(os.listdir(marker)) == ['dirty', 'mine']


def test_a_marker_reached_through_a_symlink_is_not_the_kernels_and_nothing_behind_it_goes(tmp_path):
    """A container that can write to the work dir turns its work entry into a link to a host dir holding what
    looks like a marker: it is not seen, and a discard removes nothing there."""
    kernels_marker(str(tmp_path / 'host'))
    (tmp_path / 'work').mkdir()
    (tmp_path / 'work' / 'work').symlink_to(tmp_path / 'host' / 'work')
    assert not has_volatile_marker(str(tmp_path / 'work'))
    with pytest.raises(OSError):
        discard_volatile_marker(str(tmp_path / 'work'))
    assert os.listdir(volatile_marker(str(tmp_path / 'host'))) == ['dirty']


def test_export_files_are_named_after_the_image_path_as_given():
    export, pidfile, metafile = export_files('/srv/images/a.qcow2', 'qcow2')
    assert os.path.dirname(export) == EXPORT_DIR
    assert (pidfile, metafile) == (export[:-4] + '.pid', export[:-4] + '.json')
    assert export_files('/srv/images/a.qcow2', 'raw')[0] != export


def test_processes_using_a_path_by_cwd_open_file_or_mapping(tmp_path):
    held = tmp_path / 'held'
    held.mkdir()
    (held / 'file').write_text('x')
    sleeper = subprocess.Popen(['sleep', '30'], cwd=str(held))
    try:
        with open(str(held / 'file')) as handle:
            using = hostfs.processes_using(str(held))
            assert (sleeper.pid, 'sleep') in using  # by its cwd
            assert os.getpid() in [pid for pid, _command in using]  # by the open file
            assert hostfs.processes_using(str(tmp_path / 'held-not')) == []  # a prefix of a name is not under it
            assert handle
    finally:
        sleeper.kill()
        sleeper.wait()
