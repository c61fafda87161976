# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The overlay_persistence filter: systemd units and fstab lines for filesystem trees (see overlay_persistence.yml)."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.containerhost.overlayfs.plugins.module_utils.persistence import PersistenceError, render


def overlay_persistence(trees, persistence=None, nofail=None):
    """Render the persistence of trees; ``persistence`` and ``nofail`` are the defaults of items that do not say."""
    try:
        return render(trees, {'persistence': persistence, 'nofail': nofail})
    except PersistenceError as error:
        raise AnsibleFilterError('overlay_persistence: %s' % error)


class FilterModule(object):
    def filters(self):
        return {'overlay_persistence': overlay_persistence}
