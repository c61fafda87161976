# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment(object):

    # The input language shared by every plugin that takes overlay trees.
    DOCUMENTATION = r'''
options:
  xml:
    description:
      - One libvirt-style C(<filesystem>) element, several of them inside any root element, or a whole
        LXC C(<domain>) document (every C(<filesystem>) in it is taken).
      - Parsed on the controller with lxml; DTDs, entities, network access and absurd depth or size are refused.
      - The tree is the one proposed for libvirt's LXC driver. C(<filesystem type='overlay'>) takes a first
        C(<source dir>) (upper dir), a second C(<source dir>) (work dir), C(<backingStore>) elements for the
        lower layers (topmost first) and a C(<target dir>). A C(<backingStore>) of C(type='dir') is a plain
        directory (its C(<target dir>)); C(type='overlay') is a nested overlay with the same children;
        C(type='file') is an image (C(<driver type='loop' format='raw'/>), C(<driver type='nbd' format='qcow2'/>),
        the seed's C(<driver name='nbd' type='qcow2'/>), or C(<driver type='fuse' format='qcow2'/>));
        C(type='block') is a block device
        (C(<source dev>)). C(<readonly/>) makes a mount read-only. C(<driver type='overlay' index='off' .../>)
        carries overlay mount options.
      - "C(<mountFlags><nodev/><nosuid/><noexec/></mountFlags>) in a top-level C(<filesystem>) sets its mount's
        flags: without the element, C(nodev) only; an empty C(<mountFlags/>) sets none."
      - "An C(<idmap>) (libvirt's: C(<uid start='0' target='100000' count='65536'/>) and C(<gid .../>) ranges) in a
        C(<backingStore>) exposes that layer to its overlay through an idmapped mount: its files' owners show
        shifted, as an unprivileged container in that id range needs them, without a copy or a chown. In a
        top-level C(<filesystem>) it applies to every lower without its own, nested overlays' lowers included.
        Needs Linux 5.19 or later and a filesystem that supports idmapped mounts under the layer."
      - Top-level C(type='mount') and C(type='bind') (bind a host dir), C(type='block') and C(type='file') are
        accepted too. A C(<filesystem>) without C(type) is a C(mount), as in libvirt.
      - See C(docs/reference.md) in the collection for every element and attribute.
    type: str
  filesystem:
    description:
      - One filesystem tree in YAML form, the same tree as O(xml).
      - "Keys of an overlay: C(type) (default V(overlay)), C(upper), C(work), C(lower) (a list, topmost first),
        C(target), C(options) (overlay mount options such as C(index), C(metacopy), C(redirect_dir), C(xino),
        C(userxattr), C(volatile)), C(readonly), C(mount_flags), C(idmap)."
      - "C(mount_flags) (top level only): the flags the tree's own mount has at least, a list of V(nodev),
        V(nosuid) and V(noexec). The default is V([nodev]), as container engines mount a container's root: a device
        node a container makes in its view is no device on the host. V([]) asks for none. Flags a mount has beyond
        them stay (a bind keeps those of the mount it binds): nothing takes a restriction away. A tree mounted
        without some of its flags (by hand, or before this option existed) gets them in place, nothing unmounted
        (step C(set_mount_flags), Linux 5.12); a container's own bind of its view keeps the flags it was made with
        until it is made again."
      - "A lower layer is a path string (a plain directory), or a mapping with C(type): V(dir) (C(target)),
        V(overlay) (a nested overlay, same keys), V(file) (C(source), C(format), C(driver) V(loop), V(nbd) or
        V(fuse), C(target)),
        V(block) (C(source), C(target)) or V(mount) (C(source), C(target)). Each but V(overlay) takes an C(idmap)."
      - "C(idmap): C({uid: [{start: 0, target: 100000, count: 65536}], gid: [...]}), as the XML's C(<idmap>); on a
        top-level overlay it applies to every lower without its own."
      - Top-level C(type) may also be V(mount) or V(bind) (bind a host dir, C(source), C(target)), V(block) or V(file).
    type: dict
  filesystems:
    description:
      - Several trees converged in one call (same form as O(filesystem)). Trees that stand on another
        tree's target are mounted after it, whatever their order in the list.
    type: list
    elements: dict
'''
