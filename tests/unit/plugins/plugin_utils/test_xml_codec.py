# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import glob
import itertools
import os
import re

import pytest

from ansible_collections.containerhost.overlayfs.plugins.module_utils.tree._tree import TreeError, parse_filesystems, to_yaml
from ansible_collections.containerhost.overlayfs.plugins.plugin_utils._xml_codec import (
    MAX_DEPTH,
    MAX_DOCUMENT_BYTES,
    XmlError,
    filesystem_to_xml,
    filesystems_to_xml,
    parse_document,
    xml_to_filesystems,
    yaml_labels_to_xml,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
SEED_DIR = os.path.join(os.path.dirname(REPO_ROOT), 'shared', 'seeds')
FILESYSTEM_ELEMENT = re.compile(r'<filesystem\b.*?</filesystem>', re.S)


def seed_examples():
    examples = []
    for path in sorted(glob.glob(os.path.join(SEED_DIR, '*.txt'))):
        with open(path, encoding='utf-8') as handle:
            text = handle.read()
        for number, match in enumerate(FILESYSTEM_ELEMENT.finditer(text), 1):
            examples.append(pytest.param(match.group(0), id='%s#%d' % (os.path.basename(path), number)))
    return examples


SEED_EXAMPLES = seed_examples()


def canonical(filesystems):
    return [to_yaml(root) for root in sorted(parse_filesystems(filesystems), key=lambda root: root.position)]


def xml_error(text, *fragments):
    with pytest.raises(XmlError) as error:
        xml_to_filesystems(text)
    message = str(error.value)
    for fragment in fragments:
        assert fragment in message, 'expected %r in %r' % (fragment, message)
    return message


# --- the seed ---------------------------------------------------------------------------------------

EXAMPLE_FILES = sorted(glob.glob(os.path.join(REPO_ROOT, 'examples', 'seed', '*.xml')))


def _read(path):
    with open(path, encoding='utf-8') as handle:
        return handle.read()


def test_the_repository_keeps_the_seven_seed_examples_and_they_convert():
    assert len(EXAMPLE_FILES) == 7
    for path in EXAMPLE_FILES:
        assert xml_to_filesystems(_read(path))


def test_the_repository_copies_are_the_seed_examples_verbatim_but_for_indentation():
    if not SEED_EXAMPLES:
        pytest.skip('no seed found under %s' % SEED_DIR)
    squeeze = re.compile(r'\s+')
    copies = [squeeze.sub(' ', _read(path)).strip() for path in EXAMPLE_FILES]
    originals = [squeeze.sub(' ', example.values[0]).strip() for example in SEED_EXAMPLES]
    assert sorted(copies) == sorted(originals)


def test_the_seed_is_there_and_has_all_its_filesystem_examples():
    if not SEED_EXAMPLES:
        pytest.skip('no seed found under %s (the shared seeds live next to the repository)' % SEED_DIR)
    # mount, bind, block, file, and the three overlay shapes
    assert len(SEED_EXAMPLES) == 7
    kinds = [xml_to_filesystems(example.values[0])[0]['type'] for example in SEED_EXAMPLES]
    assert kinds == ['mount', 'bind', 'block', 'file', 'overlay', 'overlay', 'overlay']


@pytest.mark.parametrize('text', SEED_EXAMPLES or [pytest.param(None, marks=pytest.mark.skip(
    reason='no seed found: expected ../shared/seeds/*.txt next to the repository root'))])
def test_every_seed_example_converts_validates_and_is_stable(text):
    filesystems = xml_to_filesystems(text)
    assert len(filesystems) == 1
    roots = parse_filesystems(filesystems)
    assert roots[0].accessmode == 'passthrough'
    yaml_form = canonical(filesystems)
    xml_again = filesystems_to_xml(yaml_form)
    yaml_again = canonical(xml_to_filesystems(xml_again))
    assert yaml_again == yaml_form
    assert filesystems_to_xml(yaml_again) == xml_again


def _seed_overlays():
    return [xml_to_filesystems(example.values[0])[0] for example in SEED_EXAMPLES
            if "type='overlay'" in example.values[0].split('>', 1)[0]]


def test_seed_overlays_have_the_layers_the_seed_describes():
    overlays = _seed_overlays()
    if not overlays:
        pytest.skip('no seed found under %s' % SEED_DIR)
    simple, nested, image = [canonical([item])[0] for item in overlays]
    assert simple == {'type': 'overlay', 'upper': '/upper', 'work': '/work',
                      'lower': ['/lower1', '/lower2', '/lower3'], 'target': '/merged', 'accessmode': 'passthrough'}
    assert nested['lower'][0] == {'type': 'overlay', 'upper': '/backing/upper', 'work': '/backing/work',
                                  'lower': ['/backing/lower1', '/backing/lower2'], 'target': '/backing/merged'}
    assert nested['lower'][1:] == ['/lower2', '/lower3']
    assert image['lower'] == [{'type': 'file', 'source': '/guest.img', 'driver': 'nbd', 'format': 'qcow2',
                               'target': '/lower1'}]


# --- libvirt spellings ----------------------------------------------------------------------------

def test_libvirt_loop_driver_spelling():
    [tree] = xml_to_filesystems("<filesystem type='file' accessmode='passthrough'>"
                                "<driver type='loop' format='raw'/><source file='/img/a.img'/>"
                                "<target dir='/mnt/a'/></filesystem>")
    assert tree == {'type': 'file', 'driver': 'loop', 'format': 'raw', 'source': '/img/a.img', 'target': '/mnt/a',
                    'accessmode': 'passthrough'}


def test_seed_and_libvirt_nbd_spellings_mean_the_same():
    seed = xml_to_filesystems("<filesystem type='file'><driver name='nbd' type='qcow2'/>"
                              "<source file='/g.img'/><target dir='/t'/></filesystem>")
    libvirt = xml_to_filesystems("<filesystem type='file'><driver type='nbd' format='qcow2'/>"
                                 "<source file='/g.img'/><target dir='/t'/></filesystem>")
    assert seed == libvirt
    assert seed[0]['driver'] == 'nbd' and seed[0]['format'] == 'qcow2'


@pytest.mark.parametrize('source', ["<source dev='/dev/sdb1'/>", "<source file='/dev/sdb1'/>"])
def test_block_backing_store_with_dev_or_file(source):
    [tree] = xml_to_filesystems("<filesystem type='overlay'><source dir='/u'/><source dir='/w'/>"
                                "<backingStore type='block'>%s<target dir='/lower'/></backingStore>"
                                "<target dir='/m'/></filesystem>" % source)
    assert tree['lower'] == [{'type': 'block', 'source': '/dev/sdb1', 'target': '/lower'}]
    xml = filesystem_to_xml(canonical([tree])[0])
    assert "<source dev=\"/dev/sdb1\"/>" in xml


def test_readonly_on_filesystem_and_backing_store():
    [tree] = xml_to_filesystems("<filesystem type='overlay'><source dir='/u'/><source dir='/w'/>"
                                "<backingStore type='dir'><target dir='/l'/><readonly/></backingStore>"
                                "<backingStore type='file'><driver type='loop' format='raw'/><source file='/i'/>"
                                "<target dir='/img'/><readonly/></backingStore>"
                                "<target dir='/m'/><readonly/></filesystem>")
    assert tree['readonly'] is True
    assert [lower['readonly'] for lower in tree['lower']] == [True, True]
    [root] = parse_filesystems([tree])
    assert root.readonly and all(lower.readonly for lower in root.lowers)
    assert xml_to_filesystems(filesystems_to_xml(canonical([tree]))) == [tree]


def test_mount_flags_are_an_element_of_flags_and_empty_asks_for_none():
    [tree, bare, plain] = xml_to_filesystems(
        "<filesystems><filesystem type='overlay'><source dir='/u'/><source dir='/w'/>"
        "<backingStore type='dir'><target dir='/l'/></backingStore><backingStore type='dir'><target dir='/k'/>"
        "</backingStore><target dir='/m'/><mountFlags><nosuid/><nodev/></mountFlags></filesystem>"
        "<filesystem type='mount'><source dir='/s'/><target dir='/t'/><mountFlags/></filesystem>"
        "<filesystem type='mount'><source dir='/s2'/><target dir='/t2'/></filesystem></filesystems>")
    assert (tree['mount_flags'], bare['mount_flags'], 'mount_flags' in plain) == (['nosuid', 'nodev'], [], False)
    roots = parse_filesystems([tree, bare, plain])
    assert [root.mount_flags for root in roots] == [('nodev', 'nosuid'), (), ('nodev',)]
    again = xml_to_filesystems(filesystems_to_xml(canonical([tree, bare, plain])))
    assert [parse_filesystems([one])[0].mount_flags for one in again] == [('nodev', 'nosuid'), (), ('nodev',)]


@pytest.mark.parametrize('flags, message', [
    ('<ro/>', r'<ro> is not a mount flag'),
    ('nodev,nosuid', r'the flags are elements, not text: <mountFlags><nodev/></mountFlags>'),
])
def test_a_mount_flag_that_is_none_is_refused_by_its_place(flags, message):
    with pytest.raises(XmlError, match=r"/filesystem\[1\]/mountFlags: " + message):
        xml_to_filesystems("<filesystem type='mount'><source dir='/s'/><target dir='/t'/><mountFlags>%s"
                           "</mountFlags></filesystem>" % flags)


def test_overlay_driver_element_carries_options():
    [tree] = xml_to_filesystems("<filesystem type='overlay'><driver type='overlay' index='off' "
                                "redirect_dir='nofollow' volatile='on' xino='auto'/>"
                                "<source dir='/u'/><source dir='/w'/>"
                                "<backingStore type='dir'><target dir='/l'/></backingStore>"
                                "<target dir='/m'/></filesystem>")
    assert tree['options'] == {'index': 'off', 'redirect_dir': 'nofollow', 'volatile': 'on', 'xino': 'auto'}
    [root] = parse_filesystems([tree])
    assert root.options == tree['options']
    xml = filesystems_to_xml(canonical([tree]))
    assert "index=\"off\"" in xml and "volatile=\"on\"" in xml
    assert canonical(xml_to_filesystems(xml)) == canonical([tree])


def test_overlay_driver_options_from_yaml_booleans_render_as_on_off():
    xml = filesystem_to_xml({'type': 'overlay', 'upper': '/u', 'work': '/w', 'lower': ['/l'], 'target': '/m',
                             'options': {'index': False, 'volatile': True}})
    assert xml_to_filesystems(xml)[0]['options'] == {'index': 'off', 'volatile': 'on'}


def test_nested_overlay_backing_store_with_its_own_driver_options():
    [tree] = xml_to_filesystems("<filesystem type='overlay'><source dir='/u'/><source dir='/w'/>"
                                "<backingStore type='overlay'><driver type='overlay' metacopy='on' "
                                "redirect_dir='on'/><source dir='/bu'/><source dir='/bw'/>"
                                "<backingStore type='dir'><target dir='/bl'/></backingStore>"
                                "<target dir='/bm'/></backingStore><target dir='/m'/></filesystem>")
    assert tree['lower'][0]['options'] == {'metacopy': 'on', 'redirect_dir': 'on'}
    assert parse_filesystems([tree])[0].lowers[0].options == {'metacopy': 'on', 'redirect_dir': 'on'}


DOMAIN = '''<?xml version='1.0' encoding='UTF-8'?>
<!-- virsh dumpxml ct1 -->
<domain type='lxc'>
  <name>ct1</name>
  <memory unit='KiB'>102400</memory>
  <os><type>exe</type><init>/sbin/init</init></os>
  <devices>
    <emulator>/usr/libexec/libvirt_lxc</emulator>
    <filesystem type='mount' accessmode='passthrough'>
      <source dir='/srv/ct1/data'/>
      <target dir='/srv/ct1/rootfs-data'/>
    </filesystem>
    <filesystem type='overlay' accessmode='passthrough'>
      <source dir='/srv/ct1/upper'/>
      <source dir='/srv/ct1/work'/>
      <backingStore type='dir'>
        <target dir='/srv/images/base'/>
      </backingStore>
      <backingStore/>
      <target dir='/srv/ct1/rootfs'/>
    </filesystem>
    <interface type='network'><source network='default'/></interface>
    <console type='pty'/>
  </devices>
</domain>
'''


def test_whole_lxc_domain_yields_every_filesystem():
    filesystems = xml_to_filesystems(DOMAIN)
    assert [tree['type'] for tree in filesystems] == ['mount', 'overlay']
    assert filesystems[0] == {'type': 'mount', 'source': '/srv/ct1/data', 'target': '/srv/ct1/rootfs-data',
                              'accessmode': 'passthrough'}
    assert filesystems[1]['lower'] == [{'type': 'dir', 'target': '/srv/images/base'}]  # empty <backingStore/> ends
    assert [root.target for root in parse_filesystems(filesystems)] == ['/srv/ct1/rootfs-data', '/srv/ct1/rootfs']


def live(domain):
    """The domain as virsh dumpxml shows it running: libvirt adds an id, and an alias (and, for some drivers, an
    address) to every device."""
    aliases = itertools.count()
    live_xml = re.sub('</filesystem>', lambda _end: "<alias name='fs%d'/><address type='none'/></filesystem>"
                      % next(aliases), domain)
    return live_xml.replace("<domain type='lxc'>", "<domain type='lxc' id='4242'>")


def test_live_xml_of_a_running_domain_reads_as_its_definition():
    live_xml = live(DOMAIN)
    assert "<alias name='fs1'/>" in live_xml and "<address type='none'/>" in live_xml
    assert xml_to_filesystems(live_xml) == xml_to_filesystems(DOMAIN)


@pytest.mark.parametrize('as_bytes', [False, True])
def test_an_encoding_that_does_not_exist_is_named(as_bytes):
    text = DOMAIN.replace("encoding='UTF-8'", "encoding='klingon'")
    xml_error(text.encode('utf-8') if as_bytes else text, "encoding 'klingon'", 'does not exist')


@pytest.mark.parametrize('encoding', ['UTF-8', 'utf8', 'ISO-8859-1', 'latin1', 'US-ASCII'])
def test_a_real_encoding_declaration_is_accepted_as_text_and_as_bytes(encoding):
    text = DOMAIN.replace("encoding='UTF-8'", "encoding='%s'" % encoding)
    assert xml_to_filesystems(text) == xml_to_filesystems(DOMAIN)
    assert xml_to_filesystems(text.encode(encoding)) == xml_to_filesystems(DOMAIN)


def test_domain_as_bytes_is_accepted():
    assert len(xml_to_filesystems(DOMAIN.encode('utf-8'))) == 2


def test_wrapper_root_with_several_filesystems():
    text = ("<filesystems>"
            "<filesystem type='overlay'><source dir='/u1'/><source dir='/w1'/>"
            "<backingStore type='dir'><target dir='/l1'/></backingStore><target dir='/m1'/></filesystem>"
            "<filesystem type='block'><source dev='/dev/vdb'/><target dir='/data'/></filesystem>"
            "<filesystem><source dir='/host'/><target dir='/bound'/></filesystem>"
            "</filesystems>")
    filesystems = xml_to_filesystems(text)
    assert [tree['type'] for tree in filesystems] == ['overlay', 'block', 'mount']  # libvirt's default is mount
    assert [tree['target'] for tree in filesystems] == ['/m1', '/data', '/bound']


def test_canonical_xml_of_a_batch_parses_back():
    yaml_form = canonical(xml_to_filesystems(DOMAIN))
    xml = filesystems_to_xml(yaml_form)
    assert xml.startswith('<filesystems>')
    assert canonical(xml_to_filesystems(xml)) == yaml_form


HOSTILE_PATH_TREE = {'type': 'overlay', 'upper': '/u "quoted" & <tag>', 'work': "/w 'single'",
                     'lower': ['/l,comma:colon\\back=eq', '/l\ttab'], 'target': '/m\nnewline'}


def test_hostile_paths_survive_yaml_xml_yaml():
    xml = filesystem_to_xml(HOSTILE_PATH_TREE)
    [tree] = xml_to_filesystems(xml)
    assert canonical([tree]) == canonical([HOSTILE_PATH_TREE])


# --- hostile documents ------------------------------------------------------------------------------

BILLION_LAUGHS = '''<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<filesystem type='mount'><source dir='/&lol9;'/><target dir='/t'/></filesystem>'''

DTD_REFUSED = 'DTD or entity declaration'
NOT_WELL_FORMED = 'not well-formed'

HOSTILE = {
    'external entity': ('<?xml version="1.0"?><!DOCTYPE filesystem [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
                        '<filesystem type="mount"><source dir="/&xxe;"/><target dir="/t"/></filesystem>', DTD_REFUSED),
    'billion laughs': (BILLION_LAUGHS, DTD_REFUSED),
    'external dtd': ('<?xml version="1.0"?><!DOCTYPE filesystem SYSTEM "http://127.0.0.1:1/evil.dtd">'
                     '<filesystem type="mount"><source dir="/s"/><target dir="/t"/></filesystem>', DTD_REFUSED),
    'parameter entity': ('<?xml version="1.0"?><!DOCTYPE filesystem [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>'
                         '<filesystem type="mount"><source dir="/s"/><target dir="/t"/></filesystem>', DTD_REFUSED),
    'lowercase doctype': ('<!doctype filesystem [<!entity x "y">]>'
                          '<filesystem type="mount"><source dir="/s"/><target dir="/t"/></filesystem>', DTD_REFUSED),
    'nested 100 deep': ('<filesystem type="overlay">' + '<backingStore type="overlay">' * 100
                        + '</backingStore>' * 100 + '</filesystem>', 'nests deeper than %d' % MAX_DEPTH),
    'not well-formed': ('<filesystem type="mount"><source dir="/s"><target dir="/t"/></filesystem>', NOT_WELL_FORMED),
    'undefined entity': ('<filesystem type="mount"><source dir="/&nope;"/><target dir="/t"/></filesystem>',
                         NOT_WELL_FORMED),
    'empty': ('', NOT_WELL_FORMED),
    'not xml': ('filesystem: {upper: /u}', NOT_WELL_FORMED),
}


@pytest.mark.parametrize('name', sorted(HOSTILE))
def test_hostile_documents_are_refused(name):
    text, reason = HOSTILE[name]
    xml_error(text, reason)


def test_external_entity_never_leaks_file_contents():
    with pytest.raises(XmlError) as error:
        xml_to_filesystems(HOSTILE['external entity'][0])
    assert 'root:' not in str(error.value)


@pytest.mark.parametrize('encoding', ['utf-16', 'utf-32'])
def test_hostile_document_in_another_encoding_is_refused(encoding):
    # the byte-level '<!DOCTYPE' check cannot see these; the parser and the doctype check must
    declaration = '<?xml version="1.0" encoding="%s"?>' % encoding.upper()
    entity = (declaration + '<!DOCTYPE filesystem [<!ENTITY x "expanded">]>'
              '<filesystem type="mount"><source dir="/&x;"/><target dir="/t"/></filesystem>')
    laughs = BILLION_LAUGHS.replace('<?xml version="1.0"?>', declaration)
    for text in (entity, laughs):
        with pytest.raises(XmlError):
            xml_to_filesystems(text.encode(encoding))


def test_depth_limit_is_enforced_but_real_depths_pass():
    nested = '<target dir="/t"/>'
    for _level in range(MAX_DEPTH + 1):
        nested = '<a>%s</a>' % nested
    with pytest.raises(XmlError, match='deeper'):
        parse_document('<filesystems>%s</filesystems>' % nested)
    assert parse_document(DOMAIN).tag == 'domain'


def test_document_over_one_mebibyte_is_refused():
    padding = '<!-- %s -->' % ('x' * MAX_DOCUMENT_BYTES)
    text = "<filesystem type='mount'><source dir='/s'/><target dir='/t'/>%s</filesystem>" % padding
    assert len(text.encode()) > 1024 * 1024
    message = xml_error(text, 'bytes')
    assert str(MAX_DOCUMENT_BYTES) in message


def test_document_just_under_the_limit_is_accepted():
    head = "<filesystem type='mount'><source dir='/s'/><target dir='/t'/><!-- "
    tail = ' --></filesystem>'
    text = head + 'x' * (MAX_DOCUMENT_BYTES - len(head) - len(tail)) + tail
    assert len(text.encode()) == MAX_DOCUMENT_BYTES
    assert xml_to_filesystems(text) == [{'type': 'mount', 'source': '/s', 'target': '/t'}]


def test_xinclude_is_not_processed():
    text = ('<filesystem type="mount" xmlns:xi="http://www.w3.org/2001/XInclude"><source dir="/s"/>'
            '<xi:include href="file:///etc/passwd" parse="text"/><target dir="/t"/></filesystem>')
    message = xml_error(text, '/filesystem[1]')
    assert 'root:' not in message


def test_comments_and_processing_instructions_are_ignored():
    [tree] = xml_to_filesystems("<filesystem type='mount'><!-- c --><?pi x?><source dir='/s'/>"
                                "<target dir='/t'/></filesystem>")
    assert tree == {'type': 'mount', 'source': '/s', 'target': '/t'}


# --- structural errors name the location ----------------------------------------------------------

OVERLAY_HEAD = "<filesystem type='overlay'><source dir='/u'/><source dir='/w'/>"


@pytest.mark.parametrize('text, fragments', [
    (OVERLAY_HEAD + "<backingStore type='dir'><target dir='/a'/></backingStore>"
     "<backingStore type='dir'><target dir='/b'/><bogus/></backingStore><target dir='/m'/></filesystem>",
     ['/filesystem[1]/backingStore[2]', '<bogus>']),
    (OVERLAY_HEAD + "<backingStore type='dir'><target dir='/a'/></backingStore>"
     "<backingStore type='dir'><target path='/b'/></backingStore><target dir='/m'/></filesystem>",
     ['/filesystem[1]/backingStore[2]/target', "'path'"]),
    (OVERLAY_HEAD + "<backingStore type='overlay'><source dir='/bu'/><source dir='/bw'/>"
     "<backingStore type='dir'><target dir='/a'/></backingStore><backingStore type='dir'><target/></backingStore>"
     "<target dir='/bm'/></backingStore><target dir='/m'/></filesystem>",
     ['/filesystem[1]/backingStore[1]/backingStore[2]/target', "'dir' attribute is required"]),
    ("<filesystem type='overlay'><source dir='/u'/><backingStore><target dir='/a'/></backingStore>"
     "<target dir='/m'/></filesystem>", ['/filesystem[1]', 'two <source dir>', 'not 1']),
    (OVERLAY_HEAD + "<source dir='/x'/><target dir='/m'/></filesystem>", ['/filesystem[1]', 'not 3']),
    (OVERLAY_HEAD + "<driver type='qemu'/><target dir='/m'/></filesystem>",
     ['/filesystem[1]/driver', "type='overlay'"]),
    (OVERLAY_HEAD + "<driver type='overlay' upperdir='/etc'/><target dir='/m'/></filesystem>",
     ['/filesystem[1]/driver', "'upperdir'"]),
    (OVERLAY_HEAD + "<target dir='/m'/><target dir='/n'/></filesystem>", ['/filesystem[1]', 'more than one <target>']),
    (OVERLAY_HEAD + "<backingStore type='dir' index='1'><target dir='/a'/></backingStore>"
     "<target dir='/m'/></filesystem>", ['/filesystem[1]/backingStore[1]', "'index'"]),
    ("<filesystem type='mount' mode='x'><source dir='/s'/><target dir='/t'/></filesystem>",
     ['/filesystem[1]', "'mode'"]),
    ("<filesystem type='mount'><target dir='/t'/></filesystem>", ['/filesystem[1]', 'exactly one <source>']),
    ("<filesystem type='block'><source dir='/dev/sdb'/><target dir='/t'/></filesystem>",
     ['/filesystem[1]/source', "'dev'", "'file'"]),
    ("<filesystem type='file'><driver name='nbd' format='qcow2'/><source file='/i'/><target dir='/t'/></filesystem>",
     ['/filesystem[1]/driver', "'format'"]),
    ("<filesystem type='mount'><source dir='/s'/><target dir='/t'/><readonly x='1'/></filesystem>",
     ['/filesystem[1]/readonly', "'x'"]),
    ("<filesystems><filesystem type='mount'><source dir='/s'/><target dir='/t'/></filesystem>"
     "<filesystem type='mount'><source dir='/s'/><target dir='/t2'/><boot order='1'/></filesystem></filesystems>",
     ['/filesystem[2]', '<boot>']),
    (OVERLAY_HEAD + "<backingStore type='dir'><target dir='/a'/><alias name='fs0'/></backingStore>"
     "<target dir='/m'/></filesystem>", ['/filesystem[1]/backingStore[1]', '<alias>']),
    ('<domain type="lxc"><devices/></domain>', ['no <filesystem>', '<domain>']),
    ('<pool type="fs"><name>overlay</name></pool>', ['no <filesystem>', '<pool>']),
])
def test_structural_errors_name_the_location(text, fragments):
    xml_error(text, *fragments)


def test_unknown_type_is_left_for_the_tree_to_name():
    filesystems = xml_to_filesystems("<filesystem type='ram'><source usage='1024'/><target dir='/t'/></filesystem>")
    with pytest.raises(TreeError, match=r"filesystems\[0\].type: 'ram'"):
        parse_filesystems(filesystems)


def test_file_without_format_is_refused_by_the_tree():
    filesystems = xml_to_filesystems("<filesystem type='file'><source file='/i.img'/><target dir='/t'/></filesystem>")
    with pytest.raises(TreeError, match='format is required'):
        parse_filesystems(filesystems)


@pytest.mark.parametrize('message, expected', [
    ('filesystems[0].lower[1]: lower dir /x does not exist', '/filesystem[1]/backingStore[2]: lower dir /x does not exist'),
    ('filesystems[2].lower[0].lower[3].work: x', '/filesystem[3]/backingStore[1]/backingStore[4]/source[2]: x'),
    ('filesystems[0].options.index: bad', '/filesystem[1]/driver/@index: bad'),
    ('filesystems[0].upper: /u overlaps filesystems[0].lower[0] /u/x',
     '/filesystem[1]/source[1]: /u overlaps /filesystem[1]/backingStore[1] /u/x'),
    ('no label here', 'no label here'),
    ('filesystems[1].lower[0]: lower dir /srv/filesystems[3].target does not exist (filesystems[0].upper)',
     '/filesystem[2]/backingStore[1]: lower dir /srv/filesystems[3].target does not exist (/filesystem[1]/source[1])'),
    ('filesystems[0]: upper /srv/a filesystems[0].work/b is taken', '/filesystem[1]: upper /srv/a filesystems[0].work/b is taken'),
    ('filesystems[0].lower[1].idmap.uid[0] and filesystems[0].lower[1].idmap.uid[1] overlap',
     '/filesystem[1]/backingStore[2]/idmap/uid[1] and /filesystem[1]/backingStore[2]/idmap/uid[2] overlap'),
    ('filesystems[0].idmap.gid[2].count must be at least 1', '/filesystem[1]/idmap/gid[3]/@count must be at least 1'),
    ('drift at filesystems[0].lower[0].idmap (idmapped at /run/x)', 'drift at /filesystem[1]/backingStore[1]/idmap (idmapped at /run/x)'),
])
def test_yaml_labels_are_rewritten_as_xml_locations(message, expected):
    assert yaml_labels_to_xml(message) == expected


IDMAPPED_XML = """<filesystem type='overlay'>
  <idmap>
    <uid start='0' target='100000' count='65536'/>
    <gid start='0' target='100000' count='65536'/>
  </idmap>
  <source dir='/srv/u'/>
  <source dir='/srv/w'/>
  <backingStore type='dir'>
    <idmap>
      <uid start='0' target='200000' count='1000'/>
      <uid start='1000' target='300000' count='1000'/>
      <gid start='0' target='200000' count='2000'/>
    </idmap>
    <target dir='/srv/b'/>
  </backingStore>
  <backingStore type='dir'><target dir='/srv/c'/></backingStore>
  <target dir='/srv/t'/>
</filesystem>"""


def test_libvirts_idmap_goes_both_ways_without_loss():
    tree = to_yaml(parse_filesystems(xml_to_filesystems(IDMAPPED_XML))[0])
    assert tree['idmap'] == {'uid': [{'start': 0, 'target': 100000, 'count': 65536}],
                             'gid': [{'start': 0, 'target': 100000, 'count': 65536}]}
    assert [one['target'] for one in tree['lower'][0]['idmap']['uid']] == [200000, 300000]
    again = to_yaml(parse_filesystems(xml_to_filesystems(filesystem_to_xml(tree)))[0])
    assert again == tree
    assert "<uid start=\"1000\" target=\"300000\" count=\"1000\"/>" in filesystem_to_xml(tree)


@pytest.mark.parametrize('idmap, message', [
    ("<idmap><user start='0' target='1' count='1'/></idmap>",
     r'^/filesystem\[1\]/idmap: <user> is not allowed in an <idmap> \(allowed: <uid>, <gid>\)$'),
    ("<idmap><uid start='0' count='1'/><gid start='0' target='1' count='1'/></idmap>",
     r"^/filesystem\[1\]/idmap/uid\[1\]: the 'target' attribute is required$"),
    ("<idmap><gid start='0' target='1' count='1'/><gid start='0' size='1'/></idmap>",
     r"^/filesystem\[1\]/idmap/gid\[2\]: unknown attribute 'size' on <gid>$"),
    ("<idmap/><idmap/>", r'^/filesystem\[1\]: more than one <idmap>$'),
    ("<idmap type='x'/>", r"^/filesystem\[1\]/idmap: unknown attribute 'type' on <idmap>$"),
])
def test_a_malformed_idmap_element_is_refused_naming_it(idmap, message):
    with pytest.raises(XmlError, match=message):
        xml_to_filesystems(IDMAPPED_XML.replace("<target dir='/srv/t'/>", idmap + "<target dir='/srv/t'/>", 1)
                           .replace(IDMAPPED_XML[IDMAPPED_XML.index('<idmap>'):IDMAPPED_XML.index('</idmap>') + 8], '', 1))
