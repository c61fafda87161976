# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""An id mapping (libvirt's ``<idmap>``): which ids of a layer's files show as which ids through its idmapped mount.

Pure. The ranges follow user_namespaces(7): each maps ``count`` ids from ``start`` (the ids on disk) to ``target``
(the ids shown); the kernel refuses ranges that overlap on either side and takes at most 340 of them.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

if TYPE_CHECKING:  # the mount table entry an idmapped mount is compared in
    from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._mountinfo import MountEntry

IDMAP_DIR = '/run/containerhost-overlayfs/idmap'  # where each idmapped layer is mounted for its overlay
ID_LIMIT = 1 << 32  # ids are 32-bit; (uid_t) -1 is no id
MAX_RANGES = 340  # UID_GID_MAP_MAX_EXTENTS
RANGE_KEYS = ('start', 'target', 'count')
OVERFLOW_ID = 65534  # what an idmapped mount shows for an id its mapping does not cover (/proc/sys/fs/overflowuid)


class IdMapError(ValueError):
    pass


class IdRange(NamedTuple):
    start: int
    target: int
    count: int  # type: ignore[assignment]  # user_namespaces(7)'s name; it shadows tuple.count, unused here


class IdMap(NamedTuple):
    uid: Tuple[IdRange, ...]
    gid: Tuple[IdRange, ...]

    def map_owner(self, uid: int, gid: int) -> Tuple[int, int]:
        """The owner a file owned ``uid``:``gid`` on disk shows through a mount with this mapping."""
        return _map_id(self.uid, uid), _map_id(self.gid, gid)

    def to_yaml(self) -> Dict[str, List[Dict[str, int]]]:
        return dict((kind, [dict(one._asdict()) for one in ranges]) for kind, ranges in self._asdict().items())

    def summary(self) -> str:
        """'uid 0->100000 (65536), gid 0->100000 (65536)'."""
        return ', '.join('%s %s' % (kind, ' '.join('%d->%d (%d)' % one for one in ranges))
                         for kind, ranges in self._asdict().items())


def _map_id(ranges: Sequence[IdRange], on_disk: int) -> int:
    for one in ranges:
        if one.start <= on_disk < one.start + one.count:
            return one.target + on_disk - one.start
    return OVERFLOW_ID


def parse_idmap(raw: Any, label: str) -> IdMap:
    """The YAML form, {uid: [{start, target, count}, ...], gid: [...]}, checked as the kernel would check it."""
    if not isinstance(raw, dict):
        raise IdMapError('%s must be a mapping with uid and gid lists' % label)
    unknown = sorted(set(raw) - {'uid', 'gid'})
    if unknown:
        raise IdMapError('%s: unknown key %s (allowed: uid, gid)' % (label, ', '.join(unknown)))
    for kind in ('uid', 'gid'):
        if not raw.get(kind):
            raise IdMapError('%s.%s: an idmap needs at least one %s range (the kernel maps both or neither)'
                             % (label, kind, kind))
    return IdMap(_ranges(raw['uid'], '%s.uid' % label), _ranges(raw['gid'], '%s.gid' % label))


def _ranges(raw: Any, label: str) -> Tuple[IdRange, ...]:
    if not isinstance(raw, list):
        raise IdMapError('%s must be a list of ranges (start, target, count)' % label)
    if len(raw) > MAX_RANGES:
        raise IdMapError('%s has %d ranges; the kernel takes at most %d' % (label, len(raw), MAX_RANGES))
    ranges = tuple(_range(item, '%s[%d]' % (label, index)) for index, item in enumerate(raw))
    for side in ('start', 'target'):
        _check_disjoint(ranges, side, label)
    return ranges


def _range(raw: Any, label: str) -> IdRange:
    if not isinstance(raw, dict) or set(raw) != set(RANGE_KEYS):
        raise IdMapError('%s must be a mapping of exactly start, target and count' % label)
    values: Dict[str, int] = {}
    for key in RANGE_KEYS:
        value = raw[key]
        if isinstance(value, str) and value.isdigit():
            value = int(value)  # XML attributes and templated YAML arrive as text
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise IdMapError('%s.%s must be a non-negative integer, not %r' % (label, key, value))
        values[key] = value
    if values['count'] == 0:
        raise IdMapError('%s.count must be at least 1' % label)
    for key in ('start', 'target'):
        if values[key] + values['count'] > ID_LIMIT - 1:
            raise IdMapError('%s: %s %d + count %d runs past the last id %d (ids are 32-bit, and %d is no id)'
                             % (label, key, values[key], values['count'], ID_LIMIT - 2, ID_LIMIT - 1))
    return IdRange(**values)


def _check_disjoint(ranges: Sequence[IdRange], side: str, label: str) -> None:
    """Sorted by ``side``, each range must end before the next begins: one sort, not every pair."""
    ordered = sorted(enumerate(ranges), key=lambda pair: getattr(pair[1], side))
    for (first_index, first), (second_index, second) in zip(ordered, ordered[1:]):
        if getattr(first, side) + first.count > getattr(second, side):
            raise IdMapError('%s[%d] and %s[%d] overlap on the %s side (%d..%d and %d..%d); the kernel refuses '
                             'overlapping ranges' % (label, first_index, label, second_index, side,
                                                     getattr(first, side), getattr(first, side) + first.count - 1,
                                                     getattr(second, side), getattr(second, side) + second.count - 1))


def kernel_map(ranges: Sequence[IdRange]) -> str:
    """/proc/PID/uid_map text: 'start target count' per line."""
    return ''.join('%d %d %d\n' % one for one in ranges)


def parse_kernel_map(lines: Sequence[str]) -> Tuple[IdRange, ...]:
    """statmount(2)'s mapping strings ('start target count' each) -> ranges."""
    return tuple(IdRange(*(int(field) for field in line.split())) for line in lines)


def idmap_shortfalls(entry: Optional[MountEntry], idmap: IdMap, shown_idmap: Optional[IdMap],
                     owners: Tuple[Optional[Tuple[int, int]], Optional[Tuple[int, int]]],
                     clones_layer: bool) -> List[str]:
    """What an idmapped mount ``entry`` (a mountinfo.MountEntry) gives other than the mapping ``idmap`` of its layer:
    one rule for the planner, the executor's read-back and the boot helper. ``shown_idmap``: its mapping as
    statmount(2) reads it back, None where the kernel cannot tell (before 6.15); then ``owners``, the owner of the
    layer's root on disk and as the mount shows it, are compared instead. ``clones_layer``: its root is the layer's
    dir (same device and inode)."""
    if entry is None:
        return ['nothing is mounted there']
    if 'idmapped' not in entry.mount_options:
        return ['%s from %s is mounted there, not idmapped' % (entry.fstype, entry.source)]
    if not clones_layer:
        return ['it is the idmapped mount of another dir']
    if shown_idmap is not None:
        return [] if shown_idmap == idmap else ['it maps %s' % shown_idmap.summary()]
    on_disk, shown = owners
    if on_disk is None or shown is None:  # not for a clone of the layer's dir (clones_layer): both are there
        return ['its root cannot be read']
    expected = idmap.map_owner(*on_disk)
    if shown != expected:
        return ['its root, owned by %d:%d on disk, shows as %d:%d, not %d:%d' % (on_disk + shown + expected)]
    return []


def idmap_mount_path(root_target: str, layer_path: str) -> str:
    """Where the idmapped mount of the layer at ``layer_path`` in the tree on ``root_target`` lives. One per layer
    and tree (two trees never share one: unmounting one must not take the other's layer), named by a digest so
    that any path fits in the 255 bytes an fsconfig(2) layer value allows; the mapping is not in the name, so a
    changed mapping is drift on the same path."""
    digest = hashlib.sha256(('%s\0%s' % (root_target, layer_path)).encode('utf-8', 'surrogateescape')).hexdigest()
    return '%s/%s' % (IDMAP_DIR, digest[:24])
