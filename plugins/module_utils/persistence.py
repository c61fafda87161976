# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Render the persistence of filesystem trees: systemd .mount units, fstab lines, and the qemu-nbd attach services.

Pure functions (stdlib, ansible.module_utils and the collection's own tree and option code), usable on the
controller and on a target. ``render()`` takes the canonical YAML trees (what the module returns as ``filesystems``) and returns the text of
every file, in the order the filesystems must come up: image attach, lower mounts, nested overlays, the top overlay.

What a path may hold is decided by the programs that read these files, each checked against the real one in
tests/integration/test_persistence_oracles.py (systemd 252, util-linux 2.38):

- Unit files are line based: a value cannot hold a newline or a carriage return (both end a line); the parser
  strips trailing whitespace and joins a line that ends in a backslash with the next. What=, Where=, Options=, Description= and RequiresMountsFor= expand
  specifiers, so '%' is written '%%'. RequiresMountsFor= is split on whitespace and unquoted: paths that need it
  are double-quoted with backslash escapes.
- Options= reaches mount(8) through systemd's fstab_filter_options(), which consumes one level of '\\\\' and '\\,'
  escapes; an fstab line loses another level in systemd-fstab-generator. mount(8) (libmount) splits options on
  ',' (and libmount >= 2.39 does it before the kernel sees an escape). So a path inside an option string can hold
  neither ',' nor '\\'. A ':' is escaped '\\:' for the kernel's lowerdir split, and survives all of them.
- fstab fields are whitespace separated, with octal escapes (\\040 space, \\011 tab, \\012 newline, \\134
  backslash). systemd-fstab-generator copies What= and Where= into units as they are (so no newline, no trailing
  whitespace or backslash there either) and writes x-systemd.requires-mounts-for= paths space-separated and
  unquoted into RequiresMountsFor=, so fstab persistence cannot order on a path with whitespace.
"""

from __future__ import annotations

import re

from ansible.module_utils.parsing.convert_bool import boolean

from ansible_collections.containerhost.overlayfs.plugins.module_utils.options import (
    MOUNT_DATA_LIMIT,
    fits_mount_data,
    overlay_mount_data,
)
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree import (
    TreeError,
    check_unique_targets,
    order_by_dependency,
    parse_filesystem,
)

MARKER = '# Managed by containerhost.overlayfs.overlay_mounts: do not edit'
PERSISTENCE_KINDS = ('systemd', 'fstab')
SYSTEMD_UNIT_DIR = '/etc/systemd/system'
NBD_ENV_DIR = '/etc/containerhost-overlayfs/nbd'
NBD_TEMPLATE = 'containerhost-overlayfs-nbd@.service'
NBD_DROPIN = 'containerhost-overlayfs.conf'
QEMU_NBD = '/usr/bin/qemu-nbd'
NBD_DEVICE = re.compile(r'\A/dev/nbd[0-9]+\Z')

# systemd's limits (src/basic/unit-name.h, linux/limits.h): a unit name is shorter than UNIT_NAME_MAX; a path
# component is at most NAME_MAX bytes and a path shorter than PATH_MAX.
UNIT_NAME_MAX = 256
NAME_MAX = 255
PATH_MAX = 4096
_UNIT_NAME_CHARS = frozenset(b'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_.')
_WHITESPACE = ' \t\n\r\v\f'

ITEM_KEYS = ('tree', 'trees', 'persistence', 'nofail', 'devices', 'name', 'state')
OPTION_DEFAULTS = {'persistence': 'systemd', 'nofail': False}

# The attach service of an nbd image layer, one instance per device (instance nbd0 serves /dev/nbd0).
# - DefaultDependencies=no: a default service is ordered after sysinit.target, which is after local-fs.target,
#   which is after every mount unit that is not nofail; the mount on the device needs this service first:
#   an ordering cycle (systemd-analyze verify reports it). So the service orders itself like a mount does.
# - What an instance serves comes from its environment file (IMAGE, FORMAT, READONLY). The image's own
#   filesystem must be mounted first, and RequiresMountsFor= cannot be templated on an instance named after a
#   device, so each instance gets a drop-in with RequiresMountsFor= its image (files of render()).
# - $READONLY unbraced: an empty value expands to no argument at all; ${IMAGE} is always exactly one argument.
# - Type=forking with PIDFile=: qemu-nbd --connect daemonizes once the device is connected.
NBD_TEMPLATE_TEXT = '''{marker}
[Unit]
Description=qemu-nbd serving an image on /dev/%i (containerhost.overlayfs)
Documentation=man:qemu-nbd(8)
DefaultDependencies=no
Requires=modprobe@nbd.service
After=modprobe@nbd.service local-fs-pre.target
Before=shutdown.target
Conflicts=shutdown.target

[Service]
Type=forking
EnvironmentFile={env_dir}/%i.env
PIDFile=/run/containerhost-overlayfs-%i.pid
ExecStart={qemu_nbd} --format=${{FORMAT}} $READONLY --connect=/dev/%i --pid-file=/run/containerhost-overlayfs-%i.pid -- ${{IMAGE}}
ExecStop={qemu_nbd} --disconnect /dev/%i
'''


class PersistenceError(ValueError):
    pass


# --- unit names -------------------------------------------------------------------------------------------

def unit_name_escape(text):
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


def _simplify(path):
    """systemd's path_simplify(): drop '.' components, repeated and trailing slashes (not '..')."""
    if not path:
        return path
    components = [part for part in path.split('/') if part not in ('', '.')]
    for part in components:
        if len(part.encode('utf-8', 'surrogateescape')) > NAME_MAX:
            raise ValueError('%r: a path component is longer than %d bytes' % (path, NAME_MAX))
    simplified = ('/' if path.startswith('/') else '') + '/'.join(components)
    return simplified or '.'


def unit_name_for_path(path, suffix=None):
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


def nbd_service_name(device):
    """The attach service instance of an nbd device: /dev/nbd0 -> containerhost-overlayfs-nbd@nbd0.service."""
    return NBD_TEMPLATE.replace('@', '@' + device.rsplit('/', 1)[-1])


def nbd_env_file(device):
    return '%s/%s.env' % (NBD_ENV_DIR, device.rsplit('/', 1)[-1])


def nbd_dropin_file(device):
    return '%s/%s.d/%s' % (SYSTEMD_UNIT_DIR, nbd_service_name(device), NBD_DROPIN)


# --- quoting ----------------------------------------------------------------------------------------------

def unit_value(text):
    """A value for a unit file setting that expands specifiers (What=, Where=, Options=, Description=)."""
    return text.replace('%', '%%')


def unit_word(path):
    """One word of a whitespace-separated, unquoted list setting (RequiresMountsFor=)."""
    text = path.replace('%', '%%')
    if any(char in text for char in _WHITESPACE + '"\'\\'):
        return '"%s"' % text.replace('\\', '\\\\').replace('"', '\\"')
    return text


def fstab_field(text):
    """An fstab field: the octal escapes libmount's unmangle() decodes."""
    return (text.replace('\\', '\\134').replace(' ', '\\040').replace('\t', '\\011').replace('\n', '\\012'))


def env_value(text):
    """A value for an EnvironmentFile=: double quotes, with the escapes systemd (like sh) takes there."""
    return '"%s"' % re.sub(r'([\\"$`])', r'\\\1', text)


# --- rendering --------------------------------------------------------------------------------------------

class _Item(object):
    """What one input item asks: how its trees persist."""

    def __init__(self, persistence, nofail, devices):
        self.persistence = persistence
        self.nofail = nofail
        self.devices = devices


def render(trees, options=None):
    """Render the persistence of a list of trees.

    ``trees``: items ``{'tree': TREE, 'persistence': 'systemd'|'fstab'|'none', 'nofail': bool,
    'devices': {target: '/dev/nbdN'}}`` (``trees: [TREE, ...]`` instead of ``tree`` for several; a bare TREE takes
    the defaults), TREE in the canonical YAML form. ``devices`` pins the nbd device of each nbd image layer, by
    the layer's target; entries for other targets are ignored, so one map may serve every item.
    ``options``: defaults for items, ``persistence`` (systemd) and ``nofail`` (false).

    Returns ``{'units': {name: text}, 'files': {absolute path: text}, 'fstab': [line, ...]}``, each in the order
    the filesystems come up. ``units`` go to /etc/systemd/system; ``files`` are the attach services'
    environment files and drop-ins; every unit and file starts with MARKER.
    """
    defaults = _options(options)
    if not isinstance(trees, (list, tuple)):
        raise PersistenceError('the trees to persist must be a list, not %s' % type(trees).__name__)
    roots, items = [], {}
    for index, raw in enumerate(trees):
        item, raw_trees, labels = _item(raw, index, defaults)
        if item.persistence == 'none':
            continue
        for raw_tree, label in zip(raw_trees, labels):
            try:
                root = parse_filesystem(raw_tree, label)
            except TreeError as error:
                raise PersistenceError(str(error))
            root.position = len(roots)
            roots.append(root)
            items[id(root)] = item
    try:
        check_unique_targets(roots)
        ordered = order_by_dependency(roots)
    except TreeError as error:
        raise PersistenceError(str(error))
    renderer = _Renderer(set(device for item in items.values() for device in item.devices.values()))
    for root in ordered:
        renderer.tree(root, items[id(root)])
    return {'units': renderer.units, 'files': renderer.files, 'fstab': renderer.fstab}


def _options(options):
    result = dict(OPTION_DEFAULTS)
    if options is None:
        return result
    if not isinstance(options, dict):
        raise PersistenceError('options must be a mapping, not %s' % type(options).__name__)
    unknown = sorted(set(options) - set(OPTION_DEFAULTS))
    if unknown:
        raise PersistenceError('unknown option %s (known: %s)' % (', '.join(unknown), ', '.join(sorted(OPTION_DEFAULTS))))
    for key, value in options.items():
        if value is not None:
            result[key] = value
    _persistence(result['persistence'], 'options.persistence', allow_none=False)
    result['nofail'] = _flag(result['nofail'], 'options.nofail')
    return result


def _item(raw, index, defaults):
    where = 'trees[%d]' % index
    if not isinstance(raw, dict):
        raise PersistenceError('%s must be a mapping: a tree, or {tree: TREE, persistence: ..., nofail: ..., devices: ...}'
                               % where)
    if 'tree' not in raw and 'trees' not in raw:
        if set(raw) & {'persistence', 'nofail', 'devices'}:
            raise PersistenceError('%s: tree (or trees) is required' % where)
        raw = {'tree': raw}  # a bare tree
    unknown = sorted(set(raw) - set(ITEM_KEYS))
    if unknown:
        raise PersistenceError('%s: unknown key %s (allowed: %s)' % (where, ', '.join(unknown), ', '.join(ITEM_KEYS)))
    name = raw.get('name')
    label = str(name) if name not in (None, '') else where
    if 'tree' in raw and 'trees' in raw:
        raise PersistenceError('%s: give tree or trees, not both' % label)
    if 'trees' in raw:
        raw_trees = raw['trees']
        if not isinstance(raw_trees, list):
            raise PersistenceError('%s.trees must be a list of trees' % label)
        labels = ['%s[%d]' % (label, number) for number in range(len(raw_trees))]
    else:
        raw_trees, labels = [raw['tree']], [label]
    persistence = raw.get('persistence')
    persistence = defaults['persistence'] if persistence is None else persistence
    _persistence(persistence, '%s.persistence' % label, allow_none=True)
    nofail = raw.get('nofail')
    nofail = defaults['nofail'] if nofail is None else nofail
    nofail = _flag(nofail, '%s.nofail' % label)
    devices = raw.get('devices') or {}
    if not isinstance(devices, dict):
        raise PersistenceError('%s.devices must be a mapping of image layer targets to nbd devices' % label)
    return _Item(persistence, nofail, devices), raw_trees, labels


def _persistence(value, where, allow_none):
    allowed = PERSISTENCE_KINDS + (('none',) if allow_none else ())
    if value not in allowed:
        raise PersistenceError('%s: %r is not one of %s' % (where, value, ', '.join(allowed)))


def _flag(value, where):
    try:
        return boolean(value, strict=True)
    except TypeError:
        raise PersistenceError('%s must be true or false, not %r' % (where, value))


def _mount_readonly(node):
    """As the module mounts it: image and block layers under an overlay read-only, otherwise as asked."""
    return node.readonly or (node.is_layer and node.kind in ('file', 'block'))


class _Renderer(object):

    def __init__(self, reserved):
        self.units = {}
        self.files = {}
        self.fstab = []
        self.nbd_devices = {}
        self.reserved = reserved  # every device some item pins: a layer without one takes none of them

    def _unpinned_device(self):
        """For a layer not on a device now (its tree is unmounted): the lowest nbd device nothing else pins.
        Deterministic, so a second run renders the same; at boot every nbd device is this role's to give."""
        number = 0
        while '/dev/nbd%d' % number in self.reserved or '/dev/nbd%d' % number in self.nbd_devices:
            number += 1
        self.reserved.add('/dev/nbd%d' % number)
        return '/dev/nbd%d' % number

    def tree(self, root, item):
        self.node(root, item)

    def node(self, node, item):
        """Post-order: a node's lowers (and whatever they stand on) come up before it."""
        for lower in node.lowers:
            self.node(lower, item)
        if node.kind == 'dir':
            return  # used in place: it shows up in its overlay's RequiresMountsFor=
        getattr(self, '_' + ('bind' if node.kind in ('mount', 'bind') else node.kind))(node, item)

    # --- node kinds -------------------------------------------------------------------------------------

    def _overlay(self, node, item):
        lowers = node.layer_paths()
        layers = [('lower', path) for path in lowers]
        if node.upper:
            layers += [('upper', node.upper), ('work', node.work)]
        for role, path in layers:
            self._check_option_path(node, item, role, path)
        if not fits_mount_data(lowers, node.upper, node.work, node.options):
            raise PersistenceError('%s: the overlay options are longer than the %d bytes mount(8) can hand the kernel '
                                   '(the module uses fsconfig(2) for them; a boot cannot). Use shorter layer paths.'
                                   % (node.describe(), MOUNT_DATA_LIMIT))
        options = [overlay_mount_data(lowers, node.upper, node.work, node.options)]
        if node.readonly:
            options.append('ro')
        self._mount(node, item, what='overlay', fstype='overlay', options=options,
                    requires_mounts_for=[path for _role, path in layers],
                    description='Overlay filesystem %s' % node.target)

    def _bind(self, node, item):
        self._check_path(node, item, 'source', node.source)
        options = ['bind'] + (['ro'] if node.readonly else [])
        self._mount(node, item, what=node.source, fstype='none', options=options,
                    description='Bind mount of %s on %s' % (node.source, node.target))

    def _block(self, node, item):
        self._check_path(node, item, 'source', node.source)
        self._mount(node, item, what=node.source, fstype='auto', options=[_ro_rw(node)],
                    description='%s on %s' % (node.source, node.target))

    def _file(self, node, item):
        self._check_path(node, item, 'source', node.source)
        if node.driver == 'fuse':
            raise PersistenceError('%s: an image layer with driver fuse cannot be made persistent (its qemu-storage-daemon '
                                   'export and loop device have no boot-time service); use driver nbd, or loop for a '
                                   'raw image, for a persistent tree' % node.describe())
        getattr(self, '_file_' + node.driver)(node, item)

    def _file_loop(self, node, item):
        # systemd orders a mount after the mounts of its What= path by itself (RequiresMountsFor= What for
        # non-network mounts, fstab ones included); the unit says it too.
        self._mount(node, item, what=node.source, fstype='auto', options=['loop', _ro_rw(node)],
                    requires_mounts_for=[node.source], unit_only_requires_mounts_for=True,
                    description='Image %s on %s' % (node.source, node.target))

    def _file_nbd(self, node, item):
        device = item.devices.get(node.target) or self._unpinned_device()
        if not isinstance(device, str) or not NBD_DEVICE.match(device):
            raise PersistenceError('%s: %r is not an nbd device (/dev/nbdN)' % (node.describe(), device))
        if device in self.nbd_devices:
            raise PersistenceError('%s: nbd device %s is also given to %s; each image layer needs its own device'
                                   % (node.describe(), device, self.nbd_devices[device]))
        self.nbd_devices[device] = node.describe()
        readonly = _mount_readonly(node)
        self.units.setdefault(NBD_TEMPLATE, NBD_TEMPLATE_TEXT.format(marker=MARKER, env_dir=NBD_ENV_DIR, qemu_nbd=QEMU_NBD))
        self.files[nbd_env_file(device)] = '\n'.join([
            MARKER,
            '# What %s serves on %s' % (nbd_service_name(device), device),
            'IMAGE=%s' % env_value(node.source),
            'FORMAT=%s' % node.image_format,
            'READONLY=%s' % ('--read-only' if readonly else ''),
        ]) + '\n'
        self.files[nbd_dropin_file(device)] = '\n'.join([
            MARKER,
            '[Unit]',
            'RequiresMountsFor=%s' % unit_word(node.source),
        ]) + '\n'
        service = nbd_service_name(device)
        self._mount(node, item, what=device, fstype='auto', options=[_ro_rw(node)], requires_units=[service],
                    description='Image %s (%s) on %s' % (node.source, node.image_format, node.target))

    # --- output -----------------------------------------------------------------------------------------

    def _mount(self, node, item, what, fstype, options, description, requires_mounts_for=(), requires_units=(),
               unit_only_requires_mounts_for=False):
        self._check_path(node, item, 'target', node.target)
        options = list(options) + (['nofail'] if item.nofail else [])
        if item.persistence == 'systemd':
            self._unit(node, item, what, fstype, options, description, requires_mounts_for, requires_units)
            return
        if not unit_only_requires_mounts_for:
            options += ['x-systemd.requires-mounts-for=%s' % path for path in requires_mounts_for]
        # x-systemd.requires= implies After= (systemd-fstab-generator writes both).
        options += ['x-systemd.requires=%s' % unit for unit in requires_units]
        self.fstab.append(' '.join([fstab_field(what), fstab_field(node.target), fstype,
                                    fstab_field(','.join(options)), '0', '0']))

    def _unit(self, node, item, what, fstype, options, description, requires_mounts_for, requires_units):
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
        lines.append('Options=%s' % unit_value(','.join(options)))
        # Like systemd-fstab-generator: a nofail mount is wanted by local-fs.target (and, nofail in Options=,
        # not ordered before it), any other one required.
        lines += ['', '[Install]', '%s=local-fs.target' % ('WantedBy' if item.nofail else 'RequiredBy')]
        self.units[name] = '\n'.join(lines) + '\n'

    # --- what the files can carry -----------------------------------------------------------------------

    def _check_path(self, node, item, role, path):
        """A path the unit file or fstab line names outside an option string (What=, Where=, RequiresMountsFor=)."""
        try:
            path.encode('utf-8')
        except UnicodeEncodeError:
            raise PersistenceError('%s: %s %r is not valid UTF-8; unit files and fstab are text' % (node.describe(), role, path))
        if '\n' in path or '\r' in path:
            raise PersistenceError('%s: %s %r holds a line break, which a unit file line cannot carry (and '
                                   'systemd-fstab-generator copies fstab paths into units as they are)'
                                   % (node.describe(), role, path))
        if path[-1] in _WHITESPACE + '\\':
            raise PersistenceError('%s: %s %r ends in %s, which the unit file parser drops (systemd-fstab-generator '
                                   'copies fstab paths into units as they are)'
                                   % (node.describe(), role, path, 'a backslash (joining the next line)'
                                      if path[-1] == '\\' else 'whitespace'))

    def _check_option_path(self, node, item, role, path):
        """A path inside a mount option string (lowerdir=, upperdir=, workdir=, x-systemd.requires-mounts-for=)."""
        self._check_path(node, item, role, path)
        if ',' in path:
            raise PersistenceError("%s: %s %r holds a ',': mount(8) splits mount options on commas, and systemd and "
                                   "libmount >= 2.39 drop the escape the module uses; rename the path to persist this tree"
                                   % (node.describe(), role, path))
        if '\\' in path:
            raise PersistenceError("%s: %s %r holds a backslash: systemd consumes one level of backslash escapes in "
                                   "mount options (and systemd-fstab-generator another), so the kernel would not see "
                                   "this path; rename the path to persist this tree" % (node.describe(), role, path))
        if item.persistence == 'fstab' and any(char in path for char in _WHITESPACE):
            raise PersistenceError('%s: %s %r holds whitespace: systemd-fstab-generator writes '
                                   'x-systemd.requires-mounts-for= paths unquoted into RequiresMountsFor=, which splits '
                                   'them; use persistence systemd for this tree' % (node.describe(), role, path))


def _ro_rw(node):
    return 'ro' if _mount_readonly(node) else 'rw'
