# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""An image file, mounted through a device: a loop device (raw), an nbd device served by qemu-nbd, or a loop device
on a read-only FUSE export of qemu-storage-daemon (for kernels without nbd). Always read-only as a lower layer.

The devices are planned by ImagePlanner, one per plan (Planning.shared): several layers may share one FUSE export
(the same image in the same format). Every attach step carries ``ref`` (the node's label): the executor records the
device it got under that name, and the mount step that follows uses it.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Dict, List, Optional, Set, Tuple

from ansible_collections.containerhost.overlayfs.plugins.module_utils.host._hostfs import export_files
from ansible_collections.containerhost.overlayfs.plugins.module_utils.host._observe import (
    FuseExport,
    LoopDevice,
    NbdDevice,
    Observed,
)
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._idmap import IdMap
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._mountinfo import MountEntry
from ansible_collections.containerhost.overlayfs.plugins.module_utils.steps import _steps as step
from ansible_collections.containerhost.overlayfs.plugins.module_utils.steps._steps import PlanError, Status, Step
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._node import (
    Context,
    MountedFrom,
    Node,
    Persisting,
    Planning,
    Reading,
    TreeError,
    Unexpressed,
    path_field,
    restore_as_mounted,
)

QEMU_FORMATS = ('raw', 'qcow2', 'qcow', 'vmdk', 'vdi', 'vhdx', 'vpc', 'qed', 'parallels')
# loop: raw only; nbd: qemu-nbd; fuse: qemu-storage-daemon's read-only FUSE export on a loop device (no nbd needed)
IMAGE_DRIVERS = {'loop': ('raw',), 'nbd': QEMU_FORMATS, 'fuse': QEMU_FORMATS}
DRIVER_NAMES = {'loop': 'a loop device', 'nbd': 'qemu-nbd', 'fuse': "qemu-storage-daemon's FUSE export"}


class Image(MountedFrom):
    kind: ClassVar[str] = 'file'
    READ_BACK_RANK = 2
    KEYS = ('type', 'source', 'driver', 'format', 'target', 'readonly', 'mount_flags', 'accessmode', 'idmap')
    TOP_LEVEL = True
    LOWER = True
    XML_ELEMENTS = ('source', 'driver', 'target', 'readonly', 'mountFlags', 'idmap')
    XML_SOURCE = ('file',)
    PICTURE_NAME = 'image'
    PICTURE_COLOURS = ('#fff3e0', '#e65100')
    READ_ONLY_AS_LAYER = True

    def __init__(self, driver: str, image_format: str, **common: Any) -> None:
        super(Image, self).__init__(**common)
        self.driver = driver
        self.image_format = image_format

    @classmethod
    def parse(cls, raw: Dict[str, Any], common: Dict[str, Any], context: Context) -> Node:
        label = common['label']
        source = path_field(raw, 'source', label)
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
        return cls(source=source, driver=driver, image_format=image_format, **common)

    def yaml_fields(self) -> Dict[str, Any]:
        return {'source': self.source, 'driver': self.driver, 'format': self.image_format}

    # --- plan -----------------------------------------------------------------------------------------------------

    def match(self, plan: Planning, current: MountEntry) -> Status:
        return plan.shared(ImagePlanner).status(self, current)

    def mount_steps(self, plan: Planning) -> List[Step]:
        plan.refuse_symlink_inside(self, 'image', self.source)
        facts = plan.observed.facts(self.source)
        if not facts.exists:
            raise PlanError('%s: image %s does not exist (the tree is not mounted until it does)'
                            % (self.describe(), self.source))
        if not facts.is_file:
            raise PlanError('%s: image %s is not a regular file' % (self.describe(), self.source))
        if self.driver == 'fuse' and not self.mounted_readonly:
            raise PlanError('%s: driver fuse serves images read-only; add readonly (an image used as a lower '
                            'layer is read-only anyway)' % self.describe())
        return plan.shared(ImagePlanner).attach(self)

    def restore_step(self, current: MountEntry, shown_idmap: Optional[IdMap]) -> Step:
        return restore_as_mounted(self.label, self.target, current, ref=self.label)

    def release_steps(self, plan: Planning, current: MountEntry) -> List[Step]:
        return plan.shared(ImagePlanner).release(self, current)

    def leftover_steps(self, plan: Planning) -> List[Step]:
        if plan.observed.facts(self.source).symlink_inside:
            return []  # devices found by an image path that leads elsewhere would be the host's, not this tree's
        return plan.shared(ImagePlanner).leftovers(self)

    # --- persist, draw, read back -----------------------------------------------------------------------------

    def persist(self, out: Persisting, item: Dict[str, Any]) -> None:
        mode = 'ro' if self.mounted_readonly else 'rw'
        if self.driver == 'loop':
            # systemd orders a mount after the mounts of its What= path by itself (RequiresMountsFor= What for
            # non-network mounts, fstab ones included); the unit says it too.
            out.mount(self, item, what=self.source, fstype='auto', options=['loop', mode],
                      requires_mounts_for=[self.source], unit_only_requires_mounts_for=True,
                      description='Image %s on %s' % (self.source, self.target))
        elif self.driver == 'nbd':
            device, service = out.nbd_attach(self, self.source, self.image_format, self.mounted_readonly)
            out.mount(self, item, what=device, fstype='auto', options=[mode], requires_units=[service],
                      description='Image %s (%s) on %s' % (self.source, self.image_format, self.target))
        else:
            export, service = out.fuse_export(self, self.source, self.image_format)
            out.mount(self, item, what=export, fstype='auto', options=['loop', 'ro'], requires_units=[service],
                      description='Image %s (%s, FUSE export) on %s' % (self.source, self.image_format, self.target))

    def picture_row(self, at_target: bool) -> Tuple[str, str, Tuple[Tuple[str, str], ...]]:
        return '%s image %s, through %s%s' % (self.image_format, self.source, DRIVER_NAMES[self.driver],
                                              self.picture_mode(at_target)), self.source, (
            ('target', self.target), ('format', self.image_format), ('driver', self.driver))

    @classmethod
    def read_back(cls, reader: Reading, entry: Optional[MountEntry], path: str) -> Any:
        """A mount of a loop or nbd device: the image it serves, in its format."""
        if entry is None:
            return None
        loop = reader.observed.loop_by_number(entry.major, entry.minor)
        nbd = reader.observed.nbd_by_number(entry.major, entry.minor)
        if (loop is not None or nbd is not None) and not entry.readonly:
            raise Unexpressed('its image layer at %s is mounted read-write; an image under an overlay is '
                              'mounted read-only' % path)
        if nbd is not None:
            served = _nbd_image(nbd, path)
        elif loop is not None:
            served = _loop_image(reader.observed, loop, path)
        else:
            return None
        return dict(served, type=cls.kind, target=path)


def _nbd_image(nbd: NbdDevice, path: str) -> Dict[str, Optional[str]]:
    if nbd.server is None:
        raise Unexpressed('its image layer at %s is on %s, which no qemu-nbd serves any more' % (path, nbd.device))
    if not nbd.server.image_format:
        raise Unexpressed('its image layer at %s is served by qemu-nbd without --format (a tree names the '
                          'format: image formats are never probed)' % path)
    return {'driver': 'nbd', 'format': nbd.server.image_format, 'source': nbd.server.image}


def _loop_image(observed: Observed, loop: LoopDevice, path: str) -> Dict[str, Optional[str]]:
    export = observed.export_at(loop.backing_file)
    if export is not None:
        if export.server is None:
            raise Unexpressed('its image layer at %s is on a FUSE export no daemon serves any more' % path)
        return {'driver': 'fuse', 'format': export.server.image_format, 'source': export.server.image}
    facts = observed.paths.get(loop.backing_file)
    if facts is None or not facts.is_file:
        raise Unexpressed('its image layer at %s is on %s, whose file %s is gone'
                          % (path, loop.device, loop.backing_file))
    return {'driver': 'loop', 'format': 'raw', 'source': loop.backing_file}


DEVICE_OF: Dict[str, str] = {
    'loop': 'the loop device of %s',
    'nbd': 'the nbd device serving %s',
    'fuse': 'the loop device on the FUSE export of %s',
}


class ImagePlanner(object):
    """One per plan: it remembers what the plan already starts, stops and detaches, since several layers
    may share one FUSE export (the same image in the same format)."""

    def __init__(self, observed: Observed) -> None:
        self.observed = observed
        self.exports_started: Set[str] = set()
        self.exports_stopped: Set[str] = set()
        self.loops_detached: Set[str] = set()
        # by driver: the device that serves the image (None: the attach steps get one) and those steps
        self.attach_by_driver: Dict[str, Callable[[Image, bool], Tuple[Optional[str], List[Step]]]] = {
            'loop': self._attach_loop, 'nbd': self._attach_nbd, 'fuse': self._attach_fuse}

    def image(self, node: Image) -> str:
        return self.observed.facts(node.source).realpath

    # --- what is mounted now ----------------------------------------------------------------------

    def status(self, node: Image, current: MountEntry) -> Status:
        """MATCH, DRIFT (something else is mounted), or BROKEN (ours, but its server is gone)."""
        loop = self.observed.loop_by_number(current.major, current.minor)
        nbd = self.observed.nbd_by_number(current.major, current.minor)
        if node.driver == 'nbd' and nbd is not None:
            if nbd.server is None:
                return Status.DRIFT if nbd.foreign else Status.BROKEN
            return Status.MATCH if nbd.server.serves(self.image(node), node.image_format, node.mounted_readonly) \
                else Status.DRIFT
        if node.driver == 'loop' and loop is not None:
            return Status.MATCH if loop.backing_file == self.image(node) else Status.DRIFT
        if node.driver == 'fuse' and loop is not None:
            export_path = export_files(node.source, node.image_format)[0]
            if loop.backing_file != export_path:
                return Status.DRIFT
            export = self.observed.export_at(export_path)
            return Status.MATCH if export is not None and export.server is not None else Status.BROKEN
        return Status.DRIFT

    # --- mounting -----------------------------------------------------------------------------------

    def attach(self, node: Image) -> List[Step]:
        """Steps that give the image a device (unless a free one already serves it), then mount it."""
        readonly = node.mounted_readonly
        device, steps = self.attach_by_driver[node.driver](node, readonly)
        steps.append(step.mount_device(node.label, node.target, device, readonly, ref=node.label,
                                       device_text=DEVICE_OF[node.driver] % node.source, mount_flags=node.mount_flags))
        return steps

    def _attach_loop(self, node: Image, readonly: bool) -> Tuple[Optional[str], List[Step]]:
        free = self._free_loops(self.image(node), readonly)
        if free:
            return free[0].device, []
        return None, [step.attach_loop(node.label, node.source, readonly,
                                       image_beneath=self.observed.facts(node.source).beneath)]

    def _attach_nbd(self, node: Image, readonly: bool) -> Tuple[Optional[str], List[Step]]:
        image = self.image(node)
        free = [nbd for nbd in self.observed.nbds
                if nbd.server is not None and nbd.server.serves(image, node.image_format, readonly)
                and not self.observed.is_mounted_device(nbd.major, nbd.minor)]
        if free:
            return free[0].device, []
        steps: List[Step] = []
        if not self.observed.nbd_loaded:
            steps.append(step.load_module(node.label, 'nbd', self.observed.kernel))
        steps.append(step.attach_nbd(node.label, image, node.image_format, readonly,
                                     image_beneath=self.observed.facts(node.source).beneath))
        return None, steps

    def _attach_fuse(self, node: Image, readonly: bool) -> Tuple[Optional[str], List[Step]]:
        image = self.image(node)
        export_path, pidfile, metafile = export_files(node.source, node.image_format)
        export = self.observed.export_at(export_path)
        steps: List[Step] = []
        if export_path in self.exports_started:
            pass  # another layer of this plan starts the same export
        elif export is None or export.server is None or export_path in self.exports_stopped:
            if export is not None and export_path not in self.exports_stopped:
                steps.append(self._stop_export_step(node, export))
            self.exports_started.add(export_path)
            steps.append(step.start_export(node.label, image, node.image_format, export_path, pidfile, metafile,
                                           image_beneath=self.observed.facts(node.source).beneath))
        else:
            free = self._free_loops(export_path, True)
            if free:
                return free[0].device, []
        steps.append(step.attach_loop(node.label, export_path, True))
        return None, steps

    def _free_loops(self, backing: str, readonly: bool) -> List[LoopDevice]:
        return [loop for loop in self.observed.loops_backed_by(backing)
                if loop.readonly == readonly and not loop.holders
                and not self.observed.is_mounted_device(loop.major, loop.minor)]

    # --- releasing ----------------------------------------------------------------------------------

    def release(self, node: Image, current: MountEntry) -> List[Step]:
        """After ``current`` (this node's mount) is unmounted: let go of the device behind it."""
        loop = self.observed.loop_by_number(current.major, current.minor)
        nbd = self.observed.nbd_by_number(current.major, current.minor)
        if self._mounted_elsewhere(current):
            return []
        if nbd is not None:
            return [self._detach_nbd_step(node, nbd)]
        if loop is None:
            return []
        steps: List[Step] = [self._detach_loop_step(node, loop)]
        export = self.observed.export_at(loop.backing_file)
        if export is not None and not self._export_still_used(export):
            steps.append(self._stop_export_step(node, export))
        return steps

    def _export_still_used(self, export: FuseExport) -> bool:
        """A loop device on the export that this plan does not detach (another layer's) keeps it."""
        return any(loop.device not in self.loops_detached for loop in self.observed.loops_backed_by(export.path))

    def leftovers(self, node: Image) -> List[Step]:
        """Devices and exports serving this node's image that nothing mounts (an interrupted run's)."""
        image = self.image(node)
        readonly = node.mounted_readonly
        if node.driver == 'nbd':
            return [self._detach_nbd_step(node, nbd) for nbd in self.observed.nbds
                    if nbd.server is not None and nbd.server.serves(image, node.image_format, readonly)
                    and not self.observed.is_mounted_device(nbd.major, nbd.minor)]
        backing = image if node.driver == 'loop' else export_files(node.source, node.image_format)[0]
        steps: List[Step] = [self._detach_loop_step(node, loop) for loop in self._free_loops(backing, readonly)
                             if loop.device not in self.loops_detached]
        export = self.observed.export_at(backing)
        if export is not None and export.path not in self.exports_stopped and not self._export_still_used(export):
            steps.append(self._stop_export_step(node, export))
        return steps

    def _mounted_elsewhere(self, current: MountEntry) -> bool:
        return any(entry.mount_id != current.mount_id
                   for entry in self.observed.mounts_of_device(current.major, current.minor))

    def _detach_loop_step(self, node: Image, loop: LoopDevice) -> Step:
        self.loops_detached.add(loop.device)
        return step.detach_loop(node.label, loop.device, loop.backing_file, loop.readonly)

    def _detach_nbd_step(self, node: Image, nbd: NbdDevice) -> Step:
        server = nbd.server
        if server is None:
            return step.detach_nbd(node.label, nbd.device)
        return step.detach_nbd(node.label, nbd.device, server.image, server.image_format, server.readonly)

    def _stop_export_step(self, node: Image, export: FuseExport) -> Step:
        self.exports_stopped.add(export.path)
        server = export.server
        if server is None:
            return step.stop_export(node.label, export.path, export.pidfile, export.metafile)
        return step.stop_export(node.label, export.path, export.pidfile, export.metafile, server.image,
                                server.image_format)
