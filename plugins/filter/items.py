# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The overlay_mounts_items filter: what the overlay_mounts role does with its items (see overlay_mounts_items.yml)."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.containerhost.overlayfs.plugins.plugin_utils._persistence import (
    PersistenceError,
    helper_sources,
    render,
)
from ansible_collections.containerhost.overlayfs.plugins.plugin_utils._role_items import ItemError, role_work


def overlay_mounts_items(items, persistence=None, nofail=None, service_mgr=None):
    try:
        work = role_work(items, {'persistence': persistence, 'nofail': nofail}, service_mgr)
        # What the persistence files cannot carry is refused now, before the role mounts anything; an item whose
        # persistence waits on the service manager is checked when the role renders it.
        render([item for item in work['persist'] if item['persistence'] != 'auto'],
               settings={'helper_sources': helper_sources()})
    except (ItemError, PersistenceError) as error:
        raise AnsibleFilterError('overlay_mounts_items: %s' % error)
    return work


class FilterModule(object):
    def filters(self):
        return {'overlay_mounts_items': overlay_mounts_items}
