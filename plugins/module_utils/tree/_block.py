# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A block device's filesystem, mounted at the target (read-only as a lower layer)."""

from __future__ import annotations

from typing import Any, ClassVar, Dict, List, Optional

from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._mountinfo import MountEntry
from ansible_collections.containerhost.overlayfs.plugins.module_utils.steps import _steps as step
from ansible_collections.containerhost.overlayfs.plugins.module_utils.steps._steps import PlanError, Status, Step
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._node import (
    MountedFrom,
    Persisting,
    Planning,
    Reading,
    Unexpressed,
)


class Block(MountedFrom):
    kind: ClassVar[str] = 'block'
    READ_BACK_RANK = 3
    KEYS = ('type', 'source', 'target', 'readonly', 'mount_flags', 'accessmode', 'idmap')
    TOP_LEVEL = True
    LOWER = True
    XML_ELEMENTS = ('source', 'target', 'readonly', 'mountFlags', 'idmap')
    XML_SOURCE = ('dev', 'file')
    PICTURE_NAME = 'block device'
    PICTURE_COLOURS = ('#e3f2fd', '#0d47a1')
    READ_ONLY_AS_LAYER = True

    def match(self, plan: Planning, current: MountEntry) -> Status:
        return Status.MATCH if plan.observed.facts(self.source).rdev == (current.major, current.minor) \
            else Status.DRIFT

    def mount_steps(self, plan: Planning) -> List[Step]:
        plan.refuse_symlink_inside(self, 'source', self.source)
        if not plan.observed.facts(self.source).is_block:
            raise PlanError('%s: %s is not a block device' % (self.describe(), self.source))
        return [step.mount_device(self.label, self.target, self.source, self.mounted_readonly,
                                  device_beneath=plan.observed.facts(self.source).beneath,
                                  mount_flags=self.mount_flags)]

    def persist(self, out: Persisting, item: Dict[str, Any]) -> None:
        out.mount(self, item, what=self.source, fstype='auto', options=['ro' if self.mounted_readonly else 'rw'],
                  description='%s on %s' % (self.source, self.target))

    @classmethod
    def read_back(cls, reader: Reading, entry: Optional[MountEntry], path: str) -> Any:
        if entry is None or entry.root != '/' or not entry.source.startswith('/dev/'):
            return None
        facts = reader.observed.paths.get(entry.source)
        if facts is None or facts.rdev != (entry.major, entry.minor):
            raise Unexpressed('its layer at %s is mounted from %s, which is no longer that block device'
                              % (path, entry.source))
        if not entry.readonly:
            raise Unexpressed('its block layer at %s is mounted read-write; a block device under an overlay '
                              'is mounted read-only' % path)
        return {'type': cls.kind, 'source': entry.source, 'target': path}
