# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The tests' shared helpers, imported by their collection path
(``ansible_collections.containerhost.overlayfs.tests.helpers.*``): trees (tree builders for unit tests),
playbooks (the playbook that runs the module), host (real mounts on this machine), vm (the Debian test VMs), guest
(a test's scratch root in a VM), kernel (what the running kernel can do), toolchain (the ansible-core lines and
target Pythons make setup lays out)."""
