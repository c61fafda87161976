# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""What a target runs at boot for the trees the overlay_mounts role persists, outside Ansible.

Three programs, each this module's ``main()`` behind a launcher that the role installs (``launcher()``):

- ``mount.overlay.containerhost``, the mount(8) helper of the overlays the role persists. A ``.mount`` unit or
  an fstab line of type ``overlay.containerhost`` names the overlay's spec file as its source, and mount(8)
  runs ``mount.overlay.containerhost SPEC TARGET [-sfnv] [-o OPTIONS] ...``. The helper mounts what the spec
  says the way the module does (``options.overlay_payload``, then ``syscalls.mount_overlay``: mount(2) while the
  options fit one page, fsconfig(2) with one ``lowerdir+`` per layer beyond), so no layer path ever passes through an option string
  that systemd, libmount or mount(8) parse: util-linux 2.41 hands every option to fsconfig(2), whose values
  stop at 255 bytes, and splits them on commas itself; 2.38 does neither. A Debian 12 host upgraded to 13
  boots the same way.
- Before the overlay, the helper mounts each of its idmapped layers (the spec's ``idmapped``) as the module does
  (``syscalls.mount_idmapped``), so persistence needs no ``X-mount.idmap=`` from the target's util-linux (2.39+).
- ``containerhost-overlayfs-export start|stop IMAGE FORMAT``, the boot-time service of an image layer with
  driver fuse: qemu-storage-daemon's read-only FUSE export, exactly as the module starts it.
- ``containerhost-overlayfs-nbd start DEVICE PIDFILE IMAGE FORMAT [--read-only]``, the boot-time service of an
  image layer with driver nbd: qemu-nbd on the device the role pinned, given the image as the module gives it.

Standard library only: the role copies this module and the collection's modules it imports (its import closure,
plugin_utils/_persistence.helper_sources) to the target.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

from ansible_collections.containerhost.overlayfs.plugins.module_utils.host import _devices as devices, _hostfs as hostfs, _syscalls as syscalls
from ansible_collections.containerhost.overlayfs.plugins.module_utils.host._confine import ConfinedResolver, describe_refusal, mounted_views, with_views
from ansible_collections.containerhost.overlayfs.plugins.module_utils.host._devices import RunCommand
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._idmap import IdMapError, idmap_shortfalls, parse_idmap
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._mountinfo import (
    MountEntry,
    read_mountinfo,
)
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._options import (
    OptionError,
    overlay_payload,
    volatile_marker,
    volatile_marker_refusal,
)
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._paths import Beneath
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._verify import (
    overlay_mount_shortfalls,
    same_lowers,
    same_upper_and_work,
)

FSTYPE = 'overlay.containerhost'  # mount(8) runs /sbin/mount.overlay.containerhost for this type
MOUNT_HELPER = '/sbin/mount.' + FSTYPE
HELPER_LIB = '/usr/local/lib/containerhost-overlayfs'  # this module and its import closure, in their package layout
EXPORT_HELPER = HELPER_LIB + '/containerhost-overlayfs-export'
NBD_HELPER = HELPER_LIB + '/containerhost-overlayfs-nbd'
SPEC_DIR = '/etc/containerhost-overlayfs/overlays'
PACKAGE = 'ansible_collections.containerhost.overlayfs.plugins.module_utils'
SPEC_KEYS = ('target', 'lowers', 'upper', 'work', 'options', 'readonly', 'mount_flags', 'on_volatile_marker',
             'idmapped', 'views')

EX_USAGE = 1  # mount(8)'s helper exit codes: incorrect invocation
EX_FAIL = 32  # mount failure


class HelperError(Exception):
    def __init__(self, message: str, code: int = EX_FAIL) -> None:
        super(HelperError, self).__init__(message)
        self.code = code


# --- the spec file ----------------------------------------------------------------------------------------

def spec_text(marker: str, spec: Dict[str, Any]) -> str:
    """The spec file of one overlay: comment lines (the marker first), then one JSON object."""
    unknown = set(spec) ^ set(SPEC_KEYS)
    if unknown:
        raise ValueError('spec keys differ from %s: %s' % (', '.join(SPEC_KEYS), ', '.join(sorted(unknown))))
    return '%s\n# What %s mounts on this overlay\'s target.\n%s\n' % (
        marker, MOUNT_HELPER, json.dumps(spec, sort_keys=True, ensure_ascii=False))


def read_spec(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding='utf-8') as handle:
            text = ''.join(line for line in handle if not line.startswith('#'))
        spec = json.loads(text)
    except (OSError, ValueError) as error:
        raise HelperError('cannot read the overlay spec %s: %s' % (path, error))
    if not isinstance(spec, dict) or sorted(spec) != sorted(SPEC_KEYS):
        raise HelperError('%s is not an overlay spec (it needs exactly %s)' % (path, ', '.join(SPEC_KEYS)))
    return spec


# --- mount.overlay.containerhost ----------------------------------------------------------------------------

def parse_mount_arguments(argv: List[str]) -> Tuple[str, str, Set[str]]:
    """mount(8)'s helper calling convention: SPEC TARGET, then -s -f -n -v, -o OPTIONS, -t TYPE, -N NS."""
    positional, flags, options = [], set(), []
    args = iter(argv)
    for arg in args:
        if arg in ('-o', '-t', '-N'):
            value = next(args, None)
            if value is None:
                raise HelperError('%s needs a value' % arg, EX_USAGE)
            if arg == '-o':
                options.extend(value.split(','))
            elif arg == '-N':
                raise HelperError('-N (mounting in another namespace) is not supported', EX_USAGE)
        elif arg in ('-s', '-f', '-n', '-v'):
            flags.add(arg)
        elif arg.startswith('-'):
            raise HelperError('unknown option %s' % arg, EX_USAGE)
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise HelperError('usage: %s SPEC TARGET [-sfnv] [-o OPTIONS]' % os.path.basename(MOUNT_HELPER), EX_USAGE)
    if 'remount' in options:
        raise HelperError('remount is not supported: unmount the overlay and mount it again', EX_USAGE)
    return positional[0], positional[1], flags


def mounted_as_specified(spec: Dict[str, Any], mounts: Sequence[MountEntry]) -> bool:
    """The top mount at the target is this overlay, as the module asks it (verify's test): mount -a (or a second
    start) must not stack a duplicate. Raise HelperError when it stands on the spec's layers but gives less (other
    options or mount flags, read-only, degraded): another mount on top would hide it, not mend it."""
    target = os.path.realpath(spec['target'])
    stacked = [entry for entry in mounts if entry.mountpoint == target]
    entry = stacked[-1] if stacked else None
    if entry is None or entry.overlay_layers() is None or not (
            same_lowers(entry, spec['lowers']) and same_upper_and_work(entry, spec['upper'], spec['work'])):
        return False
    shortfalls = overlay_mount_shortfalls(entry, spec['lowers'], spec['upper'], spec['work'], spec['options'],
                                          spec['readonly'], spec['mount_flags'])
    if shortfalls:
        raise HelperError('%s is mounted on its layers already, but not as its spec says: %s (unmount it, and '
                          'mount it again)' % (spec['target'], '; '.join(shortfalls)))
    return True


def mount(spec_path: str, target: str) -> None:
    """Mount the overlay a spec describes on target (which must be the spec's)."""
    spec = read_spec(spec_path)
    if os.path.realpath(target) != os.path.realpath(spec['target']):
        raise HelperError('%s describes the overlay on %s, not on %s' % (spec_path, spec['target'], target), EX_USAGE)
    mounts = read_mountinfo()
    if mounted_as_specified(spec, mounts):
        _say('%s is already mounted as %s describes' % (spec['target'], spec_path))
        return
    target_beneath, reach, sources_beneath = reached(spec, mounts)
    work_beneath = dict(reach).get(spec['work']) if spec['upper'] else None
    made: List[str] = []
    try:
        if spec['upper'] and hostfs.has_volatile_marker(spec['work'], work_beneath):
            if spec['on_volatile_marker'] != 'discard':
                raise HelperError('not mounting %s: %s' % (spec['target'], volatile_marker_refusal(spec['work'])))
            hostfs.discard_volatile_marker(spec['work'], work_beneath)
            _say('discarded the volatile marker %s (on_volatile_marker: discard): %s is mounted with its upper dir '
                 'as it is' % (volatile_marker(spec['work']), spec['target']))
        payload = overlay_payload(spec['lowers'], spec['upper'], spec['work'], spec['options'])
        for layer in spec['idmapped']:
            made += mount_idmapped_layer(layer, mounts, sources_beneath[layer['source']])
        with syscalls.pinned_dir(*target_beneath) if target_beneath else contextlib.nullcontext() as at:
            if reach:
                syscalls.mount_overlay_reached(spec['target'], payload, spec['readonly'], reach, at=at,
                                               mount_flags=spec['mount_flags'])
            else:
                syscalls.mount_overlay(spec['target'], payload, spec['readonly'], at=at, mount_flags=spec['mount_flags'])
    except (OptionError, IdMapError, OSError) as error:  # OSError: a MountError, or a path refused on the way
        raise HelperError(str(error) + _unmount_all(made))


def reached(spec: Dict[str, Any],
            mounts: Sequence[MountEntry]) -> Tuple[Optional[Beneath], List[Tuple[str, Optional[Beneath]]],
                                                   Dict[str, Optional[Beneath]]]:
    """The module's refusal, at boot: no path of the spec may pass through a symlink inside another overlay's
    merged view or upper dir, or inside a dir a local user can change (confine.ConfinedResolver). Return how the
    mount reaches its paths, as the module's steps say it: where the target lies below such a dir ((that dir, the
    rest), or None), the layers' ``reach`` for syscalls.mount_overlay_reached (empty when none lies below one), and
    where each idmapped layer's source lies below one (source -> (that dir, the rest) or None)."""
    # the persisted trees' views this spec's paths lie in count whether their overlays are up yet or not
    resolve = ConfinedResolver(with_views(mounted_views(mounts), spec['views']))
    paths = ([('target', spec['target'])] + [('lower dir', lower) for lower in spec['lowers']]
             + [('upper', spec['upper']), ('work', spec['work'])] * bool(spec['upper'])
             + [('source', layer['source']) for layer in spec['idmapped']])
    for role, path in paths:
        resolution = resolve(path)
        if resolution.symlink_inside:
            raise HelperError('not mounting %s: %s' % (spec['target'], describe_refusal(role, path, resolution)))
    layers = spec['lowers'] + ([spec['upper'], spec['work']] if spec['upper'] else [])
    reach = [(path, resolve(path).beneath) for path in layers]
    sources = dict((layer['source'], resolve(layer['source']).beneath) for layer in spec['idmapped'])
    return resolve(spec['target']).beneath, reach if any(how for _path, how in reach) else [], sources


def _unmount_all(targets: List[str]) -> str:
    """Unmount the idmapped layers a failed mount made (and their mount points), newest first, so nothing
    half-built stays; what the message adds."""
    for target in reversed(targets):
        try:
            syscalls.unmount(target)
            os.rmdir(target)
        except OSError as error:
            return '; and could not undo it: %s' % error
    return ''


def mount_idmapped_layer(layer: Dict[str, Any], mounts: Sequence[MountEntry],
                         source_beneath: Optional[Beneath] = None) -> List[str]:
    """Mount one idmapped layer of a spec, unless it is mounted with its mapping already; return the targets
    mounted. ``source_beneath``: where its source lies below an open dir (reached())."""
    idmap = parse_idmap(layer['idmap'], 'the idmap of the layer %s' % layer['source'])
    stacked = [entry for entry in mounts if entry.mountpoint == layer['target']]
    if stacked:
        owners = (hostfs.owner(layer['source']), hostfs.owner(layer['target']))
        problems = idmap_shortfalls(stacked[-1], idmap, syscalls.mount_idmap(layer['target']), owners,
                                    hostfs.same_file(layer['source'], layer['target']))
        if problems:
            raise HelperError('the idmapped mount of %s on %s is there already, but %s' % (
                layer['source'], layer['target'], '; '.join(problems)))
        return []
    hostfs.mount_idmapped_layer(layer['source'], layer['target'], idmap, source_beneath)
    return [layer['target']]


def mount_main(argv: List[str]) -> None:
    spec_path, target, flags = parse_mount_arguments(argv)
    if '-f' in flags:  # mount -f: everything but the mount itself
        read_spec(spec_path)
        return
    mount(spec_path, target)


# --- containerhost-overlayfs-export ------------------------------------------------------------------------

def export_main(argv: List[str], run: RunCommand) -> None:
    if len(argv) != 3 or argv[0] not in ('start', 'stop'):
        raise HelperError('usage: %s start|stop IMAGE FORMAT' % os.path.basename(EXPORT_HELPER), EX_USAGE)
    action, image, image_format = argv
    export, pidfile, metafile = hostfs.export_files(image, image_format)
    try:
        if action == 'start':
            with _image_reached(image, 'not exporting') as (realpath, at):
                devices.start_export(run, realpath, image_format, export, pidfile, metafile, opened_as=at)
        else:
            devices.stop_export(export, pidfile, metafile)
    except (OSError, devices.DeviceError, syscalls.MountError) as error:
        raise HelperError('%s the FUSE export of %s (%s): %s' % (action, image, image_format, error))


# --- containerhost-overlayfs-nbd ---------------------------------------------------------------------------

def nbd_main(argv: List[str], run: RunCommand) -> None:
    """The nbd service's start at boot: qemu-nbd on DEVICE (it daemonizes, and writes PIDFILE for systemd), given
    the image as the module gives it, through the file pinned where it lies below an open dir."""
    if len(argv) not in (5, 6) or argv[0] != 'start' or argv[5:] not in ([], ['--read-only']):
        raise HelperError('usage: %s start DEVICE PIDFILE IMAGE FORMAT [--read-only]' % os.path.basename(NBD_HELPER),
                          EX_USAGE)
    device, pidfile, image, image_format = argv[1:5]
    try:
        with _image_reached(image, 'not serving') as (realpath, at):
            devices.run_checked(run, devices.nbd_argv(device, realpath, image_format, argv[5:] == ['--read-only'],
                                                      at, pidfile))
    except (OSError, devices.DeviceError) as error:
        raise HelperError('serve %s (%s) on %s: %s' % (image, image_format, device, error))


@contextlib.contextmanager
def _image_reached(image: str, refused: str) -> Iterator[Tuple[str, Optional[str]]]:
    """The image as the module reaches it, with the views mounted by now: (its real path, and the path a daemon
    opens it by where it lies below an open dir, else None). One through a symlink there is refused."""
    resolution = ConfinedResolver(mounted_views(read_mountinfo()))(image)
    if resolution.symlink_inside:
        raise HelperError('%s %s: %s' % (refused, image, describe_refusal('image', image, resolution)))
    with syscalls.pinned_file(*resolution.beneath) if resolution.beneath else contextlib.nullcontext() as at:
        yield resolution.realpath, at


# --- entry point ----------------------------------------------------------------------------------------------

PROGRAMS = (os.path.basename(MOUNT_HELPER), os.path.basename(EXPORT_HELPER), os.path.basename(NBD_HELPER))


def main(argv: List[str], run: RunCommand) -> int:
    """Run the program argv[0] names; return its exit code. Messages go to stderr (the journal, at boot). ``run``
    runs a command and returns (rc, stdout, stderr), as the module's AnsibleModule.run_command does for the same
    functions: the launcher's, so that no module_utils code starts a process itself."""
    name = os.path.basename(argv[0])
    programs: Dict[str, Callable[[List[str]], None]] = dict(zip(PROGRAMS, (
        mount_main, functools.partial(export_main, run=run), functools.partial(nbd_main, run=run))))
    if name not in programs:
        _say('unknown program %s (known: %s)' % (name, ', '.join(sorted(PROGRAMS))), name='boot')
        return EX_USAGE
    try:
        programs[name](argv[1:])
    except HelperError as error:
        _say(str(error), name=name)
        return error.code
    return 0


def launcher(marker: str, python: str) -> str:
    """The executable the role installs for each of PROGRAMS: it imports this module from HELPER_LIB, and holds the
    process runner main() takes (subprocess is imported only when a program runs a command: a mount runs none)."""
    return '\n'.join([
        '#!%s -I' % python,
        marker,
        '"""%s: see %s in the containerhost.overlayfs collection."""' % (', '.join(sorted(PROGRAMS)), __name__),
        'import sys',
        'sys.path.insert(0, %r)' % HELPER_LIB,
        'from %s.boot._boot import main' % PACKAGE,
        '',
        '',
        'def run(argv):',
        '    import subprocess',
        '    done = subprocess.run(argv, capture_output=True, text=True, check=False)',
        '    return done.returncode, done.stdout, done.stderr',
        '',
        '',
        'sys.exit(main(sys.argv, run))',
    ]) + '\n'


def _say(message: str, name: str = os.path.basename(MOUNT_HELPER)) -> None:
    sys.stderr.write('%s: %s\n' % (name, message))
