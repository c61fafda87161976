# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""overlay_trees: the canonical YAML trees of libvirt-style XML or YAML input, on the controller."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._tree import TreeError, parse_filesystems, to_yaml
from ansible_collections.containerhost.overlayfs.plugins.plugin_utils._xml_codec import XmlError, raw_trees


def overlay_trees(value):
    """A tree (mapping), an XML string, or a list of either -> the list of canonical YAML trees, validated."""
    items = value if isinstance(value, list) else [value]
    raw = []
    try:
        for item in items:
            raw.extend(raw_trees(item))
        roots = parse_filesystems(raw)
    except (XmlError, TreeError) as error:
        raise AnsibleFilterError('overlay_trees: %s' % error)
    return [to_yaml(root) for root in sorted(roots, key=lambda root: root.position)]


class FilterModule(object):
    def filters(self):
        return {'overlay_trees': overlay_trees}
