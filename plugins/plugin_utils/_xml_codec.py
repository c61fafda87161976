# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The libvirt-style XML <-> the YAML tree, on the controller, with lxml.

Accepts the seed's spellings (``<driver name='nbd' type='qcow2'/>``, a block ``<source file=...>``) and
libvirt's own (``<driver type='loop' format='raw'/>``, ``<source dev=...>``). Renders the canonical
libvirt spelling. Structure only (the elements each kind takes come from its class in module_utils/tree): the
tree's rules are checked by module_utils/tree on the target.
"""

from __future__ import annotations

import codecs
import re
from typing import Any, Dict, List, Tuple, Union

from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._options import MOUNT_FLAGS, OVERLAY_OPTIONS
from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._kinds import BY_TYPE

try:
    from lxml import etree
except ImportError:  # only xml needs it: parse_document names the missing library, and the result has no xml
    etree = None
HAS_LXML = etree is not None

XML_DECLARATION = re.compile(r'\A\s*<\?xml[^>]*\?>')
DECLARED_ENCODING = re.compile(r"""encoding\s*=\s*["']([^"']*)["']""")
# What libvirt adds to every <filesystem> it reports (virsh dumpxml of a running domain): the device's alias and
# address are libvirt's bookkeeping, not part of the tree. Accepted and ignored (docs/reference.md lists them).
LIBVIRT_BOOKKEEPING = ('alias', 'address')
MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_DEPTH = 32
ID_RANGE_ATTRIBUTES = ('start', 'target', 'count')  # of libvirt's <idmap><uid .../><gid .../></idmap>


class XmlError(ValueError):
    pass


def parse_document(text: Union[str, bytes]) -> Any:
    """Parse untrusted XML: no DTD, no entities, no network, bounded size and depth."""
    if etree is None:
        raise XmlError('the lxml Python library is required on the controller to parse xml')
    _check_declared_encoding(text if isinstance(text, str) else text[:256].decode('latin-1'))
    if isinstance(text, str):
        # Ansible hands over decoded text: the encoding declaration no longer applies.
        text = XML_DECLARATION.sub('', text, count=1)
    data = text.encode('utf-8') if isinstance(text, str) else text
    if len(data) > MAX_DOCUMENT_BYTES:
        raise XmlError('the XML document is %d bytes; at most %d are accepted' % (len(data), MAX_DOCUMENT_BYTES))
    if b'<!DOCTYPE' in data.upper() or b'<!ENTITY' in data.upper():
        raise XmlError('the XML document has a DTD or entity declaration; these are refused')
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                             huge_tree=False, remove_comments=True, remove_pis=True)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as error:
        raise XmlError('the XML is not well-formed: %s' % error)
    if root.getroottree().docinfo.doctype:
        raise XmlError('the XML document has a DTD; it is refused')
    for element in root.iter():
        if not isinstance(element.tag, str):
            raise XmlError('the XML document holds an entity reference or other non-element node; it is refused')
        depth = len(list(element.iterancestors()))
        if depth > MAX_DEPTH:
            raise XmlError('the XML document nests deeper than %d elements' % MAX_DEPTH)
    return root


def _check_declared_encoding(text: str) -> None:
    """An encoding declaration must name a real encoding (as text it no longer applies, but a name that is no
    encoding is a mistake worth naming)."""
    declaration = XML_DECLARATION.match(text)
    encoding = DECLARED_ENCODING.search(declaration.group(0)) if declaration else None
    if not encoding:
        return
    try:
        codecs.lookup(encoding.group(1))
    except LookupError:
        raise XmlError("the XML declaration names the encoding %r, which does not exist (say encoding='UTF-8', "
                       "or leave the declaration out)" % encoding.group(1))


def xml_to_filesystems(text: Union[str, bytes]) -> List[Dict[str, Any]]:
    """Every <filesystem> of the document (a <filesystem>, a <domain>, or any wrapper) in YAML form."""
    root = parse_document(text)
    if root.tag == 'filesystem':
        elements = [root]
    elif root.tag == 'domain':
        elements = root.findall('devices/filesystem')
    else:
        elements = root.findall('filesystem')
    if not elements:
        raise XmlError('no <filesystem> element found in <%s>' % root.tag)
    return [_filesystem(element, '/filesystem[%d]' % index) for index, element in enumerate(elements, 1)]


def raw_trees(value: Union[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """A tree (mapping) or an XML string -> the raw YAML trees it holds (the filters take either)."""
    return xml_to_filesystems(value) if isinstance(value, str) else [value]


def _filesystem(element: Any, where: str) -> Dict[str, Any]:
    # libvirt's default filesystem type is 'mount'
    kind = element.get('type', 'mount')
    _allow_attributes(element, where, ('type', 'accessmode'))
    for bookkeeping in [child for child in element if child.tag in LIBVIRT_BOOKKEEPING]:
        element.remove(bookkeeping)
    tree = _node(element, kind, where)
    if element.get('accessmode') is not None:
        tree['accessmode'] = element.get('accessmode')
    return tree


def _node(element: Any, kind_name: str, where: str) -> Dict[str, Any]:
    tree: Dict[str, Any] = {'type': kind_name}
    children: Dict[str, List[Any]] = {}
    for child in element:
        children.setdefault(child.tag, []).append(child)
    kind = BY_TYPE.get(kind_name)
    if kind is None:
        return tree  # an unknown type: the tree's rules name it
    allowed = kind.XML_ELEMENTS
    for tag in children:
        if tag not in allowed:
            raise XmlError('%s: <%s> is not allowed in a %s (allowed: %s)'
                           % (where, tag, kind_name, ', '.join('<%s>' % name for name in allowed)))
    for tag in ('target', 'driver', 'readonly', 'mountFlags', 'idmap'):
        if len(children.get(tag, [])) > 1:
            raise XmlError('%s: more than one <%s>' % (where, tag))
    target = children.get('target')
    if target:
        tree['target'] = _attribute(target[0], 'dir', where + '/target')
    if children.get('readonly'):
        _allow_attributes(children['readonly'][0], where + '/readonly', ())
        tree['readonly'] = True
    if children.get('idmap'):
        tree['idmap'] = _idmap(children['idmap'][0], where + '/idmap')
    if children.get('mountFlags'):
        tree['mount_flags'] = _mount_flags(children['mountFlags'][0], where + '/mountFlags')
    if kind.HAS_LAYERS:
        _overlay(children, tree, where)
        return tree
    if kind.XML_SOURCE:
        _single_source(children, kind_name, kind.XML_SOURCE, tree, where)
    if children.get('driver'):  # allowed only where the kind takes an image driver
        tree.update(_image_driver(children['driver'][0], where + '/driver'))
    return tree


def _overlay(children: Dict[str, List[Any]], tree: Dict[str, Any], where: str) -> None:
    sources = children.get('source', [])
    if len(sources) not in (0, 2):
        raise XmlError('%s: an overlay takes two <source dir> elements (upper dir, then work dir) or none, not %d'
                       % (where, len(sources)))
    if sources:
        tree['upper'] = _attribute(sources[0], 'dir', where + '/source[1]')
        tree['work'] = _attribute(sources[1], 'dir', where + '/source[2]')
    if children.get('driver'):
        tree['options'] = _overlay_options(children['driver'][0], where + '/driver')
    lowers: List[Dict[str, Any]] = []
    for index, store in enumerate(children.get('backingStore', []), 1):
        if not store.attrib and len(store) == 0:
            continue  # libvirt's empty <backingStore/> ends a chain
        store_where = '%s/backingStore[%d]' % (where, index)
        _allow_attributes(store, store_where, ('type',))
        lowers.append(_node(store, store.get('type', 'dir'), store_where))
    tree['lower'] = lowers


def _single_source(children: Dict[str, List[Any]], kind: str, names: Tuple[str, ...], tree: Dict[str, Any],
                   where: str) -> None:
    """``names``: the attributes a <source> of the ``kind`` may have (one of them)."""
    sources = children.get('source', [])
    if len(sources) != 1:
        raise XmlError('%s: a %s takes exactly one <source>' % (where, kind))
    present = [name for name in names if sources[0].get(name) is not None]
    if len(present) != 1:
        raise XmlError("%s/source: a %s source needs %s" % (where, kind, ' or '.join("a '%s' attribute" % n for n in names)))
    tree['source'] = _attribute(sources[0], present[0], where + '/source')


def _idmap(element: Any, where: str) -> Dict[str, List[Dict[str, str]]]:
    """<idmap><uid start target count/>... <gid .../>...</idmap> -> {uid: [...], gid: [...]}; the values stay text
    for the tree's rules to check (idmap.parse_idmap)."""
    _allow_attributes(element, where, ())
    ranges: Dict[str, List[Dict[str, str]]] = {}
    for child in element:
        if child.tag not in ('uid', 'gid'):
            raise XmlError('%s: <%s> is not allowed in an <idmap> (allowed: <uid>, <gid>)' % (where, child.tag))
        child_where = '%s/%s[%d]' % (where, child.tag, len(ranges.get(child.tag, [])) + 1)
        _allow_attributes(child, child_where, ID_RANGE_ATTRIBUTES)
        missing = [name for name in ID_RANGE_ATTRIBUTES if child.get(name) is None]
        if missing:
            raise XmlError("%s: the %s attribute%s required" % (child_where, ', '.join("'%s'" % name for name in missing),
                                                                's are' if len(missing) > 1 else ' is'))
        ranges.setdefault(child.tag, []).append(dict((name, child.get(name)) for name in ID_RANGE_ATTRIBUTES))
    return ranges


def _mount_flags(element: Any, where: str) -> List[str]:
    """<mountFlags><nodev/><nosuid/></mountFlags> -> ['nodev', 'nosuid']; an empty <mountFlags/> asks for none."""
    _allow_attributes(element, where, ())
    if (element.text or '').strip():
        raise XmlError('%s: the flags are elements, not text: <mountFlags><%s/></mountFlags>'
                       % (where, element.text.strip().split(',')[0]))
    flags: List[str] = []
    for child in element:
        if child.tag not in MOUNT_FLAGS:
            raise XmlError('%s: <%s> is not a mount flag (allowed: %s)'
                           % (where, child.tag, ', '.join('<%s/>' % name for name in MOUNT_FLAGS)))
        _allow_attributes(child, '%s/%s' % (where, child.tag), ())
        flags.append(child.tag)
    return flags


def _image_driver(element: Any, where: str) -> Dict[str, str]:
    """Seed spelling <driver name='nbd' type='qcow2'/>; libvirt's <driver type='loop' format='raw'/>."""
    if element.get('name') is not None:
        _allow_attributes(element, where, ('name', 'type'))
        driver, image_format = element.get('name'), element.get('type')
    else:
        _allow_attributes(element, where, ('type', 'format'))
        driver, image_format = element.get('type'), element.get('format')
    result: Dict[str, str] = {}
    if driver:
        result['driver'] = driver
    if image_format:
        result['format'] = image_format
    return result


def _overlay_options(element: Any, where: str) -> Dict[str, str]:
    if element.get('type') != 'overlay':
        raise XmlError("%s: an overlay's <driver> must have type='overlay'" % where)
    options: Dict[str, str] = {}
    for name, value in element.attrib.items():
        if name == 'type':
            continue
        if name not in OVERLAY_OPTIONS:
            raise XmlError('%s: unknown overlay option attribute %r (known: %s)'
                           % (where, name, ', '.join(OVERLAY_OPTIONS)))
        options[name] = value
    return options


def _attribute(element: Any, name: str, where: str) -> str:
    _allow_attributes(element, where, (name,))
    value = element.get(name)
    if value is None:
        raise XmlError("%s: the '%s' attribute is required" % (where, name))
    return value


def _allow_attributes(element: Any, where: str, names: Tuple[str, ...]) -> None:
    unknown = sorted(set(element.attrib) - set(names))
    if unknown:
        raise XmlError('%s: unknown attribute %s on <%s>' % (where, ', '.join(repr(n) for n in unknown), element.tag))


def filesystems_to_xml(filesystems: List[Dict[str, Any]]) -> str:
    """Canonical XML for YAML trees: one <filesystem> each, inside <filesystems>."""
    root = etree.Element('filesystems')
    for tree in filesystems:
        root.append(_element('filesystem', tree))
    return etree.tostring(root, pretty_print=True, encoding='unicode')


def filesystem_to_xml(tree: Dict[str, Any]) -> str:
    return etree.tostring(_element('filesystem', tree), pretty_print=True, encoding='unicode')


def _element(tag: str, tree: Union[str, Dict[str, Any]]) -> Any:
    if isinstance(tree, str):
        tree = {'type': 'dir', 'target': tree}
    element = etree.Element(tag, type=tree.get('type', 'overlay' if tag == 'filesystem' else 'dir'))
    if tree.get('accessmode'):
        element.set('accessmode', tree['accessmode'])
    if tree.get('options'):
        driver = etree.SubElement(element, 'driver', type='overlay')
        for name, value in tree['options'].items():
            driver.set(name, _option_text(value))
    if tree.get('driver') or tree.get('format'):
        driver = etree.SubElement(element, 'driver')
        if tree.get('driver'):
            driver.set('type', tree['driver'])
        if tree.get('format'):
            driver.set('format', tree['format'])
    if tree.get('idmap'):
        idmap = etree.SubElement(element, 'idmap')
        for kind in ('uid', 'gid'):
            for one in tree['idmap'].get(kind, []):
                etree.SubElement(idmap, kind, **dict((name, str(one[name])) for name in ID_RANGE_ATTRIBUTES))
    if tree.get('upper'):
        etree.SubElement(element, 'source', dir=tree['upper'])
        etree.SubElement(element, 'source', dir=tree['work'])
    if tree.get('source'):
        sourced = BY_TYPE.get(tree['type'])
        attribute = sourced.XML_SOURCE[0] if sourced is not None and sourced.XML_SOURCE else 'dir'
        etree.SubElement(element, 'source', **{attribute: tree['source']})
    for lower in tree.get('lower', []):
        element.append(_element('backingStore', lower))
    etree.SubElement(element, 'target', dir=tree['target'])
    if tree.get('readonly'):
        etree.SubElement(element, 'readonly')
    if tree.get('mount_flags') is not None:
        flags = etree.SubElement(element, 'mountFlags')
        for name in tree['mount_flags']:
            etree.SubElement(flags, name)
    return element


def _option_text(value: Any) -> str:
    if isinstance(value, bool):
        return 'on' if value else 'off'
    return str(value)


# A label stands alone: at the start of the message or after a space or '(', and before the end, a space or
# punctuation; inside a path (/srv/filesystems[3].target) it is part of the path and stays as it is.
# After the field: an attribute (options.xino), or an element and its attribute (idmap.uid[0].count).
YAML_LABEL = re.compile(r'(?<![^\s(])filesystems\[(\d+)\]((?:\.lower\[\d+\])*)(?:\.(upper|work|target|source|options|'
                        r'format|driver|readonly|mount_flags|type|accessmode|lower|idmap)(?:\.(\w+)(?:\[(\d+)\](?:\.(\w+))?)?)?)?'
                        r'(?![^\s:;,)])')
FIELD_IN_XML = {'upper': '/source[1]', 'work': '/source[2]', 'target': '/target', 'source': '/source',
                'format': '/driver', 'driver': '/driver', 'readonly': '/readonly', 'mount_flags': '/mountFlags', 'type': '/@type',
                'accessmode': '/@accessmode', 'lower': '/backingStore', 'options': '/driver', 'idmap': '/idmap'}


def yaml_labels_to_xml(message: str) -> str:
    """Rewrite the tree's YAML labels (filesystems[0].lower[1].work) as XML locations
    (/filesystem[1]/backingStore[2]/source[2]), for a user who wrote XML."""
    def location(match: re.Match[str]) -> str:
        path = '/filesystem[%d]' % (int(match.group(1)) + 1)
        for index in re.findall(r'\[(\d+)\]', match.group(2)):
            path += '/backingStore[%d]' % (int(index) + 1)
        if match.group(3):
            path += FIELD_IN_XML[match.group(3)]
        if match.group(5):
            path += '/%s[%d]' % (match.group(4), int(match.group(5)) + 1)
            if match.group(6):
                path += '/@' + match.group(6)
        elif match.group(4):
            path += '/@' + match.group(4)
        return path
    return YAML_LABEL.sub(location, message)
