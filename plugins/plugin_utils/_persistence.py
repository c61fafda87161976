# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Render the persistence of filesystem trees: every file that brings them back at boot, in order.

Pure functions, on the controller. ``render()`` takes the role's items (role_items.py) and returns the text of
every file, in the order the filesystems must come up (image attach, lower mounts, nested overlays, the top
overlay); the persistence_files module writes them.

How each node comes back (docs/persistence.md says why):

- an overlay: a mount of type ``overlay.containerhost`` whose source is the overlay's spec file. mount(8) runs
  the collection's helper for that type (boot.py), which mounts the overlay as the module does. No layer path is
  in an option string, so whatever a path holds and however long the layer list is, the target's systemd,
  libmount and mount(8) never parse it (util-linux 2.41 passes every option through fsconfig(2), whose values
  stop at 255 bytes, and splits them on commas itself).
- a raw image with driver loop: mount(8) with ``loop,ro``; a block device or a bind mount: mount(8).
- an image with driver nbd: the mount of its pinned /dev/nbdN, which requires an instance of the qemu-nbd attach
  service; with driver fuse: a ``loop,ro`` mount of the image's FUSE export, which requires an instance of the
  export service (boot.py's ``containerhost-overlayfs-export``).

What a path may hold is decided by the programs that read these files, each checked against the real ones of
Debian 12 and 13 in tests/integration/test_persistence_oracles.py:

- Unit files are line based: a value cannot hold a newline or a carriage return (both end a line); the parser
  strips trailing whitespace and joins a line that ends in a backslash with the next. What=, Where=,
  Description= and RequiresMountsFor= expand specifiers, so '%' is written '%%'. RequiresMountsFor= is split on
  whitespace and unquoted: paths that need it are double-quoted with backslash escapes.
- fstab fields are whitespace separated, with octal escapes (\\040 space, \\011 tab, \\012 newline, \\134
  backslash). systemd-fstab-generator copies What= and Where= into units as they are (so no newline, no trailing
  whitespace or backslash there either) and writes x-systemd.requires-mounts-for= paths space-separated and
  unquoted into RequiresMountsFor=, after libmount and systemd have split the options on commas and consumed a
  level of backslashes: fstab persistence cannot order on a path with whitespace, a comma or a backslash.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ansible_collections.containerhost.overlayfs.plugins.module_utils.boot import _boot as boot
from ansible_collections.containerhost.overlayfs.plugins.module_utils.host._confine import views_of
from ansible_collections.containerhost.overlayfs.plugins.module_utils.host._hostfs import export_files
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._options import ON_VOLATILE_MARKER
from ansible_collections.containerhost.overlayfs.plugins.module_utils.persist._persistence_files import (
    CONFIG_DIR,
    DROPIN,
    MARKER,
    SYSTEMD_UNIT_DIR,
)
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._paths import path_and_ancestors
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._node import Node, TreeError
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._tree import order_by_dependency, parse_filesystem
from ansible_collections.containerhost.overlayfs.plugins.plugin_utils._role_items import ItemError, normalize_items

NBD_ENV_DIR = CONFIG_DIR + '/nbd'
EXPORT_ENV_DIR = CONFIG_DIR + '/exports'
NBD_TEMPLATE = 'containerhost-overlayfs-nbd@.service'
EXPORT_TEMPLATE = 'containerhost-overlayfs-export@.service'
NBD_MODULES_LOAD = '/etc/modules-load.d/containerhost-overlayfs-nbd.conf'
NBD_MODPROBE = '/etc/modprobe.d/containerhost-overlayfs-nbd.conf'
QEMU_NBD = '/usr/bin/qemu-nbd'
NBD_DEVICE = re.compile(r'\A/dev/nbd[0-9]+\Z')
SETTINGS: Dict[str, Any] = {'on_volatile_marker': 'fail', 'python': '/usr/bin/python3', 'nbd_options': {},
                            'helper_sources': {}, 'service_mgr': 'systemd'}
# systemd's limits (src/basic/unit-name.h, linux/limits.h): a unit name is shorter than UNIT_NAME_MAX; a path
# component is at most NAME_MAX bytes and a path shorter than PATH_MAX.
UNIT_NAME_MAX = 256
NAME_MAX = 255
PATH_MAX = 4096
_UNIT_NAME_CHARS = frozenset(b'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_.')
_WHITESPACE = ' \t\n\r\v\f'
CONTROL_OR_SPACE = frozenset(chr(code) for code in list(range(33)) + [127])
MODULE_OPTION = re.compile(r'[A-Za-z0-9_]+\Z')
MODULE_VALUE = re.compile(r'[A-Za-z0-9_.,:+-]+\Z')

# The attach services of image layers, one instance per device or export.
# - DefaultDependencies=no: a default service is ordered after sysinit.target, which is after local-fs.target,
#   which is after every mount unit that is not nofail; the mount on the device needs this service first:
#   an ordering cycle (systemd-analyze verify reports it). So the service orders itself like a mount does.
# - What an instance serves comes from its environment file (IMAGE, FORMAT, READONLY). The image's own
#   filesystem must be mounted first, and RequiresMountsFor= cannot be templated on an instance name, so each
#   instance gets a drop-in with RequiresMountsFor= its image.
# - $READONLY unbraced: an empty value expands to no argument at all; ${IMAGE} is always exactly one argument.
# - qemu-nbd: Type=forking with PIDFile=, qemu-nbd --connect daemonizes once the device is connected.
# - the export: oneshot with RemainAfterExit=, the helper returns once qemu-storage-daemon (which stays in the
#   service's cgroup) serves the export, and finds its pid file itself (named after the image, as the module's).
SERVICE_UNIT_SECTION = '''{marker}
[Unit]
Description={description} (containerhost.overlayfs)
Documentation={documentation}
DefaultDependencies=no
Requires=modprobe@{module}.service
After=modprobe@{module}.service local-fs-pre.target
RequiresMountsFor={helper_lib}
Before=shutdown.target
Conflicts=shutdown.target

[Service]
'''
NBD_TEMPLATE_TEXT = SERVICE_UNIT_SECTION.format(
    marker=MARKER, description='qemu-nbd serving an image on /dev/%i', documentation='man:qemu-nbd(8)', module='nbd',
    helper_lib=boot.HELPER_LIB,
) + '''Type=forking
EnvironmentFile={env_dir}/%i.env
PIDFile=/run/containerhost-overlayfs-%i.pid
ExecStart={helper} start /dev/%i /run/containerhost-overlayfs-%i.pid ${{IMAGE}} ${{FORMAT}} $READONLY
ExecStop={qemu_nbd} --disconnect /dev/%i
'''.format(env_dir=NBD_ENV_DIR, helper=boot.NBD_HELPER, qemu_nbd=QEMU_NBD)
EXPORT_TEMPLATE_TEXT = SERVICE_UNIT_SECTION.format(
    marker=MARKER, description='read-only FUSE export %i of an image', documentation='man:qemu-storage-daemon(1)',
    module='fuse', helper_lib=boot.HELPER_LIB,
) + '''Type=oneshot
RemainAfterExit=yes
EnvironmentFile={env_dir}/%i.env
ExecStart={helper} start ${{IMAGE}} ${{FORMAT}}
ExecStop={helper} stop ${{IMAGE}} ${{FORMAT}}
'''.format(env_dir=EXPORT_ENV_DIR, helper=boot.EXPORT_HELPER)


class PersistenceError(ValueError):
    pass


# --- names ------------------------------------------------------------------------------------------------

def unit_name_escape(text: str) -> str:
    """systemd's unit_name_escape(): '/' -> '-', a leading '.' and every byte outside [A-Za-z0-9:_.] -> \\xNN."""
    out = []
    for index, byte in enumerate(text.encode('utf-8', 'surrogateescape')):
        if byte == ord('/'):
            out.append('-')
        elif byte in _UNIT_NAME_CHARS and not (index == 0 and byte == ord('.')):
            out.append(chr(byte))
        else:
            out.append('\\x%02x' % byte)
    return ''.join(out)


def _simplify(path: str) -> str:
    """systemd's path_simplify(): drop '.' components, repeated and trailing slashes (not '..')."""
    if not path:
        return path
    components = [part for part in path.split('/') if part not in ('', '.')]
    for part in components:
        if len(part.encode('utf-8', 'surrogateescape')) > NAME_MAX:
            raise ValueError('%r: a path component is longer than %d bytes' % (path, NAME_MAX))
    simplified = ('/' if path.startswith('/') else '') + '/'.join(components)
    return simplified or '.'


def unit_name_for_path(path: str, suffix: Optional[str] = None) -> str:
    """What ``systemd-escape --path [--suffix=SUFFIX] PATH`` prints (unit_name_path_escape()); ValueError where it fails.

    Like systemd-escape, a relative path is escaped too; the name a mount unit needs is that of its absolute Where=.
    """
    if not isinstance(path, str) or '\0' in path:
        raise ValueError('%r is not a path' % (path,))
    simplified = _simplify(path)
    if simplified in ('', '/'):
        name = '-'
    else:
        if simplified == '.' or '..' in simplified.split('/'):
            raise ValueError('%r is not a normalized path' % path)
        if len(simplified.encode('utf-8', 'surrogateescape')) >= PATH_MAX:
            raise ValueError('%r is longer than %d bytes' % (path, PATH_MAX - 1))
        name = unit_name_escape(simplified.strip('/'))
    return '%s.%s' % (name, suffix) if suffix else name


def spec_file(target: str) -> str:
    """The spec file of the overlay on a target: named like its mount unit, but where that name has escapes
    (which fstab would escape again) or is long, with them made '_', shortened and a hash of the target added
    after an '@', which no unit name of a path holds unescaped: such a name is never another target's plain one."""
    name = unit_name_for_path(target)
    if '\\' in name or len(name) > 200:
        digest = hashlib.sha256(target.encode('utf-8', 'surrogateescape')).hexdigest()[:16]
        name = '%s@%s' % (name.replace('\\', '_')[:180], digest)
    return '%s/%s.conf' % (boot.SPEC_DIR, name)


def instance_of(template: str, instance: str) -> str:
    """containerhost-overlayfs-nbd@.service, nbd0 -> containerhost-overlayfs-nbd@nbd0.service."""
    return template.replace('@', '@' + instance)


def nbd_service_name(device: str) -> str:
    """The attach service instance of an nbd device: /dev/nbd0 -> containerhost-overlayfs-nbd@nbd0.service."""
    return instance_of(NBD_TEMPLATE, device.rsplit('/', 1)[-1])


def export_instance(image: str, image_format: str) -> str:
    """The export service instance of an image in a format: the name its export files have."""
    return export_files(image, image_format)[0].rsplit('/', 1)[-1][:-len('.img')]


def dropin_file(unit: str) -> str:
    return '%s/%s.d/%s' % (SYSTEMD_UNIT_DIR, unit, DROPIN)


# --- quoting ----------------------------------------------------------------------------------------------

def unit_value(text: str) -> str:
    """A value for a unit file setting that expands specifiers (What=, Where=, Options=, Description=)."""
    return text.replace('%', '%%')


def unit_word(path: str) -> str:
    """One word of a whitespace-separated, unquoted list setting (RequiresMountsFor=)."""
    text = path.replace('%', '%%')
    if any(char in text for char in _WHITESPACE + '"\'\\'):
        return '"%s"' % text.replace('\\', '\\\\').replace('"', '\\"')
    return text


def fstab_field(text: str) -> str:
    """An fstab field: the octal escapes libmount's unmangle() decodes."""
    return (text.replace('\\', '\\134').replace(' ', '\\040').replace('\t', '\\011').replace('\n', '\\012'))


def env_value(text: str) -> str:
    """A value for an EnvironmentFile=: double quotes, with the escapes systemd (like sh) takes there."""
    return '"%s"' % re.sub(r'([\\"$`])', r'\\\1', text)


# --- rendering --------------------------------------------------------------------------------------------

def render(items: Any, devices: Optional[Dict[str, str]] = None, settings: Optional[Dict[str, Any]] = None,
           defaults: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Render the persistence of the role's items (role_items.normalize_items, in either form; persistence
    auto follows the service_mgr setting, systemd unless it says otherwise).

    ``devices`` pins the nbd device of each nbd image layer, by the layer's target: ``{target: '/dev/nbdN'}``
    (entries for other targets are ignored, so one map serves every item). ``settings``: see SETTINGS; an item
    in state absent or with persistence none is left out. ``defaults``: as normalize_items takes them.

    Returns ``{'files': {absolute path: text}, 'executables': [path, ...], 'fstab': [line, ...],
    'units': [mount unit to enable, ...]}``, each in the order the filesystems come up. Every file starts with
    MARKER (the executables on their second line).
    """
    options = _settings(settings)
    try:
        normalized = normalize_items(items, defaults, options['service_mgr'])
    except ItemError as error:
        raise PersistenceError(str(error))
    return render_normalized(normalized, devices, settings)


def render_normalized(normalized: List[Dict[str, Any]], devices: Optional[Dict[str, str]] = None,
                      settings: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """render() of items that normalize_items returned, with that service_mgr (not normalized again)."""
    options = _settings(settings)
    devices = devices or {}
    if not isinstance(devices, dict):
        raise PersistenceError('devices must be a mapping of image layer targets to nbd devices')
    roots: List[Node] = []
    item_of: Dict[int, Dict[str, Any]] = {}
    for item in normalized:
        if item['state'] == 'absent' or item['persistence'] == 'none':
            continue
        for number, tree in enumerate(item['trees']):
            root = parse_filesystem(tree, item['name'] if len(item['trees']) == 1 else '%s[%d]' % (item['name'], number))
            root.position = len(roots)
            roots.append(root)
            item_of[id(root)] = item
    try:
        ordered = order_by_dependency(roots)
    except TreeError as error:
        raise PersistenceError(str(error))
    views = views_of(node.view for root in roots for node in root.walk() if node.view)
    renderer = _Renderer(devices, options, views)
    for root in ordered:
        renderer.tree(root, item_of[id(root)])
    return renderer.result()


def helper_sources() -> Dict[str, str]:
    """The boot helper's modules: boot/_boot.py and every module of this collection it imports, transitively (its
    import closure, computed from the sources), by name below boot.PACKAGE ('boot._boot', 'kernel._options', ...).
    The renderer installs them on the target."""
    sources: Dict[str, str] = {}
    pending = ['boot._boot']
    while pending:
        name = pending.pop()
        if name not in sources:
            with open(_module_file(name), encoding='utf-8') as handle:
                sources[name] = handle.read()
            pending += collection_imports(sources[name])
    return sources


def collection_imports(source: str) -> List[str]:
    """The modules of this collection's module_utils that a source imports, by name below boot.PACKAGE."""
    prefix = boot.PACKAGE + '.'
    found: List[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module is not None and node.module.startswith(prefix):
            name = node.module[len(prefix):]
            # 'from PACKAGE.host import _syscalls' names modules of a package; 'from PACKAGE.host._syscalls
            # import mount' a module
            found += [name] if os.path.exists(_module_file(name)) else ['%s.%s' % (name, alias.name)
                                                                        for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [alias.name[len(prefix):] for alias in node.names if alias.name.startswith(prefix)]
    return found


def _missing_from_closure(sources: Dict[str, str]) -> List[str]:
    """The modules of boot._boot's import closure, as far as ``sources`` (name -> source) show it, that they lack."""
    missing, seen, pending = [], set(), ['boot._boot']
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in sources:
            pending += collection_imports(sources[name])
        else:
            missing.append(name)
    return sorted(missing)


def _module_file(name: str) -> str:
    module_utils = os.path.dirname(os.path.dirname(os.path.abspath(boot.__file__)))
    return os.path.join(module_utils, *name.split('.')) + '.py'


def _settings(settings: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    result = dict(SETTINGS)
    unknown = sorted(set(settings or {}) - set(SETTINGS))
    if unknown:
        raise PersistenceError('unknown setting %s (known: %s)' % (', '.join(unknown), ', '.join(sorted(SETTINGS))))
    result.update((key, value) for key, value in (settings or {}).items() if value is not None)
    if result['on_volatile_marker'] not in ON_VOLATILE_MARKER:
        raise PersistenceError('on_volatile_marker: %r is not one of %s'
                               % (result['on_volatile_marker'], ', '.join(ON_VOLATILE_MARKER)))
    if not isinstance(result['nbd_options'], dict):
        raise PersistenceError('nbd_options must be a mapping of nbd module options')
    for key, value in result['nbd_options'].items():  # one line of modprobe.d: a word each
        if not (isinstance(key, str) and MODULE_OPTION.match(key)):
            raise PersistenceError('nbd_options: %r is not a module option name ([A-Za-z0-9_]+)' % (key,))
        word = isinstance(value, str) and MODULE_VALUE.match(value)
        if isinstance(value, bool) or not (isinstance(value, int) or word):
            raise PersistenceError('nbd_options: %s: %r is not a module option value (a number, or a word of '
                                   '[A-Za-z0-9_.,:+-])' % (key, value))
    python = result['python']
    if not (isinstance(python, str) and python.startswith('/') and not set(python) & CONTROL_OR_SPACE):
        raise PersistenceError('python: %r is not an absolute path without spaces or control characters (it is the '
                               'first line of the helper\'s launcher)' % (python,))
    return result


class _Renderer(object):

    def __init__(self, devices: Dict[str, str], settings: Dict[str, Any], views: Dict[str, str]) -> None:
        self.devices = devices
        self.settings = settings
        self.views = views  # confine.views_of every overlay persisted: its merged view and upper dir
        self.files: Dict[str, str] = {}
        self.executables: List[str] = []
        self.fstab: List[str] = []
        self.units: List[str] = []
        self.nbd_devices: Dict[str, str] = {}  # device -> the layer on it
        self.reserved = set(device for device in devices.values())  # an unpinned layer takes none of these
        # (unit, 'Requires' or 'Wants') -> the mount units of the trees it names
        self.dependents: Dict[Tuple[str, str], List[str]] = {}
        self.needs_helper = False  # an overlay, an nbd device or a FUSE export comes back through boot.py

    def result(self) -> Dict[str, Any]:
        if self.needs_helper:
            self._helpers()
        lines: Dict[str, List[str]] = {}  # a unit that trees are required_by and wanted_by gets one drop-in
        for (unit, kind), mounts in sorted(self.dependents.items()):
            lines.setdefault(unit, []).extend('%s=%s' % (key, ' '.join(mounts)) for key in (kind, 'After'))
        for unit, unit_lines in sorted(lines.items()):
            self._write(dropin_file(unit), '\n'.join([MARKER, '[Unit]'] + unit_lines) + '\n')
        return {'files': self.files, 'executables': self.executables, 'fstab': self.fstab, 'units': self.units}

    def _write(self, path: str, text: str) -> None:
        """A file's text. Files shared on purpose (a template, the helper, an export two layers use) come out the
        same each time; two trees that would write one file with two texts (a name that is not one-to-one) fail."""
        if self.files.get(path, text) != text:
            raise PersistenceError('two trees would write %s, each with its own content: %s' % (
                path, ' and '.join(repr(self._about(other)) for other in (self.files[path], text))))
        self.files[path] = text

    @staticmethod
    def _about(text: str) -> str:
        """The line of a file's text that tells it from another's (its spec's JSON, or its last line)."""
        return [line for line in text.splitlines() if line][-1][:300]

    def tree(self, root: Node, item: Dict[str, Any]) -> None:
        self.node(root, item)
        top = unit_name_for_path(root.target, 'mount')
        for key, kind in (('required_by', 'Requires'), ('wanted_by', 'Wants')):
            for unit in item[key]:
                self.dependents.setdefault((unit, kind), []).append(top)

    def node(self, node: Node, item: Dict[str, Any]) -> None:
        """Post-order: a node's lowers (and whatever they stand on) come up before it. A dir is used in place: it
        shows up in its overlay's RequiresMountsFor=."""
        for lower in node.lowers:
            self.node(lower, item)
        if node.is_mounted_node:
            node.persist(self, item)

    # --- what a node kind writes (tree._node.Persisting) ------------------------------------------------------

    def helper_mount(self, node: Node, item: Dict[str, Any], spec: Dict[str, Any], layers: List[str],
                     named: List[str], description: str) -> None:
        """The mount of a spec file, which mount(8) hands to the boot helper; the spec gets the settings' volatile
        choice and the views of persisted trees its paths lie in (at boot they count before their own overlays are
        up)."""
        self.needs_helper = True
        views = dict((above, self.views[above]) for path in named for above in path_and_ancestors(path)[1:]
                     if above in self.views)
        path = spec_file(node.target)
        self._write(path, boot.spec_text(MARKER, dict(spec, on_volatile_marker=self.settings['on_volatile_marker'],
                                                      views=views)))
        self.mount(node, item, what=path, fstype=boot.FSTYPE, options=[],
                   requires_mounts_for=layers + [boot.HELPER_LIB], description=description)

    def nbd_attach(self, node: Node, image: str, image_format: str, readonly: bool) -> Tuple[str, str]:
        """The nbd device pinned for the node (or the lowest free one) and the qemu-nbd service instance that serves
        the image there at boot, with the nbd module loaded."""
        self.needs_helper = True
        device = self.devices.get(node.target) or self._unpinned_device()
        if not isinstance(device, str) or not NBD_DEVICE.match(device):
            raise PersistenceError('%s: %r is not an nbd device (/dev/nbdN)' % (node.describe(), device))
        if device in self.nbd_devices:
            raise PersistenceError('%s: nbd device %s is also given to %s; each image layer needs its own device'
                                   % (node.describe(), device, self.nbd_devices[device]))
        self.nbd_devices[device] = node.describe()
        instance = device.rsplit('/', 1)[-1]
        self._attach_service(node, image, NBD_TEMPLATE, NBD_TEMPLATE_TEXT, NBD_ENV_DIR, instance, [
            'IMAGE=%s' % env_value(image),
            'FORMAT=%s' % image_format,
            'READONLY=%s' % ('--read-only' if readonly else ''),
        ])
        self._write(NBD_MODULES_LOAD, '%s\nnbd\n' % MARKER)
        options = ' '.join('%s=%s' % pair for pair in sorted(self.settings['nbd_options'].items()))
        self._write(NBD_MODPROBE, '%s\n%s' % (MARKER, 'options nbd %s\n' % options if options else ''))
        return device, nbd_service_name(device)

    def fuse_export(self, node: Node, image: str, image_format: str) -> Tuple[str, str]:
        """The FUSE export file of an image and the export service instance that starts it at boot."""
        self.needs_helper = True
        instance = export_instance(image, image_format)
        self._attach_service(node, image, EXPORT_TEMPLATE, EXPORT_TEMPLATE_TEXT, EXPORT_ENV_DIR, instance, [
            'IMAGE=%s' % env_value(image),
            'FORMAT=%s' % image_format,
        ])
        return export_files(image, image_format)[0], instance_of(EXPORT_TEMPLATE, instance)

    def _attach_service(self, node: Node, image: str, template: str, template_text: str, env_dir: str, instance: str,
                        environment: List[str]) -> None:
        """An instance of an attach service: its template, environment file and drop-in (RequiresMountsFor= the
        image). Layers that share an instance (one FUSE export) write the same files."""
        self._check_word(node, 'source', image)
        service = instance_of(template, instance)
        self._write(SYSTEMD_UNIT_DIR + '/' + template, template_text)
        self._write('%s/%s.env' % (env_dir, instance), '\n'.join(
            [MARKER, '# What %s serves' % service] + environment) + '\n')
        self._write(dropin_file(service), '\n'.join(
            [MARKER, '[Unit]', 'RequiresMountsFor=%s' % unit_word(image)]) + '\n')

    def _unpinned_device(self) -> str:
        """For a layer not on a device now (its tree is unmounted): the lowest nbd device nothing else pins.
        Deterministic, so a second run renders the same; at boot every nbd device is this role's to give."""
        number = 0
        while '/dev/nbd%d' % number in self.reserved or '/dev/nbd%d' % number in self.nbd_devices:
            number += 1
        self.reserved.add('/dev/nbd%d' % number)
        return '/dev/nbd%d' % number

    def _helpers(self) -> None:
        """The boot helper (boot.py and what it imports, in their package layout) and its launchers."""
        sources = self.settings['helper_sources']
        missing = _missing_from_closure(sources)
        if missing:
            raise PersistenceError('the boot helper needs the sources of boot._boot and the modules it imports '
                                   '(helper_sources()); missing: %s' % ', '.join(missing))
        for name, source in sorted(sources.items()):
            parts = (boot.PACKAGE + '.' + name).split('.')
            for depth in range(1, len(parts)):
                self._write('%s/%s/__init__.py' % (boot.HELPER_LIB, '/'.join(parts[:depth])), MARKER + '\n')
            self._write('%s/%s.py' % (boot.HELPER_LIB, '/'.join(parts)), MARKER + '\n' + source)
        for program in (boot.MOUNT_HELPER, boot.EXPORT_HELPER, boot.NBD_HELPER):
            self._write(program, boot.launcher(MARKER, self.settings['python']))
            self.executables.append(program)

    # --- output -----------------------------------------------------------------------------------------

    def mount(self, node: Node, item: Dict[str, Any], what: str, fstype: str, options: List[str], description: str,
              requires_mounts_for: Sequence[str] = (), requires_units: Sequence[str] = (),
              unit_only_requires_mounts_for: bool = False) -> None:
        self._check_line_value(node, 'target', node.target)
        self._check_line_value(node, 'source', what)
        for path in requires_mounts_for:
            self._check_word(node, 'layer', path)
        # a top-level filesystem's mount flags: mount(8) sets them (an overlay's helper, from its spec)
        flags = list(node.mount_flags) if fstype != boot.FSTYPE else []
        options = list(options) + flags + (['nofail'] if item['nofail'] else [])
        if item['persistence'] == 'systemd':
            self._unit(node, item, what, fstype, options, description, requires_mounts_for, requires_units)
            return
        if not unit_only_requires_mounts_for:
            for path in requires_mounts_for:
                self._check_fstab_option_path(node, path)
            options += ['x-systemd.requires-mounts-for=%s' % path for path in requires_mounts_for]
        # x-systemd.requires= implies After= (systemd-fstab-generator writes both).
        options += ['x-systemd.requires=%s' % unit for unit in requires_units]
        self.fstab.append(' '.join([fstab_field(what), fstab_field(node.target), fstype,
                                    fstab_field(','.join(options) or 'defaults'), '0', '0']))

    def _unit(self, node: Node, item: Dict[str, Any], what: str, fstype: str, options: List[str], description: str,
              requires_mounts_for: Sequence[str], requires_units: Sequence[str]) -> None:
        name = unit_name_for_path(node.target, 'mount')
        if len(name) >= UNIT_NAME_MAX:
            raise PersistenceError('%s: the mount unit name for target %r would be %d characters; systemd takes at most %d '
                                   '(it gives such mounts hashed names itself): use persistence fstab for this tree'
                                   % (node.describe(), node.target, len(name), UNIT_NAME_MAX - 1))
        lines = [MARKER, '[Unit]', 'Description=%s (containerhost.overlayfs)' % unit_value(description)]
        if requires_mounts_for:
            lines.append('RequiresMountsFor=%s' % ' '.join(unit_word(path) for path in requires_mounts_for))
        for unit in requires_units:
            lines += ['Requires=%s' % unit, 'After=%s' % unit]
        lines += ['', '[Mount]', 'What=%s' % unit_value(what), 'Where=%s' % unit_value(node.target)]
        if fstype not in ('auto', 'none'):
            lines.append('Type=%s' % fstype)
        if options:
            lines.append('Options=%s' % unit_value(','.join(options)))
        # Like systemd-fstab-generator: a nofail mount is wanted by local-fs.target (and, nofail in Options=,
        # not ordered before it), any other one required.
        lines += ['', '[Install]', '%s=local-fs.target' % ('WantedBy' if item['nofail'] else 'RequiredBy')]
        self._write('%s/%s' % (SYSTEMD_UNIT_DIR, name), '\n'.join(lines) + '\n')
        self.units.append(name)

    # --- what the files can carry -----------------------------------------------------------------------

    def _check_word(self, node: Node, role: str, path: str) -> None:
        """A path in a unit file (RequiresMountsFor=, a quoted word): any text but a line break."""
        try:
            path.encode('utf-8')
        except UnicodeEncodeError:
            raise PersistenceError('%s: %s %r is not valid UTF-8; unit files and fstab are text' % (node.describe(), role, path))
        if '\n' in path or '\r' in path:
            raise PersistenceError('%s: %s %r holds a line break, which a line of a unit file cannot carry (and '
                                   'systemd-fstab-generator copies fstab paths into units as they are)'
                                   % (node.describe(), role, path))

    def _check_line_value(self, node: Node, role: str, path: str) -> None:
        """A path that is the whole value of a unit file line (What=, Where=; fstab fields become those)."""
        self._check_word(node, role, path)
        if path[-1] in _WHITESPACE + '\\':
            raise PersistenceError('%s: %s %r ends in %s, which the unit file parser drops (systemd-fstab-generator '
                                   'copies fstab paths into units as they are)'
                                   % (node.describe(), role, path, 'a backslash (joining the next line)'
                                      if path[-1] == '\\' else 'whitespace'))

    def _check_fstab_option_path(self, node: Node, path: str) -> None:
        """A path in an fstab option (x-systemd.requires-mounts-for=)."""
        for chars, why in ((_WHITESPACE, 'whitespace: systemd-fstab-generator writes x-systemd.requires-mounts-for= '
                                         'paths unquoted into RequiresMountsFor=, which splits them'),
                           (',', "a ',': libmount and systemd split mount options on commas"),
                           ('\\', 'a backslash: systemd-fstab-generator consumes a level of backslash escapes in '
                                  'mount options'),
                           ('"\'', 'a quote: systemd takes the quotes in RequiresMountsFor= as quoting')):
            if any(char in path for char in chars):
                raise PersistenceError('%s: layer %r holds %s; use persistence systemd for this tree'
                                       % (node.describe(), path, why))
