# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The filesystem tree: parse the YAML form, validate what needs no host, and render it back.

Pure functions. The YAML form is one-to-one with the libvirt-style XML (see
plugins/plugin_utils/_xml_codec.py); every rule here names the offending field.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

from ansible.module_utils.parsing.convert_bool import boolean

from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._idmap import IdMap, IdMapError, idmap_mount_path, parse_idmap
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._options import (
    DEFAULT_MOUNT_FLAGS,
    OptionError,
    check_conflicts,
    normalize_mount_flags,
    normalize_options,
)
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._paths import fold_path

MAX_LOWER_LAYERS = 500
MAX_OVERLAY_NESTING = 2  # FILESYSTEM_MAX_STACK_DEPTH: fs -> overlay -> overlay
# Flattened, a tree may nest deeper; every level past the kernel's adds at least one layer to the overlays above
MAX_FLATTENED_NESTING = 100
TOP_LEVEL_TYPES = ('overlay', 'mount', 'bind', 'block', 'file')
LOWER_TYPES = ('dir', 'overlay', 'mount', 'block', 'file')
QEMU_FORMATS = ('raw', 'qcow2', 'qcow', 'vmdk', 'vdi', 'vhdx', 'vpc', 'qed', 'parallels')
# loop: raw only; nbd: qemu-nbd; fuse: qemu-storage-daemon's read-only FUSE export on a loop device (no nbd needed)
IMAGE_DRIVERS = {'loop': ('raw',), 'nbd': QEMU_FORMATS, 'fuse': QEMU_FORMATS}
ACCESS_MODES = ('passthrough',)

KEYS = {
    'overlay': ('type', 'upper', 'work', 'lower', 'target', 'options', 'readonly', 'mount_flags', 'accessmode', 'idmap'),
    'dir': ('type', 'target', 'readonly', 'idmap'),
    'mount': ('type', 'source', 'target', 'readonly', 'mount_flags', 'accessmode', 'idmap'),
    'bind': ('type', 'source', 'target', 'readonly', 'mount_flags', 'accessmode', 'idmap'),
    'block': ('type', 'source', 'target', 'readonly', 'mount_flags', 'accessmode', 'idmap'),
    'file': ('type', 'source', 'driver', 'format', 'target', 'readonly', 'mount_flags', 'accessmode', 'idmap'),
}
# A lower with an idmap (its own, or its filesystem's) is used through a node of this kind: the idmapped mount of
# the lower's target, on a path of the collection's own (idmap.idmap_mount_path). The tree's YAML never names it.
IDMAPPED = 'idmapped'


class TreeError(ValueError):
    pass


class Node(object):
    """One element of the tree: an overlay, a lower dir, something mounted at a target, or the idmapped mount of a
    lower (kind IDMAPPED: its ``source`` is the lower's target, its one lower that lower).

    ``idmap`` (an idmap.IdMap): of an IDMAPPED node the mapping it mounts with; of any other, the one it was given.
    """

    def __init__(self, kind, label, target, source=None, upper=None, work=None, lowers=(),
                 options=None, readonly=False, driver=None, image_format=None, accessmode=None, is_layer=False,
                 idmap=None, mount_flags=()):
        self.kind = kind
        self.label = label
        self.target = target
        self.source = source
        self.upper = upper
        self.work = work
        self.lowers = list(lowers)
        self.options = options or {}
        self.readonly = readonly
        self.driver = driver
        self.image_format = image_format
        self.accessmode = accessmode
        self.is_layer = is_layer
        self.idmap = idmap
        self.mount_flags = mount_flags  # a top-level filesystem's (options.MOUNT_FLAGS); a layer's mount has none
        self.position = 0  # place in the input batch (roots are applied in dependency order)
        # An overlay's layers as it is mounted (stacked_layers): Layer records, topmost first, and the labels of
        # the nested overlays whose own layers stand in their place (flattened)
        self.layers = [Layer(lower.target, lower, lower.as_given.label) for lower in self.lowers]
        self.flattened = []
        # walk()'s answer, built once: a run walks every tree many times, and a node's lowers never change
        self._subtree = (self,) + tuple(node for lower in self.lowers for node in lower.walk())

    @property
    def mounted_readonly(self):
        """How the node is mounted: image and block layers under an overlay read-only, everything else as asked."""
        return self.readonly or (self.is_layer and self.kind in ('file', 'block'))

    @property
    def mount_kind(self):
        """How the node is mounted on a host: LXC's 'bind' (a path inside the container) is a bind mount like 'mount'."""
        return 'mount' if self.kind == 'bind' else self.kind

    @property
    def is_mounted_node(self):
        """Dir lowers are used in place; every other node is mounted at its target."""
        return self.kind != 'dir'

    def walk(self):
        """Pre-order: this node, then its lowers in order (top-down)."""
        return self._subtree

    def layer_paths(self):
        """The lowerdir= list of an overlay, topmost first."""
        return [layer.path for layer in self.layers]

    @property
    def stack_depth(self):
        """How many overlays this node's mount stacks, counting the tree only (the host's own mounts under its
        dirs are the planner's to count)."""
        if self.kind != 'overlay':
            return 0
        return 1 + max(layer.node.stack_depth if layer.node else 0 for layer in self.layers)

    def describe(self):
        return '%s (%s at %s)' % (self.label, self.kind, self.target)

    @property
    def as_given(self):
        """The node the tree's YAML names: an idmapped mount stands for its lower."""
        return self.lowers[0] if self.kind == IDMAPPED else self


class Layer(NamedTuple):
    """One lowerdir= entry of an overlay: a lower node's target, or (``node`` None) the upper dir of a nested
    overlay that was flattened into this one. ``label`` names it in messages."""
    path: str
    node: Optional['Node']
    label: str

    @property
    def idmapped_mount(self):
        """The IDMAPPED node the overlay reads this layer through, or None."""
        return self.node if self.node is not None and self.node.kind == IDMAPPED else None

    @property
    def host_path(self):
        """The host dir the layer shows: of an idmapped layer, the dir its mount is a clone of."""
        return self.idmapped_mount.source if self.idmapped_mount else self.path


def parse_filesystems(raw_list, label='filesystems', flatten=True):
    """Parse and validate a batch; return the Nodes in an order where each stands on what precedes it.

    With ``label='filesystem'`` the list holds the one tree of the module's ``filesystem`` option. ``flatten``: see
    stacked_layers; without it a tree nested deeper than the kernel stacks is refused.
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


class _Context(NamedTuple):
    """What a node's parse knows of the tree above it."""
    top: bool
    overlays_above: int
    flatten: bool
    root_target: Optional[str] = None  # the top-level filesystem's (names the idmapped mounts of its layers)
    idmap: Optional[IdMap] = None  # the top-level filesystem's idmap, for the lowers without their own


def parse_filesystem(raw, label, flatten=True):
    node = _parse_node(raw, label, _Context(top=True, overlays_above=0, flatten=flatten))
    check_paths_disjoint(node)
    return node


def _parse_node(raw, label, context):
    top, overlays_above, flatten = context.top, context.overlays_above, context.flatten
    if isinstance(raw, str) and not top:
        raw = {'type': 'dir', 'target': raw}
    if not isinstance(raw, dict):
        raise TreeError('%s must be a mapping%s' % (label, '' if top else ' or a path string'))
    kind = raw.get('type', 'overlay' if top else 'dir')
    allowed = TOP_LEVEL_TYPES if top else LOWER_TYPES
    if kind not in allowed:
        raise TreeError('%s.type: %r is not one of %s' % (label, kind, ', '.join(allowed)))
    unknown = sorted(set(raw) - set(KEYS[kind]))
    if unknown:
        raise TreeError('%s: unknown key %s for type %s (allowed: %s)'
                        % (label, ', '.join(unknown), kind, ', '.join(KEYS[kind])))
    top_only = (('accessmode', 'an access mode'),
                ('mount_flags', 'mount flags (its layers are read by its overlay only)'))
    for key, what in top_only:
        if key in raw and not top:
            raise TreeError('%s.%s: only a top-level filesystem has %s' % (label, key, what))
    common = dict(
        label=label,
        target=_path(raw, 'target', label),
        readonly=_flag(raw, 'readonly', label),
        accessmode=_accessmode(raw, label),
        is_layer=not top,
        idmap=_idmap(raw, label, kind, top),
        mount_flags=_mount_flags(raw, label) if top else (),
    )
    if kind == 'overlay':
        if overlays_above >= MAX_OVERLAY_NESTING and not flatten:  # before descending: a deep tree costs nothing
            raise TreeError('%s: overlays nest at most %d deep (the kernel stacks at most %d filesystems on a disk '
                            'fs; flatten=true mounts deeper trees)' % (label, MAX_OVERLAY_NESTING, MAX_OVERLAY_NESTING))
        if overlays_above >= MAX_FLATTENED_NESTING:
            raise TreeError('%s: overlays nest at most %d deep, flattened (each level adds a layer to the ones above)'
                            % (label, MAX_FLATTENED_NESTING))
        return _parse_overlay(raw, common, context._replace(
            top=False, overlays_above=overlays_above + 1, root_target=context.root_target or common['target'],
            idmap=context.idmap or common['idmap']))
    if kind == 'dir':
        return Node('dir', **common)
    source = _path(raw, 'source', label)
    if kind == 'file':
        driver, image_format = _image_driver(raw, label)
        return Node('file', source=source, driver=driver, image_format=image_format, **common)
    return Node(kind, source=source, **common)


def _parse_overlay(raw, common, below):
    """``below``: the context of its lowers."""
    label = common['label']
    upper = _path(raw, 'upper', label, required=False)
    work = _path(raw, 'work', label, required=False)
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
    if upper and _related(upper, work):
        raise TreeError('%s: upper %s and work %s must be separate subtrees' % (label, upper, work))
    try:
        options = normalize_options(raw.get('options'), label)
        check_conflicts(options, bool(upper), label)
    except OptionError as error:
        raise TreeError(str(error))
    lowers = [_idmapped(_parse_node(item, '%s.lower[%d]' % (label, index), below), below)
              for index, item in enumerate(lowers_raw)]
    node = Node('overlay', upper=upper, work=work, lowers=lowers, options=options, **common)
    node.layers, node.flattened = stacked_layers(lowers)
    check_layers_disjoint(label, node.layers, upper, work)
    if len(node.layers) > MAX_LOWER_LAYERS:
        raise TreeError('%s.lower: with the nested overlays %s flattened into it, it has %d layers; the kernel allows '
                        'at most %d' % (label, ', '.join(node.flattened), len(node.layers), MAX_LOWER_LAYERS))
    return node


def stacked_layers(lowers):
    """The layers of an overlay over ``lowers``, and the labels of the lowers flattened into it.

    The kernel stacks at most MAX_OVERLAY_NESTING overlays. A nested overlay that already stacks that many is not
    used through its target: its own layers stand in its place, its upper dir first (a lower reads its whiteouts
    and opaque dirs as any lower does), so this overlay reads the same files and stacks no deeper. The nested
    overlay is still mounted at its own target. Each lower's layers stack at most one less than the limit, so
    they fit as they are."""
    layers, flattened = [], []
    for lower in lowers:
        if lower.stack_depth >= MAX_OVERLAY_NESTING:
            layers += ([Layer(lower.upper, None, lower.label + '.upper')] if lower.upper else []) + lower.layers
            flattened.append(lower.label)
        else:
            layers.append(Layer(lower.target, lower, lower.as_given.label))
    return layers, flattened


def check_layers_disjoint(label, layers, upper, work):
    """The kernel refuses a layer that repeats or contains another (ELOOP: conflicting/overlapping path), flattened
    layers included. Linear: each path looks up its own ancestors among the paths before it, and itself among
    theirs. (Upper and work in one another is the separate-subtrees rule's to name.)"""
    named = [(layer.label, layer.host_path) for layer in layers]
    if upper:
        named += [('%s.upper' % label, upper), ('%s.work' % label, work)]
    at, below = {}, {}  # path -> (name, path) of an earlier layer at it, or of one at or below it
    for name, path in named:
        for other in [at.get(ancestor) for ancestor in path_and_ancestors(path)] + [below.get(path)]:
            if other and (name, other[0]) != ('%s.work' % label, '%s.upper' % label):
                raise TreeError('%s: %s overlaps %s %s; the kernel refuses repeated or nested layers'
                                % (name, path, other[0], other[1]))
        at.setdefault(path, (name, path))
        for ancestor in path_and_ancestors(path):
            below.setdefault(ancestor, (name, path))


def _idmap(raw, label, kind, top):
    if raw.get('idmap') is None:
        return None
    if top and kind != 'overlay':
        raise TreeError('%s.idmap: a top-level %s filesystem has no lower layers to idmap (an idmap goes on an '
                        'overlay or on its lowers)' % (label, kind))
    if not top and kind == 'overlay':
        raise TreeError('%s.idmap: an overlay cannot be idmapped itself (the kernel refuses it); give its lowers '
                        'the idmap, or the top-level filesystem, whose idmap its lowers take' % label)
    try:
        return parse_idmap(raw['idmap'], '%s.idmap' % label)
    except IdMapError as error:
        raise TreeError(str(error))


def _idmapped(lower, context):
    """A lower as its overlay uses it: through an idmapped mount when it has an idmap, its own or the top-level
    filesystem's. A nested overlay is used as it is (its lowers take the mapping)."""
    idmap = lower.idmap or context.idmap
    if idmap is None or lower.kind == 'overlay':
        return lower
    return Node(IDMAPPED, '%s.idmap' % lower.label, idmap_mount_path(context.root_target, lower.target),
                source=lower.target, lowers=[lower], readonly=lower.mounted_readonly, is_layer=True, idmap=idmap)


def _image_driver(raw, label):
    image_format = raw.get('format')
    if not image_format:
        raise TreeError('%s.format is required: image formats are never probed (CVE-2013-4297); '
                        'say raw, qcow2, ...' % label)
    driver = raw.get('driver', 'loop' if image_format == 'raw' else None)
    if driver not in IMAGE_DRIVERS:
        raise TreeError('%s.driver: %r is not one of %s (loop serves raw only; nbd and fuse serve %s)'
                        % (label, driver, ', '.join(IMAGE_DRIVERS), ', '.join(QEMU_FORMATS)))
    if image_format not in IMAGE_DRIVERS[driver]:
        raise TreeError('%s.format: driver %s serves %s, not %r'
                        % (label, driver, ', '.join(IMAGE_DRIVERS[driver]), image_format))
    return driver, image_format


def _path(raw, key, label, required=True):
    value = raw.get(key)
    if value is None or value == '':
        if required:
            raise TreeError('%s.%s is required' % (label, key))
        return None
    if not isinstance(value, str):
        raise TreeError('%s.%s must be a path string, not %s' % (label, key, type(value).__name__))
    return normalize_path(value, '%s.%s' % (label, key))


def normalize_path(value, where):
    """Absolute, no '..', no NUL; '//' and trailing '/' folded so it compares with mountinfo."""
    if '\0' in value:
        raise TreeError('%s: a path cannot contain a NUL byte' % where)
    if not value.startswith('/'):
        raise TreeError('%s: %r is not an absolute path' % (where, value))
    if '..' in value.split('/'):
        raise TreeError("%s: %r contains '..'; give the path without it" % (where, value))
    return fold_path(value)


def _flag(raw, key, label):
    try:
        return boolean(raw.get(key, False), strict=True)
    except TypeError:
        raise TreeError('%s.%s must be true or false, not %r' % (label, key, raw.get(key)))


def _mount_flags(raw, label):
    try:
        return normalize_mount_flags(raw.get('mount_flags'), label)
    except OptionError as error:
        raise TreeError(str(error))


def _accessmode(raw, label):
    value = raw.get('accessmode')
    if value is not None and value not in ACCESS_MODES:
        raise TreeError('%s.accessmode: %r is not supported on a host (only %s)'
                        % (label, value, ', '.join(ACCESS_MODES)))
    return value


def is_within(path, ancestor):
    return path == ancestor or path.startswith(ancestor.rstrip('/') + '/')


def _related(a, b):
    return is_within(a, b) or is_within(b, a)


def check_paths_disjoint(root):
    """A target must not overlap the paths its own mount stands on, and no upper or work dir
    may live under a target of the same tree (it would land on a mount this tree makes)."""
    for node in root.walk():
        if not node.is_mounted_node:
            continue
        own = list(node.walk())
        for other in root.walk():
            for what, path in _paths_used(other):
                if other is node and what == 'target':
                    continue
                if other in own and _related(node.target, path):
                    raise TreeError('%s: target %s overlaps its own %s %s (%s)'
                                    % (node.label, node.target, what, path, other.label))
                if other not in own and what in ('upper', 'work') and is_within(path, node.target):
                    raise TreeError('%s: %s %s lies under %s, which this tree mounts over'
                                    % (other.label, what, path, node.describe()))


def _paths_used(node):
    """(role, path) pairs of the host paths a node reads or writes."""
    used = [('target', node.target)]
    if node.upper:
        used += [('upper', node.upper), ('work', node.work)]
    if node.source:
        used.append(('source', node.source))
    return used


def _paths_stood_on(root):
    """Host paths a filesystem needs before it can mount, its own mount points included: a mount point
    under another tree's target exists only once that tree is mounted."""
    for node in root.walk():
        for _role, path in _paths_used(node):
            yield path


def check_unique_targets(roots):
    seen = {}
    for root in roots:
        for node in root.walk():
            if not node.is_mounted_node:
                continue
            if node.target in seen:
                raise TreeError('%s: target %s is also the target of %s' % (node.label, node.target, seen[node.target]))
            seen[node.target] = node.label


def check_upper_dirs_unshared(roots):
    """Two overlays on one upper or work dir (or one inside the other's) corrupt each other's view; the kernel
    only warns when index is off. Linear: each path looks up its own ancestors, and itself among theirs."""
    owner, above = {}, {}  # path -> (node, role, path) of an upper or work dir at it, or below it
    for root in roots:
        for node in root.walk():
            if node.kind != 'overlay' or not node.upper:
                continue
            used = (('upper', node.upper), ('work', node.work))
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


def order_by_dependency(roots):
    """Order filesystems so one whose layers live under another's target comes after it; refuse cycles.

    Linear in the paths: each path looks up its own ancestors among the targets, not every target."""
    owner_of = {}
    for root in roots:
        for node in root.walk():
            if node.is_mounted_node:
                owner_of[node.target] = root
    position = dict((id(root), index) for index, root in enumerate(roots))

    def needs(root):
        owners = set(owner_of.get(ancestor) for path in _paths_stood_on(root) for ancestor in path_and_ancestors(path))
        return sorted((owner for owner in owners if owner is not None and owner is not root),
                      key=lambda owner: position[id(owner)])

    ordered, done, visiting = [], set(), []

    def visit(root):
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


@functools.lru_cache(maxsize=1 << 16)
def path_and_ancestors(path):
    """'/a/b' -> ('/a/b', '/a', '/'): every path a normalized path is_within. Cached: the paths of a batch share
    their ancestors, and each rule looks them up."""
    ancestors = [path]
    while path != '/':
        path = path.rsplit('/', 1)[0] or '/'
        ancestors.append(path)
    return tuple(ancestors)


def to_yaml(node):
    """The canonical YAML form of a node (what the module returns as ``filesystems``)."""
    if node.kind == 'dir' and not node.readonly and not node.idmap:
        return node.target
    result = {'type': node.kind}
    if node.kind == 'overlay':
        if node.upper:
            result.update(upper=node.upper, work=node.work)
        result['lower'] = [to_yaml(lower.as_given) for lower in node.lowers]
        if node.options:
            result['options'] = dict(node.options)
    elif node.kind != 'dir':
        result['source'] = node.source
    if node.kind == 'file':
        result.update(driver=node.driver, format=node.image_format)
    result['target'] = node.target
    if node.readonly:
        result['readonly'] = True
    if not node.is_layer and node.mount_flags != DEFAULT_MOUNT_FLAGS:
        result['mount_flags'] = list(node.mount_flags)
    if node.accessmode:
        result['accessmode'] = node.accessmode
    if node.idmap:
        result['idmap'] = node.idmap.to_yaml()
    return result
