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

from ansible_collections.containerhost.overlayfs.plugins.module_utils.steps import _steps as step
from ansible_collections.containerhost.overlayfs.plugins.module_utils.host._confine import describe_refusal
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._idmap import idmap_shortfalls
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._images import ImagePlanner
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._mountinfo import render_super_options
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._options import (
    KERNEL_WORKDIR_ENTRIES,
    OptionError,
    overlay_mount_data,
    overlay_payload,
    volatile_marker_refusal,
)
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._tree import IDMAPPED, MAX_OVERLAY_NESTING, path_and_ancestors
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._verify import missing_flags, overlay_shortfalls


class PlanError(ValueError):
    pass


def plan(roots, observed, state, on_drift='fail', create_dirs=True, on_volatile_marker='fail', lazy_unmount=False):
    planner = _Planner(roots, observed, on_drift, create_dirs, on_volatile_marker, lazy_unmount)
    if state == 'mounted':
        return planner.mounted()
    return planner.unmounted()


def describe_mount(entry):
    """'read-only nodev overlay from overlay (SUPER OPTIONS)': the mount's own mode and flags, then its filesystem."""
    mode = (['read-only'] if entry.readonly else []) + list(entry.mount_flags) + (
        ['idmapped'] if 'idmapped' in entry.mount_options else [])
    return '%s%s from %s (%s)' % (''.join(word + ' ' for word in mode), entry.fstype, entry.source,
                                  render_super_options(entry.super_options))


class _Planner(object):
    def __init__(self, roots, observed, on_drift, create_dirs, on_volatile_marker, lazy_unmount):
        self.roots = roots
        self.observed = observed
        self.on_drift = on_drift
        self.create_dirs = create_dirs
        self.on_volatile_marker = on_volatile_marker
        self.lazy_unmount = lazy_unmount
        self.batch_nodes = dict((node.target, node) for root in roots for node in root.walk() if node.is_mounted_node)
        self.planned_dirs = set()
        self.images = ImagePlanner(observed)
        # by Node.mount_kind
        self.matcher = {'overlay': self._matches_shortfalls, 'block': self._matches_block, 'mount': self._matches_mount,
                        'file': self._matches_file, IDMAPPED: self._matches_shortfalls}
        self.mounter = {'overlay': self._mount_overlay, 'block': self._mount_block, 'mount': self._mount_mount,
                        'file': self._mount_file, IDMAPPED: self._mount_idmapped}

    # --- state: mounted -------------------------------------------------------------------

    def mounted(self):
        teardown, buildup = [], []
        for root in self.roots:
            self._mounted_node(root, teardown, buildup)
        return self._others_left_standing(teardown + buildup)

    def _mounted_node(self, node, teardown, buildup):
        """Plan one node. Return None when it stays as it is, else why it is (re)mounted:
        'new' (nothing was there), 'repair' (its image server died, or a lower of it did) or 'replace'."""
        if not node.is_mounted_node:
            self._require_lower_dir(node)
            return None
        stacked = self.observed.mounts_at(node.target)
        current = stacked[-1] if stacked else None
        status = self._match(node, current)
        if status == 'match' and node.kind == 'overlay' and self.observed.hidden_lowers(current):
            status = 'stale'  # a lower of it was mounted again since: it stands on the earlier one, hidden
        start = len(teardown)
        changed = [reason for reason in (self._mounted_node(lower, teardown, buildup) for lower in node.lowers)
                   if reason]
        if status == 'match' and changed:
            # it stands on a lower that is being remounted: remount it too (asked for unless all are repairs)
            status = 'repair' if set(changed) == {'repair'} else 'stale'
        if status in ('drift', 'stale'):
            self._refuse_unless_replacing(node, current, status)
        if status in ('drift', 'stale', 'broken', 'repair'):
            teardown[start:start] = [self._unmount_step(node, current)] + self._release(node, current)
        if status == 'match':
            buildup.extend(self._flag_steps(node, current))
            return None
        buildup.extend(self._mount_steps(node))
        return {'absent': 'new', 'broken': 'repair', 'repair': 'repair'}.get(status, 'replace')

    def _flag_steps(self, node, current):
        """A top-level filesystem mounted as asked but for some of its mount flags gets them in place: they are the
        mount's, not its filesystem's, and nothing above it in the tree stands on them. Flags it has beyond them
        stay (verify.missing_flags)."""
        missing = () if node.is_layer else missing_flags(current, node.mount_flags)
        return [self._confined(step.set_mount_flags(node.label, node.target, add=missing))] if missing else []

    def _refuse_unless_replacing(self, node, current, status):
        if self.on_drift == 'replace':
            return
        if status == 'stale':
            raise PlanError('%s is mounted, but not on the layers this tree describes (a lower of it is missing '
                            'or was replaced): %s. Set on_drift=replace to remount it.'
                            % (node.describe(), describe_mount(current)))
        differences = self._shortfalls(node, current)
        differences = ' (%s)' % '; '.join(differences) if differences else ''
        raise PlanError('drift at %s: mounted now: %s%s; wanted: %s. Set on_drift=replace to replace it.'
                        % (node.describe(), describe_mount(current), differences, self._describe_wanted(node)))

    def _describe_wanted(self, node):
        readonly = 'read-only ' if node.mounted_readonly else ''
        if node.kind == 'overlay':
            return '%soverlay (%s)' % (readonly, overlay_mount_data(node.layer_paths(), node.upper, node.work, node.options))
        if node.kind == IDMAPPED:
            return '%s idmapped (%s)' % (node.source, node.idmap.summary())
        return '%s%s %s' % (readonly, node.kind, node.source)

    # --- matching the live mount table ------------------------------------------------------

    def _match(self, node, current):
        if current is None:
            return 'absent'
        readonly = node.mounted_readonly
        # an idmapped clone is as read-only as the mount it clones; its overlay uses it read-only either way
        if current.readonly != readonly and not (node.kind == IDMAPPED and current.readonly):
            return 'drift'
        return self.matcher[node.mount_kind](node, current)

    def _shortfalls(self, node, current):
        """What the mount ``current`` of an overlay or an idmapped layer gives other than the node asks."""
        if node.kind == 'overlay':
            return overlay_shortfalls(current, node.layer_paths(), node.upper, node.work, node.options,
                                      node.mounted_readonly)
        if node.kind == IDMAPPED:
            source, target = self.observed.facts(node.source), self.observed.facts(node.target)
            return idmap_shortfalls(current, node.idmap, self.observed.idmaps.get(node.target),
                                    (source.owner, target.owner), source.identity == target.identity)
        return []

    def _matches_shortfalls(self, node, current):
        return 'drift' if self._shortfalls(node, current) else 'match'

    def _matches_block(self, node, current):
        return 'match' if self.observed.facts(node.source).rdev == (current.major, current.minor) else 'drift'

    def _matches_mount(self, node, current):
        source = self.observed.facts(node.source).identity
        return 'match' if source is not None and source == self.observed.facts(node.target).identity else 'drift'

    def _matches_file(self, node, current):
        return self.images.status(node, current, node.mounted_readonly)

    # --- building steps -----------------------------------------------------------------------

    def _mount_steps(self, node):
        facts = self.observed.facts(node.target)
        if facts.is_symlink:  # mountinfo would show where it points; the mount would land there
            raise PlanError('%s: target %s is a symlink (to %s); give the directory itself'
                            % (node.describe(), node.target, facts.realpath))
        self._refuse_symlink_inside(node, 'target', node.target)
        # an idmapped layer's mount point is the collection's own: its mount step makes it
        made = [] if node.kind == IDMAPPED else self._dir_steps(node, 'target', node.target)
        return [self._confined(one) for one in made + self.mounter[node.mount_kind](node)]

    def _refuse_symlink_inside(self, node, role, path):
        """A container may plant a symlink in its view (etc/x -> /), a local user in a dir they can write to: a
        mount, mkdir, layer or image reached through it would be the host's."""
        facts = self.observed.facts(path)
        if facts.symlink_inside:
            raise PlanError('%s: %s' % (node.describe(), describe_refusal(role, path, facts)))

    def _confined(self, one):
        """The step with the ``beneath`` of the path it creates, mounts on or unmounts."""
        if isinstance(one, step.Mkdir):
            return dataclasses.replace(one, beneath=self.observed.facts(one.path).beneath)
        if isinstance(one, step.CONFINABLE_STEPS):
            return dataclasses.replace(one, beneath=self.observed.facts(one.target).beneath)
        return one

    def _mount_overlay(self, node):
        steps = []
        if node.upper:
            self._refuse_symlink_inside(node, 'upper', node.upper)
            self._refuse_symlink_inside(node, 'work', node.work)
            # the root of the merged view is the upper dir's: a new one belongs to the ids root maps to
            owner = node.idmap.map_owner(0, 0) if node.idmap else None
            steps += self._dir_steps(node, 'upper', node.upper, owner) + self._dir_steps(node, 'work', node.work)
            self._check_upper_and_work(node)
            steps += self._volatile_marker_steps(node)
        self._check_stacking_depth(node)
        lowers = node.layer_paths()
        try:
            payload = overlay_payload(lowers, node.upper, node.work, node.options)
        except OptionError as error:
            raise PlanError('%s: %s' % (node.describe(), error))
        layers = lowers + ([node.upper, node.work] if node.upper else [])
        reach = [(path, self.observed.facts(path).beneath) for path in layers]
        steps.append(step.mount_overlay(node.label, node.target, lowers, node.upper, node.work, node.options,
                                        node.mounted_readonly, payload, node.flattened,
                                        reach if any(how for _path, how in reach) else (), node.mount_flags))
        return steps

    def _mount_file(self, node):
        self._refuse_symlink_inside(node, 'image', node.source)
        facts = self.observed.facts(node.source)
        if not facts.exists:
            raise PlanError('%s: image %s does not exist (the tree is not mounted until it does)'
                            % (node.describe(), node.source))
        if not facts.is_file:
            raise PlanError('%s: image %s is not a regular file' % (node.describe(), node.source))
        readonly = node.mounted_readonly
        if node.driver == 'fuse' and not readonly:
            raise PlanError('%s: driver fuse serves images read-only; add readonly (an image used as a lower '
                            'layer is read-only anyway)' % node.describe())
        return self.images.attach(node, readonly)

    def _mount_idmapped(self, node):
        self._refuse_symlink_inside(node, 'source', node.source)
        return [step.mount_idmapped(node.label, node.target, node.source, node.idmap,
                                    self.observed.facts(node.source).beneath)]

    def _mount_block(self, node):
        self._refuse_symlink_inside(node, 'source', node.source)
        if not self.observed.facts(node.source).is_block:
            raise PlanError('%s: %s is not a block device' % (node.describe(), node.source))
        return [step.mount_device(node.label, node.target, node.source, node.mounted_readonly,
                                  device_beneath=self.observed.facts(node.source).beneath,
                                  mount_flags=node.mount_flags)]

    def _mount_mount(self, node):
        self._refuse_symlink_inside(node, 'bind source', node.source)
        if not self.observed.facts(node.source).is_dir:
            raise PlanError('%s: bind source %s is not a directory' % (node.describe(), node.source))
        return [step.mount_bind(node.label, node.target, node.source, node.mounted_readonly,
                                source_beneath=self.observed.facts(node.source).beneath,
                                mount_flags=node.mount_flags)]

    def _dir_steps(self, node, role, path, owner=None):
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

    def _planned_mkdir(self, node, path, owner=None, work_dir=False):
        if path in self.planned_dirs:
            return []
        self.planned_dirs.add(path)
        return [step.mkdir(node.label, path, owner, work_dir)]

    def _batch_target_above(self, path, itself=False):
        """The nearest target of this batch that ``path`` lies under (or is, with ``itself``); None if none."""
        ancestors = path_and_ancestors(path)[0 if itself else 1:]
        return next((self.batch_nodes[above] for above in ancestors if above in self.batch_nodes), None)

    def _require_lower_dir(self, node):
        self._refuse_symlink_inside(node, 'lower dir', node.target)
        if self._batch_target_above(node.target, itself=True) is not None:
            return
        facts = self.observed.facts(node.target)
        if not facts.is_dir:
            raise PlanError('%s: lower dir %s %s' % (node.label, node.target,
                                                     'is not a directory' if facts.exists else 'does not exist'))

    # --- host rules ---------------------------------------------------------------------------

    def _check_upper_and_work(self, node):
        upper_mount = self.observed.mount_containing(node.upper)
        work_mount = self.observed.mount_containing(node.work)
        if upper_mount and work_mount and upper_mount.mount_id != work_mount.mount_id:
            raise PlanError('%s: upper %s (on %s) and work %s (on %s) must be on the same mount'
                            % (node.describe(), node.upper, upper_mount.mountpoint, node.work, work_mount.mountpoint))
        if upper_mount and upper_mount.readonly:
            raise PlanError('%s: upper %s is on the read-only mount at %s'
                            % (node.describe(), node.upper, upper_mount.mountpoint))
        if upper_mount and upper_mount.fstype == 'overlay':
            raise PlanError('%s: upper %s is on the overlay mounted at %s; the kernel does not take an '
                            'overlay as upper fs' % (node.describe(), node.upper, upper_mount.mountpoint))
        leftovers = [name for name in self.observed.facts(node.work).entries if name not in KERNEL_WORKDIR_ENTRIES]
        if leftovers:
            raise PlanError('%s: work dir %s must be empty, it holds %s'
                            % (node.describe(), node.work, ', '.join(leftovers[:5])))
        for role, path in (('upper', node.upper), ('work', node.work)):
            for entry in self.observed.overlays_using(path):
                if entry.mountpoint != self.observed.facts(node.target).realpath:
                    raise PlanError('%s: %s %s is already in use by the overlay mounted at %s'
                                    % (node.describe(), role, path, entry.mountpoint))

    def _volatile_marker_steps(self, node):
        if not self.observed.facts(node.work).volatile_leftover:
            return []
        if self.on_volatile_marker != 'discard':
            raise PlanError('%s: %s' % (node.describe(), volatile_marker_refusal(node.work)))
        return [step.discard_volatile_marker(node.label, node.work, self.observed.facts(node.work).beneath)]

    def _stack_depth(self, node):
        """How many stacked filesystems this node's mount would sit on, as far as can be seen."""
        if node.kind == 'overlay':
            under = [self._stack_depth(layer.node) if layer.node else self._host_depth(layer.path)
                     for layer in node.layers]
            if node.upper:
                under.append(self._host_depth(node.upper))
            return 1 + max(under)
        if node.kind == 'dir':
            return self._host_depth(node.target)
        if node.kind in ('mount', 'bind', IDMAPPED):  # a bind or a clone stacks what it shows
            return self._host_depth(node.source)
        return 0

    def _host_depth(self, path):
        """The stack depth of the filesystem a path lives on: a target of this batch, or what is mounted."""
        owner = self._batch_target_above(path, itself=True)
        if owner is not None:
            return self._stack_depth(owner)
        return self._mounted_depth(self.observed.mount_containing(path), MAX_OVERLAY_NESTING + 1)

    def _mounted_depth(self, entry, budget):
        """Overlays already mounted count 1 each, down through their own layers (bounded: no loops)."""
        layers = entry.overlay_layers() if entry else None
        if not layers or budget == 0:
            return 0
        lowers, upper, _work = layers
        return 1 + max(self._mounted_depth(self.observed.mount_containing(path), budget - 1)
                       for path in lowers + ([upper] if upper else []))

    def _check_stacking_depth(self, node):
        depth = self._stack_depth(node)
        if depth > MAX_OVERLAY_NESTING:
            raise PlanError('%s would stack %d filesystems deep (a layer already lives on an overlay); '
                            'the kernel allows %d' % (node.describe(), depth, MAX_OVERLAY_NESTING))

    # --- state: unmounted ------------------------------------------------------------------

    def unmounted(self):
        steps, releases = [], []
        for root in reversed(self.roots):
            self._unmounted_node(root, steps, releases)
        return self._others_left_standing(steps + releases)

    def _others_left_standing(self, steps):
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

    def _unmounted_node(self, node, steps, releases):
        if node.is_mounted_node:
            self._refuse_symlink_inside(node, 'target', node.target)  # it resolves elsewhere: not this tree's mount
            for current in reversed(self.observed.mounts_at(node.target)):
                status = self._match(node, current)
                if status == 'drift' and self.on_drift != 'replace':
                    raise PlanError('refusing to unmount %s: it is mounted with something this tree does not '
                                    'describe: %s. Set on_drift=replace to unmount it anyway.'
                                    % (node.describe(), describe_mount(current)))
                steps.append(self._unmount_step(node, current))
                releases.extend(self._release(node, current))
            if node.kind == 'file' and not self.observed.facts(node.source).symlink_inside:
                # devices found by an image path that leads elsewhere would be the host's, not this tree's
                releases.extend(self.images.leftovers(node))
        for lower in node.lowers:
            self._unmounted_node(lower, steps, releases)

    def _unmount_step(self, node, current):
        restore = _restore(node, current, self.observed.idmaps.get(node.target))
        return self._confined(step.unmount(node.label, node.target, self._confined(restore), lazy=self.lazy_unmount,
                                           shown=describe_mount(current), remove_mount_point=node.kind == IDMAPPED))

    def _release(self, node, current):
        """What goes with an unmount: the device behind an image layer."""
        return self.images.release(node, current) if node.kind == 'file' else []


def _restore(node, current, shown_idmap):
    """How to mount again what an unmount step removes, should the run have to be undone: as it was.
    ``shown_idmap``: the mapping of an idmapped mount there (None where the kernel cannot tell)."""
    if node.kind == IDMAPPED:
        if shown_idmap is None:
            return step.cannot_restore(node.label, node.target)
        return step.mount_idmapped(node.label, node.target, node.source, shown_idmap)
    layers = current.overlay_layers()
    if layers:
        lowers, upper, work = layers
        shown = dict((key, value) for key, value in current.super_options.items()
                     if key not in ('lowerdir', 'upperdir', 'workdir', 'lowerdir+', 'datadir+', 'rw', 'ro'))
        try:
            payload = overlay_payload(lowers, upper, work, shown)
        except OptionError:
            return step.cannot_restore(node.label, node.target)
        return step.mount_overlay(node.label, node.target, lowers, upper, work, shown, current.readonly, payload,
                                  mount_flags=current.mount_flags)
    if node.mount_kind == 'mount':
        return step.mount_bind(node.label, node.target, node.source, current.readonly,
                               mount_flags=current.mount_flags)
    if current.source.startswith('/dev/'):
        return step.mount_device(node.label, node.target, current.source, current.readonly,
                                 ref=node.label if node.kind == 'file' else None, mount_flags=current.mount_flags)
    return step.cannot_restore(node.label, node.target)
