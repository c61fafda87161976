# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The overlay_persistence filter: every file that brings filesystem trees back at boot (see overlay_persistence.yml)."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.containerhost.overlayfs.plugins.plugin_utils._persistence import (
    NBD_DEVICE,
    PersistenceError,
    helper_sources,
    render,
)
from ansible_collections.containerhost.overlayfs.plugins.plugin_utils._role_items import plain


def nbd_devices(mounts):
    """{target: /dev/nbdN} of the mounts (the module's ``mounts`` result) on an nbd device."""
    return dict((mount['target'], mount['source']) for mount in mounts or []
                if isinstance(mount, dict) and NBD_DEVICE.match(str(mount.get('source'))))


def overlay_persistence(items, mounts=None, on_volatile_marker=None, python=None, nbd_options=None,
                        service_mgr=None, persistence=None, nofail=None):
    """Render the persistence of the role's items (see plugin_utils/persistence.py)."""
    settings = {'on_volatile_marker': on_volatile_marker, 'python': python, 'nbd_options': nbd_options,
                'helper_sources': helper_sources(), 'service_mgr': service_mgr}
    try:
        return render(plain(items), nbd_devices(mounts), settings, {'persistence': persistence, 'nofail': nofail})
    except PersistenceError as error:
        raise AnsibleFilterError('overlay_persistence: %s' % error)


class FilterModule(object):
    def filters(self):
        return {'overlay_persistence': overlay_persistence}
