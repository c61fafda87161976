# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Give an image a block device and take it away again: losetup, qemu-nbd, qemu-storage-daemon, modprobe.

Small functions, one command each. ``run`` is AnsibleModule.run_command-like: argv in, (rc, out, err) out.
Image formats are always given explicitly: nothing here lets qemu probe a format (CVE-2013-4297).
Standard library only: the boot helper (boot.py) starts FUSE exports with it, outside Ansible.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
import signal
import time
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from ansible_collections.containerhost.overlayfs.plugins.module_utils.host import _syscalls as syscalls
from ansible_collections.containerhost.overlayfs.plugins.module_utils.host._hostfs import (
    EXPORT_DIR,
    SYS_BLOCK,
    loop_backing_file,
    process_alive,
)

READY_TIMEOUT = 15.0  # seconds for a device or export to come up
POLL = 0.1
RunCommand = Callable[[List[str]], Tuple[int, str, str]]  # ``run``: argv in, (rc, out, err) out


class DeviceError(RuntimeError):
    pass


def run_command(run: RunCommand, argv: List[str]) -> Tuple[int, str, str]:
    """Run a command; a missing program is a DeviceError that names it."""
    try:
        return run(argv)
    except OSError as error:
        raise DeviceError('cannot run %s: %s' % (argv[0], error.strerror or error))


def run_checked(run: RunCommand, argv: List[str]) -> str:
    rc, out, err = run_command(run, argv)
    if rc != 0:
        raise DeviceError('%s exited %d: %s' % (' '.join(argv), rc, (err or out).strip() or 'no message'))
    return out


# --- loop devices -------------------------------------------------------------------------------


def attach_loop(run: RunCommand, backing: str, readonly: bool, pinned: bool = False) -> str:
    """``pinned``: ``backing`` is the /proc/PID/fd link of a file reached without following links
    (syscalls.pinned_file). losetup turns the name it is given into a canonical one and opens that, which walks the
    file's path again: the device must read the very file pinned, or it is detached again."""
    argv = ['losetup', '--find', '--show'] + (['--read-only'] if readonly else []) + ['--', backing]
    device = run_checked(run, argv).strip()
    if pinned and syscalls.loop_backing_identity(device) != _identity(backing):
        run_checked(run, ['losetup', '--detach', device])
        raise DeviceError('losetup attached another file than %s (a link swapped in on the way there): detached '
                          'again' % os.readlink(backing))
    return device


def _identity(path: str) -> Tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


def loops_backed_by(backing: str, sys_block: str = SYS_BLOCK) -> List[str]:
    found = glob.glob(os.path.join(sys_block, 'loop*', 'loop', 'backing_file'))
    devices = ['/dev/' + os.path.basename(os.path.dirname(os.path.dirname(path))) for path in sorted(found)]
    return [device for device in devices if loop_backing_file(device, sys_block) == backing]


def detach_loop(run: RunCommand, device: str, backing: str, sys_block: str = SYS_BLOCK) -> None:
    """Detach the device from ``backing``. One that no longer serves it is detached already: the kernel frees a
    device marked autoclear (detached while it was mounted) when its last mount goes, and its number may then
    serve another file, which is left alone."""
    if loop_backing_file(device, sys_block) not in (backing, os.path.realpath(backing)):
        return
    run_checked(run, ['losetup', '--detach', device])


# --- nbd ----------------------------------------------------------------------------------------


def load_module(run: RunCommand, module: str, kernel: str) -> None:
    try:
        rc, out, err = run_command(run, ['modprobe', module])
    except DeviceError as error:
        rc, out, err = 1, '', str(error)
    if rc != 0:
        raise DeviceError('could not load the %s kernel module on kernel %s: %s (an image with driver nbd needs '
                          'it; driver fuse needs no kernel module)' % (module, kernel, (err or out).strip()))


def attach_nbd(run: RunCommand, image: str, image_format: str, readonly: bool, opened_as: Optional[str] = None,
               sys_block: str = SYS_BLOCK) -> str:
    """Serve the image with qemu-nbd on the first free /dev/nbdN; wait until the device really has it.
    ``opened_as``: as nbd_argv's.

    Runs hold the host lock, but other tools may race for a device: a connect that fails moves on to the
    next free device.
    """
    failures = []
    for device in free_nbd_devices(sys_block):
        rc, out, err = run_command(run, nbd_argv(device, image, image_format, readonly, opened_as))
        if rc == 0:
            try:
                wait_for_nbd(device, sys_block)
            except DeviceError:
                detach_nbd(run, device)
                raise
            return device
        failures.append('%s: %s' % (device, (err or out).strip()))
        if len(failures) == 3:
            break
    if not failures:
        raise DeviceError('no free nbd device (all /dev/nbd* are in use; the nbd module option nbds_max sets '
                          'how many there are)')
    raise DeviceError('qemu-nbd could not serve %s: %s' % (image, '; '.join(failures)))


def nbd_argv(device: str, image: str, image_format: str, readonly: bool, opened_as: Optional[str] = None,
             pidfile: Optional[str] = None) -> List[str]:
    """qemu-nbd serving ``image`` on ``device`` (``--connect`` daemonizes once the device has it). ``opened_as``:
    the path it opens the image by, when not ``image`` itself (syscalls.pinned_file); the image's name is then its
    export's description, where observe reads it back."""
    argv = ['qemu-nbd', '--format=%s' % image_format, '--connect=%s' % device]
    argv += (['--read-only'] if readonly else []) + (['--pid-file=%s' % pidfile] if pidfile else [])
    if opened_as:
        opened = {'driver': 'file', 'filename': opened_as, 'read-only': readonly}
        return argv + ['--description=' + image, '--', 'json:' + json.dumps(_pinned_image(image_format, opened, readonly))]
    return argv + ['--', image]


def _pinned_image(image_format: str, opened: Union[Dict[str, Any], str], readonly: bool, **more: Any) -> Dict[str, Any]:
    """qemu's options for an image below an open dir, read from ``opened`` (its file node, or that node's name): its
    contents are a container's or a user's, and so is the backing file its header names (the host's own disk, say).
    It is opened without one."""
    return dict({'driver': image_format, 'backing': None, 'read-only': readonly, 'file': opened}, **more)


def free_nbd_devices(sys_block: str = SYS_BLOCK) -> List[str]:
    """nbd devices with no server and no size: what qemu-nbd --connect may take."""
    free = []
    for base in sorted(glob.glob(os.path.join(sys_block, 'nbd*')), key=lambda path: int(path.rsplit('nbd', 1)[1])):
        if not os.path.exists(os.path.join(base, 'pid')) and _size(base) == 0:
            free.append('/dev/' + os.path.basename(base))
    return free


def wait_for_nbd(device: str, sys_block: str = SYS_BLOCK) -> None:
    """The device is ready once the kernel shows its server and its size (udev may still be catching up)."""
    base = os.path.join(sys_block, os.path.basename(device))
    deadline = time.monotonic() + READY_TIMEOUT
    while not (os.path.exists(os.path.join(base, 'pid')) and _size(base) > 0):
        if time.monotonic() > deadline:
            raise DeviceError('%s did not come up within %d s' % (device, READY_TIMEOUT))
        time.sleep(POLL)


def detach_nbd(run: RunCommand, device: str) -> None:
    run_checked(run, ['qemu-nbd', '--disconnect', device])


def _size(base: str) -> int:
    try:
        with open(os.path.join(base, 'size')) as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return 0


# --- FUSE exports (no nbd needed) ----------------------------------------------------------------


def start_export(run: RunCommand, image: str, image_format: str, export: str, pidfile: str, metafile: str,
                 opened_as: Optional[str] = None) -> None:
    """Export the image read-only as a raw file through qemu-storage-daemon's FUSE export. ``opened_as``: the path
    the daemon opens it by, when not ``image`` itself (syscalls.pinned_file)."""
    os.makedirs(os.path.dirname(export), mode=0o700, exist_ok=True)
    with open(export, 'a'):
        pass  # the FUSE mount point must be an existing regular file
    with open(metafile, 'w') as handle:
        json.dump({'image': image, 'format': image_format}, handle)
    image_node = 'driver=%s,node-name=image,read-only=on,file=file' % image_format
    if opened_as:
        image_node = json.dumps(_pinned_image(image_format, 'file', True, **{'node-name': 'image'}))
    argv = ['qemu-storage-daemon', '--daemonize', '--pidfile', pidfile,
            '--blockdev', 'driver=file,node-name=file,read-only=on,filename=' + _qemu_value(opened_as or image),
            '--blockdev', image_node,
            '--export', 'type=fuse,id=export,node-name=image,writable=off,mountpoint=' + _qemu_value(export)]
    try:
        run_checked(run, argv)
    except DeviceError:
        if not _held(pidfile):
            _remove(export, pidfile, metafile)
            raise
        # The daemon of a run killed while it started this very export (its path is its image's and format's)
        # holds the pid file: it was not up when this run looked. It serves what this step asks for: adopt it.
    try:
        _wait_for_file_size(export)
    except DeviceError:
        stop_export(export, pidfile, metafile)
        raise


def stop_export(export: str, pidfile: str, metafile: str, sys_block: str = SYS_BLOCK) -> None:
    """Stop the daemon (it unmounts its export on SIGTERM), then remove what start_export made. Not while a loop
    device stands on the export: once the export is gone, that device shows '/' as its backing file, and nothing
    could tell it from any other."""
    standing = loops_backed_by(export, sys_block)
    if standing:
        raise DeviceError('the FUSE export %s still has %s on it: detach it first' % (export, ', '.join(standing)))
    try:
        with open(pidfile) as handle:
            pid = int(handle.read())
        os.kill(pid, signal.SIGTERM)
        _wait_for_exit(pid)
    except (OSError, ValueError) as error:
        if getattr(error, 'errno', errno.ESRCH) not in (errno.ESRCH, errno.ENOENT):
            raise
    try:  # a daemon that was killed leaves its FUSE mount behind ("transport endpoint is not connected")
        syscalls.unmount(export)
    except syscalls.MountError as error:
        if error.errno not in (errno.EINVAL, errno.ENOENT):
            raise
    _remove(export, pidfile, metafile)


def _qemu_value(text: str) -> str:
    """qemu's option syntax splits on ','; a literal comma is written twice."""
    return text.replace(',', ',,')


def settle_starting_exports(export_dir: str = EXPORT_DIR) -> None:
    """Wait for the exports whose daemon is still starting, as after a run killed while it started one: the daemon
    holds its pid file locked before its export serves. Judged before it is up, it would look dead, and clearing it
    would race the daemon (and fail on its pid file lock)."""
    for pidfile in sorted(glob.glob(os.path.join(export_dir, '*.pid'))):
        if _held(pidfile):
            try:
                _wait_for_file_size(pidfile[:-len('.pid')] + '.img')
            except (DeviceError, OSError):
                pass  # it did not come up: the plan finds it dead, as it is


def _held(pidfile: str) -> bool:
    """qemu locks its pid file (lockf) for as long as it runs."""
    try:
        fd = os.open(pidfile, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        return error.errno in (errno.EAGAIN, errno.EACCES)
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _wait_for_file_size(path: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while os.path.getsize(path) == 0:
        if time.monotonic() > deadline:
            raise DeviceError('the FUSE export %s did not come up within %d s' % (path, READY_TIMEOUT))
        time.sleep(POLL)


def _wait_for_exit(pid: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while process_alive(pid):
        if time.monotonic() > deadline:
            raise DeviceError('qemu-storage-daemon (pid %d) did not stop within %d s' % (pid, READY_TIMEOUT))
        time.sleep(POLL)


def _remove(*paths: str) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except OSError as error:
            if error.errno != errno.ENOENT:
                raise


# --- what is in a device -------------------------------------------------------------------------


def filesystem_type(run: RunCommand, device: str) -> str:
    """The filesystem on a whole device, as blkid's low-level probe sees it (mount(8) probes the same way).

    A partition table without a filesystem is refused by name: partitions of an image are not mounted.
    """
    rc, out, err = run_command(run, ['blkid', '--probe', '--output', 'export', '--', device])
    if rc not in (0, 2):  # 2: nothing found
        raise DeviceError('blkid %s exited %d: %s' % (device, rc, err.strip()))
    found = dict(line.split('=', 1) for line in out.splitlines() if '=' in line)
    if found.get('TYPE'):
        return found['TYPE']
    if found.get('PTTYPE'):
        raise DeviceError('%s holds a %s partition table, not a filesystem: partitions are not mounted (not '
                          'supported); give an image or device with the filesystem on the whole of it'
                          % (device, found['PTTYPE']))
    raise DeviceError('no filesystem found on %s' % device)
