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
    render_normalized,
)
from ansible_collections.containerhost.overlayfs.plugins.plugin_utils._role_items import ItemError, plain, role_work


def overlay_mounts_items(items, persistence=None, nofail=None, service_mgr=None, on_volatile_marker=None, python=None):
    try:
        work = role_work(plain(items), {'persistence': persistence, 'nofail': nofail}, service_mgr)
        # What the persistence files cannot carry is refused now, before the role mounts anything; an item whose
        # persistence waits on the service manager is checked when the role renders it. The items to persist are
        # not returned (a set_fact of a thousand items costs more than parsing them again); their persistence is,
        # when the mounts cannot change it: no nbd layer, whose device it pins, and no service manager to wait on.
        rendered = render_normalized([item for item in work.pop('persist') if item['persistence'] != 'auto'],
                                     settings={'helper_sources': helper_sources(), 'python': python,
                                               'on_volatile_marker': on_volatile_marker})
    except (ItemError, PersistenceError) as error:
        raise AnsibleFilterError('overlay_mounts_items: %s' % error)
    work['rendered'] = None if work['needs_service_mgr'] or 'nbd' in work['image_drivers'] else rendered
    return work


class FilterModule(object):
    def filters(self):
        return {'overlay_mounts_items': overlay_mounts_items}
