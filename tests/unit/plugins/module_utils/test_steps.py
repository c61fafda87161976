# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The step records: what the module returns of them, and that the executor has a handler for each kind."""

from __future__ import annotations

import dataclasses

import pytest

from ansible_collections.containerhost.overlayfs.plugins.module_utils.steps import _steps as steps
from ansible_collections.containerhost.overlayfs.plugins.module_utils.apply._executor import Executor
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._options import overlay_payload


def step_kinds():
    return [kind for kind in vars(steps).values()
            if isinstance(kind, type) and issubclass(kind, steps.Step) and kind is not steps.Step]


def test_every_step_kind_has_exactly_one_handler():
    assert sorted(kind.__name__ for kind in Executor(None).handlers) == sorted(kind.__name__ for kind in step_kinds())


def test_step_kinds_have_distinct_actions_except_the_mounts_which_have_a_kind():
    actions = [kind.action for kind in step_kinds() if kind not in steps.MOUNT_STEPS]
    assert len(actions) == len(set(actions)) and all(actions)
    assert sorted(kind.kind for kind in steps.MOUNT_STEPS) == ['bind', 'device', 'idmapped', 'overlay']


def test_an_overlay_mount_returns_what_was_asked_and_the_payload_the_kernel_gets():
    payload = overlay_payload(['/l1', '/l,2'], '/u', '/w', {'index': 'off'})
    mount = steps.mount_overlay('filesystems[0]', '/m', ['/l1', '/l,2'], '/u', '/w', {'index': 'off'}, False, payload)
    assert mount.to_dict() == {
        'action': 'mount', 'kind': 'overlay', 'node': 'filesystems[0]', 'target': '/m',
        'lowers': ('/l1', '/l,2'), 'upper': '/u', 'work': '/w', 'options': {'index': 'off'}, 'readonly': False,
        'mount_flags': (), 'flattened': (),
        'payload': {'api': 'mount', 'data': 'lowerdir=/l1:/l\\,2,upperdir=/u,workdir=/w,index=off', 'parameters': ()},
        'description': 'mount overlay on /m (lowerdir=/l1:/l\\,2,upperdir=/u,workdir=/w,index=off)',
        'beneath': None,
        'reach': (),
    }


def test_an_unmount_returns_the_step_that_would_restore_it():
    restore = steps.mount_bind('filesystems[1]', '/m', '/src', True)
    shown = steps.unmount('filesystems[1]', '/m', restore, shown='none from /dev/sda1 (rw)').to_dict()
    assert shown['restore'] == dict(action='mount', kind='bind', node='filesystems[1]', target='/m', source='/src',
                                    readonly=True, mount_flags=(), description='bind /src on /m read-only',
                                    beneath=None, source_beneath=None)
    assert shown['description'] == 'unmount /m (none from /dev/sda1 (rw))'


def test_steps_are_immutable():
    mkdir = steps.mkdir('filesystems[0]', '/m')
    with pytest.raises(dataclasses.FrozenInstanceError):
        mkdir.path = '/elsewhere'
