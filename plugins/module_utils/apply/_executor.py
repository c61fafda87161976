# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Apply a plan step by step; on a failure, undo what this run did, in reverse order.

Directories are only ever created (and removed again only if this run created them and
they are still empty); upper and work dirs and their data are never touched otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import (
    Any,
    Callable,
    ContextManager,
    Dict,
    List,
    NamedTuple,
    NoReturn,
    Optional,
    Sequence,
    Tuple,
    Type,
    Union,
)

from ansible_collections.containerhost.overlayfs.plugins.module_utils.host import _devices as devices
from ansible_collections.containerhost.overlayfs.plugins.module_utils.host import _hostfs as hostfs
from ansible_collections.containerhost.overlayfs.plugins.module_utils.steps import _steps as step
from ansible_collections.containerhost.overlayfs.plugins.module_utils.host import _syscalls as syscalls
from ansible_collections.containerhost.overlayfs.plugins.module_utils.host._devices import RunCommand
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._idmap import idmap_shortfalls
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._mountinfo import (
    MountEntry,
    read_mountinfo,
)
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._options import KERNEL_WORKDIR_ENTRIES
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._verify import (
    bind_shortfalls,
    device_shortfalls,
    flag_shortfalls,
    overlay_mount_shortfalls,
    stacked_shortfalls,
)


# the steps that make a mount, which a run reads back (Executor._made)
MadeStep = Union[step.MountOverlay, step.MountDevice, step.MountBind, step.MountIdmapped, step.SetMountFlags]


class ApplyError(RuntimeError):
    pass


class ReadBack(NamedTuple):
    """A mount step that ran, with what to compare its mount with: ``shortfalls(entry)`` lists what the mount
    ``entry`` (the top one at the target, None if none) gives less than asked."""
    step: MadeStep
    what: str  # for the message: 'the overlay', the device, 'the bind of SOURCE'
    asked: str
    shortfalls: Callable[[Optional[MountEntry]], List[str]]
    kernel_messages: List[str]


class Executor(object):
    """Runs steps. ``run_command`` is AnsibleModule.run_command (argv list in, (rc, out, err) out)."""

    def __init__(self, run_command: RunCommand) -> None:
        self.run_command = run_command
        self.attached: Dict[str, str] = {}  # ref (a node's label) -> the device an attach step of this run got
        self.made: List[Tuple[int, ReadBack]] = []  # (step number, ReadBack) of each mount the plan made
        self.number = 0  # the number of the step running (apply's count from 1; 0 before it)
        # Each handler runs its step and returns the step that reverses it (None: nothing to reverse). A handler
        # takes the step kind it is keyed by, which a dict's type cannot say: Any.
        self.handlers: Dict[Type[step.Step], Callable[[Any], Optional[step.Step]]] = {
            step.Mkdir: self._mkdir,
            step.RemoveEmptyDirs: self._remove_empty_dirs,
            step.DiscardVolatileMarker: self._discard_volatile_marker,
            step.RestoreVolatileMarker: self._restore_volatile_marker,
            step.LoadModule: self._load_module,
            step.AttachLoop: self._attach_loop,
            step.DetachLoop: self._detach_loop,
            step.AttachNbd: self._attach_nbd,
            step.DetachNbd: self._detach_nbd,
            step.StartExport: self._start_export,
            step.StopExport: self._stop_export,
            step.MountOverlay: self._mount_overlay,
            step.MountDevice: self._mount_device,
            step.MountBind: self._mount_bind,
            step.MountIdmapped: self._mount_idmapped,
            step.SetMountFlags: self._set_mount_flags,
            step.Unmount: self._unmount,
            step.CannotRestore: self._cannot_restore,
            step.CannotServeAgain: self._cannot_restore,
        }

    def run(self, one: step.Step) -> Optional[step.Step]:
        return self.handlers[type(one)](one)

    def apply(self, steps: Sequence[step.Step]) -> List[MountEntry]:
        """Run the plan; return the mount table after it (read once, at the end)."""
        undo: List[Optional[step.Step]] = []
        self.made = []
        for number, one in enumerate(steps, 1):
            self.number = number
            try:
                undo.append(self.run(one))
            except Exception as error:  # whatever broke the step, a bug too, the run is undone and says why
                message = 'step %d of %d (%s) failed: %s' % (number, len(steps), one.description, _reason(error))
                raise ApplyError(message + self._undo(steps, undo, 'before it'))
        return self._read_back(steps, undo)

    def _read_back(self, steps: Sequence[step.Step], undo: List[Optional[step.Step]]) -> List[MountEntry]:
        """The kernel can accept a mount and give less than asked. Every mount of the run is read back in one pass
        over the mount table once all are made (one pass per mount would cost the table's size each time); one
        that gives less fails the run, and the whole run is undone. Return the mount table as read."""
        mounts = read_mountinfo()
        at_mountpoint: Dict[str, List[MountEntry]] = {}
        for entry in mounts:
            at_mountpoint.setdefault(entry.mountpoint, []).append(entry)
        for number, check in self.made:
            stacked = at_mountpoint.get(os.path.realpath(check.step.target), [])
            shortfalls = stacked_shortfalls(stacked) + check.shortfalls(stacked[-1] if stacked else None)
            if not shortfalls:
                continue
            if not stacked:
                undo[number - 1] = None  # nothing there to unmount
            raise ApplyError('step %d of %d (%s) failed: the kernel accepted %s on %s but gave less than asked: %s; '
                             'asked: %s%s' % (number, len(steps), check.step.description, check.what,
                                              check.step.target, '; '.join(shortfalls), check.asked,
                                              ' (kernel: %s)' % '; '.join(check.kernel_messages)
                                              if check.kernel_messages else '')
                             + self._undo(steps, undo, 'of this run'))
        return mounts

    def _undo(self, steps: Sequence[step.Step], undo: List[Optional[step.Step]], made: str) -> str:
        """Undo in reverse order, and stop at the first undo step that fails: the steps before it are what it stands
        on (its device, its lowers, its dirs), and taking them away would leave it standing on nothing.
        Return what the message says of it; ``made`` says which steps ran ('before it', 'of this run')."""
        for index in reversed(range(len(undo))):
            reverse = undo[index]
            if reverse is None:
                continue
            try:
                self.run(reverse)
            except Exception as error:
                return ('. Undid %d of the %d step(s) %s; could not undo step %d (%s): %s, so it and the steps '
                        'before it are left as they are' % (len(undo) - index - 1, len(undo), made, index + 1,
                                                            steps[index].description, _reason(error)))
        return '. Undid the %d step(s) %s' % (len(undo), made) if undo else ''

    # --- directories and markers --------------------------------------------------------------------

    def _mkdir(self, one: step.Mkdir) -> Optional[step.Step]:
        if one.beneath:
            root, below = one.beneath
            made = syscalls.make_dirs_beneath(root, below)
            if one.owner and below in made:
                with syscalls.pinned_dir(root, below) as path:
                    os.chown(path, *one.owner)
            return step.remove_empty_dirs(one.node, made, beneath=root,
                                          work_dir=one.work_dir and below in made) if made else None
        missing: List[str] = []
        path = one.path
        while not os.path.isdir(path):
            missing.append(path)
            path = os.path.dirname(path)
        created: List[str] = []
        try:
            for path in reversed(missing):
                os.mkdir(path, 0o755)
                created.append(path)
            if one.owner and missing:
                os.chown(one.path, *one.owner, follow_symlinks=False)
        except OSError:
            _remove_all_if_empty(created)
            raise
        return step.remove_empty_dirs(one.node, created, work_dir=one.work_dir) if created else None

    def _remove_empty_dirs(self, one: step.RemoveEmptyDirs) -> None:
        if one.work_dir:  # what a mount put in the work dir this run made, unmounted by now
            for name in KERNEL_WORKDIR_ENTRIES:
                _remove_if_empty('%s/%s' % (one.paths[-1], name), one.beneath)
        _remove_all_if_empty(one.paths, one.beneath)

    def _discard_volatile_marker(self, one: step.DiscardVolatileMarker) -> step.Step:
        hostfs.discard_volatile_marker(one.work, one.beneath)
        return step.restore_volatile_marker(one.node, one.work, one.beneath)

    def _restore_volatile_marker(self, one: step.RestoreVolatileMarker) -> None:
        hostfs.restore_volatile_marker(one.work, one.beneath)

    # --- devices ----------------------------------------------------------------------------------------

    def _load_module(self, one: step.LoadModule) -> None:
        devices.load_module(self.run_command, one.module, one.kernel)
        # a loaded module stays: unloading it could take devices from others

    def _attach_loop(self, one: step.AttachLoop) -> step.Step:
        with _image_reached(one) as image:
            device = devices.attach_loop(self.run_command, image, one.readonly, pinned=bool(one.image_beneath))
        self.attached[one.ref] = device
        return step.detach_loop(one.ref, device, one.image, one.readonly)

    def _detach_loop(self, one: step.DetachLoop) -> step.Step:
        devices.detach_loop(self.run_command, one.device, one.image)
        self.attached.pop(one.ref, None)
        return step.attach_loop(one.ref, one.image, one.readonly)

    def _attach_nbd(self, one: step.AttachNbd) -> step.Step:
        with _image_reached(one) as image:
            device = devices.attach_nbd(self.run_command, one.image, one.format, one.readonly,
                                        opened_as=image if one.image_beneath else None)
        self.attached[one.ref] = device
        return step.detach_nbd(one.ref, device, one.image, one.format, one.readonly)

    def _detach_nbd(self, one: step.DetachNbd) -> Optional[step.Step]:
        devices.detach_nbd(self.run_command, one.device)
        self.attached.pop(one.ref, None)
        if one.image is None:
            return None  # its server was gone: there is nothing to serve again
        if one.format is None:
            return step.cannot_serve_again(one.ref, one.image)
        return step.attach_nbd(one.ref, one.image, one.format, one.readonly)

    def _start_export(self, one: step.StartExport) -> step.Step:
        with _image_reached(one) as image:
            devices.start_export(self.run_command, one.image, one.format, one.export, one.pidfile, one.metafile,
                                 opened_as=image)
        return step.stop_export(one.node, one.export, one.pidfile, one.metafile, one.image, one.format)

    def _stop_export(self, one: step.StopExport) -> Optional[step.Step]:
        devices.stop_export(one.export, one.pidfile, one.metafile)
        if one.image is None:
            return None
        if one.format is None:
            return step.cannot_serve_again(one.node, one.image)
        return step.start_export(one.node, one.image, one.format, one.export, one.pidfile, one.metafile)

    # --- mounts -------------------------------------------------------------------------------------------

    def _mount_overlay(self, one: step.MountOverlay) -> step.Step:
        with _reached(one) as at:
            if one.reach:  # a layer below an open dir: each handed to the kernel as the dir reached, by fd
                kernel_messages = syscalls.mount_overlay_reached(one.target, one.payload, one.readonly, one.reach,
                                                                 at=at, mount_flags=one.mount_flags)
            else:
                kernel_messages = syscalls.mount_overlay(one.target, one.payload, one.readonly, at=at,
                                                         mount_flags=one.mount_flags)
        self._made(one, 'the overlay', one.payload.summary() + step.mode_suffix(False, one.mount_flags),
                   lambda entry: overlay_mount_shortfalls(entry, one.lowers, one.upper, one.work, one.options,
                                                          one.readonly, one.mount_flags), kernel_messages)
        return _unmount_again(one)

    def _mount_device(self, one: step.MountDevice) -> step.Step:
        device = (self.attached.get(one.ref) if one.ref is not None else None) or one.device
        if one.device_beneath:
            device = syscalls.block_device_beneath(*one.device_beneath)
        if device is None:  # a plan names the device, the path, or the attach step that gives it before this
            raise ApplyError('no attach step of this run gave a device for %s' % one.ref)
        fstype = devices.filesystem_type(self.run_command, device)
        with _reached(one) as at:
            syscalls.mount_device(device, one.target, fstype, one.readonly, at=at, mount_flags=one.mount_flags)
        number = hostfs.device_number(device)
        self._made(one, device, fstype + step.mode_suffix(one.readonly, one.mount_flags),
                   lambda entry: device_shortfalls(entry, number, one.readonly) + flag_shortfalls(entry, one.mount_flags))
        return _unmount_again(one)

    def _mount_bind(self, one: step.MountBind) -> step.Step:
        with _reached(one) as at, _source_reached(one) as source:
            syscalls.bind_mount(one.source, one.target, at=at, source_at=source)
        try:  # a bind mount takes its own mode only from a remount
            if one.readonly or one.mount_flags:
                with _parent_reached(one) as at:
                    syscalls.remount_bind(one.target, one.readonly, one.mount_flags, at=at)
        except OSError:
            with _parent_reached(one) as at:
                syscalls.unmount(one.target, at=at)
            raise
        # the target must now be the source dir itself (stat, not mountinfo's device: btrfs subvolumes differ)
        self._made(one, 'the bind of %s' % one.source, 'bind' + step.mode_suffix(one.readonly, one.mount_flags),
                   lambda entry: bind_shortfalls(entry, hostfs.same_file(one.target, one.source), one.readonly)
                   + flag_shortfalls(entry, one.mount_flags))
        return _unmount_again(one)

    def _mount_idmapped(self, one: step.MountIdmapped) -> step.Step:
        hostfs.mount_idmapped_layer(one.source, one.target, one.idmap, one.source_beneath)
        self._made(one, 'the idmapped mount of %s' % one.source, one.idmap.summary(),
                   lambda entry: idmap_shortfalls(entry, one.idmap, syscalls.mount_idmap(one.target),
                                                  (hostfs.owner(one.source), hostfs.owner(one.target)),
                                                  hostfs.same_file(one.source, one.target)))
        return step.unmount(one.node, one.target, step.cannot_restore(one.node, one.target), remove_mount_point=True)

    def _set_mount_flags(self, one: step.SetMountFlags) -> step.Step:
        with _parent_reached(one) as at:
            syscalls.set_mount_flags(one.target, one.add, one.remove, at=at)
        self._made(one, 'the mount flags', ', '.join(one.add), lambda entry: flag_shortfalls(entry, one.add))
        return step.set_mount_flags(one.node, one.target, add=one.remove, remove=one.add, beneath=one.beneath)

    def _made(self, one: MadeStep, what: str, asked: str, shortfalls: Callable[[Optional[MountEntry]], List[str]],
              kernel_messages: Sequence[str] = ()) -> None:
        """Note a mount the plan made, to read it back (_read_back). The mounts an undo makes again are not: the
        run has failed already, and its result shows the mount table as it is."""
        self.made.append((self.number, ReadBack(one, what, asked, shortfalls, list(kernel_messages))))

    def _unmount(self, one: step.Unmount) -> step.Step:
        try:
            with _parent_reached(one) as at:
                syscalls.unmount(one.target, lazy=one.lazy, at=at)
        except syscalls.MountError as error:
            if error.errno != errno.EBUSY:
                raise
            holders = hostfs.processes_using(os.path.realpath(one.target))
            held = ', '.join('pid %d (%s)' % holder for holder in holders[:10])
            if len(holders) > 10:
                held += ' and %d more' % (len(holders) - 10)
            raise ApplyError('%s%s; it stays mounted (nothing is unmounted lazily unless lazy_unmount=true)'
                             % (error, ', held by ' + held if held else ''))
        if one.remove_mount_point:
            _remove_if_empty(one.target)
        return one.restore

    def _cannot_restore(self, one: step.CannotRestore) -> NoReturn:
        raise ApplyError('%s cannot be %s again automatically' % (one.target, one.done))


def _reason(error: BaseException) -> str:
    """The message of an expected failure as it is; an unexpected one (a bug) also names its type."""
    if isinstance(error, (OSError, ApplyError, devices.DeviceError)):
        return str(error)
    return '%s: %s' % (type(error).__name__, error)


def _reached(one: Union[step.MountOverlay, step.MountDevice, step.MountBind]) -> ContextManager[str]:
    """The path a mount call uses for the step's target: the target, or for one inside another overlay's view the
    directory itself, pinned where no symlink led (syscalls.pinned_dir)."""
    return syscalls.pinned_dir(*one.beneath) if one.beneath else contextlib.nullcontext(one.target)


def _source_reached(one: step.MountBind) -> ContextManager[str]:
    """As _reached, for a bind mount's source."""
    return syscalls.pinned_dir(*one.source_beneath) if one.source_beneath else contextlib.nullcontext(one.source)


def _image_reached(one: Union[step.AttachLoop, step.AttachNbd, step.StartExport]) -> ContextManager[str]:
    """The path a device command (losetup, qemu-storage-daemon) opens an image by: the image, or for one below an
    open dir the file itself, pinned where no symlink led (syscalls.pinned_file)."""
    return syscalls.pinned_file(*one.image_beneath) if one.image_beneath else contextlib.nullcontext(one.image)


def _parent_reached(one: Union[step.MountBind, step.SetMountFlags, step.Unmount]) -> ContextManager[str]:
    """As _reached, for the calls that must reach what is mounted on the target: umount2 and a remount."""
    return syscalls.in_parent_of(*one.beneath) if one.beneath else contextlib.nullcontext(one.target)


def _unmount_again(one: Union[step.MountOverlay, step.MountDevice, step.MountBind]) -> step.Step:
    """The undo of a mount step made in this run (nothing to restore under it)."""
    return step.unmount(one.node, one.target, step.cannot_restore(one.node, one.target), beneath=one.beneath)


def _remove_all_if_empty(paths: Sequence[str], beneath: Optional[str] = None) -> None:
    """Newest first, so a parent goes after its children."""
    for path in reversed(paths):
        _remove_if_empty(path, beneath)


def _remove_if_empty(path: str, beneath: Optional[str] = None) -> None:
    try:
        if beneath:
            syscalls.remove_empty_dir_beneath(beneath, path)
        else:
            os.rmdir(path)
    except OSError as error:
        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
            raise
