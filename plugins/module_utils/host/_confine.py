# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Where a path leads, trusting only what root alone can change.

A container controls its merged view and its upper dir; a local user controls every dir that user owns or may
write to. The path a tree names is resolved here one component at a time, as the kernel would, with one
difference: once the walk enters a dir someone other than root can change (an *open* dir), no symlink below it is
followed. Such a path is reported as (the open dir, the rest), which the executor reaches with openat2(2)
(``syscalls.open_beneath``); a symlink there is reported with where it points, and the planner refuses it.
Symlinks in dirs only root can change are the host's own and are followed.

Standard library only: the boot helper uses this module too.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any, Callable, Dict, Iterable, NamedTuple, Optional, Tuple

from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._mountinfo import MountEntry
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._paths import Beneath, fold_path

MAX_SYMLINKS = 40  # the kernel's own limit on links followed in one walk (ELOOP)


class Resolution(NamedTuple):
    """``realpath``: where the path leads, with the host's symlinks followed and none below an open dir.
    ``beneath``: (the first open dir on the way, the rest of the path below it), None if the walk met none.
    ``opened_by``: what makes that dir open, for messages ("the merged view of the overlay at /c/1", ...).
    ``symlink_inside``: (the first symlink below the open dir, where it points): the path is refused."""
    realpath: str
    beneath: Optional[Beneath] = None
    opened_by: Optional[str] = None
    symlink_inside: Optional[Beneath] = None


class ConfinedResolver(object):
    """Resolutions of absolute, normalized paths, memoized per path: the paths of a batch share their parents, and
    a thousand trees would walk the same dirs thousands of times. Good for one observation.

    ``views``: the canonical path of every merged view and upper dir (mounted, or in the batch) -> what it is."""

    def __init__(self, views: Dict[str, str], lstat: Callable[[str], os.stat_result] = os.lstat) -> None:
        self.views = views
        self.lstat = lstat
        self.resolved: Dict[str, Resolution] = {'/': Resolution('/')}
        self._stats: Dict[str, Optional[os.stat_result]] = {}
        self._unreadable: Dict[str, str] = {}

    def __call__(self, path: str, links: int = 0) -> Resolution:
        if path not in self.resolved:
            parent, name = path.rsplit('/', 1)
            self.resolved[path] = self._step(self(parent or '/', links), name, links)
        return self.resolved[path]

    def _step(self, parent: Resolution, name: str, links: int) -> Resolution:
        candidate = os.path.join(parent.realpath, name)
        if parent.beneath:
            root, rest = parent.beneath
            below = parent._replace(realpath=candidate, beneath=(root, rest + '/' + name))
            if parent.symlink_inside:  # the first one is the one reported
                return below
            entry = self._stat(candidate)
            is_link = entry is not None and stat.S_ISLNK(entry.st_mode)
            return below._replace(symlink_inside=(candidate, _points_to(candidate)) if is_link else None)
        entry = self._stat(candidate)
        is_link = entry is not None and stat.S_ISLNK(entry.st_mode)
        opened_by = self.opened_by(parent.realpath, entry)
        if opened_by:
            return Resolution(candidate, (parent.realpath, name), opened_by,
                              (candidate, _points_to(candidate)) if is_link else None)
        if not is_link:
            return Resolution(candidate)
        if links >= MAX_SYMLINKS:  # a loop of the host's own links: left for the call that uses it to report
            return Resolution(candidate)
        return self(os.path.normpath(os.path.join(parent.realpath, _points_to(candidate))), links + 1)

    def opened_by(self, directory: str, entry: Optional[os.stat_result]) -> Optional[str]:
        """Why someone other than root can change what ``entry`` (the lstat of a name in ``directory``, None if it
        does not exist) is; None if only root can."""
        if directory == '/':  # the host's own root, even where it is itself an overlay
            return None
        if directory in self.views:
            return self.views[directory]
        info = self._stat(directory)
        if info is None:
            return self._unreadable.get(directory)  # a dir still to be made is root's, one that cannot be read is not
        if info.st_uid != 0:
            return 'the dir %s, which uid %d owns' % (directory, info.st_uid)
        # In a sticky dir (/tmp) only an entry's owner may rename or remove it: root's entries stay root's.
        kept = bool(info.st_mode & stat.S_ISVTX) and entry is not None and entry.st_uid == 0
        if info.st_mode & stat.S_IWOTH and not kept:
            return 'the dir %s, which every user may write to' % directory
        if info.st_mode & stat.S_IWGRP and not kept:
            if info.st_gid != 0:
                return 'the dir %s, which group %d may write to' % (directory, info.st_gid)
            if _has_access_acl(directory):  # its group bits are the ACL's mask: named users or groups may write
                return 'the dir %s, whose access ACL lets others write to it' % directory
        return None

    def _stat(self, path: str) -> Optional[os.stat_result]:
        if path not in self._stats:
            try:
                self._stats[path] = self.lstat(path)
            except OSError as error:  # the walk goes on by name, and observe reports it
                self._stats[path] = None
                if error.errno not in (errno.ENOENT, errno.ENOTDIR):
                    self._unreadable[path] = 'the dir %s, which cannot be read (%s)' % (path, error.strerror)
        return self._stats[path]


def views_of(overlays: Iterable[Tuple[str, Optional[str]]]) -> Dict[str, str]:
    """The merged view and the upper dir of each overlay, given as (target, upper or None) -> what it is. The first
    overlay to name a path names it."""
    views: Dict[str, str] = {}
    for target, upper in overlays:
        views.setdefault(target, 'the merged view of the overlay at %s' % target)
        if upper:
            views.setdefault(upper, 'the upper dir of the overlay at %s' % target)
    return views


def mounted_views(mounts: Iterable[MountEntry]) -> Dict[str, str]:
    """views_of every mounted overlay (mountinfo.MountEntry records). The kernel shows a mount point where it is,
    but an upper dir as it was given (through a symlink of the host's, with '//'): each is taken to where it
    leads."""
    overlays = [(entry.mountpoint, layers[1]) for entry in mounts for layers in [entry.overlay_layers()] if layers]
    return with_views(views_of((target, None) for target, _upper in overlays),
                      views_of((target, normalized(upper)) for target, upper in overlays))


def with_views(views: Dict[str, str], more: Dict[str, str]) -> Dict[str, str]:
    """``views`` (canonical paths) and ``more``, views named as a tree names them (a batch's, not mounted yet), each
    taken to where it leads through the host's own symlinks, as the kernel will show it once mounted."""
    resolve = ConfinedResolver(views)
    merged = dict(views)
    for path, what in more.items():
        merged.setdefault(resolve(path).realpath, what)
    return merged


def _has_access_acl(directory: str) -> bool:
    try:
        return 'system.posix_acl_access' in os.listxattr(directory)
    except OSError:
        return True  # cannot tell: not taken for root's alone


def normalized(path: Optional[str]) -> Optional[str]:
    """An absolute path as mountinfo may echo it ('//a/b/') in the form the resolver takes ('/a/b'); None for none,
    or for a relative one (relative to the cwd of whoever mounted it, which nobody can tell now)."""
    return fold_path(path) if path and path.startswith('/') else None


def _points_to(link: str) -> str:
    try:
        return os.readlink(link)
    except OSError:  # it went meanwhile: a name that leads nowhere
        return ''


def describe_refusal(role: str, path: str, resolution: Any) -> str:
    """Why ``path`` (a tree's ``role``: target, upper, lower dir, image...) is not used: the symlink, where it
    points, and who controls the dir it is in. ``resolution``: a Resolution, or anything with its fields."""
    link, points_to = resolution.symlink_inside
    return ('%s %s: %s is a symlink (to %s) inside %s; symlinks there are not followed'
            % (role, path, link, points_to, resolution.opened_by))
