# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Overlay mount options: the kernel's vocabulary, its conflicts, and the mount(2) data string.

Pure functions. The rules follow fs/overlayfs/params.c (ovl_parameter_spec and
ovl_fs_params_verify): explicit combinations the kernel rejects are rejected here first,
so nothing is mounted with options that cannot work.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

Options = Dict[str, str]  # an overlay's options as normalize_options returns them: name -> the kernel's value

ON_OFF = ('on', 'off')

# name -> allowed values; None marks a flag (present or absent, no value).
OVERLAY_OPTIONS: Dict[str, Optional[Tuple[str, ...]]] = {
    'redirect_dir': ('on', 'follow', 'nofollow', 'off'),
    'index': ON_OFF,
    'uuid': ('off', 'null', 'auto', 'on'),
    'nfs_export': ON_OFF,
    'xino': ('off', 'auto', 'on'),
    'metacopy': ON_OFF,
    'verity': ('off', 'on', 'require'),
    'default_permissions': None,
    'userxattr': None,
    'volatile': None,
}

# Values the kernel may show for a value asked for: it rewrites redirect_dir=off to follow or nofollow
# (module parameter dependent), userxattr forces nofollow, and uuid=auto becomes on or null.
EQUIVALENT_SHOWN_VALUES: Dict[Tuple[str, str], Tuple[str, ...]] = {
    ('redirect_dir', 'off'): ('off', 'follow', 'nofollow'),
    ('uuid', 'auto'): ('auto', 'on', 'null'),
}
# Without an upper dir the kernel turns redirect_dir=follow into on (and so off, when it became follow).
EQUIVALENT_WITHOUT_UPPER: Dict[Tuple[str, str], Tuple[str, ...]] = {
    ('redirect_dir', 'off'): ('on',),
    ('redirect_dir', 'follow'): ('on',),
}

# A volatile overlay leaves this directory in its work dir, and the kernel refuses to mount on the work dir
# again while it is there (fs/overlayfs/util.c, ovl_check_incompat): even after a clean reboot.
VOLATILE_MARKER = ('work', 'incompat', 'volatile')
KERNEL_WORKDIR_ENTRIES = ('index', 'work')  # what overlayfs itself makes in a work dir
ON_VOLATILE_MARKER = ('fail', 'discard')  # what a run (and the boot) does when it finds one

# Per-mount flags a top-level filesystem may ask for (its mount's, not its superblock's: a remount sets them in
# place). nodev by default, as containers/storage mounts container roots: a device node a container made in its
# view is not a device through the host's mount. nosuid and noexec are asked for: they are locked into every bind a
# container makes of its root, so setuid programs, or any program, would stop working inside it.
MOUNT_FLAGS = ('nodev', 'nosuid', 'noexec')
DEFAULT_MOUNT_FLAGS = ('nodev',)

MOUNT_DATA_LIMIT = 4095  # mount(2) copies one page; longer data is silently truncated
FSCONFIG_STRING_LIMIT = 256  # fsconfig(2) string values, NUL included


class OptionError(ValueError):
    pass


def normalize_options(raw: Any, where: str) -> Options:
    """Return {name: value} with every value a string ('on'/'off' for flags), or raise OptionError.

    YAML users write booleans (``index: false``, ``volatile: true``); XML users write strings.
    Both land on the kernel's spelling.
    """
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise OptionError('%s.options must be a mapping of overlay option names to values' % where)
    result: Options = {}
    for name, value in raw.items():
        if name not in OVERLAY_OPTIONS:
            raise OptionError('%s.options.%s: unknown overlay option (known: %s)'
                              % (where, name, ', '.join(sorted(OVERLAY_OPTIONS))))
        result[name] = _normalize_value(name, value, where)
    return result


def _normalize_value(name: str, value: Any, where: str) -> str:
    if isinstance(value, bool):
        value = 'on' if value else 'off'
    if value is None:
        raise OptionError("%s.options.%s has no value (in YAML, quote 'null' and 'off')" % (where, name))
    text = str(value)
    allowed = OVERLAY_OPTIONS[name] or ON_OFF
    if text not in allowed:
        raise OptionError('%s.options.%s: %r is not one of %s' % (where, name, text, ', '.join(allowed)))
    return text


def normalize_mount_flags(raw: Any, where: str) -> Tuple[str, ...]:
    """The mount flags of a top-level filesystem, in MOUNT_FLAGS order; DEFAULT_MOUNT_FLAGS when not given."""
    if raw is None:
        return DEFAULT_MOUNT_FLAGS
    if not isinstance(raw, list) or not all(isinstance(flag, str) for flag in raw):
        raise OptionError('%s.mount_flags must be a list of flag names (%s); [] for none' % (where, ', '.join(MOUNT_FLAGS)))
    unknown = sorted(set(raw) - set(MOUNT_FLAGS))
    if unknown:
        raise OptionError('%s.mount_flags: %s is not one of %s (read-only is readonly: true)'
                          % (where, ', '.join(unknown), ', '.join(MOUNT_FLAGS)))
    return tuple(flag for flag in MOUNT_FLAGS if flag in raw)


def check_conflicts(options: Options, has_upper: bool, where: str) -> None:
    """Refuse the explicit combinations the kernel refuses, and options that need an upper dir."""
    def is_set(name: str, *values: str) -> bool:
        return options.get(name) in values

    if not has_upper:
        for name in ('volatile', 'index', 'uuid'):
            if is_set(name, 'on'):
                raise OptionError('%s.options.%s=on needs an upper dir; this overlay has none' % (where, name))
        if is_set('nfs_export', 'on') and options.get('redirect_dir') != 'nofollow':
            raise OptionError('%s.options.nfs_export=on needs an upper dir or, without one, redirect_dir=nofollow '
                              '(the kernel would silently turn it off)' % where)
    verity = is_set('verity', 'on', 'require')
    if verity and is_set('metacopy', 'off'):
        raise OptionError('%s.options: conflicting options metacopy=off and verity=%s' % (where, options['verity']))
    redirect: Optional[str] = options.get('redirect_dir')
    if redirect == 'follow' and not has_upper:
        redirect = 'on'
    metacopy = is_set('metacopy', 'on') or verity
    if metacopy and redirect not in (None, 'on'):
        raise OptionError('%s.options: conflicting options %s and redirect_dir=%s (metacopy needs redirect_dir=on)'
                          % (where, 'metacopy=on' if is_set('metacopy', 'on') else 'verity=' + options['verity'], redirect))
    if is_set('nfs_export', 'on') and is_set('index', 'off'):
        raise OptionError('%s.options: conflicting options nfs_export=on and index=off' % where)
    if is_set('nfs_export', 'on') and is_set('metacopy', 'on'):
        raise OptionError('%s.options: conflicting options nfs_export=on and metacopy=on' % where)
    if is_set('userxattr', 'on'):
        if redirect not in (None, 'nofollow'):
            raise OptionError('%s.options: conflicting options userxattr and redirect_dir=%s' % (where, redirect))
        if is_set('metacopy', 'on'):
            raise OptionError('%s.options: conflicting options userxattr and metacopy=on' % where)
        if verity:
            raise OptionError('%s.options: conflicting options userxattr and verity=%s' % (where, options['verity']))


def volatile_marker(work: str) -> str:
    """The marker a volatile overlay leaves under its work dir."""
    return '/'.join((work.rstrip('/'),) + VOLATILE_MARKER)


def volatile_marker_refusal(work: str) -> str:
    """Why an overlay is not mounted on a work dir with the volatile marker, and the choice the user has."""
    return ('work dir %s holds %s, the mark a volatile overlay leaves (it was mounted with volatile there): the '
            'kernel refuses to mount on it again, even after a clean reboot, because after a crash the upper dir '
            'may be incomplete. Recreate upper and work, or choose on_volatile_marker: discard (the role\'s '
            'overlay_mounts_on_volatile_marker) to remove the mark and mount the upper dir as it is'
            % (work, '/'.join(VOLATILE_MARKER)))


def escape_path(path: str) -> str:
    """Escape a path for the overlay data string: the kernel splits on unescaped ',' and ':'
    and then drops one backslash before any character, so this round-trips every byte."""
    return path.replace('\\', '\\\\').replace(',', '\\,').replace(':', '\\:')


def unescape_path(text: str) -> str:
    """Inverse of escape_path, as the kernel's ovl_unescape does it."""
    if '\\' not in text:
        return text
    out = []
    chars = iter(text)
    for char in chars:
        out.append(next(chars, '') if char == '\\' else char)
    return ''.join(out)


def split_lowerdir(text: str) -> List[str]:
    """Split a lowerdir value on unescaped ':' and unescape each layer."""
    if '\\' not in text:
        return [layer for layer in text.split(':') if layer]
    layers: List[str] = []
    current: List[str] = []
    escaped = False
    for char in text:
        if escaped:
            current.append('\\' + char)
            escaped = False
        elif char == '\\':
            escaped = True
        elif char == ':':
            layers.append(unescape_path(''.join(current)))
            current = []
        else:
            current.append(char)
    layers.append(unescape_path(''.join(current)))
    return [layer for layer in layers if layer]


def overlay_mount_data(lowers: Sequence[str], upper: Optional[str], work: Optional[str], options: Options) -> str:
    """The mount(2) data string for an overlay: every path escaped, options in a fixed order."""
    parts = ['lowerdir=' + ':'.join(escape_path(p) for p in lowers)]
    if upper and work:  # they go together
        parts.append('upperdir=' + escape_path(upper))
        parts.append('workdir=' + escape_path(work))
    parts += [name if value is None else '%s=%s' % (name, value) for name, value in option_items(options)]
    return ','.join(parts)


def option_items(options: Options) -> Iterator[Tuple[str, Optional[str]]]:
    """(name, value) pairs to hand the kernel, sorted; value None for a flag that is set."""
    for name in sorted(options):
        value = options[name]
        is_flag = OVERLAY_OPTIONS.get(name, ()) is None
        if value is None or (is_flag and value == 'on'):
            yield name, None
        elif not is_flag:
            yield name, value


@dataclasses.dataclass(frozen=True)
class OverlayPayload(object):
    """How an overlay is handed to the kernel, decided once, by overlay_payload: mount(2) with ``data``, or
    fsopen(2) and fsconfig(2) with ``parameters`` in order (``(key, None)`` sets a flag), then fsmount(2)."""
    api: str  # 'mount' or 'fsconfig'
    data: Optional[str] = None
    parameters: Tuple[Tuple[str, Optional[str]], ...] = ()

    def summary(self) -> str:
        """The data string, or for fsconfig what it gets, in short (500 layers make a long sentence)."""
        if self.api == 'mount':
            return self.data or ''
        lowers = [value for key, value in self.parameters if key == 'lowerdir+']
        upper = [value for key, value in self.parameters if key == 'upperdir']
        return 'fsconfig(2): lowerdir+ %s ... %s (%d layers)%s' % (
            lowers[0], lowers[-1], len(lowers), ',upperdir=%s' % upper[0] if upper else '')


def overlay_payload(lowers: Sequence[str], upper: Optional[str], work: Optional[str],
                    options: Options) -> OverlayPayload:
    """mount(2) while the data fits in a page; beyond that fsconfig(2), one ``lowerdir+`` per layer (Linux 6.8),
    which takes each path verbatim but at most 255 bytes of it. Raise OptionError when neither can carry it."""
    data = overlay_mount_data(lowers, upper, work, options)
    if len(data.encode('utf-8', 'surrogateescape')) <= MOUNT_DATA_LIMIT:
        return OverlayPayload('mount', data=data)
    parameters: List[Tuple[str, Optional[str]]] = [('source', 'overlay')]
    parameters += [('lowerdir+', path) for path in lowers]
    if upper and work:
        parameters += [('upperdir', escape_path(upper)), ('workdir', escape_path(work))]
    parameters += list(option_items(options))
    if any(len(value.encode('utf-8', 'surrogateescape')) >= FSCONFIG_STRING_LIMIT
           for _key, value in parameters if value is not None):
        raise OptionError('the layer paths are too long: mount(2) takes at most %d bytes of options in all, and '
                          'fsconfig(2) (used beyond that) at most %d bytes a path. Use shorter paths.'
                          % (MOUNT_DATA_LIMIT, FSCONFIG_STRING_LIMIT - 1))
    return OverlayPayload('fsconfig', parameters=tuple(parameters))


def _flag_shown(name: str, shown: Dict[str, Any]) -> bool:
    # Linux 6.11+ shows the volatile flag as fsync=volatile.
    return name in shown or (name == 'volatile' and shown.get('fsync') == 'volatile')


def option_shortfalls(desired: Options, shown: Dict[str, Any], has_upper: bool) -> List[str]:
    """The options asked for that the kernel shows otherwise, each as 'name=asked (shown: ...)'."""
    return ['%s=%s (shown: %s)' % (name, value, _shown_value(name, shown)) for name, value in sorted(desired.items())
            if not options_match({name: value}, shown, has_upper)]


def _shown_value(name: str, shown: Dict[str, Any]) -> Any:
    if OVERLAY_OPTIONS[name] is None:
        return 'set' if _flag_shown(name, shown) else 'not set'
    return shown.get(name)


def options_match(desired: Options, shown: Dict[str, Any], has_upper: bool) -> bool:
    """True when every option the user asked for agrees with what the kernel shows.

    The kernel drops options equal to its defaults from mountinfo, so an option it does
    not show counts as agreeing; an option it shows with another value is drift.
    """
    for name, value in desired.items():
        if OVERLAY_OPTIONS[name] is None:
            if (value == 'on') != _flag_shown(name, shown):
                return False
            continue
        if name not in shown:
            continue
        accepted: Tuple[str, ...] = EQUIVALENT_SHOWN_VALUES.get((name, value), (value,))
        if not has_upper:
            accepted += EQUIVALENT_WITHOUT_UPPER.get((name, value), ())
        if shown[name] not in accepted:
            return False
    return True
