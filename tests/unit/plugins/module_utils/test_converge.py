# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""converge() in check mode and on refusals: real observation of this host, no change made."""

from __future__ import annotations

import fcntl
import os
import stat

import pytest

from ansible_collections.containerhost.overlayfs.plugins.module_utils.apply._converge import ConvergeError, HostLock, converge
from ansible_collections.containerhost.overlayfs.tests.helpers.host import module_params


def no_commands(argv):
    raise AssertionError('check mode ran a command: %r' % (argv,))


def params(tmp_path, **extra):
    for name in ('upper', 'work', 'l1', 'l2'):
        (tmp_path / name).mkdir(exist_ok=True)
    tree = {'upper': str(tmp_path / 'upper'), 'work': str(tmp_path / 'work'),
            'lower': [str(tmp_path / 'l1'), str(tmp_path / 'l2') + '/'], 'target': str(tmp_path / 'merged')}
    result = module_params(filesystem=tree)
    result.update(extra)
    return result


def test_check_mode_reports_the_plan_and_changes_nothing(tmp_path):
    given = params(tmp_path)
    before = sorted(os.listdir(tmp_path))
    result = converge(given, no_commands, check_mode=True, lock_path=str(tmp_path / 'lock'))
    assert result['changed'] is True
    assert [step['action'] for step in result['steps']] == ['mkdir', 'mount']
    assert result['plan'] == [step['description'] for step in result['steps']]
    assert result['plan'][0] == 'create directory %s' % (tmp_path / 'merged')
    assert result['filesystems'][0]['lower'] == [str(tmp_path / 'l1'), str(tmp_path / 'l2')]
    assert result['mounts'] == []
    assert result['diff']['before'] == '%s: not mounted\n' % (tmp_path / 'merged')
    assert result['diff']['after'].startswith('%s: as planned: mount overlay on ' % (tmp_path / 'merged'))
    assert sorted(os.listdir(tmp_path)) == sorted(before + ['lock'])


def test_unmounted_when_nothing_is_mounted_is_unchanged(tmp_path):
    result = converge(params(tmp_path, state='unmounted'), no_commands, check_mode=False,
                      lock_path=str(tmp_path / 'lock'))
    assert result['changed'] is False and result['plan'] == [] and result['steps'] == []
    assert result['diff']['before'] == result['diff']['after']


def test_tree_errors_come_back_as_converge_errors(tmp_path):
    bad = params(tmp_path)
    bad['filesystem']['lower'] = ['relative']
    with pytest.raises(ConvergeError, match=r'filesystem\.lower\[0\]\.target'):
        converge(bad, no_commands, check_mode=True, lock_path=str(tmp_path / 'lock'))


def test_plan_errors_carry_the_canonical_trees(tmp_path):
    (tmp_path / 'work').mkdir()
    (tmp_path / 'work' / 'junk').write_text('x')
    with pytest.raises(ConvergeError) as error:
        converge(params(tmp_path), no_commands, check_mode=True, lock_path=str(tmp_path / 'lock'))
    assert 'must be empty' in str(error.value)
    assert error.value.result['filesystems'][0]['target'] == str(tmp_path / 'merged')
    assert error.value.result['mounts'] == []


def test_batch_form_is_used_when_given(tmp_path):
    one = params(tmp_path)['filesystem']
    batch = module_params(filesystems=[one], create_dirs=False)
    with pytest.raises(ConvergeError, match=r'filesystems\[0\] .*create_dirs is false'):
        converge(batch, no_commands, check_mode=True, lock_path=str(tmp_path / 'lock'))


def test_host_lock_is_exclusive(tmp_path):
    (tmp_path / 'run').mkdir()
    path = str(tmp_path / 'run' / 'containerhost-overlayfs' / 'lock')
    with HostLock(path):
        with open(path, 'a') as other:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(path, 'a') as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released on exit


def test_the_host_lock_is_roots_alone_and_no_link_leads_it_elsewhere(tmp_path):
    """A local user may not hold the lock first (its dir is 0700) or plant a link root would follow."""
    (tmp_path / 'run').mkdir()
    private = tmp_path / 'run' / 'containerhost-overlayfs'
    with HostLock(str(private / 'lock')):
        assert stat.S_IMODE(os.stat(str(private)).st_mode) == 0o700
    (private / 'lock').unlink()
    (private / 'lock').symlink_to(tmp_path / 'chosen-by-a-user')
    with pytest.raises(ConvergeError, match=r'cannot open the host lock .*/lock: Too many levels of symbolic links'):
        HostLock(str(private / 'lock')).__enter__()
    assert not (tmp_path / 'chosen-by-a-user').exists()
    (private / 'lock').unlink()
    (private / 'lock').write_text('')
    os.chown(str(private / 'lock'), 1000, 1000)
    with pytest.raises(ConvergeError, match=r'is not a regular file of root\'s \(uid 1000\): it is not used'):
        HostLock(str(private / 'lock')).__enter__()
    os.chown(str(private), 1000, 1000)
    with pytest.raises(ConvergeError, match=r'belongs to uid 1000, not root: it is not used'):
        HostLock(str(private / 'lock')).__enter__()
    private.rename(tmp_path / 'elsewhere')
    private.symlink_to(tmp_path / 'elsewhere')
    with pytest.raises(ConvergeError, match=r'Not a directory|Too many levels'):
        HostLock(str(private / 'lock')).__enter__()
