# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A node of a tree: what every kind of node shares, and the interfaces through which a kind plans and persists.

Each kind is a subclass of Node in a module of its own (_overlay, _dir, _bind, _block, _image, _idmapped), listed in
_kinds.KINDS. A kind owns its fields and YAML keys, its XML elements, how it is parsed and written back, how it is
matched against the live mount table, mounted and undone (calling the planner through Planning), how it comes back
at boot (calling the renderer through Persisting), how it is drawn, and how it is read back from a mount (discovery).
The planner, the executor and the renderer hold no table keyed by kind; the picture draws an overlay's stack of
rows itself, each row the kind's, and discovery reads an overlay's options itself, each layer the kind's.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Dict, List, NamedTuple, Optional, Protocol, Sequence, Tuple, Type, TypeVar

from ansible.module_utils.parsing.convert_bool import boolean

from ansible_collections.containerhost.overlayfs.plugins.module_utils.host._observe import Observed
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._idmap import (
    IdMap,
    IdMapError,
    parse_idmap,
)
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._mountinfo import MountEntry
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._options import (
    DEFAULT_MOUNT_FLAGS,
    OptionError,
    normalize_mount_flags,
    overlay_payload,
)
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._paths import fold_path
from ansible_collections.containerhost.overlayfs.plugins.module_utils.steps import _steps as step
from ansible_collections.containerhost.overlayfs.plugins.module_utils.steps._steps import Status, Step

MAX_OVERLAY_NESTING = 2  # FILESYSTEM_MAX_STACK_DEPTH: fs -> overlay -> overlay
ACCESS_MODES = ('passthrough',)
HostDepth = Callable[[str], int]  # the stack depth of the filesystem a host path lives on
Shared = TypeVar('Shared')  # a kind's bookkeeping across the nodes of one plan (Planning.shared)


class TreeError(ValueError):
    pass


class Unexpressed(Exception):
    """A mount a tree cannot describe (discovery); the message says why."""


def fits_kernel_stack(depth: int) -> bool:
    """The kernel's stacking limit: a mount may stack at most MAX_OVERLAY_NESTING overlays on a disk filesystem."""
    return depth <= MAX_OVERLAY_NESTING


def on_a_disk(path: str) -> int:
    """The HostDepth of a tree counted alone: every host path on a disk filesystem."""
    del path
    return 0


class Context(NamedTuple):
    """What a node's parse knows of the tree above it, and how it parses a lower of its own."""
    top: bool
    overlays_above: int
    flatten: bool
    parse_lower: Callable[[Any, str, 'Context'], 'Node']
    root_target: Optional[str] = None  # the top-level filesystem's (names the idmapped mounts of its layers)
    idmap: Optional[IdMap] = None  # the top-level filesystem's idmap, for the lowers without their own


class Node(object):
    """One element of a tree. The class attributes say what a kind is; the instance holds what every kind has."""

    kind: ClassVar[str]  # its YAML type (and XML type=)
    KEYS: ClassVar[Tuple[str, ...]]  # the YAML keys it takes
    TOP_LEVEL: ClassVar[bool] = False  # a filesystem of its own
    LOWER: ClassVar[bool] = False  # a lower layer of an overlay
    HAS_LAYERS: ClassVar[bool] = False  # an overlay: it has lowers (and so an idmap for them, never its own)
    is_mounted_node: ClassVar[bool] = True  # mounted at its target (a dir lower is used in place)
    XML_ELEMENTS: ClassVar[Tuple[str, ...]] = ()  # the child elements its XML takes
    XML_SOURCE: ClassVar[Tuple[str, ...]] = ()  # the attributes its <source> may name it by, canonical first
    PICTURE_NAME: ClassVar[str] = ''  # what the picture calls it
    PICTURE_COLOURS: ClassVar[Tuple[str, str]] = ('#eceff1', '#263238')  # fill, text
    READ_BACK_RANK: ClassVar[int]  # when discovery asks it (_kinds.READ_BACK_ORDER): lower first; every kind says

    def __init__(self, label: str, target: str, readonly: bool = False, accessmode: Optional[str] = None,
                 is_layer: bool = False, idmap: Optional[IdMap] = None, mount_flags: Tuple[str, ...] = (),
                 lowers: Sequence['Node'] = ()) -> None:
        self.label = label
        self.target = target
        self.readonly = readonly
        self.accessmode = accessmode
        self.is_layer = is_layer
        self.idmap = idmap  # an idmapped layer's: the mapping it mounts with; any other's: the one it was given
        self.mount_flags = mount_flags  # a top-level filesystem's (options.MOUNT_FLAGS); a layer's mount has none
        self.lowers = list(lowers)
        self.position = 0  # place in the input batch (roots are applied in dependency order)
        # walk()'s answer, built once: a run walks every tree many times, and a node's lowers never change
        self._subtree = (self,) + tuple(node for lower in self.lowers for node in lower.walk())

    # --- parse and write back -------------------------------------------------------------------------------

    @classmethod
    def parse(cls, raw: Dict[str, Any], common: Dict[str, Any], context: Context) -> 'Node':
        """A node of this kind from its YAML mapping ``raw``; ``common`` holds the fields every kind has, parsed."""
        del raw, context
        return cls(**common)

    def to_yaml(self) -> Any:
        """The canonical YAML form (what the module returns as ``filesystems``)."""
        result: Dict[str, Any] = {'type': self.kind}
        result.update(self.yaml_fields())
        result['target'] = self.target
        if self.readonly:
            result['readonly'] = True
        if not self.is_layer and self.mount_flags != DEFAULT_MOUNT_FLAGS:
            result['mount_flags'] = list(self.mount_flags)
        if self.accessmode:
            result['accessmode'] = self.accessmode
        if self.idmap:
            result['idmap'] = self.idmap.to_yaml()
        return result

    def yaml_fields(self) -> Dict[str, Any]:
        """The kind's own keys, between ``type`` and ``target``."""
        return {}

    # --- what it is -------------------------------------------------------------------------------------------

    @property
    def mounted_readonly(self) -> bool:
        """How the node is mounted: read-only when asked (image and block layers always: READ_ONLY_AS_LAYER)."""
        return self.readonly

    @property
    def as_given(self) -> 'Node':
        """The node the tree's YAML names (an idmapped layer stands for its lower)."""
        return self

    @property
    def idmapped_target(self) -> Optional[str]:
        """Where this node's idmapped mount is, whose mapping a run reads back; None for every other kind."""
        return None

    @property
    def view(self) -> Optional[Tuple[str, Optional[str]]]:
        """(merged view, upper dir) where a container shapes the contents: an overlay's; None for other kinds."""
        return None

    def walk(self) -> Tuple['Node', ...]:
        """Pre-order: this node, then its lowers in order (top-down)."""
        return self._subtree

    def paths_used(self) -> List[Tuple[str, str]]:
        """(role, path) pairs of the host paths the node reads or writes, its target first."""
        return [('target', self.target)]

    def private_dirs(self) -> List[Tuple[str, str]]:
        """(role, path) of the dirs no other overlay may share (an overlay's upper and work)."""
        return []

    def stacks_over(self, host_depth: HostDepth) -> int:
        """How many overlays this node's mount stacks, given the depth of the host paths it stands on."""
        del host_depth
        return 0

    @property
    def stack_depth(self) -> int:
        """stacks_over, counting the tree only."""
        return self.stacks_over(on_a_disk)

    def describe(self) -> str:
        return '%s (%s at %s)' % (self.label, self.kind, self.target)

    # --- plan: against the live mount table -------------------------------------------------------------------

    def readonly_matches(self, current: MountEntry) -> bool:
        return current.readonly == self.mounted_readonly

    def match(self, plan: 'Planning', current: MountEntry) -> Status:
        """MATCH, DRIFT, STALE or BROKEN: the mount ``current`` at the target against this node (same mode)."""
        raise NotImplementedError(self.kind)

    def shortfalls(self, plan: 'Planning', current: MountEntry) -> List[str]:
        """What ``current`` gives other than the node asks, a phrase each (what a drift message shows)."""
        del plan, current
        return []

    def describe_wanted(self) -> str:
        raise NotImplementedError(self.kind)

    def plan_in_place(self, plan: 'Planning') -> None:
        """A node used in place (not mounted): check it is there."""
        del plan

    def target_dir_steps(self, plan: 'Planning') -> List[Step]:
        """The steps that make the target dir where it is missing."""
        return plan.dir_steps(self, 'target', self.target)

    def mount_steps(self, plan: 'Planning') -> List[Step]:
        """The steps that mount the node on its target (the target dir made already)."""
        raise NotImplementedError(self.kind)

    def restore_step(self, current: MountEntry, shown_idmap: Optional[IdMap]) -> Step:
        """How to mount again what an unmount of ``current`` removes, should the run be undone: as it was."""
        return restore_as_mounted(self.label, self.target, current)

    def unmount_removes_mount_point(self) -> bool:
        return False

    def release_steps(self, plan: 'Planning', current: MountEntry) -> List[Step]:
        """What goes with an unmount of ``current``: the device behind it."""
        del plan, current
        return []

    def leftover_steps(self, plan: 'Planning') -> List[Step]:
        """When the tree is unmounted: devices serving this node that nothing mounts (an interrupted run's)."""
        del plan
        return []

    # --- persist and draw ---------------------------------------------------------------------------------------

    def persist(self, out: 'Persisting', item: Dict[str, Any]) -> None:
        """Write how the node comes back at boot (its lowers have been written already)."""
        raise NotImplementedError(self.kind)

    def picture_row(self, at_target: bool) -> Tuple[str, str, Tuple[Tuple[str, str], ...]]:
        """Its row in a layer-stack picture: the text after 'lower N: ' ('from ' at the top, where ``at_target`` is
        false: the row above names the target), the path it shows, further (name, value) data attributes."""
        raise NotImplementedError(self.kind)

    # --- discovery ------------------------------------------------------------------------------------------------

    @classmethod
    def read_back(cls, reader: 'Reading', entry: Optional[MountEntry], path: str) -> Any:
        """The YAML of the lower at ``path`` if the mount ``entry`` there (None: nothing) is of this kind, else
        None. Discovery asks each kind in _kinds.READ_BACK_ORDER; it raises Unexpressed for what no tree can say."""
        del reader, entry, path
        return None


class MountedFrom(Node):
    """A node mounted from a host path of its own (a bind's dir, a block device, an image): its ``source``."""
    XML_SOURCE: ClassVar[Tuple[str, ...]] = ('dir',)
    READ_ONLY_AS_LAYER: ClassVar[bool] = False  # a lower layer of this kind is mounted read-only, asked or not

    def __init__(self, source: str, **common: Any) -> None:
        super(MountedFrom, self).__init__(**common)
        self.source = source

    @classmethod
    def parse(cls, raw: Dict[str, Any], common: Dict[str, Any], context: Context) -> Node:
        return cls(source=path_field(raw, 'source', common['label']), **common)

    def yaml_fields(self) -> Dict[str, Any]:
        return {'source': self.source}

    @property
    def mounted_readonly(self) -> bool:
        return self.readonly or (self.is_layer and self.READ_ONLY_AS_LAYER)

    def describe_wanted(self) -> str:
        return '%s%s %s' % ('read-only ' if self.mounted_readonly else '', self.kind, self.source)

    def paths_used(self) -> List[Tuple[str, str]]:
        return [('target', self.target), ('source', self.source)]

    def picture_row(self, at_target: bool) -> Tuple[str, str, Tuple[Tuple[str, str], ...]]:
        return '%s %s%s' % (self.PICTURE_NAME, self.source, self.picture_mode(at_target)), self.source, (
            ('target', self.target),)

    def picture_mode(self, at_target: bool) -> str:
        return (', at %s' % self.target if at_target else '') + (', read-only' if self.mounted_readonly else '')


def restore_as_mounted(label: str, target: str, current: MountEntry, ref: Optional[str] = None) -> Step:
    """How to mount again what an unmount of ``current`` removes, should the run be undone, as the mount table shows
    it: an overlay on its layers and options, or a device (``ref``: the attach that gives it, in an undo); anything
    else cannot be."""
    layers = current.overlay_layers()
    if layers:
        lowers, upper, work = layers
        shown = dict((key, value) for key, value in current.super_options.items()
                     if key not in ('lowerdir', 'upperdir', 'workdir', 'lowerdir+', 'datadir+', 'rw', 'ro'))
        try:
            payload = overlay_payload(lowers, upper, work, shown)
        except OptionError:
            return step.cannot_restore(label, target)
        return step.mount_overlay(label, target, lowers, upper, work, shown, current.readonly, payload,
                                  mount_flags=current.mount_flags)
    if current.source.startswith('/dev/'):
        return step.mount_device(label, target, current.source, current.readonly, ref=ref,
                                 mount_flags=current.mount_flags)
    return step.cannot_restore(label, target)


class Planning(Protocol):
    """What the planner offers a kind (plan._planner._Planner implements it): the observed host, its options, and
    the steps and checks every kind shares."""
    observed: Observed
    on_volatile_marker: str

    def in_batch(self, path: str) -> bool:
        """A target of this run's trees is at or above ``path``: it exists once that tree is mounted."""

    def dir_steps(self, node: Node, role: str, path: str, owner: Optional[Tuple[int, int]] = None) -> List[Step]:
        ...

    def refuse_symlink_inside(self, node: Node, role: str, path: str) -> None:
        ...

    def check_stacking(self, node: Node) -> None:
        ...

    def shared(self, factory: Callable[[Observed], Shared]) -> Shared:
        """One ``factory(observed)`` per plan, for a kind's own bookkeeping across its nodes."""


class Persisting(Protocol):
    """What the renderer offers a kind (plugin_utils._persistence._Renderer implements it)."""

    def mount(self, node: Node, item: Dict[str, Any], what: str, fstype: str, options: List[str], description: str,
              requires_mounts_for: Sequence[str] = (), requires_units: Sequence[str] = (),
              unit_only_requires_mounts_for: bool = False) -> None:
        """A mount unit or fstab line: mount(8) mounts ``what`` on the node's target."""

    def helper_mount(self, node: Node, item: Dict[str, Any], spec: Dict[str, Any], layers: List[str],
                     named: List[str], description: str) -> None:
        """A mount that the boot helper makes from ``spec`` (boot.SPEC_KEYS but the renderer's own)."""

    def nbd_attach(self, node: Node, image: str, image_format: str, readonly: bool) -> Tuple[str, str]:
        """The pinned nbd device of an image and the service that serves it there."""

    def fuse_export(self, node: Node, image: str, image_format: str) -> Tuple[str, str]:
        """The read-only FUSE export file of an image and the service that starts it."""


class Reading(Protocol):
    """What discovery offers a kind (discover._discover._Reader implements it)."""
    observed: Observed
    root: str  # the target of the tree being read (it names the tree's idmapped mounts)

    def overlay(self, entry: MountEntry) -> Dict[str, Any]:
        ...

    def layer(self, path: str) -> Any:
        ...

    def is_nested(self, path: str) -> bool:
        ...


# --- the fields every kind parses alike ---------------------------------------------------------------------------

def path_field(raw: Dict[str, Any], key: str, label: str) -> str:
    """A path the node must have."""
    path = optional_path_field(raw, key, label)
    if path is None:
        raise TreeError('%s.%s is required' % (label, key))
    return path


def optional_path_field(raw: Dict[str, Any], key: str, label: str) -> Optional[str]:
    value = raw.get(key)
    if value is None or value == '':
        return None
    if not isinstance(value, str):
        raise TreeError('%s.%s must be a path string, not %s' % (label, key, type(value).__name__))
    return normalize_path(value, '%s.%s' % (label, key))


def normalize_path(value: str, where: str) -> str:
    """Absolute, no '..', no NUL; '//' and trailing '/' folded so it compares with mountinfo."""
    if '\0' in value:
        raise TreeError('%s: a path cannot contain a NUL byte' % where)
    if not value.startswith('/'):
        raise TreeError('%s: %r is not an absolute path' % (where, value))
    if '..' in value.split('/'):
        raise TreeError("%s: %r contains '..'; give the path without it" % (where, value))
    return fold_path(value)


def flag_field(raw: Dict[str, Any], key: str, label: str) -> bool:
    try:
        return boolean(raw.get(key, False), strict=True)
    except TypeError:
        raise TreeError('%s.%s must be true or false, not %r' % (label, key, raw.get(key)))


def mount_flags_field(raw: Dict[str, Any], label: str) -> Tuple[str, ...]:
    try:
        return normalize_mount_flags(raw.get('mount_flags'), label)
    except OptionError as error:
        raise TreeError(str(error))


def accessmode_field(raw: Dict[str, Any], label: str) -> Optional[str]:
    value = raw.get('accessmode')
    if value is not None and value not in ACCESS_MODES:
        raise TreeError('%s.accessmode: %r is not supported on a host (only %s)'
                        % (label, value, ', '.join(ACCESS_MODES)))
    return value


def idmap_field(raw: Dict[str, Any], label: str, kind: Type[Node], top: bool) -> Optional[IdMap]:
    if raw.get('idmap') is None:
        return None
    if top and not kind.HAS_LAYERS:
        raise TreeError('%s.idmap: a top-level %s filesystem has no lower layers to idmap (an idmap goes on an '
                        'overlay or on its lowers)' % (label, kind.kind))
    if not top and kind.HAS_LAYERS:
        raise TreeError('%s.idmap: an overlay cannot be idmapped itself (the kernel refuses it); give its lowers '
                        'the idmap, or the top-level filesystem, whose idmap its lowers take' % label)
    try:
        return parse_idmap(raw['idmap'], '%s.idmap' % label)
    except IdMapError as error:
        raise TreeError(str(error))
