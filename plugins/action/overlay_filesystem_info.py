# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Run the info module, add the XML of the trees it found (when the controller has lxml)."""

from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.containerhost.overlayfs.plugins.module_utils.arguments._arguments import OVERLAY_FILESYSTEM_INFO
from ansible_collections.containerhost.overlayfs.plugins.plugin_utils._xml_codec import HAS_LXML, filesystems_to_xml

MODULE = 'containerhost.overlayfs.overlay_filesystem_info'


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(OVERLAY_FILESYSTEM_INFO)

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        result.update(self._execute_module(module_name=MODULE, module_args=dict(self._task.args), task_vars=task_vars))
        if not result.get('failed') and HAS_LXML:
            result['xml'] = filesystems_to_xml(result.get('filesystems', []))
        return result
