#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
module: overlay_filesystem_info
short_description: Read a host's overlay mounts back as trees
version_added: 0.1.0
description:
  - Reports the overlay filesystems mounted on the host as trees, in exactly the form the O(containerhost.overlayfs.overlay_filesystem#module:filesystems)
    option of M(containerhost.overlayfs.overlay_filesystem) takes, and (through its action plugin) as XML.
    Feeding RV(filesystems) to that module on the same host plans nothing and reports no change; feeding it to
    the role R(containerhost.overlayfs.overlay_mounts,ansible_collections.containerhost.overlayfs.overlay_mounts_role)
    persists exactly those trees. So a host set up by hand can be adopted.
  - Each lower layer of an overlay is read from what is mounted at its path. Another overlay is a nested
    overlay when it is the layer of this one only, and a tree of its own (named here by its target, as a dir)
    when several overlays stand on it. A loop device is an image layer (V(loop), V(raw), its backing file), or
    (V(fuse)) the image and format a FUSE export of this collection serves. An nbd device is an image layer
    with the image and C(--format) of the qemu-nbd that serves it. Another block device is a V(block) layer,
    a bind mount a V(mount) layer, and a path with nothing mounted on it a dir.
  - Overlay options are reported as a tree declares them. Paths, C(rw) and C(ro) are not options, and the
    ones the kernel adds by itself (C(uuid=on), C(redirect_dir=on) without an upper dir, C(redirect_dir=nofollow)
    with C(userxattr), C(index=on) with C(nfs_export)) are left out; a tree matches a mount on the options it
    names.
  - What a tree cannot describe is reported in RV(unexpressed) with the reason and left out of
    RV(filesystems), never guessed. That covers stacked duplicates, layers given as relative paths, data-only layers
    (C(datadir+)), a layer whose directory or image is gone, a device no server serves any more, image and
    block layers mounted read-write, a degraded (read-only fallback) overlay, and options a tree cannot name.
  - Changes nothing.
author:
  - containerhost.overlayfs developers (@containerhost)
options:
  targets:
    description:
      - Report only the trees mounted at these targets (each the path of a tree's top overlay).
    type: list
    elements: path
    default: []
  under:
    description:
      - Report only the trees whose target lies under this path (or is it).
    type: path
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.actiongroups
attributes:
  check_mode:
    support: full
    description: Reads the same in check mode; it never changes anything.
  diff_mode:
    support: none
  action_group:
    support: full
    membership: [containerhost.overlayfs.overlayfs]
  action:
    support: full
    description: An action plugin adds RV(xml) on the controller.
  platform:
    platforms: linux
    support: full
    description: Needs Linux with overlayfs; reads C(/proc/self/mountinfo), C(/sys/block) and C(/proc).
notes:
  - A lazily detached mount (C(umount --lazy)) is gone from the mount table; an overlay that still uses it as a
    layer shows the directory under it, and that is what is reported.
  - Image layers on a FUSE export are recognised when the export is this collection's (under
    C(/run/containerhost-overlayfs/exports)); another qemu-storage-daemon export is reported as a loop image
    layer of the exported file.
requirements:
  - lxml on the controller, for RV(xml).
seealso:
  - module: containerhost.overlayfs.overlay_filesystem
'''

EXAMPLES = r'''
- name: Read every overlay tree of the host
  containerhost.overlayfs.overlay_filesystem_info:
  register: host_trees

- name: Adopt them as they are (plans nothing, changes nothing)
  containerhost.overlayfs.overlay_filesystem:
    filesystems: "{{ host_trees.filesystems }}"

- name: Persist them with the role (one item may hold every tree, as XML)
  ansible.builtin.include_role:
    name: containerhost.overlayfs.overlay_mounts
  vars:
    overlay_mounts_filesystems:
      - xml: "{{ host_trees.xml }}"

- name: Only the containers' root filesystems, as XML
  containerhost.overlayfs.overlay_filesystem_info:
    under: /srv/containers
  register: containers

- name: Show what could not be read as trees
  ansible.builtin.debug:
    var: containers.unexpressed
'''

RETURN = r'''
filesystems:
  description:
    - The overlay trees mounted on the host, in mount order, in the canonical YAML form of
      O(containerhost.overlayfs.overlay_filesystem#module:filesystems).
  returned: always
  type: list
  elements: dict
  sample:
    - type: overlay
      upper: /srv/ct1/upper
      work: /srv/ct1/work
      lower:
        - /srv/images/runtime
        - type: file
          source: /srv/images/base.img
          driver: loop
          format: raw
          target: /srv/layers/base
      target: /srv/ct1/rootfs
xml:
  description: RV(filesystems) as XML, one C(<filesystem>) each, inside C(<filesystems>).
  returned: always, when the controller has the lxml Python library
  type: str
unexpressed:
  description: The overlay mounts that no tree describes, each with the reason.
  returned: always
  type: list
  elements: dict
  contains:
    target:
      description: Where the overlay is mounted.
      type: str
    reason:
      description: What a tree cannot say about it.
      type: str
  sample:
    - target: /srv/ct9/rootfs
      reason: "its lower layer 'l1' is relative, as it was given to mount; a tree names absolute paths"
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.containerhost.overlayfs.plugins.module_utils.arguments._arguments import OVERLAY_FILESYSTEM_INFO
from ansible_collections.containerhost.overlayfs.plugins.module_utils.discover._discover import discover, read_host
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._paths import fold_path


def main():
    module = AnsibleModule(argument_spec=OVERLAY_FILESYSTEM_INFO, supports_check_mode=True)
    targets = [fold_path(target) for target in module.params['targets']]
    under = fold_path(module.params['under']) if module.params['under'] else None
    found = discover(read_host(), targets, under)
    module.exit_json(changed=False, filesystems=found.filesystems, unexpressed=found.unexpressed)


if __name__ == '__main__':
    main()
