# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Read /proc/self/mountinfo (proc(5)) into MountEntry records.

The kernel octal-escapes space, tab, newline, backslash and, in super options, ','
(\\040 \\011 \\012 \\134 \\054). Overlay path options additionally carry the backslash
escapes they were mounted with, so layer lists split on unescaped ':' only.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._options import MOUNT_FLAGS, split_lowerdir, unescape_path

MOUNTINFO = '/proc/self/mountinfo'
_OCTAL = re.compile(r'\\([0-7]{3})')
# A mount's super options: name -> value, None for a flag, a list for the repeated lowerdir+ and datadir+
SuperOptions = Dict[str, Any]


class MountEntry(object):
    """One line of mountinfo. The super options are split when first asked for: a host may have tens of
    thousands of mounts, and a run looks at the options of a few."""

    def __init__(self, mount_id: int, parent_id: int, major: int, minor: int, root: str, mountpoint: str,
                 mount_options: List[str], fstype: str, source: str, super_options: Optional[SuperOptions] = None,
                 raw_super_options: str = '') -> None:
        self.mount_id = mount_id
        self.parent_id = parent_id
        self.major = major
        self.minor = minor
        self.root = root
        self.mountpoint = mountpoint
        self.mount_options = mount_options
        self.fstype = fstype
        self.source = source
        self._super_options = super_options
        self._raw_super_options = raw_super_options
        self._layers: Optional[Tuple[List[str], Optional[str], Optional[str]]] = None

    @property
    def super_options(self) -> SuperOptions:
        if self._super_options is None:
            self._super_options = split_options(self._raw_super_options)
        return self._super_options

    @property
    def readonly(self) -> bool:
        return 'ro' in self.mount_options

    @property
    def mount_flags(self) -> Tuple[str, ...]:
        """The per-mount flags of MOUNT_FLAGS it has, in that order."""
        return tuple(flag for flag in MOUNT_FLAGS if flag in self.mount_options)

    @property
    def superblock_readonly(self) -> bool:
        """The filesystem itself is read-only (an overlay that could not set up its work dir falls back to it,
        while its mount options still say rw)."""
        return 'ro' in self.super_options

    def overlay_layers(self) -> Optional[Tuple[List[str], Optional[str], Optional[str]]]:
        """(lowers, upper, work) as paths, or None when this is not an overlay."""
        if self.fstype != 'overlay':
            return None
        if self._layers is None:
            opts = self.super_options
            lowers = split_lowerdir(opts.get('lowerdir', '') or '')
            lowers += opts.get('lowerdir+', [])  # fsconfig(2) takes these verbatim: no backslash escapes
            upper = unescape_path(opts['upperdir']) if opts.get('upperdir') else None
            work = unescape_path(opts['workdir']) if opts.get('workdir') else None
            self._layers = (lowers, upper, work)
        return self._layers

    def to_dict(self) -> Dict[str, Any]:
        return {
            'mount_id': self.mount_id,
            'target': self.mountpoint,
            'fstype': self.fstype,
            'source': self.source,
            'device': '%d:%d' % (self.major, self.minor),
            'options': ','.join(self.mount_options),
            'super_options': render_super_options(self.super_options),
        }


def decode(field: str) -> str:
    """Undo the kernel's octal escapes (mangle() in fs/proc_namespace.c)."""
    if '\\' not in field:
        return field
    return _OCTAL.sub(lambda match: chr(int(match.group(1), 8)), field)


def split_options(text: str) -> SuperOptions:
    """Split a raw (still octal-escaped) option field on ',' and decode each option.

    Commas inside values are escaped as \\054 by the kernel, so a plain split is exact.
    Repeated keys (lowerdir+) collect into lists.
    """
    options: SuperOptions = {}
    for item in text.split(','):
        if not item:
            continue
        key, sep, text_value = item.partition('=')
        key = decode(key)
        value = decode(text_value) if sep else None
        if key in ('lowerdir+', 'datadir+'):
            options.setdefault(key, []).append(value)
        else:
            options[key] = value
    return options


def describe_mount(entry: MountEntry) -> str:
    """'read-only nodev overlay from overlay (SUPER OPTIONS)': the mount's own mode and flags, then its filesystem."""
    mode = (['read-only'] if entry.readonly else []) + list(entry.mount_flags) + (
        ['idmapped'] if 'idmapped' in entry.mount_options else [])
    return '%s%s from %s (%s)' % (''.join(word + ' ' for word in mode), entry.fstype, entry.source,
                                  render_super_options(entry.super_options))


def render_super_options(options: SuperOptions) -> str:
    parts: List[str] = []
    for key, value in options.items():
        for item in (value if isinstance(value, list) else [value]):
            parts.append(key if item is None else '%s=%s' % (key, item))
    return ','.join(parts)


def parse_line(line: str) -> MountEntry:
    fields = line.rstrip('\n').split(' ')
    separator = fields.index('-', 6)
    major, minor = fields[2].split(':')
    return MountEntry(
        mount_id=int(fields[0]),
        parent_id=int(fields[1]),
        major=int(major),
        minor=int(minor),
        root=decode(fields[3]),
        mountpoint=decode(fields[4]),
        mount_options=fields[5].split(','),
        fstype=decode(fields[separator + 1]),
        source=decode(fields[separator + 2]),
        raw_super_options=fields[separator + 3] if len(fields) > separator + 3 else '',
    )


def parse(text: str) -> List[MountEntry]:
    """One entry per line. Only newline ends a line: the kernel escapes it (\\012) in a path, but not \\r or the
    other characters str.splitlines() also splits on (\\x1c, \\x85, \\u2028, ...), which a mount point may hold
    (read_mountinfo reads without newline translation for the same reason)."""
    return [parse_line(line) for line in text.split('\n') if line.strip()]


def read_mountinfo(path: str = MOUNTINFO) -> List[MountEntry]:
    with open(path, 'r', encoding='utf-8', errors='surrogateescape', newline='') as handle:
        return parse(handle.read())
