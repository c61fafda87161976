# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""One module run: parse, then under the host lock observe, plan, and apply (unless checking)."""

from __future__ import annotations

import fcntl
import os
import stat
from typing import Any, Dict, Iterable, List, Literal, Optional, Sequence, Set, Tuple

from ansible_collections.containerhost.overlayfs.plugins.module_utils.apply._executor import ApplyError, Executor
from ansible_collections.containerhost.overlayfs.plugins.module_utils.host._devices import RunCommand
from ansible_collections.containerhost.overlayfs.plugins.module_utils.host._hostfs import RUN_DIR, open_private_dir
from ansible_collections.containerhost.overlayfs.plugins.module_utils.host._observe import Observed, observe
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._mountinfo import describe_mount
from ansible_collections.containerhost.overlayfs.plugins.module_utils.plan._planner import plan
from ansible_collections.containerhost.overlayfs.plugins.module_utils.steps._steps import (
    MOUNT_STEPS,
    PlanError,
    SetMountFlags,
    Step,
    Unmount,
)
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._node import Node
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._tree import TreeError, parse_filesystems, to_yaml


LOCK_FILE = RUN_DIR + '/lock'
MountState = Tuple[int, str, str]  # (tree position, target, what is mounted there): a line of the diff


class HostLock(object):
    """Serialize runs on one host: observe, plan and apply happen under one exclusive lock. The lock file lives in
    the collection's own root-only dir and is opened without following a symlink: in a dir any user may write to
    (/run/lock), a user could hold it first, or plant a link that root would follow."""

    def __init__(self, path: str = LOCK_FILE) -> None:
        self.path = path
        self.fd = -1  # the lock file's, while held

    def __enter__(self) -> HostLock:
        directory, name = os.path.split(self.path)
        try:
            dir_fd = open_private_dir(directory)
            try:
                self.fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as error:
            raise ConvergeError('cannot open the host lock %s: %s' % (self.path, error.strerror))
        info = os.fstat(self.fd)
        if info.st_uid != 0 or not stat.S_ISREG(info.st_mode):
            os.close(self.fd)
            raise ConvergeError('the lock file %s is not a regular file of root\'s (uid %d): it is not used'
                                % (self.path, info.st_uid))
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        return False


class ConvergeError(Exception):
    def __init__(self, message: str, **result: Any) -> None:
        super(ConvergeError, self).__init__(message)
        self.result = result


def converge(params: Dict[str, Any], run_command: RunCommand, check_mode: bool,
             lock_path: str = LOCK_FILE) -> Dict[str, Any]:
    """Return the module result for ``params``; raise ConvergeError with a message naming the cause."""
    if params.get('filesystems') is not None:
        raw, label = params['filesystems'], 'filesystems'
    else:
        raw, label = [params['filesystem']], 'filesystem'
    try:
        roots = parse_filesystems(raw, label, params.get('flatten', True))
    except TreeError as error:
        raise ConvergeError(str(error))
    canonical = [to_yaml(root) for root in sorted(roots, key=lambda root: root.position)]
    with HostLock(lock_path):
        observed = observe(roots)
        try:
            steps = plan(roots, observed, params['state'], params['on_drift'], params['create_dirs'],
                         params['on_volatile_marker'], params['lazy_unmount'])
        except PlanError as error:
            raise ConvergeError(str(error), filesystems=canonical, mounts=mount_table(roots, observed))
        before = mount_state(roots, observed)
        if check_mode or not steps:
            after = predicted_state(before, steps)
            final = observed
        else:
            try:
                final = observed.after(Executor(run_command).apply(steps))
            except ApplyError as error:
                raise ConvergeError(str(error), plan=describe(steps), steps=step_dicts(steps), filesystems=canonical,
                                    mounts=mount_table(roots, observe(roots)))
            after = mount_state(roots, final)
    return report(params.get('report', 'full'), roots, canonical, steps, final, before, after)


def report(detail: str, roots: List[Node], canonical: List[Any], steps: List[Step], final: Observed,
           before: List[MountState], after: List[MountState]) -> Dict[str, Any]:
    """The result, with the per-tree detail that ``detail`` asks for (the module's ``report`` option): every tree
    (full), only the trees the plan changes (changed), or none but the diff of those (summary)."""
    changed = changed_roots(roots, steps)
    shown = roots if detail == 'full' else changed
    positions = None if detail == 'full' else set(root.position for root in changed)
    result = dict(
        changed=bool(steps),
        summary=dict(filesystems=len(roots), changed=len(changed), steps=len(steps)),
        diff=dict(before=render_state(before, positions), after=render_state(after, positions)),
    )
    if detail != 'summary':
        result.update(plan=describe(steps), steps=step_dicts(steps),
                      filesystems=[canonical[root.position] for root in sorted(shown, key=lambda root: root.position)],
                      mounts=mount_table(shown, final))
    return result


def changed_roots(roots: List[Node], steps: Sequence[Step]) -> List[Node]:
    """The trees a plan changes: those whose nodes its steps serve (a node's label starts with its tree's)."""
    labels = set(one.node.split('.', 1)[0] for one in steps)
    return [root for root in roots if root.label in labels]


def describe(steps: Sequence[Step]) -> List[str]:
    return [one.description for one in steps]


def step_dicts(steps: Sequence[Step]) -> List[Dict[str, Any]]:
    return [one.to_dict() for one in steps]


def _mounted_nodes(roots: Iterable[Node]) -> List[Node]:
    return [node for root in roots for node in root.walk() if node.is_mounted_node]


def mount_table(roots: Iterable[Node], observed: Observed) -> List[Dict[str, Any]]:
    """The live mounts at the trees' targets, top-down, as the kernel reports them."""
    return [entry.to_dict() for node in _mounted_nodes(roots) for entry in observed.mounts_at(node.target)]


def mount_state(roots: Iterable[Node], observed: Observed) -> List[MountState]:
    """(tree position, target, what is mounted there) of every mounted node."""
    state: List[MountState] = []
    for root in roots:
        for node in _mounted_nodes([root]):
            current = observed.top_mount_at(node.target)
            state.append((root.position, node.target, describe_mount(current) if current else 'not mounted'))
    return state


def predicted_state(before: Sequence[MountState], steps: Sequence[Step]) -> List[MountState]:
    """The state after a plan runs: what a check-mode diff shows."""
    mounts = dict((one.target, 'as planned: ' + one.description) for one in steps
                  if isinstance(one, MOUNT_STEPS + (SetMountFlags,)))
    unmounts = set(one.target for one in steps if isinstance(one, Unmount))
    return [(position, target, mounts.get(target, 'not mounted' if target in unmounts else now))
            for position, target, now in before]


def render_state(state: Sequence[MountState], positions: Optional[Set[int]] = None) -> str:
    """The diff's text: a line per target, of the trees at ``positions`` (None: all)."""
    return ''.join('%s: %s\n' % (target, now) for position, target, now in state
                   if positions is None or position in positions)
