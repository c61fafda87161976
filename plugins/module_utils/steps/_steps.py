# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The plan's vocabulary: one typed record per step kind, and the constructors that make them.

The planner and the node kinds (module_utils/tree) build a plan only from the constructors
here; the executor runs each record by its type (``executor.Executor.handlers``), and an undo is a step of
the same vocabulary. ``to_dict()`` is what the module returns as ``steps``: ``action``, ``node`` (the label of
the tree node it serves), ``description`` (one sentence, what ``plan`` shows), and the record's own fields.

``beneath`` (on the steps that create a directory or mount or unmount on one) is None, or (ROOT, BELOW) when the
path is inside another overlay's merged view or upper dir (whose contents a container controls): the executor
then reaches ROOT/BELOW without following any symlink below ROOT (syscalls.open_beneath).
"""

from __future__ import annotations

import dataclasses
import enum
import os
from typing import Any, ClassVar, Dict, Optional, Sequence, Tuple

from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._idmap import IdMap
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._options import (
    Options,
    OverlayPayload,
    volatile_marker,
)
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._paths import Beneath


class PlanError(ValueError):
    """A tree that cannot be mounted (or unmounted) on this host as it is; nothing has changed."""


class Status(enum.Enum):
    """A node against what is mounted at its target now."""
    ABSENT = 'absent'  # nothing is mounted there
    MATCH = 'match'  # the node, as asked
    DRIFT = 'drift'  # something else
    STALE = 'stale'  # the node, on a lower that is missing or is being replaced (the kernel keeps the old one)
    BROKEN = 'broken'  # the node, but the server of its image is gone
    REPAIR = 'repair'  # the node, on a lower whose image server is being repaired


@dataclasses.dataclass(frozen=True)
class Step(object):
    action: ClassVar[str] = ''
    node: str
    description: str

    def to_dict(self) -> Dict[str, Any]:
        return dict(dataclasses.asdict(self), action=self.action)


@dataclasses.dataclass(frozen=True)
class Mkdir(Step):
    """``owner`` (uid, gid): of the directory ``path`` itself, when this step makes it (an idmapped tree's upper
    dir belongs to the ids its root maps to); None leaves it root's. ``work_dir``: it is an overlay's work dir."""
    action: ClassVar[str] = 'mkdir'
    path: str
    beneath: Optional[Beneath] = None
    owner: Optional[Tuple[int, int]] = None
    work_dir: bool = False


@dataclasses.dataclass(frozen=True)
class RemoveEmptyDirs(Step):
    """Undo of Mkdir: the directories it made, newest last; each goes only while it is empty. With ``beneath``
    (a root), the paths are below it and reached as the Mkdir reached them. ``work_dir``: the newest is a work dir,
    and the empty dirs the kernel made in it (options.KERNEL_WORKDIR_ENTRIES) go first."""
    action: ClassVar[str] = 'remove_empty_dirs'
    paths: Tuple[str, ...]
    beneath: Optional[str] = None
    work_dir: bool = False


@dataclasses.dataclass(frozen=True)
class DiscardVolatileMarker(Step):
    """``path``: the marker; ``work``: the work dir it is in, reached as ``beneath`` says."""
    action: ClassVar[str] = 'discard_volatile_marker'
    path: str
    work: str
    beneath: Optional[Beneath] = None


@dataclasses.dataclass(frozen=True)
class RestoreVolatileMarker(Step):
    action: ClassVar[str] = 'restore_volatile_marker'
    path: str
    work: str
    beneath: Optional[Beneath] = None


@dataclasses.dataclass(frozen=True)
class LoadModule(Step):
    action: ClassVar[str] = 'load_module'
    module: str
    kernel: str


@dataclasses.dataclass(frozen=True)
class AttachLoop(Step):
    """``ref`` names the attach for the mount step that uses its device (known only when it runs).
    ``image_beneath``: an image below an open dir, reached as Mkdir's ``beneath`` is."""
    action: ClassVar[str] = 'attach_loop'
    ref: str
    image: str
    readonly: bool
    image_beneath: Optional[Beneath] = None


@dataclasses.dataclass(frozen=True)
class DetachLoop(Step):
    action: ClassVar[str] = 'detach_loop'
    ref: str
    device: str
    image: str
    readonly: bool


@dataclasses.dataclass(frozen=True)
class AttachNbd(Step):
    action: ClassVar[str] = 'attach_nbd'
    ref: str
    image: str
    format: str
    readonly: bool
    image_beneath: Optional[Beneath] = None  # as AttachLoop's


@dataclasses.dataclass(frozen=True)
class DetachNbd(Step):
    """``image`` is None when the device's qemu-nbd is gone: there is nothing to serve again."""
    action: ClassVar[str] = 'detach_nbd'
    ref: str
    device: str
    image: Optional[str]
    format: Optional[str]
    readonly: bool


@dataclasses.dataclass(frozen=True)
class StartExport(Step):
    action: ClassVar[str] = 'start_export'
    image: str
    format: str
    export: str
    pidfile: str
    metafile: str
    image_beneath: Optional[Beneath] = None  # as AttachLoop's


@dataclasses.dataclass(frozen=True)
class StopExport(Step):
    """``image`` is None when the export's daemon is gone."""
    action: ClassVar[str] = 'stop_export'
    export: str
    pidfile: str
    metafile: str
    image: Optional[str]
    format: Optional[str]


@dataclasses.dataclass(frozen=True)
class MountOverlay(Step):
    """What was asked (layers and options, to verify the mount against) and how it is made (``payload``)."""
    action: ClassVar[str] = 'mount'
    kind: ClassVar[str] = 'overlay'
    target: str
    lowers: Tuple[str, ...]
    upper: Optional[str]
    work: Optional[str]
    options: Options
    readonly: bool
    payload: OverlayPayload
    mount_flags: Tuple[str, ...] = ()  # options.MOUNT_FLAGS, set with the mount
    flattened: Tuple[str, ...] = ()  # nested overlays whose own layers stand in their place (overlay.stacked_layers)
    beneath: Optional[Beneath] = None
    # When a layer (lower, upper or work) lies below an open dir: how the kernel reaches each one
    # (syscalls.mount_overlay_reached), (path, None) or (path, (root, below)); empty when none does.
    reach: Tuple[Tuple[str, Optional[Beneath]], ...] = ()

    def to_dict(self) -> Dict[str, Any]:
        return dict(Step.to_dict(self), kind=self.kind)


@dataclasses.dataclass(frozen=True)
class MountDevice(Step):
    """``device`` is None until the attach step named ``ref`` of the same run gives one."""
    action: ClassVar[str] = 'mount'
    kind: ClassVar[str] = 'device'
    target: str
    device: Optional[str]
    ref: Optional[str]
    readonly: bool
    mount_flags: Tuple[str, ...] = ()
    beneath: Optional[Beneath] = None
    device_beneath: Optional[Beneath] = None  # a device path below an open dir: reached as ``beneath`` is

    def to_dict(self) -> Dict[str, Any]:
        return dict(Step.to_dict(self), kind=self.kind)


@dataclasses.dataclass(frozen=True)
class MountBind(Step):
    action: ClassVar[str] = 'mount'
    kind: ClassVar[str] = 'bind'
    target: str
    source: str
    readonly: bool
    mount_flags: Tuple[str, ...] = ()
    beneath: Optional[Beneath] = None
    source_beneath: Optional[Beneath] = None  # a source below an open dir: reached as ``beneath`` is

    def to_dict(self) -> Dict[str, Any]:
        return dict(Step.to_dict(self), kind=self.kind)


@dataclasses.dataclass(frozen=True)
class SetMountFlags(Step):
    """Add the mount flags ``add`` (options.MOUNT_FLAGS) to the mount at ``target``, in place, nothing unmounted;
    its undo takes them off again (``remove``)."""
    action: ClassVar[str] = 'set_mount_flags'
    target: str
    add: Tuple[str, ...] = ()
    remove: Tuple[str, ...] = ()
    beneath: Optional[Beneath] = None


@dataclasses.dataclass(frozen=True)
class MountIdmapped(Step):
    """A clone of the mount at ``source`` on ``target``, showing its files' owners through ``idmap``. The target is
    the collection's own mount point (idmap.IDMAP_DIR): the step makes it, and the unmount removes it."""
    action: ClassVar[str] = 'mount'
    kind: ClassVar[str] = 'idmapped'
    target: str
    source: str
    idmap: IdMap
    source_beneath: Optional[Beneath] = None  # a source below an open dir: reached as Mkdir's beneath is

    def to_dict(self) -> Dict[str, Any]:
        return dict(Step.to_dict(self), kind=self.kind, idmap=self.idmap.to_yaml())


@dataclasses.dataclass(frozen=True)
class Unmount(Step):
    """``restore`` mounts again what this removes, should the run be undone (CannotRestore when that is not known).
    ``lazy`` (MNT_DETACH) only when the user asked for it (lazy_unmount): the mount goes now, the filesystem when
    its last user lets go. ``remove_mount_point``: the target dir goes too (an idmapped layer's, which lives as long
    as its mount)."""
    action: ClassVar[str] = 'unmount'
    target: str
    lazy: bool
    restore: Step
    beneath: Optional[Beneath] = None
    remove_mount_point: bool = False

    def to_dict(self) -> Dict[str, Any]:
        return dict(Step.to_dict(self), restore=self.restore.to_dict())


@dataclasses.dataclass(frozen=True)
class CannotRestore(Step):
    """The restore of an Unmount whose mount cannot be made again (not an overlay, bind or device): it fails."""
    action: ClassVar[str] = 'cannot_restore'
    done: ClassVar[str] = 'mounted'  # what the failure says cannot be done to ``target`` again
    target: str


@dataclasses.dataclass(frozen=True)
class CannotServeAgain(CannotRestore):
    """The undo of stopping the server of an image that was served in no format a run names (a run always names
    it): ``target`` is the image."""
    action: ClassVar[str] = 'cannot_serve_again'
    done: ClassVar[str] = 'served'


MOUNT_STEPS = (MountOverlay, MountDevice, MountBind, MountIdmapped)
# by their target; Mkdir by its path. An idmapped layer's target is the collection's own, in no container's view.
CONFINABLE_STEPS = (MountOverlay, MountDevice, MountBind, SetMountFlags, Unmount)


def mode_suffix(readonly: bool, mount_flags: Sequence[str] = ()) -> str:
    """' read-only, nodev, nosuid': how a mount is made, for its description."""
    shown = (['read-only'] if readonly else []) + list(mount_flags)
    return ' ' + ', '.join(shown) if shown else ''


# --- constructors ------------------------------------------------------------------------------------------

def mkdir(node: str, path: str, owner: Optional[Tuple[int, int]] = None, work_dir: bool = False) -> Mkdir:
    owned = ' owned by %d:%d' % owner if owner else ''
    return Mkdir(node=node, path=path, owner=owner, work_dir=work_dir,
                 description='create directory %s%s' % (path, owned))


def remove_empty_dirs(node: str, paths: Sequence[str], beneath: Optional[str] = None,
                      work_dir: bool = False) -> RemoveEmptyDirs:
    shown = [os.path.join(beneath, path) for path in paths] if beneath else paths
    return RemoveEmptyDirs(node=node, paths=tuple(paths), beneath=beneath, work_dir=work_dir,
                           description='remove the empty directories %s' % ', '.join(shown))


def discard_volatile_marker(node: str, work: str, beneath: Optional[Beneath] = None) -> DiscardVolatileMarker:
    path = volatile_marker(work)
    return DiscardVolatileMarker(node=node, path=path, work=work, beneath=beneath, description=(
        'discard the volatile marker %s (on_volatile_marker=discard: the upper dir is mounted as it is)' % path))


def restore_volatile_marker(node: str, work: str, beneath: Optional[Beneath] = None) -> RestoreVolatileMarker:
    path = volatile_marker(work)
    return RestoreVolatileMarker(node=node, path=path, work=work, beneath=beneath,
                                 description='put the volatile marker %s back' % path)


def load_module(node: str, module: str, kernel: str) -> LoadModule:
    return LoadModule(node=node, module=module, kernel=kernel, description='load the %s kernel module' % module)


def attach_loop(node: str, image: str, readonly: bool, image_beneath: Optional[Beneath] = None) -> AttachLoop:
    return AttachLoop(node=node, ref=node, image=image, readonly=readonly, image_beneath=image_beneath,
                      description='attach %s to a free loop device%s' % (image, mode_suffix(readonly)))


def detach_loop(node: str, device: str, image: str, readonly: bool) -> DetachLoop:
    return DetachLoop(node=node, ref=node, device=device, image=image, readonly=readonly,
                      description='detach %s (backing %s)' % (device, image))


def attach_nbd(node: str, image: str, image_format: str, readonly: bool,
               image_beneath: Optional[Beneath] = None) -> AttachNbd:
    return AttachNbd(node=node, ref=node, image=image, format=image_format, readonly=readonly,
                     image_beneath=image_beneath,
                     description='serve %s (%s) with qemu-nbd on a free nbd device%s'
                                 % (image, image_format, mode_suffix(readonly)))


def detach_nbd(node: str, device: str, image: Optional[str] = None, image_format: Optional[str] = None,
               readonly: bool = True) -> DetachNbd:
    return DetachNbd(node=node, ref=node, device=device, image=image, format=image_format, readonly=readonly,
                     description='disconnect %s (%s)' % (device, 'serving %s' % image if image
                                                         else 'its qemu-nbd is gone'))


def start_export(node: str, image: str, image_format: str, export: str, pidfile: str, metafile: str,
                 image_beneath: Optional[Beneath] = None) -> StartExport:
    description = 'export %s (%s) read-only as a raw file %s with qemu-storage-daemon' % (image, image_format, export)
    return StartExport(node=node, image=image, format=image_format, export=export, pidfile=pidfile,
                       metafile=metafile, image_beneath=image_beneath, description=description)


def stop_export(node: str, export: str, pidfile: str, metafile: str, image: Optional[str] = None,
                image_format: Optional[str] = None) -> StopExport:
    return StopExport(node=node, export=export, pidfile=pidfile, metafile=metafile, image=image,
                      format=image_format, description='stop the FUSE export %s' % export)


def mount_overlay(node: str, target: str, lowers: Sequence[str], upper: Optional[str], work: Optional[str],
                  options: Options, readonly: bool, payload: OverlayPayload, flattened: Sequence[str] = (),
                  reach: Sequence[Tuple[str, Optional[Beneath]]] = (), mount_flags: Sequence[str] = ()) -> MountOverlay:
    flat = ', with the layers of %s in their place (flattened)' % ', '.join(flattened) if flattened else ''
    description = 'mount overlay on %s (%s)%s%s' % (target, payload.summary(), mode_suffix(readonly, mount_flags), flat)
    return MountOverlay(node=node, target=target, lowers=tuple(lowers), upper=upper, work=work,
                        options=dict(options), readonly=readonly, payload=payload, mount_flags=tuple(mount_flags),
                        flattened=tuple(flattened), reach=tuple(reach), description=description)


def mount_device(node: str, target: str, device: Optional[str], readonly: bool, ref: Optional[str] = None,
                 device_text: Optional[str] = None, device_beneath: Optional[Beneath] = None,
                 mount_flags: Sequence[str] = ()) -> MountDevice:
    """``device_text`` names the device in the description while it is not known yet."""
    return MountDevice(node=node, target=target, device=device, ref=ref, readonly=readonly,
                       mount_flags=tuple(mount_flags), device_beneath=device_beneath,
                       description='mount %s on %s%s' % (device or device_text, target,
                                                         mode_suffix(readonly, mount_flags)))


def mount_bind(node: str, target: str, source: str, readonly: bool, source_beneath: Optional[Beneath] = None,
               mount_flags: Sequence[str] = ()) -> MountBind:
    return MountBind(node=node, target=target, source=source, readonly=readonly, mount_flags=tuple(mount_flags),
                     source_beneath=source_beneath,
                     description='bind %s on %s%s' % (source, target, mode_suffix(readonly, mount_flags)))


def set_mount_flags(node: str, target: str, add: Sequence[str] = (), remove: Sequence[str] = (),
                    beneath: Optional[Beneath] = None) -> SetMountFlags:
    changes = (['add %s to' % ', '.join(add)] if add else []) + (['take %s off' % ', '.join(remove)] if remove else [])
    return SetMountFlags(node=node, target=target, add=tuple(add), remove=tuple(remove), beneath=beneath,
                         description='%s the mount %s, in place' % (' and '.join(changes), target))


def mount_idmapped(node: str, target: str, source: str, idmap: IdMap,
                   source_beneath: Optional[Beneath] = None) -> MountIdmapped:
    return MountIdmapped(node=node, target=target, source=source, idmap=idmap, source_beneath=source_beneath,
                         description='mount %s on %s idmapped (%s)' % (source, target, idmap.summary()))


def unmount(node: str, target: str, restore: Step, lazy: bool = False, shown: str = '',
            beneath: Optional[Beneath] = None, remove_mount_point: bool = False) -> Unmount:
    """``shown`` describes what is mounted there now."""
    return Unmount(node=node, target=target, lazy=lazy, restore=restore, beneath=beneath,
                   remove_mount_point=remove_mount_point,
                   description='%sunmount %s%s' % ('lazily ' if lazy else '', target, ' (%s)' % shown if shown else ''))


def cannot_restore(node: str, target: str) -> CannotRestore:
    return CannotRestore(node=node, target=target, description='mount %s again' % target)


def cannot_serve_again(node: str, image: str) -> CannotServeAgain:
    return CannotServeAgain(node=node, target=image, description='serve %s again' % image)
