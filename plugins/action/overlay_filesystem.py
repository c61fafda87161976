# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Parse ``xml`` on the controller (targets need no lxml), run the module, add the canonical XML (when the
controller has lxml: a YAML tree needs none)."""

from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.containerhost.overlayfs.plugins.module_utils.arguments._arguments import OVERLAY_FILESYSTEM
from ansible_collections.containerhost.overlayfs.plugins.plugin_utils._xml_codec import (
    HAS_LXML,
    XmlError,
    filesystems_to_xml,
    xml_to_filesystems,
    yaml_labels_to_xml,
)

MODULE = 'containerhost.overlayfs.overlay_filesystem'


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(OVERLAY_FILESYSTEM)

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        module_args = dict(self._task.args)
        xml = module_args.pop('xml', None)
        if xml is not None:
            if module_args.get('filesystem') is not None or module_args.get('filesystems') is not None:
                result.update(failed=True, msg='parameters are mutually exclusive: xml|filesystem|filesystems')
                return result
            try:
                module_args['filesystems'] = xml_to_filesystems(xml)
            except XmlError as error:
                result.update(failed=True, msg='xml: %s' % error)
                return result
        result.update(self._execute_module(module_name=MODULE, module_args=module_args, task_vars=task_vars))
        if result.get('failed'):
            if xml is not None and 'msg' in result:
                result['msg'] = yaml_labels_to_xml(result['msg'])
        elif result.get('filesystems') and HAS_LXML:
            result['xml'] = filesystems_to_xml(result['filesystems'])
        return result
