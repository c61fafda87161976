# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Observe the host: the mount table, loop devices, and the facts the planner needs about each path.

Everything the planner decides on is gathered here in one pass, so planning stays a pure function.
"""

from __future__ import annotations

import glob
import os
import stat

from ansible_collections.containerhost.overlayfs.plugins.module_utils.mountinfo import read_mountinfo
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree import is_within

SYS_BLOCK = '/sys/block'


class LoopDevice(object):
    def __init__(self, device, major, minor, backing_file, readonly, holders):
        self.device = device
        self.major = major
        self.minor = minor
        self.backing_file = backing_file
        self.readonly = readonly
        self.holders = holders


class PathFacts(object):
    """What a path is now: existence, kind, identity, and (for dirs) its entries."""

    def __init__(self, path):
        self.path = path
        self.realpath = os.path.realpath(path)
        try:
            info = os.stat(path)
        except OSError:
            info = None
        self.exists = info is not None
        self.is_dir = bool(info and stat.S_ISDIR(info.st_mode))
        self.is_file = bool(info and stat.S_ISREG(info.st_mode))
        self.is_block = bool(info and stat.S_ISBLK(info.st_mode))
        self.identity = (info.st_dev, info.st_ino) if info else None
        self.rdev = (os.major(info.st_rdev), os.minor(info.st_rdev)) if self.is_block else None
        self.entries = sorted(os.listdir(path)) if self.is_dir and os.access(path, os.R_OK) else []
        # A volatile overlay leaves this in its work dir; the kernel refuses to mount on it again.
        self.volatile_leftover = self.is_dir and os.path.isdir(os.path.join(path, 'work', 'incompat', 'volatile'))


class Observed(object):
    def __init__(self, mounts, loops, paths):
        self.mounts = mounts
        self.loops = loops
        self.paths = paths

    def facts(self, path):
        return self.paths[path]

    def mounts_at(self, path):
        """Mounts stacked on a path, bottom first: each covering mount's parent is the one it covers."""
        resolved = self.paths[path].realpath if path in self.paths else path
        here = [entry for entry in self.mounts if entry.mountpoint == resolved]
        ids = set(entry.mount_id for entry in here)
        stack = [entry for entry in here if entry.parent_id not in ids][:1]
        while stack:
            above = [entry for entry in here if entry.parent_id == stack[-1].mount_id]
            if not above:
                break
            stack.append(above[0])
        return stack

    def top_mount_at(self, path):
        stacked = self.mounts_at(path)
        return stacked[-1] if stacked else None

    def mount_containing(self, path):
        """The mount a path lives on: the longest mountpoint above its resolved form."""
        resolved = self.paths[path].realpath if path in self.paths else path
        best = None
        for entry in self.mounts:
            if is_within(resolved, entry.mountpoint) and (best is None or len(entry.mountpoint) >= len(best.mountpoint)):
                best = entry
        return best

    def loop_by_number(self, major, minor):
        for loop in self.loops:
            if (loop.major, loop.minor) == (major, minor):
                return loop
        return None

    def loops_backed_by(self, image):
        resolved = self.paths[image].realpath if image in self.paths else image
        return [loop for loop in self.loops if loop.backing_file == resolved]

    def is_mounted_device(self, major, minor):
        return any((entry.major, entry.minor) == (major, minor) for entry in self.mounts)

    def overlays_using(self, path):
        """Mounted overlays whose upper or work dir is this path."""
        resolved = self.paths[path].realpath if path in self.paths else path
        found = []
        for entry in self.mounts:
            layers = entry.overlay_layers()
            if layers and resolved in (layers[1], layers[2]):
                found.append(entry)
        return found


def read_loop_devices(sys_block=SYS_BLOCK):
    loops = []
    for backing in sorted(glob.glob(os.path.join(sys_block, 'loop*', 'loop', 'backing_file'))):
        base = os.path.dirname(os.path.dirname(backing))
        name = os.path.basename(base)
        major, minor = _read(os.path.join(base, 'dev')).split(':')
        backing_file = _read(backing)
        if backing_file.endswith(' (deleted)'):
            backing_file = backing_file[:-len(' (deleted)')]
        loops.append(LoopDevice(
            device='/dev/' + name,
            major=int(major),
            minor=int(minor),
            backing_file=backing_file,
            readonly=_read(os.path.join(base, 'ro')) == '1',
            holders=os.listdir(os.path.join(base, 'holders')),
        ))
    return loops


def _read(path):
    with open(path, 'r', encoding='utf-8', errors='surrogateescape') as handle:
        return handle.read().rstrip('\n')


def observe(roots):
    """Observe everything the trees mention."""
    paths = {}
    for root in roots:
        for node in root.walk():
            for path in (node.target, node.upper, node.work, node.source):
                if path and path not in paths:
                    paths[path] = PathFacts(path)
    return Observed(read_mountinfo(), read_loop_devices(), paths)
