# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A lower dir: a host dir an overlay reads in place (nothing is mounted for it)."""

from __future__ import annotations

from typing import Any, ClassVar, Optional, Tuple

from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._mountinfo import MountEntry
from ansible_collections.containerhost.overlayfs.plugins.module_utils.steps._steps import PlanError
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._node import (
    HostDepth,
    Node,
    Planning,
    Reading,
    Unexpressed,
)


class Dir(Node):
    kind: ClassVar[str] = 'dir'
    READ_BACK_RANK = 5
    KEYS = ('type', 'target', 'readonly', 'idmap')
    LOWER = True
    is_mounted_node = False
    XML_ELEMENTS = ('target', 'readonly', 'idmap')

    def to_yaml(self) -> Any:
        """A plain dir is its path."""
        return self.target if not self.readonly and not self.idmap else super(Dir, self).to_yaml()

    def stacks_over(self, host_depth: HostDepth) -> int:
        return host_depth(self.target)

    def plan_in_place(self, plan: Planning) -> None:
        plan.refuse_symlink_inside(self, 'lower dir', self.target)
        if plan.in_batch(self.target):
            return
        facts = plan.observed.facts(self.target)
        if not facts.is_dir:
            raise PlanError('%s: lower dir %s %s' % (self.label, self.target,
                                                     'is not a directory' if facts.exists else 'does not exist'))

    def picture_row(self, at_target: bool) -> Tuple[str, str, Tuple[Tuple[str, str], ...]]:
        return 'dir %s%s' % (self.target, ' (read-only)' if self.readonly else ''), self.target, ()

    @classmethod
    def read_back(cls, reader: Reading, entry: Optional[MountEntry], path: str) -> Any:
        """Nothing mounted at a layer: a dir, if there is one."""
        if entry is not None:
            return None
        facts = reader.observed.paths.get(path)
        if facts is None or not facts.exists:
            raise Unexpressed('its lower layer %s no longer exists' % path)
        if not facts.is_dir:
            raise Unexpressed('its lower layer %s is not a directory' % path)
        return path
