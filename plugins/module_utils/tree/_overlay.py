# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The overlay: an upper and a work dir (or none) over an ordered list of lower layers, each a node of its own."""

from __future__ import annotations

from typing import Any, ClassVar, Dict, List, NamedTuple, Optional, Sequence, Tuple

from ansible_collections.containerhost.overlayfs.plugins.module_utils.host._observe import Observed
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._mountinfo import MountEntry
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._options import (
    KERNEL_WORKDIR_ENTRIES,
    OptionError,
    check_conflicts,
    normalize_options,
    overlay_mount_data,
    overlay_payload,
    volatile_marker_refusal,
)
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._paths import path_and_ancestors, related
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._verify import overlay_shortfalls
from ansible_collections.containerhost.overlayfs.plugins.module_utils.steps import _steps as step
from ansible_collections.containerhost.overlayfs.plugins.module_utils.steps._steps import PlanError, Status, Step
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._idmapped import IdmappedLayer
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._node import (
    MAX_OVERLAY_NESTING,
    Context,
    HostDepth,
    Node,
    Persisting,
    Planning,
    Reading,
    TreeError,
    fits_kernel_stack,
    optional_path_field,
)

MAX_LOWER_LAYERS = 500
# Flattened, a tree may nest deeper; every level past the kernel's adds at least one layer to the overlays above
MAX_FLATTENED_NESTING = 100


class Layer(NamedTuple):
    """One lowerdir= entry of an overlay: a lower node's target, or (``node`` None) the upper dir of a nested
    overlay that was flattened into this one. ``label`` names it in messages."""
    path: str
    node: Optional[Node]
    label: str

    @property
    def host_path(self) -> str:
        """The host dir the layer shows: the target of the node the tree names (an idmapped layer's mount is a
        clone of it)."""
        return self.node.as_given.target if self.node is not None else self.path


class Overlay(Node):
    kind: ClassVar[str] = 'overlay'
    KEYS = ('type', 'upper', 'work', 'lower', 'target', 'options', 'readonly', 'mount_flags', 'accessmode', 'idmap')
    TOP_LEVEL = True
    LOWER = True
    HAS_LAYERS = True
    XML_ELEMENTS = ('source', 'backingStore', 'target', 'driver', 'readonly', 'mountFlags', 'idmap')
    PICTURE_NAME = 'overlay'
    PICTURE_COLOURS = ('#37474f', '#ffffff')
    READ_BACK_RANK = 0

    def __init__(self, upper: Optional[str] = None, work: Optional[str] = None,
                 options: Optional[Dict[str, str]] = None, **common: Any) -> None:
        super(Overlay, self).__init__(**common)
        self.upper = upper
        self.work = work
        self.options = options or {}
        # its layers as it is mounted (stacked_layers): Layer records, topmost first, and the labels of the nested
        # overlays whose own layers stand in their place (flattened)
        self.layers = [Layer(lower.target, lower, lower.as_given.label) for lower in self.lowers]
        self.flattened: List[str] = []

    def layer_paths(self) -> List[str]:
        """The lowerdir= list, topmost first."""
        return [layer.path for layer in self.layers]

    @classmethod
    def parse(cls, raw: Dict[str, Any], common: Dict[str, Any], context: Context) -> Node:
        label = common['label']
        # before descending: a deep tree costs nothing
        if not context.flatten and not fits_kernel_stack(context.overlays_above + 1):
            raise TreeError('%s: overlays nest at most %d deep (the kernel stacks at most %d filesystems on a disk '
                            'fs; flatten=true mounts deeper trees)' % (label, MAX_OVERLAY_NESTING, MAX_OVERLAY_NESTING))
        if context.overlays_above >= MAX_FLATTENED_NESTING:
            raise TreeError('%s: overlays nest at most %d deep, flattened (each level adds a layer to the ones above)'
                            % (label, MAX_FLATTENED_NESTING))
        upper = optional_path_field(raw, 'upper', label)
        work = optional_path_field(raw, 'work', label)
        if bool(upper) != bool(work):
            raise TreeError('%s: upper and work go together (the kernel needs a work dir for an upper dir)' % label)
        lowers_raw = raw.get('lower')
        if not isinstance(lowers_raw, list) or not lowers_raw:
            raise TreeError('%s.lower must be a non-empty list of lower layers, topmost first' % label)
        if len(lowers_raw) > MAX_LOWER_LAYERS:
            raise TreeError('%s.lower has %d layers; the kernel allows at most %d'
                            % (label, len(lowers_raw), MAX_LOWER_LAYERS))
        if not upper and len(lowers_raw) < 2:
            raise TreeError('%s.lower: an overlay without an upper dir needs at least 2 lower layers' % label)
        if upper and work and related(upper, work):
            raise TreeError('%s: upper %s and work %s must be separate subtrees' % (label, upper, work))
        try:
            options = normalize_options(raw.get('options'), label)
            check_conflicts(options, bool(upper), label)
        except OptionError as error:
            raise TreeError(str(error))
        below = context._replace(top=False, overlays_above=context.overlays_above + 1,
                                 root_target=context.root_target or common['target'],
                                 idmap=context.idmap or common['idmap'])
        lowers = [IdmappedLayer.over(context.parse_lower(item, '%s.lower[%d]' % (label, index), below),
                                     below.root_target, below.idmap)
                  for index, item in enumerate(lowers_raw)]
        node = cls(upper=upper, work=work, options=options, lowers=lowers, **common)
        node.layers, node.flattened = stacked_layers(lowers)
        check_layers_disjoint(label, node.layers, upper, work)
        if len(node.layers) > MAX_LOWER_LAYERS:
            raise TreeError('%s.lower: with the nested overlays %s flattened into it, it has %d layers; the kernel '
                            'allows at most %d'
                            % (label, ', '.join(node.flattened), len(node.layers), MAX_LOWER_LAYERS))
        return node

    def yaml_fields(self) -> Dict[str, Any]:
        fields: Dict[str, Any] = {'upper': self.upper, 'work': self.work} if self.upper else {}
        fields['lower'] = [lower.as_given.to_yaml() for lower in self.lowers]
        if self.options:
            fields['options'] = dict(self.options)
        return fields

    @property
    def view(self) -> Optional[Tuple[str, Optional[str]]]:
        return self.target, self.upper

    def paths_used(self) -> List[Tuple[str, str]]:
        return [('target', self.target)] + self.private_dirs()

    def private_dirs(self) -> List[Tuple[str, str]]:
        return [('upper', self.upper), ('work', self.work)] if self.upper and self.work else []

    def stacks_over(self, host_depth: HostDepth) -> int:
        under = [layer.node.stacks_over(host_depth) if layer.node else host_depth(layer.path) for layer in self.layers]
        return 1 + max(under + ([host_depth(self.upper)] if self.upper else []))

    # --- plan -----------------------------------------------------------------------------------------------------

    def match(self, plan: Planning, current: MountEntry) -> Status:
        if self.shortfalls(plan, current):
            return Status.DRIFT
        if plan.observed.hidden_lowers(current):
            return Status.STALE  # a lower of it was mounted again since: it stands on the earlier one, hidden
        return Status.MATCH

    def shortfalls(self, plan: Planning, current: MountEntry) -> List[str]:
        return overlay_shortfalls(current, self.layer_paths(), self.upper, self.work, self.options,
                                  self.mounted_readonly)

    def describe_wanted(self) -> str:
        return '%soverlay (%s)' % ('read-only ' if self.mounted_readonly else '',
                                   overlay_mount_data(self.layer_paths(), self.upper, self.work, self.options))

    def mount_steps(self, plan: Planning) -> List[Step]:
        steps: List[Step] = []
        if self.upper and self.work:
            plan.refuse_symlink_inside(self, 'upper', self.upper)
            plan.refuse_symlink_inside(self, 'work', self.work)
            # the root of the merged view is the upper dir's: a new one belongs to the ids root maps to
            owner = self.idmap.map_owner(0, 0) if self.idmap else None
            steps += plan.dir_steps(self, 'upper', self.upper, owner) + plan.dir_steps(self, 'work', self.work)
            self._check_upper_and_work(plan.observed, self.upper, self.work)
            steps += self._volatile_marker_steps(plan, self.work)
        plan.check_stacking(self)
        lowers = self.layer_paths()
        try:
            payload = overlay_payload(lowers, self.upper, self.work, self.options)
        except OptionError as error:
            raise PlanError('%s: %s' % (self.describe(), error))
        layers = lowers + ([self.upper, self.work] if self.upper and self.work else [])
        reach = [(path, plan.observed.facts(path).beneath) for path in layers]
        steps.append(step.mount_overlay(self.label, self.target, lowers, self.upper, self.work, self.options,
                                        self.mounted_readonly, payload, self.flattened,
                                        reach if any(how for _path, how in reach) else (), self.mount_flags))
        return steps

    def _check_upper_and_work(self, observed: Observed, upper: str, work: str) -> None:
        upper_mount = observed.mount_containing(upper)
        work_mount = observed.mount_containing(work)
        if upper_mount and work_mount and upper_mount.mount_id != work_mount.mount_id:
            raise PlanError('%s: upper %s (on %s) and work %s (on %s) must be on the same mount'
                            % (self.describe(), upper, upper_mount.mountpoint, work, work_mount.mountpoint))
        if upper_mount and upper_mount.readonly:
            raise PlanError('%s: upper %s is on the read-only mount at %s'
                            % (self.describe(), upper, upper_mount.mountpoint))
        if upper_mount and upper_mount.fstype == 'overlay':
            raise PlanError('%s: upper %s is on the overlay mounted at %s; the kernel does not take an '
                            'overlay as upper fs' % (self.describe(), upper, upper_mount.mountpoint))
        leftovers = [name for name in observed.facts(work).entries if name not in KERNEL_WORKDIR_ENTRIES]
        if leftovers:
            raise PlanError('%s: work dir %s must be empty, it holds %s'
                            % (self.describe(), work, ', '.join(leftovers[:5])))
        for role, path in (('upper', upper), ('work', work)):
            for entry in observed.overlays_using(path):
                if entry.mountpoint != observed.facts(self.target).realpath:
                    raise PlanError('%s: %s %s is already in use by the overlay mounted at %s'
                                    % (self.describe(), role, path, entry.mountpoint))

    def _volatile_marker_steps(self, plan: Planning, work: str) -> List[Step]:
        facts = plan.observed.facts(work)
        if not facts.volatile_leftover:
            return []
        if plan.on_volatile_marker != 'discard':
            raise PlanError('%s: %s' % (self.describe(), volatile_marker_refusal(work)))
        return [step.discard_volatile_marker(self.label, work, facts.beneath)]

    # --- persist, read back -------------------------------------------------------------------------------

    def persist(self, out: Persisting, item: Dict[str, Any]) -> None:
        layers = [layer.host_path for layer in self.layers] + [path for _role, path in self.private_dirs()]
        idmapped = [layer.node for layer in self.layers if isinstance(layer.node, IdmappedLayer)]
        out.helper_mount(self, item, {
            'target': self.target, 'lowers': self.layer_paths(), 'upper': self.upper, 'work': self.work,
            'options': dict(self.options), 'readonly': self.mounted_readonly, 'mount_flags': list(self.mount_flags),
            'idmapped': [{'target': mount.target, 'source': mount.source, 'idmap': mount.mapping.to_yaml()}
                         for mount in idmapped],
        }, layers=layers, named=[self.target] + layers + [mount.source for mount in idmapped],
            description='Overlay filesystem %s' % self.target)

    @classmethod
    def read_back(cls, reader: Reading, entry: Optional[MountEntry], path: str) -> Any:
        """A nested overlay is read as part of the tree; one that several overlays stand on is a tree of its own,
        and they name its target as a dir."""
        if entry is None or entry.fstype != 'overlay':
            return None
        return reader.overlay(entry) if reader.is_nested(path) else path


def stacked_layers(lowers: Sequence[Node]) -> Tuple[List[Layer], List[str]]:
    """The layers of an overlay over ``lowers``, and the labels of the lowers flattened into it.

    The kernel stacks at most MAX_OVERLAY_NESTING overlays. A nested overlay that already stacks that many is not
    used through its target: its own layers stand in its place, its upper dir first (a lower reads its whiteouts
    and opaque dirs as any lower does), so this overlay reads the same files and stacks no deeper. The nested
    overlay is still mounted at its own target. Each lower's layers stack at most one less than the limit, so
    they fit as they are."""
    layers: List[Layer] = []
    flattened: List[str] = []
    for lower in lowers:
        if isinstance(lower, Overlay) and not fits_kernel_stack(lower.stack_depth + 1):  # only an overlay stacks
            layers += ([Layer(lower.upper, None, lower.label + '.upper')] if lower.upper else []) + lower.layers
            flattened.append(lower.label)
        else:
            layers.append(Layer(lower.target, lower, lower.as_given.label))
    return layers, flattened


def check_layers_disjoint(label: str, layers: Sequence[Layer], upper: Optional[str], work: Optional[str]) -> None:
    """The kernel refuses a layer that repeats or contains another (ELOOP: conflicting/overlapping path), flattened
    layers included. Linear: each path looks up its own ancestors among the paths before it, and itself among
    theirs. (Upper and work in one another is the separate-subtrees rule's to name.)"""
    named = [(layer.label, layer.host_path) for layer in layers]
    if upper and work:
        named += [('%s.upper' % label, upper), ('%s.work' % label, work)]
    at: Dict[str, Tuple[str, str]] = {}  # path -> (name, path) of an earlier layer at it
    below: Dict[str, Tuple[str, str]] = {}  # path -> (name, path) of an earlier layer at or below it
    for name, path in named:
        for other in [at.get(ancestor) for ancestor in path_and_ancestors(path)] + [below.get(path)]:
            if other and (name, other[0]) != ('%s.work' % label, '%s.upper' % label):
                raise TreeError('%s: %s overlaps %s %s; the kernel refuses repeated or nested layers'
                                % (name, path, other[0], other[1]))
        at.setdefault(path, (name, path))
        for ancestor in path_and_ancestors(path):
            below.setdefault(ancestor, (name, path))
