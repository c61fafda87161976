# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The playbooks the integration and VM tests run: the module with one task, its arguments from the
`module_args` variable, its registered result written as JSON to `result_file` on the managed host; and the
round trip of overlay_filesystem_info (the trees under `root` read back, fed to the module, both results kept)."""

from __future__ import annotations

from ansible_collections.containerhost.overlayfs.plugins.module_utils.arguments._arguments import OVERLAY_FILESYSTEM

MODULE = 'containerhost.overlayfs.overlay_filesystem'


def module_playbook(hosts):
    arguments = ''.join('        %s: "{{ module_args.%s | default(omit) }}"\n' % (name, name) for name in OVERLAY_FILESYSTEM)
    return ('- hosts: %s\n'
            '  gather_facts: false\n'
            '  tasks:\n'
            '    - name: Converge\n'
            '      %s:\n'
            '%s'
            '      register: result\n'
            '      ignore_errors: true\n'
            '    - name: Keep the result for the test\n'
            '      check_mode: false\n'
            '      ansible.builtin.copy:\n'
            '        content: "{{ result | to_json }}"\n'
            '        dest: "{{ result_file }}"\n'
            '        mode: "0600"\n') % (hosts, MODULE, arguments)


def info_round_trip_playbook(hosts):
    return ('- hosts: %s\n'
            '  gather_facts: false\n'
            '  tasks:\n'
            '    - name: Read the trees back\n'
            '      containerhost.overlayfs.overlay_filesystem_info:\n'
            '        under: "{{ root }}"\n'
            '      register: found\n'
            '    - name: Feed them to the module\n'
            '      %s:\n'
            '        filesystems: "{{ found.filesystems }}"\n'
            '      register: fed\n'
            '    - name: Keep the results for the test\n'
            '      ansible.builtin.copy:\n'
            '        content: "{{ {\'found\': found, \'fed\': fed} | to_json }}"\n'
            '        dest: "{{ result_file }}"\n'
            '        mode: "0600"\n') % (hosts, MODULE)
