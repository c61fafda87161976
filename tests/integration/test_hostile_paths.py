# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Property: any name Linux allows, in every place of a tree, mounts exactly as asked, re-runs unchanged and
unmounts leaving nothing. Real overlays in the session's private namespace, converge() called in process (an
ansible-playbook run per example would make 300 examples take an hour). HYPOTHESIS_EXAMPLES sets how many."""

from __future__ import annotations

import os
import shutil

from hypothesis import HealthCheck, given, settings, strategies as st

from ansible_collections.containerhost.overlayfs.plugins.module_utils.apply._converge import converge
from ansible_collections.containerhost.overlayfs.tests.helpers.host import (
    checked,
    module_params,
    mounts_under,
    quietly,
    run_command,
)

EXAMPLES = int(os.environ.get('HYPOTHESIS_EXAMPLES', '300'))
NAME_MAX = 255
# Awkward on purpose: the overlay's option separators and escape, quotes, whitespace, a leading '-', non-UTF-8.
AWKWARD = [b',', b':', b'\\', b'=', b"'", b'"', b' ', b'\t', b'\n', b'-', b'\xff', b'\xc3\xa9', b'%', b'#', b'lowerdir=']

names = st.lists(st.sampled_from(AWKWARD) | st.binary(min_size=1, max_size=12), min_size=1, max_size=40).map(
    b''.join).map(lambda name: name.replace(b'/', b'_').replace(b'\0', b'_')[:NAME_MAX]).filter(
    lambda name: name not in (b'.', b'..'))


def test_any_names_mount_exactly_as_asked_rerun_unchanged_and_unmount_cleanly(tmp_path):
    scratch = str(tmp_path / 'scratch')
    os.mkdir(scratch)
    checked(['mount', '-t', 'tmpfs', 'hostile', scratch])
    lock = str(tmp_path / 'lock')
    counter = iter(range(1 << 30))

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(names, min_size=5, max_size=5, unique=True))
    def check(raw_names):
        base = os.path.join(scratch, str(next(counter)))
        lower1, lower2, upper, work, target = (os.path.join(base, os.fsdecode(name)) for name in raw_names)
        for path in (lower1, lower2):
            os.makedirs(path)
        tree = {'upper': upper, 'work': work, 'lower': [lower1, lower2], 'target': target}
        first = converge(module_params(filesystem=tree), run_command, False, lock_path=lock)
        assert first['changed']
        shown = [entry for entry in mounts_under(base) if entry.mountpoint == target]
        assert len(shown) == 1 and shown[0].overlay_layers() == ([lower1, lower2], upper, work)
        again = converge(module_params(filesystem=tree), run_command, False, lock_path=lock)
        assert (again['changed'], again['plan']) == (False, [])
        gone = converge(module_params(filesystem=tree, state='unmounted'), run_command, False, lock_path=lock)
        assert gone['changed'] and mounts_under(base) == []
        shutil.rmtree(base)

    try:
        check()
        assert next(counter) >= EXAMPLES  # every example mounted, re-ran and unmounted a tree
    finally:
        quietly(['umount', '--recursive', '--lazy', scratch])
