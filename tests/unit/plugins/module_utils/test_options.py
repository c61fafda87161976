# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import pytest

from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel._options import (
    MOUNT_DATA_LIMIT,
    OVERLAY_OPTIONS,
    OptionError,
    check_conflicts,
    escape_path,
    normalize_options,
    options_match,
    overlay_mount_data,
    overlay_payload,
    split_lowerdir,
    unescape_path,
)

HOSTILE_PATHS = [
    '/srv/plain',
    '/srv/comma,dir',
    '/srv/colon:dir',
    '/srv/back\\slash',
    '/srv/trailing\\',
    '/srv/equals=dir',
    '/srv/space dir',
    '/srv/tab\tdir',
    '/srv/newline\ndir',
    "/srv/quote'dir",
    '/srv/dquote"dir',
    '/srv/all ,:\\=\t\n\'"',
    '/srv/,upperdir=/evil',
    '/srv/x:/etc',
    '/srv/\\,\\:\\\\',
    '/srv/unicode-\u00e9\u4e2d',
]


# --- a model of the kernel's parser (fs/overlayfs/params.c) --------------------------------------

def kernel_split_options(data):
    """ovl_next_opt(): split the mount(2) data on ',' that is not escaped by a backslash."""
    options, current, index = [], [], 0
    while index < len(data):
        char = data[index]
        if char == '\\':
            current.append(data[index:index + 2])
            index += 2
            continue
        if char == ',':
            options.append(''.join(current))
            current = []
        else:
            current.append(char)
        index += 1
    options.append(''.join(current))
    return options


def kernel_split_lowerdir(value):
    """ovl_parse_param_split_lowerdirs(): split on unescaped ':' keeping the escapes."""
    layers, current, index = [], [], 0
    while index < len(value):
        char = value[index]
        if char == '\\':
            current.append(value[index:index + 2])
            index += 2
            continue
        if char == ':':
            layers.append(''.join(current))
            current = []
        else:
            current.append(char)
        index += 1
    layers.append(''.join(current))
    return layers


def kernel_unescape(text):
    """ovl_unescape(): drop one backslash before any character."""
    out, index = [], 0
    while index < len(text):
        if text[index] == '\\':
            index += 1
            if index >= len(text):
                break
        out.append(text[index])
        index += 1
    return ''.join(out)


def kernel_parse(data):
    """What the kernel makes of an overlay data string: (lowers, upper, work, {other options})."""
    parsed = {}
    for option in kernel_split_options(data):
        key, sep, value = option.partition('=')
        assert key not in parsed, 'option %r given twice in %r' % (key, data)
        parsed[key] = value if sep else None
    lowers = [kernel_unescape(layer) for layer in kernel_split_lowerdir(parsed.pop('lowerdir'))]
    upper = kernel_unescape(parsed.pop('upperdir')) if 'upperdir' in parsed else None
    work = kernel_unescape(parsed.pop('workdir')) if 'workdir' in parsed else None
    return lowers, upper, work, parsed


# --- escaping -------------------------------------------------------------------------------------

@pytest.mark.parametrize('path', HOSTILE_PATHS)
def test_unescape_path_inverts_escape_path(path):
    assert unescape_path(escape_path(path)) == path


@pytest.mark.parametrize('path', HOSTILE_PATHS)
def test_escape_path_leaves_no_unescaped_separator(path):
    escaped = escape_path(path)
    assert kernel_split_options(escaped) == [escaped]
    assert kernel_split_lowerdir(escaped) == [escaped]
    assert kernel_unescape(escaped) == path


def test_escape_path_escapes_exactly_backslash_comma_colon():
    assert escape_path('/a\\b,c:d=e f') == '/a\\\\b\\,c\\:d=e f'


def test_split_lowerdir_round_trips_every_hostile_path_together():
    text = ':'.join(escape_path(path) for path in HOSTILE_PATHS)
    assert split_lowerdir(text) == HOSTILE_PATHS


@pytest.mark.parametrize('text, layers', [
    ('/a:/b:/c', ['/a', '/b', '/c']),
    ('/a\\:b:/c', ['/a:b', '/c']),
    ('/a\\\\:/c', ['/a\\', '/c']),
    ('/a\\,b', ['/a,b']),
    ('/only', ['/only']),
    ('', []),
])
def test_split_lowerdir_splits_on_unescaped_colon_only(text, layers):
    assert split_lowerdir(text) == layers


# --- the data string ------------------------------------------------------------------------------

@pytest.mark.parametrize('path', HOSTILE_PATHS)
def test_overlay_mount_data_parses_back_to_the_same_paths_as_the_kernel_does(path):
    lowers = [path + '/l1', '/srv/plain-lower', path + '/l2']
    upper, work = path + '/upper', path + '/work'
    data = overlay_mount_data(lowers, upper, work, {'index': 'off'})
    assert kernel_parse(data) == (lowers, upper, work, {'index': 'off'})


def test_overlay_mount_data_cannot_smuggle_an_option_through_a_path():
    lowers = ['/srv/l,upperdir=/etc,workdir=/tmp', '/srv/l2:/etc']
    data = overlay_mount_data(lowers, '/srv/u,index=on', '/srv/w', {})
    got_lowers, upper, work, extra = kernel_parse(data)
    assert got_lowers == lowers
    assert upper == '/srv/u,index=on'
    assert work == '/srv/w'
    assert extra == {}


def test_overlay_mount_data_fixed_order_and_flags():
    data = overlay_mount_data(['/l1', '/l2'], '/u', '/w',
                              {'xino': 'auto', 'volatile': 'on', 'index': 'off', 'userxattr': 'off'})
    assert data == 'lowerdir=/l1:/l2,upperdir=/u,workdir=/w,index=off,volatile,xino=auto'


def test_overlay_mount_data_without_upper_has_no_upper_or_work():
    data = overlay_mount_data(['/l1', '/l2'], None, None, {})
    assert data == 'lowerdir=/l1:/l2'


def test_mount_data_limit_is_one_page_minus_nul():
    assert MOUNT_DATA_LIMIT == 4095


# --- normalize_options ----------------------------------------------------------------------------

@pytest.mark.parametrize('raw, expected', [
    ({'index': False}, {'index': 'off'}),
    ({'index': True}, {'index': 'on'}),
    ({'volatile': True}, {'volatile': 'on'}),
    ({'userxattr': False}, {'userxattr': 'off'}),
    ({'metacopy': 'on', 'redirect_dir': 'on'}, {'metacopy': 'on', 'redirect_dir': 'on'}),
    ({'uuid': 'null', 'xino': 'auto', 'verity': 'require'}, {'uuid': 'null', 'xino': 'auto', 'verity': 'require'}),
    ({'redirect_dir': 'nofollow'}, {'redirect_dir': 'nofollow'}),
    (None, {}),
    ({}, {}),
])
def test_normalize_options_maps_yaml_booleans_and_keeps_kernel_spellings(raw, expected):
    assert normalize_options(raw, 'filesystems[0]') == expected


def test_normalize_options_names_the_unknown_option():
    with pytest.raises(OptionError) as error:
        normalize_options({'lowerdir': '/etc'}, 'filesystems[3]')
    assert 'filesystems[3].options.lowerdir' in str(error.value)
    assert 'unknown overlay option' in str(error.value)


@pytest.mark.parametrize('name', ['upperdir', 'workdir', 'lowerdir+', 'datadir+', 'ro', 'index,upperdir'])
def test_normalize_options_refuses_path_options_and_garbage(name):
    with pytest.raises(OptionError, match='unknown overlay option'):
        normalize_options({name: 'x'}, 'f')


@pytest.mark.parametrize('name, value', [('index', 'yes'), ('redirect_dir', 'maybe'), ('xino', 'enabled')])
def test_normalize_options_bad_value_names_field_and_value(name, value):
    with pytest.raises(OptionError) as error:
        normalize_options({name: value}, 'filesystems[0].lower[1]')
    assert 'filesystems[0].lower[1].options.%s' % name in str(error.value)
    assert repr(value) in str(error.value)


@pytest.mark.parametrize('name, value', [('index', 1), ('uuid', 'yes'), ('verity', 'off,upperdir=/x'),
                                         ('volatile', 'true'), ('metacopy', '')])
def test_normalize_options_refuses_values_outside_the_kernel_vocabulary(name, value):
    with pytest.raises(OptionError, match='is not one of'):
        normalize_options({name: value}, 'f')


def test_normalize_options_none_value_hints_at_yaml_quoting():
    with pytest.raises(OptionError) as error:
        normalize_options({'uuid': None}, 'filesystems[0]')
    assert 'filesystems[0].options.uuid has no value' in str(error.value)


def test_normalize_options_refuses_a_non_mapping():
    with pytest.raises(OptionError, match='filesystems\\[0\\].options must be a mapping'):
        normalize_options(['index=off'], 'filesystems[0]')


# --- check_conflicts ------------------------------------------------------------------------------

@pytest.mark.parametrize('options, has_upper, words', [
    ({'metacopy': 'on', 'redirect_dir': 'off'}, True, ('metacopy=on', 'redirect_dir=off')),
    ({'metacopy': 'on', 'redirect_dir': 'nofollow'}, True, ('metacopy=on', 'redirect_dir=nofollow')),
    ({'metacopy': 'on', 'redirect_dir': 'follow'}, True, ('metacopy=on', 'redirect_dir=follow')),
    ({'nfs_export': 'on', 'index': 'off'}, True, ('nfs_export=on', 'index=off')),
    ({'nfs_export': 'on', 'metacopy': 'on'}, True, ('nfs_export=on', 'metacopy=on')),
    ({'userxattr': 'on', 'redirect_dir': 'on'}, True, ('userxattr', 'redirect_dir=on')),
    ({'userxattr': 'on', 'redirect_dir': 'follow'}, True, ('userxattr', 'redirect_dir=follow')),
    ({'userxattr': 'on', 'metacopy': 'on'}, True, ('userxattr', 'metacopy=on')),
    ({'userxattr': 'on', 'verity': 'on'}, True, ('userxattr', 'verity=on')),
    ({'userxattr': 'on', 'verity': 'require'}, True, ('userxattr', 'verity=require')),
    ({'verity': 'on', 'metacopy': 'off'}, True, ('metacopy=off', 'verity=on')),
    ({'verity': 'require', 'redirect_dir': 'nofollow'}, True, ('verity=require', 'redirect_dir=nofollow')),
    ({'volatile': 'on'}, False, ('volatile', 'upper')),
    ({'index': 'on'}, False, ('index', 'upper')),
])
def test_check_conflicts_refuses_what_the_kernel_refuses(options, has_upper, words):
    with pytest.raises(OptionError) as error:
        check_conflicts(options, has_upper, 'filesystems[2]')
    message = str(error.value)
    assert message.startswith('filesystems[2].options')
    for word in words:
        assert word in message


@pytest.mark.parametrize('options, has_upper', [
    ({}, True),
    ({}, False),
    ({'metacopy': 'on'}, True),
    ({'metacopy': 'on', 'redirect_dir': 'on'}, True),
    # without an upper dir the kernel turns redirect_dir=follow into on, so metacopy is fine
    ({'metacopy': 'on', 'redirect_dir': 'follow'}, False),
    ({'nfs_export': 'on', 'index': 'on'}, True),
    ({'nfs_export': 'on'}, True),
    ({'nfs_export': 'off', 'metacopy': 'on'}, True),
    ({'userxattr': 'on'}, True),
    ({'userxattr': 'on', 'redirect_dir': 'nofollow'}, True),
    ({'userxattr': 'on', 'metacopy': 'off', 'verity': 'off'}, True),
    ({'userxattr': 'off', 'metacopy': 'on'}, True),
    ({'verity': 'on'}, True),
    ({'verity': 'on', 'metacopy': 'on', 'redirect_dir': 'on'}, True),
    ({'verity': 'off', 'metacopy': 'off'}, True),
    ({'volatile': 'on', 'index': 'on'}, True),
    ({'volatile': 'off', 'index': 'off'}, False),
    ({'redirect_dir': 'off', 'index': 'off', 'xino': 'auto', 'uuid': 'null'}, False),
    ({'default_permissions': 'on', 'xino': 'on', 'uuid': 'on'}, True),
])
def test_check_conflicts_accepts_combinations_the_kernel_takes(options, has_upper):
    assert check_conflicts(options, has_upper, 'f') is None


def test_check_conflicts_accepts_nfs_export_with_nofollow_on_a_lower_only_overlay():
    assert check_conflicts({'nfs_export': 'on', 'redirect_dir': 'nofollow'}, False, 'f') is None


# --- options_match --------------------------------------------------------------------------------

@pytest.mark.parametrize('desired, shown', [
    ({}, {'rw': None, 'lowerdir': '/l', 'uuid': 'on'}),
    ({'index': 'off'}, {'rw': None}),                # absent: the kernel dropped its default
    ({'metacopy': 'off', 'xino': 'off'}, {'rw': None}),
    ({'index': 'off'}, {'index': 'off'}),
    ({'redirect_dir': 'off'}, {'redirect_dir': 'nofollow'}),
    ({'redirect_dir': 'off'}, {'redirect_dir': 'follow'}),
    ({'redirect_dir': 'off'}, {'redirect_dir': 'off'}),
    ({'redirect_dir': 'follow'}, {'redirect_dir': 'follow'}),
    ({'redirect_dir': 'nofollow'}, {'redirect_dir': 'nofollow'}),
    ({'volatile': 'on'}, {'volatile': None}),
    ({'volatile': 'off'}, {'rw': None}),
    ({'userxattr': 'on', 'default_permissions': 'on'},
     {'userxattr': None, 'default_permissions': None, 'redirect_dir': 'nofollow'}),
])
def test_options_match_agrees(desired, shown):
    assert options_match(desired, shown, has_upper=True) is True


@pytest.mark.parametrize('desired, shown', [
    ({'index': 'off'}, {'index': 'on'}),             # explicit different value: drift
    ({'xino': 'off'}, {'xino': 'on'}),
    ({'redirect_dir': 'nofollow'}, {'redirect_dir': 'on'}),
    ({'redirect_dir': 'on'}, {'redirect_dir': 'nofollow'}),
    ({'redirect_dir': 'on'}, {'redirect_dir': 'follow'}),
    ({'volatile': 'on'}, {'rw': None}),              # a flag asked for but not shown
    ({'volatile': 'off'}, {'volatile': None}),       # a flag shown but not asked for
    ({'userxattr': 'on'}, {}),
])
def test_options_match_detects_drift(desired, shown):
    assert options_match(desired, shown, has_upper=True) is False


@pytest.mark.parametrize('asked', ['off', 'follow'])
def test_redirect_dir_shown_on_matches_off_or_follow_only_without_an_upper_dir(asked):
    assert options_match({'redirect_dir': asked}, {'redirect_dir': 'on'}, has_upper=False) is True
    assert options_match({'redirect_dir': asked}, {'redirect_dir': 'on'}, has_upper=True) is False


@pytest.mark.parametrize('shown', ['on', 'null', 'auto'])
def test_uuid_auto_matches_what_the_kernel_resolves_it_to(shown):
    assert options_match({'uuid': 'auto'}, {'uuid': shown}, has_upper=True) is True


def test_every_flag_option_is_a_kernel_flag():
    flags = sorted(name for name, values in OVERLAY_OPTIONS.items() if values is None)
    assert flags == ['default_permissions', 'userxattr', 'volatile']


def test_payload_is_the_mount2_data_string_while_it_fits_one_page():
    payload = overlay_payload(['/l1', '/l2'], '/u', '/w', {'volatile': 'on'})
    assert (payload.api, payload.data, payload.parameters) == ('mount', 'lowerdir=/l1:/l2,upperdir=/u,workdir=/w,volatile',
                                                               ())
    assert payload.summary() == payload.data


def test_payload_beyond_a_page_is_one_verbatim_lowerdir_plus_per_layer_then_escaped_upper_and_options():
    lowers = ['/srv/layer,%03d:%s' % (index, 'x' * 100) for index in range(40)]
    payload = overlay_payload(lowers, '/srv/u,1', '/srv/w', {'index': 'off', 'volatile': 'on'})
    assert payload.api == 'fsconfig' and payload.data is None
    assert payload.parameters == (
        (('source', 'overlay'),) + tuple(('lowerdir+', path) for path in lowers)
        + (('upperdir', '/srv/u\\,1'), ('workdir', '/srv/w'), ('index', 'off'), ('volatile', None)))
    assert payload.summary() == 'fsconfig(2): lowerdir+ %s ... %s (40 layers),upperdir=/srv/u\\,1' % (lowers[0], lowers[-1])


def test_payload_that_neither_call_can_carry_is_refused_with_both_limits():
    with pytest.raises(OptionError, match='at most 4095 bytes of options in all.*at most 255 bytes a path'):
        overlay_payload(['/srv/' + 'y' * 300 + '/%02d' % index for index in range(16)], None, None, {})
