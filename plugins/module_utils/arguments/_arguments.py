# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The option spec of each module that has an action plugin: the module checks its options with it, and the action
plugin takes its valid keys from it, so the two cannot differ."""

from __future__ import annotations

from typing import Any, Dict

from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._options import ON_VOLATILE_MARKER

OVERLAY_FILESYSTEM: Dict[str, Dict[str, Any]] = dict(
    xml=dict(type='str'),  # parsed by the action plugin on the controller
    filesystem=dict(type='dict'),
    filesystems=dict(type='list', elements='dict'),
    state=dict(type='str', default='mounted', choices=['mounted', 'unmounted']),
    on_drift=dict(type='str', default='fail', choices=['fail', 'replace']),
    create_dirs=dict(type='bool', default=True),
    on_volatile_marker=dict(type='str', default='fail', choices=list(ON_VOLATILE_MARKER)),
    lazy_unmount=dict(type='bool', default=False),
    report=dict(type='str', default='full', choices=['full', 'changed', 'summary']),
    flatten=dict(type='bool', default=True),
)

OVERLAY_FILESYSTEM_INFO: Dict[str, Dict[str, Any]] = dict(
    targets=dict(type='list', elements='path', default=[]),
    under=dict(type='path'),
)
