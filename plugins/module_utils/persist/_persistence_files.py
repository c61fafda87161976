# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Write the persistence the overlay_persistence filter renders, in one pass: every file, the fstab block, the
removal of what is stale, then systemd told once.

Where the collection's files live on a target (the renderer, on the controller, names them from here too), and
how a file is known to be ours: MARKER on one of its first lines.
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import os
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from ansible_collections.containerhost.overlayfs.plugins.module_utils.boot import _boot as boot

MARKER = '# Managed by containerhost.overlayfs.overlay_mounts: do not edit'
FSTAB_BEGIN = '# BEGIN containerhost.overlayfs.overlay_mounts'
FSTAB_END = '# END containerhost.overlayfs.overlay_mounts'
SYSTEMD_UNIT_DIR = '/etc/systemd/system'
CONFIG_DIR = '/etc/containerhost-overlayfs'
DROPIN = 'containerhost-overlayfs.conf'
# Where a file of ours may be: the files with MARKER there that the rendered persistence no longer has are stale.
OWNED = (
    SYSTEMD_UNIT_DIR + '/*.mount', SYSTEMD_UNIT_DIR + '/*.service', SYSTEMD_UNIT_DIR + '/*.d/' + DROPIN,
    CONFIG_DIR + '/**', boot.HELPER_LIB + '/**', boot.MOUNT_HELPER,
    '/etc/modules-load.d/*.conf', '/etc/modprobe.d/*.conf',
)
# Directories that go when removing stale files leaves them empty.
PRUNED = (SYSTEMD_UNIT_DIR + '/*.d', CONFIG_DIR, CONFIG_DIR + '/*', boot.HELPER_LIB, boot.HELPER_LIB + '/*')
MARKER_WITHIN = 1024  # bytes: the marker is on the first line (the second, after a #! line)
FILE_MODE, EXECUTABLE_MODE, DIR_MODE = 0o644, 0o755, 0o755


Systemctl = Callable[..., Tuple[int, str, str]]  # runs systemctl: argv list in, (rc, out, err) out
BackupFile = Callable[[str], str]  # path -> backup path (AnsibleModule.backup_local)
Desired = Dict[str, Tuple[bytes, int]]  # path under root -> (content, mode) of each rendered file


class PersistenceFilesError(RuntimeError):
    pass


class Change(object):
    """What a run changes: files written and removed, the fstab block, units enabled and disabled."""

    def __init__(self) -> None:
        self.written: List[str] = []
        self.removed: List[str] = []
        self.fstab_changed = False
        self.enabled: List[str] = []
        self.disabled: List[str] = []
        self.reloaded = False
        self.diff: List[Dict[str, str]] = []

    @property
    def changed(self) -> bool:
        return bool(self.written or self.removed or self.fstab_changed or self.enabled or self.disabled)

    def to_dict(self) -> Dict[str, Any]:
        return dict(changed=self.changed, written=self.written, removed=self.removed, fstab_changed=self.fstab_changed,
                    enabled=self.enabled, disabled=self.disabled, reloaded=self.reloaded)


def apply(rendered: Any, root: str = '', fstab: str = '/etc/fstab', backup: bool = False,
          systemctl: Optional[Systemctl] = None, check_mode: bool = False,
          backup_file: Optional[BackupFile] = None) -> Change:
    """Bring the target's persistence to ``rendered`` (``{'files', 'executables', 'fstab', 'units'}``).

    ``root``: every path is under it (tests). ``systemctl``: ``run(argv) -> (rc, out, err)`` for systemctl, or
    None to leave systemd alone. ``backup_file``: ``path -> backup path`` (AnsibleModule.backup_local).
    """
    root = root.rstrip('/')
    files, executables, lines, units = _rendered(rendered)
    change = Change()
    desired: Desired = {}
    for path, text in files.items():
        desired[_under(root, path)] = (text.encode('utf-8'), EXECUTABLE_MODE if path in executables else FILE_MODE)
    rewritten: Set[str] = set()  # files that were there with other content or mode
    for real, (content, mode) in sorted(desired.items()):
        before = _read(real)
        if before != content or _mode(real) != mode:
            change.written.append(real)
            if before is not None:
                rewritten.add(real)
            change.diff.append(_diff(real, before, content))
            if not check_mode:
                write_atomically(real, content, mode)
    stale = sorted(set(owned_files(root)) - set(desired))
    unit_dir = _under(root, SYSTEMD_UNIT_DIR)
    stale_units = [os.path.basename(path) for path in stale if os.path.dirname(path) == unit_dir and '@.' not in path]
    if systemctl and stale_units:
        change.disabled = _enabled(systemctl, root, stale_units)
        if change.disabled and not check_mode:
            _systemctl(systemctl, root, ['disable'], change.disabled)
    for path in stale:
        change.removed.append(path)
        change.diff.append(_diff(path, _read(path), None))
        if not check_mode:
            os.unlink(path)
            _prune(root, os.path.dirname(path))
    _fstab(root, fstab, lines, backup, change, check_mode, backup_file)
    if systemctl and units:
        written = set(change.written)
        change.enabled = [unit for unit in units  # written ones too: [Install] may differ
                          if os.path.join(unit_dir, unit) in written or not _linked(unit_dir, unit, desired, root)]
        # A rewritten unit's [Install] may have changed, and reenable drops the links of the old one; any other
        # unit has no links of ours that it must drop, and enable costs half as much (2000 units: 1.0 s, 2.0 s).
        for command, chosen in (('reenable', True), ('enable', False)):
            picked = [unit for unit in change.enabled if (os.path.join(unit_dir, unit) in rewritten) is chosen]
            if picked and not check_mode:
                _systemctl(systemctl, root, [command], picked)
    if systemctl and change.changed and not root and os.path.isdir('/run/systemd/system') and not check_mode:
        _systemctl(systemctl, root, ['daemon-reload'], [])
        change.reloaded = True
    return change


def _rendered(rendered: Any) -> Tuple[Dict[str, str], Set[str], List[str], List[str]]:
    if not isinstance(rendered, dict) or sorted(rendered) != ['executables', 'files', 'fstab', 'units']:
        raise PersistenceFilesError('rendered must be what the overlay_persistence filter returns: a mapping with '
                                    'files, executables, fstab and units')
    files = rendered['files']
    for path in files:
        if not path.startswith('/') or '/../' in path + '/':
            raise PersistenceFilesError('rendered.files: %r is not an absolute path' % path)
    unknown = sorted(set(rendered['executables']) - set(files))
    if unknown:
        raise PersistenceFilesError('rendered.executables: %s not in rendered.files' % ', '.join(unknown))
    return files, set(rendered['executables']), list(rendered['fstab']), list(rendered['units'])


def _under(root: str, path: str) -> str:
    return root + path


def owned_files(root: str) -> List[str]:
    """Regular files under the OWNED patterns that carry MARKER (not following symlinks out of them)."""
    found: Set[str] = set()
    for pattern in OWNED:
        for path in glob.glob(glob.escape(root) + pattern, recursive=True):
            if os.path.isfile(path) and not os.path.islink(path) and _has_marker(path):
                found.add(path)
    return sorted(found)


def _has_marker(path: str) -> bool:
    try:
        with open(path, 'rb') as handle:
            head = handle.read(MARKER_WITHIN)
    except OSError:
        return False
    return MARKER.encode() in head.split(b'\n', 2)[:2]


def _read(path: str) -> Optional[bytes]:
    try:
        with open(path, 'rb') as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise PersistenceFilesError('%s is a directory; a file of the persistence goes there' % path)


def _mode(path: str) -> Optional[int]:
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return None


def write_atomically(path: str, content: bytes, mode: int) -> None:
    """Write a file so that a reader (or a crash) sees the old content or the new one, never a part."""
    _make_dirs(os.path.dirname(path))
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.%s.' % os.path.basename(path))
    try:
        with os.fdopen(handle, 'wb') as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        _unlink(temporary)
        raise


def _make_dirs(path: str) -> None:
    missing: List[str] = []
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for directory in reversed(missing):
        os.mkdir(directory, DIR_MODE)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _prune(root: str, directory: str) -> None:
    """Remove directories that are now empty, up the tree, while they match PRUNED."""
    while directory.startswith(root + '/') and any(fnmatch.fnmatch(directory[len(root):], pattern) for pattern in PRUNED):
        try:
            os.rmdir(directory)
        except OSError as error:
            if error.errno in (errno.ENOTEMPTY, errno.EEXIST):
                return
            raise
        directory = os.path.dirname(directory)


def fstab_with_block(text: str, lines: Sequence[str]) -> str:
    """fstab text with the role's marked block set to lines (removed when there are none); the rest as it was."""
    kept, inside = [], False
    for line in text.splitlines(True):
        stripped = line.rstrip('\n')
        if stripped == FSTAB_BEGIN:
            inside = True
        elif stripped == FSTAB_END and inside:
            inside = False
        elif not inside:
            kept.append(line)
    if inside:
        raise PersistenceFilesError('fstab has "%s" without "%s": fix the file by hand first' % (FSTAB_BEGIN, FSTAB_END))
    if kept and not kept[-1].endswith('\n'):
        kept[-1] += '\n'
    if lines:
        kept += [FSTAB_BEGIN + '\n'] + [line + '\n' for line in lines] + [FSTAB_END + '\n']
    return ''.join(kept)


def _fstab(root: str, fstab: str, lines: Sequence[str], backup: bool, change: Change, check_mode: bool,
           backup_file: Optional[BackupFile]) -> None:
    path = _under(root, fstab)
    before = _read(path)
    if before is None and not lines:
        return
    text = (before or b'').decode('utf-8', 'surrogateescape')
    after = fstab_with_block(text, lines).encode('utf-8', 'surrogateescape')
    if after == before:
        return
    change.fstab_changed = True
    change.diff.append(_diff(path, before, after))
    if check_mode:
        return
    if backup and before is not None and backup_file:
        backup_file(path)
    write_atomically(path, after, _mode(path) or FILE_MODE)


def _linked(unit_dir: str, unit: str, desired: Desired, root: str) -> bool:
    """Whether the links that enabling a unit of ours makes are there: one in TARGET.wants/ or TARGET.requires/
    for each WantedBy=/RequiredBy= of its [Install], pointing at it. systemctl is-enabled would tell the same
    at 4 ms a unit (measured: 2000 units, 7.3 s); a unit that is not linked is enabled by systemctl."""
    path = os.path.join(unit_dir, unit)
    content = desired.get(path, (b'',))[0].decode('utf-8', 'replace')
    for kind, target in _install_targets(content):
        link = os.path.join(unit_dir, '%s.%s' % (target, kind), unit)
        try:
            pointed = os.readlink(link)
        except OSError:
            return False
        if pointed.startswith('/'):  # systemctl writes the path the unit has on the target, without --root
            pointed = root + pointed
        if os.path.normpath(os.path.join(os.path.dirname(link), pointed)) != path:
            return False
    return True


def _install_targets(text: str) -> List[Tuple[str, str]]:
    """(wants or requires, target) of each WantedBy=/RequiredBy= in a unit's [Install] section."""
    section, found = None, []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith('['):
            section = line
        elif section == '[Install]' and '=' in line:
            key, value = line.split('=', 1)
            kind = {'WantedBy': 'wants', 'RequiredBy': 'requires'}.get(key.strip())
            found += [(kind, target) for target in value.split()] if kind else []
    return found


def _enabled(systemctl: Systemctl, root: str, units: Sequence[str]) -> List[str]:
    """Which of the units systemctl is-enabled calls enabled (one call; a unit with no file yet is not)."""
    unit_dir = _under(root, SYSTEMD_UNIT_DIR)
    present = [unit for unit in units if os.path.isfile(os.path.join(unit_dir, unit))]
    if not present:
        return []
    rc, out, err = systemctl(_systemctl_argv(root, ['is-enabled'], present))
    states = out.splitlines()
    if len(states) != len(present):
        raise PersistenceFilesError('systemctl is-enabled %s exited %d: %s' % (' '.join(present), rc, (err or out).strip()))
    return [unit for unit, state in zip(present, states) if state.strip() in ('enabled', 'enabled-runtime')]


def _systemctl(systemctl: Systemctl, root: str, command: List[str], units: List[str]) -> None:
    argv = _systemctl_argv(root, command, units)
    rc, out, err = systemctl(argv)
    if rc != 0:
        raise PersistenceFilesError('%s exited %d: %s' % (' '.join(argv), rc, (err or out).strip() or 'no message'))


def _systemctl_argv(root: str, command: List[str], units: List[str]) -> List[str]:
    argv = ['systemctl'] + (['--root=' + root] if root else [])
    if command[0] in ('enable', 'reenable', 'disable') and not root:
        argv.append('--no-reload')  # one daemon-reload for the whole run, at the end
    return argv + command + (['--'] + units if units else [])


def _diff(path: str, before: Optional[bytes], after: Optional[bytes]) -> Dict[str, str]:
    return {
        'before_header': path if before is not None else '%s (absent)' % path,
        'after_header': path if after is not None else '%s (absent)' % path,
        'before': (before or b'').decode('utf-8', 'replace'),
        'after': (after or b'').decode('utf-8', 'replace'),
    }
