# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A bind mount of a host dir: libvirt's type 'mount', and LXC's 'bind' (on a host, the same bind mount)."""

from __future__ import annotations

from typing import Any, ClassVar, Dict, List, Optional

from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._idmap import IdMap
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._mountinfo import MountEntry
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._paths import fold_path
from ansible_collections.containerhost.overlayfs.plugins.module_utils.steps import _steps as step
from ansible_collections.containerhost.overlayfs.plugins.module_utils.steps._steps import PlanError, Status, Step
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._node import (
    HostDepth,
    MountedFrom,
    Persisting,
    Planning,
    Reading,
    Unexpressed,
    restore_as_mounted,
)


class Mount(MountedFrom):
    kind: ClassVar[str] = 'mount'
    READ_BACK_RANK = 4  # whatever is mounted that no other kind claims
    KEYS = ('type', 'source', 'target', 'readonly', 'mount_flags', 'accessmode', 'idmap')
    TOP_LEVEL = True
    LOWER = True
    XML_ELEMENTS = ('source', 'target', 'readonly', 'mountFlags', 'idmap')
    PICTURE_NAME = 'bind mount'
    PICTURE_COLOURS = ('#f3e5f5', '#4a148c')

    def stacks_over(self, host_depth: HostDepth) -> int:
        return host_depth(self.source)  # a bind stacks what it shows

    def match(self, plan: Planning, current: MountEntry) -> Status:
        source = plan.observed.facts(self.source).identity
        return Status.MATCH if source is not None and source == plan.observed.facts(self.target).identity \
            else Status.DRIFT

    def mount_steps(self, plan: Planning) -> List[Step]:
        plan.refuse_symlink_inside(self, 'bind source', self.source)
        if not plan.observed.facts(self.source).is_dir:
            raise PlanError('%s: bind source %s is not a directory' % (self.describe(), self.source))
        return [step.mount_bind(self.label, self.target, self.source, self.mounted_readonly,
                                source_beneath=plan.observed.facts(self.source).beneath,
                                mount_flags=self.mount_flags)]

    def restore_step(self, current: MountEntry, shown_idmap: Optional[IdMap]) -> Step:
        if current.overlay_layers():
            return restore_as_mounted(self.label, self.target, current)
        return step.mount_bind(self.label, self.target, self.source, current.readonly,
                               mount_flags=current.mount_flags)

    def persist(self, out: Persisting, item: Dict[str, Any]) -> None:
        out.mount(self, item, what=self.source, fstype='none',
                  options=['bind'] + (['ro'] if self.mounted_readonly else []),
                  description='Bind mount of %s on %s' % (self.source, self.target))

    @classmethod
    def read_back(cls, reader: Reading, entry: Optional[MountEntry], path: str) -> Any:
        """What no other kind claims: the host dir a bind mount shows, where its filesystem's root is mounted."""
        if entry is None:
            return None
        if entry.root == '/' and not entry.source.startswith('/'):
            raise Unexpressed('a %s filesystem is mounted at its layer %s; a tree binds host dirs there'
                              % (entry.fstype, entry.mountpoint))
        for other in reader.observed.mounts_of_device(entry.major, entry.minor):
            if other.root == '/' and other.mountpoint != entry.mountpoint:
                node = {'type': cls.kind, 'source': fold_path(other.mountpoint + '/' + entry.root), 'target': path}
                return dict(node, readonly=True) if entry.readonly else node
        raise Unexpressed('its layer at %s is a bind mount of %s on %s, which is not mounted anywhere else'
                          % (entry.mountpoint, entry.root, entry.source))


class ContainerBind(Mount):
    """LXC's 'bind' names a path inside the container; on a host it is a bind mount like 'mount' (top level only)."""
    kind: ClassVar[str] = 'bind'
    LOWER = False
    PICTURE_NAME = 'bind mount inside the container'

    @classmethod
    def read_back(cls, reader: Reading, entry: Optional[MountEntry], path: str) -> Any:
        return None  # a host's bind mount reads back as 'mount'
