# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The idmapped mount of a lower layer: how an overlay reads a lower with an idmap (its own, or its filesystem's).

The tree's YAML never names it: the parse puts one between an overlay and each lower that has an idmap. It clones
the lower's target on a path of the collection's own (idmap.idmap_mount_path), mapped; its one lower is that lower.
"""

from __future__ import annotations

from typing import Any, ClassVar, Dict, List, Optional, Tuple

from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._idmap import (
    IDMAP_DIR,
    IdMap,
    idmap_mount_path,
    idmap_shortfalls,
)
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._mountinfo import MountEntry
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._paths import fold_path, is_within
from ansible_collections.containerhost.overlayfs.plugins.module_utils.steps import _steps as step
from ansible_collections.containerhost.overlayfs.plugins.module_utils.steps._steps import Status, Step
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._node import (
    HostDepth,
    MountedFrom,
    Node,
    Persisting,
    Planning,
    Reading,
    Unexpressed,
)


class IdmappedLayer(MountedFrom):
    """``source`` is the lower's target, ``mapping`` (its ``idmap`` too) the mapping it mounts with."""
    kind: ClassVar[str] = 'idmapped'
    READ_BACK_RANK = 1
    KEYS = ()

    def __init__(self, mapping: IdMap, **common: Any) -> None:
        super(IdmappedLayer, self).__init__(idmap=mapping, **common)
        self.mapping = mapping

    @classmethod
    def over(cls, lower: Node, root_target: Optional[str], idmap: Optional[IdMap]) -> Node:
        """A lower as its overlay uses it: through an idmapped mount when it has an idmap, its own or the top-level
        filesystem's (``idmap``). A nested overlay is used as it is (its lowers take the mapping)."""
        idmap = lower.idmap or idmap
        if idmap is None or root_target is None or lower.HAS_LAYERS:
            return lower
        return cls(label='%s.idmap' % lower.label, target=idmap_mount_path(root_target, lower.target),
                   source=lower.target, lowers=[lower], readonly=lower.mounted_readonly, is_layer=True, mapping=idmap)

    @property
    def as_given(self) -> Node:
        return self.lowers[0]

    @property
    def idmapped_target(self) -> Optional[str]:
        return self.target

    def stacks_over(self, host_depth: HostDepth) -> int:
        return host_depth(self.source)  # a clone stacks what it shows

    # --- plan -----------------------------------------------------------------------------------------------------

    def readonly_matches(self, current: MountEntry) -> bool:
        """A clone is as read-only as the mount it clones; its overlay uses it read-only either way."""
        return current.readonly or current.readonly == self.mounted_readonly

    def match(self, plan: Planning, current: MountEntry) -> Status:
        return Status.DRIFT if self.shortfalls(plan, current) else Status.MATCH

    def shortfalls(self, plan: Planning, current: MountEntry) -> List[str]:
        source, target = plan.observed.facts(self.source), plan.observed.facts(self.target)
        return idmap_shortfalls(current, self.mapping, plan.observed.idmaps.get(self.target),
                                (source.owner, target.owner),
                                source.identity is not None and source.identity == target.identity)

    def describe_wanted(self) -> str:
        return '%s idmapped (%s)' % (self.source, self.mapping.summary())

    def target_dir_steps(self, plan: Planning) -> List[Step]:
        return []  # its mount point is the collection's own: its mount step makes it

    def mount_steps(self, plan: Planning) -> List[Step]:
        plan.refuse_symlink_inside(self, 'source', self.source)
        return [step.mount_idmapped(self.label, self.target, self.source, self.mapping,
                                    plan.observed.facts(self.source).beneath)]

    def restore_step(self, current: MountEntry, shown_idmap: Optional[IdMap]) -> Step:
        if shown_idmap is None:
            return step.cannot_restore(self.label, self.target)
        return step.mount_idmapped(self.label, self.target, self.source, shown_idmap)

    def unmount_removes_mount_point(self) -> bool:
        return True

    # --- persist, draw, read back -----------------------------------------------------------------------------

    def persist(self, out: Persisting, item: Dict[str, Any]) -> None:
        """Nothing of its own: its overlay's helper mounts it (the spec's ``idmapped``)."""
        del out, item

    def picture_row(self, at_target: bool) -> Tuple[str, str, Tuple[Tuple[str, str], ...]]:
        """Its lower's row, with the mapping its files' owners show through."""
        text, path, data = self.as_given.picture_row(at_target)
        summary = self.mapping.summary()
        return '%s; owners shown %s' % (text, summary), path, data + (('idmap', summary), ('idmapped-at', self.target))

    @classmethod
    def read_back(cls, reader: Reading, entry: Optional[MountEntry], path: str) -> Any:
        """The layer an idmapped mount at ``path`` is a clone of, with its mapping."""
        if entry is None or 'idmapped' not in entry.mount_options:
            return None
        idmap = reader.observed.idmaps.get(path)
        if idmap is None:
            raise Unexpressed('its layer at %s is an idmapped mount whose mapping this kernel cannot read back '
                              '(statmount(2) reads it from Linux 6.15)' % path)
        layer = _cloned_layer(reader, entry, path)
        node = reader.layer(layer) if reader.observed.mounts_at(layer) else layer
        return dict({'type': 'dir', 'target': node} if isinstance(node, str) else node, idmap=idmap.to_yaml())


def _cloned_layer(reader: Reading, entry: MountEntry, path: str) -> str:
    """The tree's layer whose idmapped mount is ``entry``: the dir it clones, seen where its filesystem is mounted,
    that names ``path`` (idmap.idmap_mount_path). Mountinfo alone cannot tell a clone of a bind mount from one of
    its source: the name can."""
    candidates = [fold_path('%s/%s' % (other.mountpoint, entry.root[len(other.root):]))
                  for other in reader.observed.mounts_of_device(entry.major, entry.minor)
                  if 'idmapped' not in other.mount_options and is_within(entry.root, other.root)]
    for candidate in candidates:
        if idmap_mount_path(reader.root, candidate) == path:
            return candidate
    raise Unexpressed('its layer at %s is an idmapped mount of %s that no tree made (a tree mounts its '
                      'idmapped layers under %s, each named for the tree and the layer)'
                      % (path, ' or '.join(candidates) or entry.root, IDMAP_DIR))
