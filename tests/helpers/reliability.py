# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""docs/reliability.md is written by two tests: the part before MARKER by tests/integration/test_fault_injection.py
(every step kind this machine can run), the part from MARKER on by tests/vm/test_nbd_images.py (the nbd steps, in
the test VMs). Each checks its own part; with RELIABILITY_UPDATE=1 it writes it."""

from __future__ import annotations

import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RELIABILITY = os.path.join(REPO, 'docs', 'reliability.md')
MARKER = '<!-- The part below is written by tests/vm/test_nbd_images.py (RELIABILITY_UPDATE=1). -->\n'


def check_part(part, first):
    """Assert that the document's first part (``first``) or second part is ``part``; write it when updating."""
    with open(RELIABILITY) as handle:
        before, marker, after = handle.read().partition(MARKER)
    if os.environ.get('RELIABILITY_UPDATE') == '1':
        before, after = (part, after) if first else (before, part[len(MARKER):])
        with open(RELIABILITY, 'w') as handle:
            handle.write(before + MARKER + after)
        return
    found = before if first else marker + after
    assert found == part, 'docs/reliability.md is not what the tests found: run them with RELIABILITY_UPDATE=1'
