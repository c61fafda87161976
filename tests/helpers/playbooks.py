# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The playbook the integration and VM tests run the module with: one task, its arguments from the
`module_args` variable, its registered result written as JSON to `result_file` on the managed host."""

from __future__ import annotations

from ansible_collections.containerhost.overlayfs.plugins.modules.overlay_filesystem import ARGUMENT_SPEC

MODULE = 'containerhost.overlayfs.overlay_filesystem'


def module_playbook(hosts):
    arguments = ''.join('        %s: "{{ module_args.%s | default(omit) }}"\n' % (name, name) for name in ARGUMENT_SPEC)
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
