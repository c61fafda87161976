#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
module: persistence_files
short_description: Write the persistence of overlay trees in one task
version_added: 0.1.0
description:
  - Writes everything the P(containerhost.overlayfs.overlay_persistence#filter) filter renders, and takes away
    what it no longer renders, in one pass. The role R(containerhost.overlayfs.overlay_mounts,ansible_collections.containerhost.overlayfs.overlay_mounts_role)
    calls it once for all the trees of a host, whatever their number.
  - Every file is written atomically (a temporary file in the same directory, then a rename), and only when its
    content or mode differs.
  - "A file of this collection carries the line C(# Managed by containerhost.overlayfs.overlay_mounts: do not edit).
    Such a file that the rendered persistence no longer has is removed, from the places the collection writes to
    (C(/etc/systemd/system), C(/etc/containerhost-overlayfs), C(/usr/local/lib/containerhost-overlayfs),
    C(/sbin/mount.overlay.containerhost), C(/etc/modules-load.d), C(/etc/modprobe.d)). A stale mount unit is
    disabled first. Files without that line are never touched."
  - The fstab lines go in one block between C(# BEGIN containerhost.overlayfs.overlay_mounts) and
    C(# END containerhost.overlayfs.overlay_mounts); the rest of the file stays byte for byte.
  - Then systemd is told once. One C(systemctl reenable) for the mount units that are new, changed or not
    enabled, one C(systemctl disable) for the stale ones, and one C(systemctl daemon-reload) when anything
    changed and systemd runs.
author:
  - containerhost.overlayfs developers (@containerhost)
options:
  rendered:
    description:
      - What P(containerhost.overlayfs.overlay_persistence#filter) returns, a mapping with C(files),
        C(executables), C(fstab) and C(units).
    type: dict
    required: true
  root:
    description:
      - A directory under which every path is taken, for tests. With a root, systemd is reached with
        C(systemctl --root) (enable and disable) and never reloaded.
    type: path
    default: ""
  fstab:
    description: The fstab file, under O(root).
    type: path
    default: /etc/fstab
  backup:
    description: Keep a backup of the fstab file when its block changes.
    type: bool
    default: false
  systemd:
    description:
      - Whether to enable and disable units and reload systemd. Without it only files change.
    type: bool
    default: true
attributes:
  check_mode:
    support: full
    description: Reports what would be written, removed, enabled and disabled, and changes nothing.
  diff_mode:
    support: full
    description: Shows each file written or removed, and the fstab file, before and after.
  platform:
    platforms: linux
    support: full
    description: Needs C(systemctl) when O(rendered) has units and O(systemd) is true.
notes:
  - The role R(containerhost.overlayfs.overlay_mounts,ansible_collections.containerhost.overlayfs.overlay_mounts_role)
    is the usual way to use this module.
seealso:
  - plugin: containerhost.overlayfs.overlay_persistence
    plugin_type: filter
'''

EXAMPLES = r'''
- name: Mount two container trees
  containerhost.overlayfs.overlay_filesystem:
    filesystems:
      - {upper: /srv/ct1/upper, work: /srv/ct1/work, lower: [/srv/images/base], target: /srv/ct1/rootfs}
      - {upper: /srv/ct2/upper, work: /srv/ct2/work, lower: [/srv/images/base], target: /srv/ct2/rootfs}
  register: mounted

- name: Make them come back at boot, as systemd mount units
  containerhost.overlayfs.persistence_files:
    rendered: >-
      {{ [{'trees': mounted.filesystems, 'persistence': 'systemd'}]
         | containerhost.overlayfs.overlay_persistence(mounts=mounted.mounts) }}

- name: Show what taking ct2's persistence away would change, without changing it
  containerhost.overlayfs.persistence_files:
    rendered: >-
      {{ [{'trees': mounted.filesystems[:1], 'persistence': 'systemd'}]
         | containerhost.overlayfs.overlay_persistence(mounts=mounted.mounts) }}
  check_mode: true
  diff: true
  register: preview
'''

RETURN = r'''
written:
  description: The files written (or, in check mode, that would be).
  returned: always
  type: list
  elements: str
  sample: [/etc/systemd/system/srv-ct1-rootfs.mount, /etc/containerhost-overlayfs/overlays/srv-ct1-rootfs.conf]
removed:
  description: The stale files removed.
  returned: always
  type: list
  elements: str
fstab_changed:
  description: Whether the fstab block changed.
  returned: always
  type: bool
enabled:
  description: The mount units (re)enabled.
  returned: always
  type: list
  elements: str
disabled:
  description: The stale units disabled before their files were removed.
  returned: always
  type: list
  elements: str
reloaded:
  description: Whether C(systemctl daemon-reload) ran.
  returned: always
  type: bool
'''

from functools import partial

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.containerhost.overlayfs.plugins.module_utils.persist._persistence_files import (
    PersistenceFilesError,
    apply,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            rendered=dict(type='dict', required=True),
            root=dict(type='path', default=''),
            fstab=dict(type='path', default='/etc/fstab'),
            backup=dict(type='bool', default=False),
            systemd=dict(type='bool', default=True),
        ),
        supports_check_mode=True,
    )
    params = module.params
    systemctl = partial(module.run_command, handle_exceptions=False) if params['systemd'] else None
    try:
        change = apply(params['rendered'], params['root'], params['fstab'], params['backup'], systemctl,
                       module.check_mode, module.backup_local)
    except (OSError, PersistenceFilesError) as error:
        module.fail_json(msg=str(error))
    result = change.to_dict()
    if module._diff:
        result['diff'] = change.diff
    module.exit_json(**result)


if __name__ == '__main__':
    main()
