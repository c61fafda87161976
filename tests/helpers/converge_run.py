# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""One module run in a process of its own, without ansible-playbook: for tests that run several at once or kill one.

    python3 converge_run.py SYS_PATH_JSON PARAMS_JSON LOCK_PATH

Prints the result as JSON (``failed`` and ``msg`` when the run failed) and exits 1 on a failure.
"""

from __future__ import annotations

import json
import sys


def main(sys_path, params, lock_path):
    sys.path[:0] = json.loads(sys_path)
    from ansible_collections.containerhost.overlayfs.plugins.module_utils.apply._converge import ConvergeError, converge
    from ansible_collections.containerhost.overlayfs.tests.helpers.host import run_command
    try:
        result = converge(json.loads(params), run_command, False, lock_path=lock_path)
    except ConvergeError as error:
        print(json.dumps(dict(error.result, failed=True, msg=str(error))))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == '__main__':
    sys.exit(main(*sys.argv[1:]))
