#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
module: overlay_filesystem
short_description: Mount overlay filesystem trees idempotently
version_added: 0.1.0
description:
  - Mounts (or unmounts) a tree of overlay filesystems described in the libvirt-style XML proposed for
    libvirt's LXC driver, or in the same tree written in YAML.
  - A tree has an upper dir, a work dir and an ordered list of lower layers; a lower layer may be a plain
    directory, a nested overlay (mounted at its own target first), an image file (raw on a loop device,
    qcow2 and other formats through qemu-nbd, or through a FUSE export where the kernel has no nbd; always
    read-only), a block device, or a bind-mounted host directory.
  - The module reads the live mount table (C(/proc/self/mountinfo)), plans the ordered steps that are
    missing, and runs only those. A second run reports no change and runs nothing.
  - A target already mounted with other layers is drift. It is refused unless O(on_drift=replace).
  - Every rule the kernel would enforce (upper and work on one mount, separate subtrees, empty work dir,
    at most 500 lower layers, overlays stacked at most 2 deep, option conflicts) is checked before anything
    changes. Trees nested deeper are flattened (O(flatten)). If a step fails, the steps this run already made are undone in reverse order and the error names
    the failed step and the kernel's reason.
  - Upper and work dirs and their data are never removed or changed. An upper dir the module creates for a tree
    with a top-level C(idmap) belongs to the ids that root maps to (the container's root), so the container can
    write at the top of its view.
  - A layer with an C(idmap) is exposed to its overlay through an idmapped mount of its own, under
    C(/run/containerhost-overlayfs/idmap), made with C(open_tree(2)), C(mount_setattr(2)) and C(move_mount(2));
    the user namespace that carries the mapping lives only while the mount uses it. A second run reads the mapping
    back with C(statmount(2)) (Linux 6.15 and later; before that, the owner of the layer's root is compared). A
    changed mapping is drift.
  - Runs on one host are serialized with a lock file in C(/run/containerhost-overlayfs), a directory only root may use.
author:
  - containerhost.overlayfs developers (@containerhost)
extends_documentation_fragment:
  - containerhost.overlayfs.overlay_tree
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.actiongroups
options:
  state:
    description:
      - V(mounted) mounts every node of the tree, bottom-up; V(unmounted) unmounts them top-down and
        detaches the loop and nbd devices (and stops the FUSE exports) that served the tree.
    type: str
    choices: [mounted, unmounted]
    default: mounted
  on_drift:
    description:
      - What to do when a target is mounted with something other than the tree describes.
      - V(fail) stops before any change, showing what is mounted and what was wanted.
      - V(replace) unmounts what is there and mounts the tree.
    type: str
    choices: [fail, replace]
    default: fail
  create_dirs:
    description:
      - Create missing targets, upper dirs and work dirs (mode 0755). Lower dirs are never created.
    type: bool
    default: true
  on_volatile_marker:
    description:
      - What to do when the work dir of an overlay to mount holds C(work/incompat/volatile). An overlay
        mounted with the C(volatile) option leaves that mark, and the kernel refuses to mount on the work dir
        again while it is there, even after a clean reboot, because after a crash the upper dir may be
        incomplete.
      - V(fail) stops before any change, with a message that says so.
      - V(discard) removes the mark and mounts the upper dir as it is. Its contents may be incomplete after a
        crash, which is what C(volatile) means. The role P(containerhost.overlayfs.overlay_mounts#role) writes the
        same choice into the persistence, so the boot follows it too.
    type: str
    choices: [fail, discard]
    default: fail
  lazy_unmount:
    description:
      - Unmount with C(MNT_DETACH) (C(umount --lazy)) wherever this run unmounts (O(state=unmounted), a replaced
        drift, the repair of an image layer whose server died), so a busy tree is detached instead of failing.
      - The mount leaves the mount table at once, but processes that hold files, a working directory or a
        mapping under it keep using the filesystem until they let go, and only then are its writes to the upper
        dir finished and the filesystem released. Its devices are released at once all the same, so those
        processes read through a loop device that the kernel frees only when they let go, and through an nbd device
        or FUSE export that is gone (their reads fail). A lazily unmounted tree can be mounted again at once; the
        old and the new mount then share the upper dir, which overlayfs does not support.
      - With V(false), a busy target fails the run, naming the processes that hold it, and the tree is left
        as it was.
    type: bool
    default: false
  flatten:
    description:
      - The kernel stacks at most two overlays (an overlay whose lower is another overlay). With V(true), a tree
        nested deeper is mounted by flattening where it would stack past that. The nested overlay's own layers,
        its upper dir first and then its lowers in order, stand in its place in the overlay above it, which reads
        the same files. Whiteouts and opaque dirs of that upper work as in any lower. The nested overlay is still
        mounted at its own target. The plan names each flattened level.
      - With V(false), a tree nested more than two deep is refused before any change.
      - An upper dir that holds redirects or metacopy files is read as a lower only by an overlay that enables
        C(redirect_dir) or C(metacopy) too.
    type: bool
    default: true
  report:
    description:
      - How much of each tree the result holds. Whatever is chosen, C(changed), RV(summary) and a failure's
        message are the same.
      - V(full) returns RV(plan), RV(steps), RV(filesystems), RV(xml), RV(mounts) and the diff for every tree.
      - V(changed) returns them only for the trees this run changes (or, in check mode, would change). At a
        thousand trees of which a few change, the result stays small.
      - V(summary) returns none of them, only RV(summary), and with diff mode the diff of the trees that change.
    type: str
    choices: [full, changed, summary]
    default: full
attributes:
  action_group:
    support: full
    membership: [containerhost.overlayfs.overlayfs]
  check_mode:
    support: full
    description: Reports the exact plan and changes nothing.
  diff_mode:
    support: full
    description: Shows the mount state of every target before and after.
  action:
    support: full
    description: An action plugin parses O(xml) on the controller, so targets need no lxml.
  platform:
    platforms: linux
    support: full
    description: Needs Linux with overlayfs, util-linux (C(losetup), C(blkid)) and root.
notes:
  - Paths are data. Any byte but NUL is allowed in a path, and no path can add or change a mount option. Paths
    must be absolute and must not contain C(..).
  - Overlays are mounted with the mount(2) system call, not mount(8). util-linux 2.39 and later split the
    option string on commas itself, which would break escaped paths.
  - Options you set are compared with the options the kernel shows in mountinfo. The kernel leaves out
    options that equal its defaults, so an option it does not show counts as matching.
  - Image formats are never probed. An image layer must say its format. V(loop) serves V(raw) images on a loop
    device. V(nbd) serves any format qemu-nbd reads (V(qcow2), ...) on an nbd device and loads the C(nbd)
    kernel module when it is missing. V(fuse) needs no kernel module. It exports the image read-only as a raw
    file through qemu-storage-daemon's FUSE export, with a loop device on top. Image layers are always
    attached read-only.
  - A device whose server (qemu-nbd, qemu-storage-daemon) died is repaired on the next run. The layer is
    unmounted lazily and served again, and the overlays above it are remounted.
  - Partitioned images are refused. The filesystem must cover the whole image.
requirements:
  - lxml on the controller, for O(xml).
  - On the target, qemu-nbd (Debian package C(qemu-utils)) and C(modprobe) for V(nbd) image layers.
  - On the target, qemu-storage-daemon (Debian package C(qemu-system-common)) for V(fuse) image layers.
seealso:
  - name: Overlay Filesystem (kernel documentation)
    description: The kernel's rules for upper, work and lower layers.
    link: https://docs.kernel.org/filesystems/overlayfs.html
'''

EXAMPLES = r'''
- name: Mount the seed's simplest overlay from XML
  containerhost.overlayfs.overlay_filesystem:
    xml: |
      <filesystem type='overlay' accessmode='passthrough'>
        <source dir='/srv/ct1/upper'/>
        <source dir='/srv/ct1/work'/>
        <backingStore type='dir'><target dir='/srv/images/base'/></backingStore>
        <backingStore type='dir'><target dir='/srv/images/runtime'/></backingStore>
        <target dir='/srv/ct1/rootfs'/>
      </filesystem>

- name: The same kind of tree in YAML, with a nested overlay and a raw image as lower layers
  containerhost.overlayfs.overlay_filesystem:
    filesystem:
      upper: /srv/ct2/upper
      work: /srv/ct2/work
      lower:
        - type: file
          source: /srv/images/tools.img
          format: raw
          target: /srv/ct2/tools
        - type: overlay
          upper: /srv/shared/upper
          work: /srv/shared/work
          lower: [/srv/images/base]
          target: /srv/shared/merged
        - /srv/images/runtime
      target: /srv/ct2/rootfs
      options:
        index: false
        redirect_dir: nofollow

- name: Converge many containers in one call
  containerhost.overlayfs.overlay_filesystem:
    filesystems:
      - {upper: /srv/ct3/upper, work: /srv/ct3/work, lower: [/srv/images/base], target: /srv/ct3/rootfs}
      - {upper: /srv/ct4/upper, work: /srv/ct4/work, lower: [/srv/images/base], target: /srv/ct4/rootfs}

- name: One base image for two unprivileged containers, each in its own id range (idmapped layers, no chown)
  containerhost.overlayfs.overlay_filesystem:
    filesystems:
      - upper: /srv/ct5/upper
        work: /srv/ct5/work
        lower: [/srv/images/base]
        target: /srv/ct5/rootfs
        idmap:
          uid: [{start: 0, target: 100000, count: 65536}]
          gid: [{start: 0, target: 100000, count: 65536}]
      - upper: /srv/ct6/upper
        work: /srv/ct6/work
        lower: [/srv/images/base]
        target: /srv/ct6/rootfs
        idmap:
          uid: [{start: 0, target: 200000, count: 65536}]
          gid: [{start: 0, target: 200000, count: 65536}]

- name: Show what unmounting would do, without doing it
  containerhost.overlayfs.overlay_filesystem:
    filesystems:
      - {upper: /srv/ct3/upper, work: /srv/ct3/work, lower: [/srv/images/base], target: /srv/ct3/rootfs}
    state: unmounted
  check_mode: true
  diff: true
  register: preview

- name: Unmount a tree (upper dirs and their data stay)
  containerhost.overlayfs.overlay_filesystem:
    filesystems:
      - {upper: /srv/ct4/upper, work: /srv/ct4/work, lower: [/srv/images/base], target: /srv/ct4/rootfs}
    state: unmounted
'''

RETURN = r'''
summary:
  description: How many trees the input has, how many of them this run changes, and how many steps it runs.
  returned: success
  type: dict
  sample: {filesystems: 200, changed: 1, steps: 2}
  contains:
    filesystems:
      description: The number of input trees.
      type: int
    changed:
      description: The number of trees the plan changes.
      type: int
    steps:
      description: The number of steps of the plan.
      type: int
plan:
  description:
    - The ordered steps, one sentence each. It is empty when nothing had to change.
    - Left out with O(report=summary).
  returned: success, and on a failure while the steps ran
  type: list
  elements: str
  sample:
    - create directory /srv/ct1/rootfs
    - mount overlay on /srv/ct1/rootfs (lowerdir=/srv/images/base,upperdir=/srv/ct1/upper,workdir=/srv/ct1/work)
steps:
  description:
    - The same steps as RV(plan), each with its kind (C(action)), the tree node it serves (C(node)) and its data
      (target, device, layers; for an overlay mount the C(payload) the kernel gets, the mount(2) data string or
      the fsconfig(2) parameters in order).
    - Left out with O(report=summary).
  returned: success, and on a failure while the steps ran
  type: list
  elements: dict
filesystems:
  description:
    - The canonical YAML form of every input tree, in input order.
    - With O(report=changed) only the trees this run changes; left out with O(report=summary).
  returned: success, and on failures after the input was parsed
  type: list
  elements: dict
xml:
  description:
    - The canonical XML form of the trees in RV(filesystems) (given as XML or YAML), one C(<filesystem>) each,
      inside C(<filesystems>). It is made on the controller, only when RV(filesystems) is returned.
  returned: success, when the controller has the lxml Python library (a YAML tree needs none)
  type: str
mounts:
  description:
    - The live mounts at the trees' targets after the run, as C(/proc/self/mountinfo) reports them.
    - With O(report=changed) only those of the trees this run changes; left out with O(report=summary).
  returned: success, and on failures after the input was parsed
  type: list
  elements: dict
  contains:
    mount_id:
      description: The kernel's mount ID.
      type: int
    target:
      description: The mount point.
      type: str
    fstype:
      description: The filesystem type.
      type: str
    source:
      description: The mount source.
      type: str
    device:
      description: The device number, as C(major:minor).
      type: str
    options:
      description: Per-mount options (C(rw), C(ro), ...).
      type: str
    super_options:
      description: Superblock options, for overlays the layers as the kernel shows them.
      type: str
'''

from functools import partial

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.containerhost.overlayfs.plugins.module_utils.apply._converge import ConvergeError, converge
from ansible_collections.containerhost.overlayfs.plugins.module_utils.arguments._arguments import OVERLAY_FILESYSTEM


def main():
    module = AnsibleModule(
        argument_spec=OVERLAY_FILESYSTEM,
        mutually_exclusive=[('xml', 'filesystem', 'filesystems')],
        required_one_of=[('xml', 'filesystem', 'filesystems')],
        supports_check_mode=True,
    )
    if module.params['xml'] is not None:
        module.fail_json(msg='xml is parsed on the controller by the action plugin of this module; call the module '
                             'as containerhost.overlayfs.overlay_filesystem with the collection installed')
    try:
        # A missing command raises instead of ending the module, so what the run did is undone.
        result = converge(module.params, partial(module.run_command, handle_exceptions=False), module.check_mode)
    except ConvergeError as error:
        module.fail_json(msg=str(error), **error.result)
    if not module._diff:
        result.pop('diff')
    module.exit_json(**result)


if __name__ == '__main__':
    main()
