# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A benchmark peer, not part of the collection: a module that takes the trees and gives them back unchanged.

What ansible-core charges any module for carrying N trees in (templating, the payload, argument validation) and
back out once (the result and its echoed invocation), with no work of its own."""

from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec=dict(filesystems=dict(type='list', elements='dict', required=True)),
                           supports_check_mode=True)
    module.exit_json(changed=False, filesystems=module.params['filesystems'])


if __name__ == '__main__':
    main()
