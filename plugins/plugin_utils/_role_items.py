# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The overlay_mounts role's filesystem items, normalized: one pure function from what the user wrote (and the
role's defaults) to what the role does with each item. Used by the overlay_mounts_items filter (the role) and by
the persistence renderer, so an item means the same to both.

An item, as the user writes it (roles/overlay_mounts/meta/argument_specs.yml)::

    {name, xml | filesystem, state, persistence, nofail, required_by, wanted_by}

and as it comes out (``trees`` are canonical YAML trees, validated)::

    {name, trees, state, persistence, nofail, required_by, wanted_by}

A normalized item normalizes to itself, so either form may be given.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ansible.module_utils.parsing.convert_bool import boolean

from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._tree import (
    TreeError,
    check_unique_targets,
    parse_filesystem,
    to_yaml,
)
from ansible_collections.containerhost.overlayfs.plugins.plugin_utils._xml_codec import (
    XmlError,
    xml_to_filesystems,
    yaml_labels_to_xml,
)

STATES = ('mounted', 'unmounted', 'absent')
PERSISTENCE = ('auto', 'systemd', 'fstab', 'none')
SOURCES = ('xml', 'filesystem', 'trees')
ITEM_KEYS = ('name', 'state', 'persistence', 'nofail', 'required_by', 'wanted_by') + SOURCES
DEFAULTS = {'persistence': 'auto', 'nofail': True, 'state': 'mounted'}
# A unit name systemd takes (unit-name.c: VALID_CHARS plus the escapes), with the suffix of a unit type.
UNIT_NAME = re.compile(r'\A[A-Za-z0-9:_.\\@-]+\.(service|socket|target|mount|automount|swap|path|timer|slice|scope)\Z')


class ItemError(ValueError):
    pass


def plain(value: Any) -> Any:
    """A plain copy of what a template hands a filter: ansible-core 2.19+ hands it lazy containers that render
    and wrap each value on access, which costs four times as much as the parse that reads them (measured: 2000
    items). One walk renders every value once; the parsing then reads plain lists and dicts."""
    if isinstance(value, dict):
        return dict((key, plain(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def normalize_items(items: Any, defaults: Optional[Dict[str, Any]] = None,
                    service_mgr: Optional[str] = None) -> List[Dict[str, Any]]:
    """Normalize a list of items; ``defaults`` for persistence, nofail and state of items that do not say.

    Persistence ``auto`` is systemd where ``service_mgr`` is systemd, else fstab; without ``service_mgr`` it stays
    ``auto``. Targets must be unique across all items (two items cannot mount one path).
    """
    settings = dict(DEFAULTS, **dict((key, value) for key, value in (defaults or {}).items() if value is not None))
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise ItemError('unknown default %s (known: %s)' % (', '.join(unknown), ', '.join(sorted(DEFAULTS))))
    if not isinstance(items, (list, tuple)):
        raise ItemError('the filesystems must be a list of items, not %s' % type(items).__name__)
    normalized = [_item(raw, index, settings, service_mgr) for index, raw in enumerate(items)]
    try:
        check_unique_targets([parse_filesystem(tree, item['name']) for item in normalized for tree in item['trees']])
    except TreeError as error:
        raise ItemError(str(error))
    return normalized


def role_work(items: Any, defaults: Optional[Dict[str, Any]] = None,
              service_mgr: Optional[str] = None) -> Dict[str, Any]:
    """What the role does with its items: the trees to mount and to unmount, the items to persist (normalized), the
    image drivers of the trees that stay on the host (to know whether qemu-nbd or qemu-storage-daemon is needed),
    and whether the persistence waits on the service manager (an item's ``auto`` and no ``service_mgr`` given)."""
    normalized = normalize_items(items, defaults, service_mgr)
    kept = [item for item in normalized if item['state'] != 'absent']
    persist = [item for item in kept if item['persistence'] != 'none']
    return {
        'mount': [tree for item in normalized if item['state'] == 'mounted' for tree in item['trees']],
        'unmount': [tree for item in normalized if item['state'] != 'mounted' for tree in item['trees']],
        'persist': persist,
        'image_drivers': sorted(set(driver for item in kept for tree in item['trees'] for driver in _drivers(tree))),
        'needs_service_mgr': any(item['persistence'] == 'auto' for item in persist),
    }


def _item(raw: Any, index: int, settings: Dict[str, Any], service_mgr: Optional[str]) -> Dict[str, Any]:
    where = 'filesystems[%d]' % index
    if not isinstance(raw, dict):
        raise ItemError('%s must be a mapping with xml or filesystem, not %s' % (where, type(raw).__name__))
    unknown = sorted(key for key in raw if key not in ITEM_KEYS)
    if unknown:
        raise ItemError('%s: unknown key %s (allowed: %s)' % (where, ', '.join(unknown), ', '.join(ITEM_KEYS)))
    given = [key for key in SOURCES if raw.get(key) not in (None, '', [])]
    if len(given) != 1:
        raise ItemError('%s: give exactly one of xml and filesystem%s' % (where, ' (not both)' if given else ''))
    name = raw.get('name')
    if name is not None and not isinstance(name, str):
        raise ItemError('%s.name must be a string' % where)
    label = name or where
    trees = _trees(raw, given[0], label)
    return {
        'name': label,
        'trees': trees,
        'state': _choice(raw, 'state', STATES, settings, label),
        'persistence': _persistence(raw, settings, service_mgr, label),
        'nofail': _flag(raw, 'nofail', settings, label),
        'required_by': _units(raw, 'required_by', label),
        'wanted_by': _units(raw, 'wanted_by', label),
    }


def _trees(raw: Dict[str, Any], source: str, label: str) -> List[Dict[str, Any]]:
    """The item's trees, canonical; errors name the item, then the place in its tree (as XML for XML)."""
    value = raw[source]
    if source == 'xml':
        if not isinstance(value, str):
            raise ItemError('%s.xml must be a string of XML' % label)
        try:
            return [to_yaml(parse_filesystem(tree, 'filesystems[%d]' % number))
                    for number, tree in enumerate(xml_to_filesystems(value))]
        except (XmlError, TreeError) as error:
            raise ItemError('%s: %s' % (label, yaml_labels_to_xml(str(error))))
    if source == 'filesystem':
        if not isinstance(value, dict):
            raise ItemError('%s.filesystem must be a mapping (one tree)' % label)
        listed, labels = [value], ['%s.filesystem' % label]
    else:
        if not isinstance(value, list):
            raise ItemError('%s.trees must be a list of trees' % label)
        listed, labels = value, ['%s.trees[%d]' % (label, number) for number in range(len(value))]
    try:
        return [to_yaml(parse_filesystem(tree, tree_label)) for tree, tree_label in zip(listed, labels)]
    except TreeError as error:
        raise ItemError(str(error))


def _choice(raw: Dict[str, Any], key: str, allowed: Tuple[str, ...], settings: Dict[str, Any], label: str) -> str:
    value = raw.get(key)
    value = settings[key] if value is None else value
    if value not in allowed:
        raise ItemError('%s.%s: %r is not one of %s' % (label, key, value, ', '.join(allowed)))
    return value


def _persistence(raw: Dict[str, Any], settings: Dict[str, Any], service_mgr: Optional[str], label: str) -> str:
    value = _choice(raw, 'persistence', PERSISTENCE, settings, label)
    if value == 'auto' and service_mgr is not None:
        return 'systemd' if service_mgr == 'systemd' else 'fstab'
    return value


def _flag(raw: Dict[str, Any], key: str, settings: Dict[str, Any], label: str) -> bool:
    value = raw.get(key)
    value = settings[key] if value is None else value
    try:
        return boolean(value, strict=True)
    except TypeError:
        raise ItemError('%s.%s must be true or false, not %r' % (label, key, value))


def _units(raw: Dict[str, Any], key: str, label: str) -> List[str]:
    value = raw.get(key) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ItemError('%s.%s must be a list of unit names' % (label, key))
    for unit in value:
        if not isinstance(unit, str) or not UNIT_NAME.match(unit):
            raise ItemError('%s.%s: %r is not a systemd unit name (such as libvirtd.service or '
                            'systemd-nspawn@ct1.service)' % (label, key, unit))
    return list(value)


def _drivers(tree: Any) -> Iterator[str]:
    if isinstance(tree, dict):
        if tree.get('type') == 'file':
            yield tree['driver']
        for lower in tree.get('lower', []):
            yield from _drivers(lower)
