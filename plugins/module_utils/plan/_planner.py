# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Plan: a pure function from the desired trees and the observed host to ordered steps.

``mounted`` builds bottom-up (devices, lower filesystems, nested overlays, then the top
overlay); ``unmounted`` tears down top-down and detaches devices last. Every host rule that
can be checked before a change is checked here, so a plan that is returned can be applied.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from ansible_collections.containerhost.overlayfs.plugins.module_utils.host._confine import describe_refusal
from ansible_collections.containerhost.overlayfs.plugins.module_utils.host._observe import Observed
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._mountinfo import (
    MountEntry,
    describe_mount,
)
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._paths import path_and_ancestors
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._verify import missing_flags
from ansible_collections.containerhost.overlayfs.plugins.module_utils.steps import _steps as step
from ansible_collections.containerhost.overlayfs.plugins.module_utils.steps._steps import PlanError, Status, Step
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._node import (
    MAX_OVERLAY_NESTING,
    Node,
    Shared,
    fits_kernel_stack,
)

# Why a node is (re)mounted, by its status: nothing was there, its image server died (or a lower's did), or the
# user asked to replace it (drift, stale).
REASONS = {Status.ABSENT: 'new', Status.BROKEN: 'repair', Status.REPAIR: 'repair'}


def plan(roots: List[Node], observed: Observed, state: str, on_drift: str = 'fail', create_dirs: bool = True,
         on_volatile_marker: str = 'fail', lazy_unmount: bool = False) -> List[Step]:
    planner = _Planner(roots, observed, on_drift, create_dirs, on_volatile_marker, lazy_unmount)
    if state == 'mounted':
        return planner.mounted()
    return planner.unmounted()


class _Planner(object):
    """One plan; it is the Planning each node kind plans its own steps with (tree._node.Planning)."""

    def __init__(self, roots: List[Node], observed: Observed, on_drift: str, create_dirs: bool, on_volatile_marker: str,
                 lazy_unmount: bool) -> None:
        self.roots = roots
        self.observed = observed
        self.on_drift = on_drift
        self.create_dirs = create_dirs
        self.on_volatile_marker = on_volatile_marker
        self.lazy_unmount = lazy_unmount
        self.batch_nodes = dict((node.target, node) for root in roots for node in root.walk() if node.is_mounted_node)
        self.planned_dirs: Set[str] = set()
        self._shared: Dict[Callable[[Observed], Any], Any] = {}

    def shared(self, factory: Callable[[Observed], Shared]) -> Shared:
        if factory not in self._shared:
            self._shared[factory] = factory(self.observed)
        return self._shared[factory]

    # --- state: mounted -------------------------------------------------------------------

    def mounted(self) -> List[Step]:
        teardown: List[Step] = []
        buildup: List[Step] = []
        for root in self.roots:
            self._mounted_node(root, teardown, buildup)
        return self._others_left_standing(teardown + buildup)

    def _mounted_node(self, node: Node, teardown: List[Step], buildup: List[Step]) -> Optional[str]:
        """Plan one node. Return None when it stays as it is, else why it is (re)mounted (REASONS)."""
        if not node.is_mounted_node:
            node.plan_in_place(self)
            return None
        stacked = self.observed.mounts_at(node.target)
        current = stacked[-1] if stacked else None
        status = self._match(node, current) if current is not None else Status.ABSENT
        start = len(teardown)
        changed = [reason for reason in (self._mounted_node(lower, teardown, buildup) for lower in node.lowers)
                   if reason]
        if status == Status.MATCH and changed:
            # it stands on a lower that is being remounted: remount it too (asked for unless all are repairs)
            status = Status.REPAIR if set(changed) == {'repair'} else Status.STALE
        if current is not None:
            if status == Status.MATCH:
                buildup.extend(self._flag_steps(node, current))
                return None
            if status in (Status.DRIFT, Status.STALE):
                self._refuse_unless_replacing(node, current, status)
            teardown[start:start] = [self._unmount_step(node, current)] + node.release_steps(self, current)
        buildup.extend(self._mount_steps(node))
        return REASONS.get(status, 'replace')

    def _flag_steps(self, node: Node, current: MountEntry) -> List[Step]:
        """A top-level filesystem mounted as asked but for some of its mount flags gets them in place: they are the
        mount's, not its filesystem's, and nothing above it in the tree stands on them. Flags it has beyond them
        stay (verify.missing_flags)."""
        missing = () if node.is_layer else missing_flags(current, node.mount_flags)
        return [self._confined(step.set_mount_flags(node.label, node.target, add=missing))] if missing else []

    def _refuse_unless_replacing(self, node: Node, current: MountEntry, status: Status) -> None:
        if self.on_drift == 'replace':
            return
        if status == Status.STALE:
            raise PlanError('%s is mounted, but not on the layers this tree describes (a lower of it is missing '
                            'or was replaced): %s. Set on_drift=replace to remount it.'
                            % (node.describe(), describe_mount(current)))
        differences = node.shortfalls(self, current)
        shown = ' (%s)' % '; '.join(differences) if differences else ''
        raise PlanError('drift at %s: mounted now: %s%s; wanted: %s. Set on_drift=replace to replace it.'
                        % (node.describe(), describe_mount(current), shown, node.describe_wanted()))

    # --- matching the live mount table ------------------------------------------------------

    def _match(self, node: Node, current: MountEntry) -> Status:
        if not node.readonly_matches(current):
            return Status.DRIFT
        return node.match(self, current)

    # --- building steps -----------------------------------------------------------------------

    def _mount_steps(self, node: Node) -> List[Step]:
        facts = self.observed.facts(node.target)
        if facts.is_symlink:  # mountinfo would show where it points; the mount would land there
            raise PlanError('%s: target %s is a symlink (to %s); give the directory itself'
                            % (node.describe(), node.target, facts.realpath))
        self.refuse_symlink_inside(node, 'target', node.target)
        return [self._confined(one) for one in node.target_dir_steps(self) + node.mount_steps(self)]

    def refuse_symlink_inside(self, node: Node, role: str, path: str) -> None:
        """A container may plant a symlink in its view (etc/x -> /), a local user in a dir they can write to: a
        mount, mkdir, layer or image reached through it would be the host's."""
        facts = self.observed.facts(path)
        if facts.symlink_inside:
            raise PlanError('%s: %s' % (node.describe(), describe_refusal(role, path, facts)))

    def _confined(self, one: Step) -> Step:
        """The step with the ``beneath`` of the path it creates, mounts on or unmounts."""
        if isinstance(one, step.Mkdir):
            return dataclasses.replace(one, beneath=self.observed.facts(one.path).beneath)
        if isinstance(one, step.CONFINABLE_STEPS):
            return dataclasses.replace(one, beneath=self.observed.facts(one.target).beneath)
        return one

    def dir_steps(self, node: Node, role: str, path: str, owner: Optional[Tuple[int, int]] = None) -> List[Step]:
        facts = self.observed.facts(path)
        if facts.exists:
            if facts.unreadable and not self.observed.mounts_at(path):
                raise PlanError('%s: %s %s cannot be read: %s' % (node.describe(), role, path, facts.unreadable))
            if not facts.is_dir and not facts.unreadable:  # a mount point on a dead device: its repair comes
                raise PlanError('%s: %s %s exists and is not a directory' % (node.describe(), role, path))
            return []
        if path in self.planned_dirs or self._batch_target_above(path) is not None:
            return self._planned_mkdir(node, path, owner, role == 'work')
        if not self.create_dirs:
            raise PlanError('%s: %s %s does not exist (create_dirs is false)' % (node.describe(), role, path))
        return self._planned_mkdir(node, path, owner, role == 'work')

    def _planned_mkdir(self, node: Node, path: str, owner: Optional[Tuple[int, int]] = None,
                       work_dir: bool = False) -> List[Step]:
        if path in self.planned_dirs:
            return []
        self.planned_dirs.add(path)
        return [step.mkdir(node.label, path, owner, work_dir)]

    def _batch_target_above(self, path: str, itself: bool = False) -> Optional[Node]:
        """The nearest target of this batch that ``path`` lies under (or is, with ``itself``); None if none."""
        ancestors = path_and_ancestors(path)[0 if itself else 1:]
        return next((self.batch_nodes[above] for above in ancestors if above in self.batch_nodes), None)

    def in_batch(self, path: str) -> bool:
        return self._batch_target_above(path, itself=True) is not None

    # --- host rules ---------------------------------------------------------------------------

    def _host_depth(self, path: str) -> int:
        """The stack depth of the filesystem a path lives on: a target of this batch, or what is mounted."""
        owner = self._batch_target_above(path, itself=True)
        if owner is not None:
            return owner.stacks_over(self._host_depth)
        return self._mounted_depth(self.observed.mount_containing(path), MAX_OVERLAY_NESTING + 1)

    def _mounted_depth(self, entry: Optional[MountEntry], budget: int) -> int:
        """Overlays already mounted count 1 each, down through their own layers (bounded: no loops)."""
        layers = entry.overlay_layers() if entry else None
        if not layers or budget == 0:
            return 0
        lowers, upper, _work = layers
        return 1 + max(self._mounted_depth(self.observed.mount_containing(path), budget - 1)
                       for path in lowers + ([upper] if upper else []))

    def check_stacking(self, node: Node) -> None:
        """How many stacked filesystems the node's mount would sit on, as far as can be seen (the kernel's limit)."""
        depth = node.stacks_over(self._host_depth)
        if not fits_kernel_stack(depth):
            raise PlanError('%s would stack %d filesystems deep (a layer already lives on an overlay); '
                            'the kernel allows %d' % (node.describe(), depth, MAX_OVERLAY_NESTING))

    # --- state: unmounted ------------------------------------------------------------------

    def unmounted(self) -> List[Step]:
        steps: List[Step] = []
        releases: List[Step] = []
        for root in reversed(self.roots):
            self._unmounted_node(root, steps, releases)
        return self._others_left_standing(steps + releases)

    def _others_left_standing(self, steps: List[Step]) -> List[Step]:
        """Overlays of other trees stand on mounts too. The kernel keeps a mount unmounted from under one alive,
        hidden, with its upper and work dirs in use; an overlay mounted anew on those dirs would share them with it
        (the kernel only warns). So a plan unmounts nothing another overlay it leaves mounted stands on, and mounts
        no overlay where one it leaves mounted has a lower."""
        leaving = set(self.observed.resolved(one.target) for one in steps if isinstance(one, step.Unmount))
        for one in steps:
            if isinstance(one, step.Unmount):
                current = self.observed.top_mount_at(one.target)
                users = self.observed.overlays_on(current) if current is not None else []
                verb = 'unmount'
            elif isinstance(one, step.MountOverlay) and one.upper:
                users = self.observed.overlays_with_lower_under(one.target)
                verb = 'mount an overlay on'
            else:
                continue
            staying = sorted(set(entry.mountpoint for entry in users) - leaving)
            if staying:
                raise PlanError('%s: refusing to %s %s: the overlay mounted at %s (not in this run) stands on what '
                                'is mounted there now, and would keep it alive, hidden, with its upper and work dirs '
                                'in use. Unmount the tree at %s first' % (one.node, verb, one.target, staying[0],
                                                                          staying[0]))
        return steps

    def _unmounted_node(self, node: Node, steps: List[Step], releases: List[Step]) -> None:
        if node.is_mounted_node:
            self.refuse_symlink_inside(node, 'target', node.target)  # it resolves elsewhere: not this tree's mount
            for current in reversed(self.observed.mounts_at(node.target)):
                if self._match(node, current) == Status.DRIFT and self.on_drift != 'replace':
                    raise PlanError('refusing to unmount %s: it is mounted with something this tree does not '
                                    'describe: %s. Set on_drift=replace to unmount it anyway.'
                                    % (node.describe(), describe_mount(current)))
                steps.append(self._unmount_step(node, current))
                releases.extend(node.release_steps(self, current))
            releases.extend(node.leftover_steps(self))
        for lower in node.lowers:
            self._unmounted_node(lower, steps, releases)

    def _unmount_step(self, node: Node, current: MountEntry) -> Step:
        restore = node.restore_step(current, self.observed.idmaps.get(node.target))
        return self._confined(step.unmount(node.label, node.target, self._confined(restore), lazy=self.lazy_unmount,
                                           shown=describe_mount(current),
                                           remove_mount_point=node.unmount_removes_mount_point()))
