# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The filesystem tree: parse a batch of trees from their YAML form, check the rules between nodes and between
trees, and order the trees so each stands on what precedes it.

Pure functions. The YAML form is one-to-one with the libvirt-style XML (see plugins/plugin_utils/_xml_codec.py);
every rule here names the offending field. What a node of each kind is lives in its kind's module (_kinds.KINDS).
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Tuple

from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._paths import (
    is_within,
    path_and_ancestors,
    related,
)
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._kinds import (
    BY_TYPE,
    LOWER_TYPES,
    TOP_LEVEL_TYPES,
)
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._node import (
    Context,
    Node,
    TreeError,
    accessmode_field,
    flag_field,
    idmap_field,
    mount_flags_field,
    path_field,
)


def parse_filesystems(raw_list: Any, label: str = 'filesystems', flatten: bool = True) -> List[Node]:
    """Parse and validate a batch; return the Nodes in an order where each stands on what precedes it.

    With ``label='filesystem'`` the list holds the one tree of the module's ``filesystem`` option. ``flatten``: see
    overlay.stacked_layers; without it a tree nested deeper than the kernel stacks is refused.
    """
    if not isinstance(raw_list, list) or not raw_list:
        raise TreeError('%s must be a non-empty list of filesystems' % label)
    if label == 'filesystem':
        nodes = [parse_filesystem(raw_list[0], label, flatten)]
    else:
        nodes = [parse_filesystem(raw, '%s[%d]' % (label, index), flatten) for index, raw in enumerate(raw_list)]
    for position, node in enumerate(nodes):
        node.position = position
    check_unique_targets(nodes)
    check_upper_dirs_unshared(nodes)
    return order_by_dependency(nodes)


def parse_filesystem(raw: Any, label: str, flatten: bool = True) -> Node:
    node = parse_node(raw, label, Context(top=True, overlays_above=0, flatten=flatten, parse_lower=parse_node))
    check_paths_disjoint(node)
    return node


def parse_node(raw: Any, label: str, context: Context) -> Node:
    """A node of the kind its ``type`` names, with the fields every kind has checked here and its own by its kind."""
    top = context.top
    if isinstance(raw, str) and not top:
        raw = {'type': 'dir', 'target': raw}
    if not isinstance(raw, dict):
        raise TreeError('%s must be a mapping%s' % (label, '' if top else ' or a path string'))
    name = raw.get('type', 'overlay' if top else 'dir')
    allowed = TOP_LEVEL_TYPES if top else LOWER_TYPES
    if name not in allowed:
        raise TreeError('%s.type: %r is not one of %s' % (label, name, ', '.join(allowed)))
    kind = BY_TYPE[name]
    unknown = sorted(set(raw) - set(kind.KEYS))
    if unknown:
        raise TreeError('%s: unknown key %s for type %s (allowed: %s)'
                        % (label, ', '.join(unknown), name, ', '.join(kind.KEYS)))
    top_only = (('accessmode', 'an access mode'),
                ('mount_flags', 'mount flags (its layers are read by its overlay only)'))
    for key, what in top_only:
        if key in raw and not top:
            raise TreeError('%s.%s: only a top-level filesystem has %s' % (label, key, what))
    common: Dict[str, Any] = dict(
        label=label,
        target=path_field(raw, 'target', label),
        readonly=flag_field(raw, 'readonly', label),
        accessmode=accessmode_field(raw, label),
        is_layer=not top,
        idmap=idmap_field(raw, label, kind, top),
        mount_flags=mount_flags_field(raw, label) if top else (),
    )
    return kind.parse(raw, common, context)


def to_yaml(node: Node) -> Any:
    """The canonical YAML form of a node (what the module returns as ``filesystems``)."""
    return node.to_yaml()


def check_paths_disjoint(root: Node) -> None:
    """A target must not overlap the paths its own mount stands on, and no upper or work dir
    may live under a target of the same tree (it would land on a mount this tree makes)."""
    for node in root.walk():
        if not node.is_mounted_node:
            continue
        own = list(node.walk())
        for other in root.walk():
            for what, path in other.paths_used():
                if other is node and what == 'target':
                    continue
                if other in own and related(node.target, path):
                    raise TreeError('%s: target %s overlaps its own %s %s (%s)'
                                    % (node.label, node.target, what, path, other.label))
                if other not in own and what in ('upper', 'work') and is_within(path, node.target):
                    raise TreeError('%s: %s %s lies under %s, which this tree mounts over'
                                    % (other.label, what, path, node.describe()))


def _paths_stood_on(root: Node) -> Iterator[str]:
    """Host paths a filesystem needs before it can mount, its own mount points included: a mount point
    under another tree's target exists only once that tree is mounted."""
    for node in root.walk():
        for _role, path in node.paths_used():
            yield path


def check_unique_targets(roots: List[Node]) -> None:
    seen: Dict[str, str] = {}
    for root in roots:
        for node in root.walk():
            if not node.is_mounted_node:
                continue
            if node.target in seen:
                raise TreeError('%s: target %s is also the target of %s' % (node.label, node.target, seen[node.target]))
            seen[node.target] = node.label


def check_upper_dirs_unshared(roots: List[Node]) -> None:
    """Two overlays on one upper or work dir (or one inside the other's) corrupt each other's view; the kernel
    only warns when index is off. Linear: each path looks up its own ancestors, and itself among theirs."""
    owner: Dict[str, Tuple[Node, str, str]] = {}  # path -> (node, role, path) of an upper or work dir at it
    above: Dict[str, Tuple[Node, str, str]] = {}  # path -> the same, of one below it
    for root in roots:
        for node in root.walk():
            used = node.private_dirs()
            for role, path in used:
                clashes = [owner.get(ancestor) for ancestor in path_and_ancestors(path)] + [above.get(path)]
                for other in clashes:
                    if other is not None and other[0] is not node:
                        raise TreeError('%s: %s %s overlaps the %s %s of %s; overlays cannot share upper or work dirs'
                                        % (node.label, role, path, other[1], other[2], other[0].label))
            for role, path in used:
                owner[path] = (node, role, path)
                for ancestor in path_and_ancestors(path):
                    above.setdefault(ancestor, (node, role, path))


def order_by_dependency(roots: List[Node]) -> List[Node]:
    """Order filesystems so one whose layers live under another's target comes after it; refuse cycles.

    Linear in the paths: each path looks up its own ancestors among the targets, not every target."""
    owner_of: Dict[str, Node] = {}
    for root in roots:
        for node in root.walk():
            if node.is_mounted_node:
                owner_of[node.target] = root
    position = dict((id(root), index) for index, root in enumerate(roots))

    def needs(root: Node) -> List[Node]:
        owners = set(owner_of.get(ancestor) for path in _paths_stood_on(root) for ancestor in path_and_ancestors(path))
        return sorted((owner for owner in owners if owner is not None and owner is not root),
                      key=lambda owner: position[id(owner)])

    ordered: List[Node] = []
    done = set()
    visiting: List[Node] = []

    def visit(root: Node) -> None:
        if id(root) in done:
            return
        if root in visiting:
            cycle = visiting[visiting.index(root):] + [root]
            raise TreeError('filesystems depend on each other in a cycle: %s'
                            % ' -> '.join('%s (%s)' % (r.label, r.target) for r in cycle))
        visiting.append(root)
        for dependency in needs(root):
            visit(dependency)
        visiting.pop()
        done.add(id(root))
        ordered.append(root)

    for root in roots:
        visit(root)
    return ordered
