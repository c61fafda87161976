# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The registry of node kinds: adding a kind is a module of its own (see _node.Node) and an entry here."""

from __future__ import annotations

from typing import Dict, Tuple, Type

from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._bind import ContainerBind, Mount
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._block import Block
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._dir import Dir
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._idmapped import IdmappedLayer
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._image import Image
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._node import Node
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._overlay import Overlay

# In the order messages and the docs list their types.
KINDS: Tuple[Type[Node], ...] = (Dir, Overlay, Mount, ContainerBind, Block, Image, IdmappedLayer)
# The kinds a tree's YAML and XML name by their type, and where each may stand.
BY_TYPE: Dict[str, Type[Node]] = dict((kind.kind, kind) for kind in KINDS if kind.TOP_LEVEL or kind.LOWER)
TOP_LEVEL_TYPES = tuple(name for name, kind in BY_TYPE.items() if kind.TOP_LEVEL)
LOWER_TYPES = tuple(name for name, kind in BY_TYPE.items() if kind.LOWER)
# The order discovery asks them whether a mount is theirs (Node.read_back): by READ_BACK_RANK, the most particular
# first; the bind mount takes whatever else is mounted, the dir a layer where nothing is.
READ_BACK_ORDER = tuple(sorted(KINDS, key=lambda kind: kind.READ_BACK_RANK))
