# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""overlay_picture: one tree's layer stack as an SVG picture, on the controller."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._tree import TreeError, parse_filesystems
from ansible_collections.containerhost.overlayfs.plugins.plugin_utils._picture import layer_stack_svg
from ansible_collections.containerhost.overlayfs.plugins.plugin_utils._xml_codec import XmlError, raw_trees


def overlay_picture(value):
    """One tree (mapping) or an XML string holding one <filesystem> -> the SVG text of its layer stack."""
    if not isinstance(value, (str, dict)):
        raise AnsibleFilterError('overlay_picture: takes one tree, a mapping or an XML string, not %s'
                                 % type(value).__name__)
    try:
        raw = raw_trees(value)
        if len(raw) != 1:
            raise AnsibleFilterError('overlay_picture: the XML holds %d filesystems; it takes one' % len(raw))
        root, = parse_filesystems(raw, label='filesystem')
    except (XmlError, TreeError) as error:
        raise AnsibleFilterError('overlay_picture: %s' % error)
    return layer_stack_svg(root)


class FilterModule(object):
    def filters(self):
        return {'overlay_picture': overlay_picture}
