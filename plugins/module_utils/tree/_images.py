# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Plan the devices behind image layers: a loop device (raw), an nbd device served by qemu-nbd, or a loop
device on a read-only FUSE export of qemu-storage-daemon (for kernels without nbd).

Pure functions of the tree and the observed host. Every attach step carries ``ref`` (the node's label):
the executor records the device it got under that name, and the mount step that follows uses it.
"""

from __future__ import annotations

from ansible_collections.containerhost.overlayfs.plugins.module_utils.steps import _steps as step
from ansible_collections.containerhost.overlayfs.plugins.module_utils.host._hostfs import export_files


DEVICE_OF = {
    'loop': 'the loop device of %s',
    'nbd': 'the nbd device serving %s',
    'fuse': 'the loop device on the FUSE export of %s',
}


class ImagePlanner(object):
    """One per plan: it remembers what the plan already starts, stops and detaches, since several layers
    may share one FUSE export (the same image in the same format)."""

    def __init__(self, observed):
        self.observed = observed
        self.exports_started = set()
        self.exports_stopped = set()
        self.loops_detached = set()
        self.attach_by_driver = {'loop': self._attach_loop, 'nbd': self._attach_nbd, 'fuse': self._attach_fuse}

    def image(self, node):
        return self.observed.facts(node.source).realpath

    # --- what is mounted now ----------------------------------------------------------------------

    def status(self, node, current, readonly):
        """'match', 'drift' (something else is mounted), or 'broken' (ours, but its server is gone)."""
        loop = self.observed.loop_by_number(current.major, current.minor)
        nbd = self.observed.nbd_by_number(current.major, current.minor)
        if node.driver == 'nbd' and nbd is not None:
            if nbd.server is None:
                return 'drift' if nbd.foreign else 'broken'
            return 'match' if nbd.server.serves(self.image(node), node.image_format, readonly) else 'drift'
        if node.driver == 'loop' and loop is not None:
            return 'match' if loop.backing_file == self.image(node) else 'drift'
        if node.driver == 'fuse' and loop is not None:
            export_path = export_files(node.source, node.image_format)[0]
            if loop.backing_file != export_path:
                return 'drift'
            export = self.observed.export_at(export_path)
            return 'match' if export is not None and export.server is not None else 'broken'
        return 'drift'

    # --- mounting -----------------------------------------------------------------------------------

    def attach(self, node, readonly):
        """Steps that give the image a device (unless a free one already serves it), then mount it."""
        device, steps = self.attach_by_driver[node.driver](node, readonly)
        steps.append(step.mount_device(node.label, node.target, device, readonly, ref=node.label,
                                       device_text=DEVICE_OF[node.driver] % node.source, mount_flags=node.mount_flags))
        return steps

    def _attach_loop(self, node, readonly):
        free = self._free_loops(self.image(node), readonly)
        if free:
            return free[0].device, []
        return None, [step.attach_loop(node.label, node.source, readonly,
                                       image_beneath=self.observed.facts(node.source).beneath)]

    def _attach_nbd(self, node, readonly):
        image = self.image(node)
        free = [nbd for nbd in self.observed.nbds
                if nbd.server is not None and nbd.server.serves(image, node.image_format, readonly)
                and not self.observed.is_mounted_device(nbd.major, nbd.minor)]
        if free:
            return free[0].device, []
        steps = []
        if not self.observed.nbd_loaded:
            steps.append(step.load_module(node.label, 'nbd', self.observed.kernel))
        steps.append(step.attach_nbd(node.label, image, node.image_format, readonly,
                                     image_beneath=self.observed.facts(node.source).beneath))
        return None, steps

    def _attach_fuse(self, node, readonly):
        image = self.image(node)
        export_path, pidfile, metafile = export_files(node.source, node.image_format)
        export = self.observed.export_at(export_path)
        steps = []
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

    def _free_loops(self, backing, readonly):
        return [loop for loop in self.observed.loops_backed_by(backing)
                if loop.readonly == readonly and not loop.holders
                and not self.observed.is_mounted_device(loop.major, loop.minor)]

    # --- releasing ----------------------------------------------------------------------------------

    def release(self, node, current):
        """After ``current`` (this node's mount) is unmounted: let go of the device behind it."""
        loop = self.observed.loop_by_number(current.major, current.minor)
        nbd = self.observed.nbd_by_number(current.major, current.minor)
        if self._mounted_elsewhere(current):
            return []
        if nbd is not None:
            return [self._detach_nbd_step(node, nbd)]
        if loop is None:
            return []
        steps = [self._detach_loop_step(node, loop)]
        export = self.observed.export_at(loop.backing_file)
        if export is not None and not self._export_still_used(export):
            steps.append(self._stop_export_step(node, export))
        return steps

    def _export_still_used(self, export):
        """A loop device on the export that this plan does not detach (another layer's) keeps it."""
        return any(loop.device not in self.loops_detached for loop in self.observed.loops_backed_by(export.path))

    def leftovers(self, node):
        """Devices and exports serving this node's image that nothing mounts (an interrupted run's)."""
        image = self.image(node)
        readonly = node.mounted_readonly
        if node.driver == 'nbd':
            return [self._detach_nbd_step(node, nbd) for nbd in self.observed.nbds
                    if nbd.server is not None and nbd.server.serves(image, node.image_format, readonly)
                    and not self.observed.is_mounted_device(nbd.major, nbd.minor)]
        backing = image if node.driver == 'loop' else export_files(node.source, node.image_format)[0]
        steps = [self._detach_loop_step(node, loop) for loop in self._free_loops(backing, readonly)
                 if loop.device not in self.loops_detached]
        export = self.observed.export_at(backing)
        if export is not None and export.path not in self.exports_stopped and not self._export_still_used(export):
            steps.append(self._stop_export_step(node, export))
        return steps

    def _mounted_elsewhere(self, current):
        return any(entry.mount_id != current.mount_id
                   for entry in self.observed.mounts_of_device(current.major, current.minor))

    def _detach_loop_step(self, node, loop):
        self.loops_detached.add(loop.device)
        return step.detach_loop(node.label, loop.device, loop.backing_file, loop.readonly)

    def _detach_nbd_step(self, node, nbd):
        server = nbd.server
        if server is None:
            return step.detach_nbd(node.label, nbd.device)
        return step.detach_nbd(node.label, nbd.device, server.image, server.image_format, server.readonly)

    def _stop_export_step(self, node, export):
        self.exports_stopped.add(export.path)
        server = export.server
        if server is None:
            return step.stop_export(node.label, export.path, export.pidfile, export.metafile)
        return step.stop_export(node.label, export.path, export.pidfile, export.metafile, server.image,
                                server.image_format)
