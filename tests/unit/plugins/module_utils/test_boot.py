# -*- coding: utf-8 -*-
# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The boot helper without mounting (tests/integration/test_boot_helper.py mounts with it)."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
import sysconfig

import pytest

from ansible_collections.containerhost.overlayfs.plugins.plugin_utils._persistence import collection_imports, helper_sources
from ansible_collections.containerhost.overlayfs.plugins.module_utils.boot import _boot as boot
from ansible_collections.containerhost.overlayfs.plugins.module_utils.kernel import _mountinfo as mountinfo
from ansible_collections.containerhost.overlayfs.plugins.module_utils.persist._persistence_files import MARKER

SPEC = {'target': '/srv/m', 'lowers': ['/srv/a,b', '/srv/c:d', '/srv/\u00e9 x'], 'upper': '/srv/u', 'work': '/srv/w',
        'options': {'index': 'off'}, 'readonly': False, 'mount_flags': ['nodev'], 'on_volatile_marker': 'fail',
        'idmapped': [{'target': '/run/containerhost-overlayfs/idmap/0123', 'source': '/srv/a,b',
                      'idmap': {'uid': [{'start': 0, 'target': 100000, 'count': 65536}],
                                'gid': [{'start': 0, 'target': 100000, 'count': 65536}]}}],
        'views': {'/srv': 'the upper dir of the overlay at /srv/ct'}}


def test_a_spec_reads_back_exactly(tmp_path):
    path = tmp_path / 'spec.conf'
    path.write_text(boot.spec_text(MARKER, SPEC), encoding='utf-8')
    assert path.read_text(encoding='utf-8').splitlines()[0] == MARKER
    assert boot.read_spec(str(path)) == SPEC


def test_spec_text_takes_exactly_the_spec_keys():
    with pytest.raises(ValueError, match=r'spec keys differ'):
        boot.spec_text(MARKER, dict(SPEC, extra=1))


@pytest.mark.parametrize('text, message', [
    ('# only comments\n', r'cannot read the overlay spec'),
    ('{"target": "/srv/m"}', r'is not an overlay spec'),
    ('[1, 2]', r'is not an overlay spec'),
])
def test_a_bad_spec_is_an_error_naming_the_file(tmp_path, text, message):
    path = tmp_path / 'bad.conf'
    path.write_text(text)
    with pytest.raises(boot.HelperError, match=message) as error:
        boot.read_spec(str(path))
    assert error.value.code == boot.EX_FAIL and str(path) in str(error.value)


def test_mount_arguments_as_mount8_passes_them():
    assert boot.parse_mount_arguments(['/etc/x.conf', '/srv/m', '-n', '-o', 'rw,nofail']) == (
        '/etc/x.conf', '/srv/m', {'-n'})
    assert boot.parse_mount_arguments(['/etc/x.conf', '/srv/m', '-s', '-f', '-v', '-t', 'overlay.containerhost'])[2] == {
        '-s', '-f', '-v'}


@pytest.mark.parametrize('argv, message', [
    ([], r'usage: mount.overlay.containerhost SPEC TARGET'),
    (['/etc/x.conf'], r'usage:'),
    (['/etc/x.conf', '/srv/m', '-o'], r'-o needs a value'),
    (['/etc/x.conf', '/srv/m', '-x'], r'unknown option -x'),
    (['/etc/x.conf', '/srv/m', '-N', '/proc/1/ns/mnt'], r'-N .* is not supported'),
    (['/etc/x.conf', '/srv/m', '-o', 'remount,ro'], r'remount is not supported'),
])
def test_bad_mount_arguments_are_usage_errors(argv, message):
    with pytest.raises(boot.HelperError, match=message) as error:
        boot.parse_mount_arguments(argv)
    assert error.value.code == boot.EX_USAGE


def test_the_overlay_already_on_the_target_is_recognized():
    lines = ['60 1 0:40 / /srv rw - tmpfs tmpfs rw',
             '70 60 0:41 / /srv/m rw,nodev - overlay overlay rw,lowerdir=/srv/a\\054b:/srv/c\\:d:/srv/\u00e9\\040x,'
             'upperdir=/srv/u,workdir=/srv/w,index=off']
    mounts = mountinfo.parse('\n'.join(lines))
    assert boot.mounted_as_specified(SPEC, mounts)
    assert not boot.mounted_as_specified(dict(SPEC, lowers=['/srv/c:d']), mounts)
    over = '80 70 0:42 / /srv/m rw - tmpfs tmpfs rw'
    assert not boot.mounted_as_specified(SPEC, mounts + mountinfo.parse(over))  # something covers it


@pytest.mark.parametrize('spec_change, message', [
    ({'mount_flags': ['nodev', 'noexec']}, 'it is mounted without noexec'),
    ({'options': {'index': 'on'}}, 'option index=on (shown: off)'),
    ({'readonly': True}, 'it is mounted read-write'),
])
def test_an_overlay_on_its_layers_but_not_as_its_spec_says_is_named_not_stacked_over(spec_change, message):
    """The module's test (verify), at boot: a duplicate on top would hide it, not mend it."""
    line = ('70 1 0:41 / /srv/m rw,nodev - overlay overlay rw,lowerdir=/srv/a\\054b:/srv/c\\:d:/srv/\u00e9\\040x,'
            'upperdir=/srv/u,workdir=/srv/w,index=off')
    with pytest.raises(boot.HelperError, match='/srv/m is mounted on its layers already, but not as its spec '
                                               'says: %s' % re.escape(message)):
        boot.mounted_as_specified(dict(SPEC, **spec_change), mountinfo.parse(line))


def _no_command(argv):
    raise AssertionError('no command should run: %s' % argv)


def test_main_dispatches_on_the_program_name_and_returns_mount8_codes(capsys):
    assert boot.main(['/sbin/mount.overlay.containerhost'], _no_command) == boot.EX_USAGE
    assert 'mount.overlay.containerhost: usage:' in capsys.readouterr().err
    assert boot.main(['/x/containerhost-overlayfs-export', 'restart', 'i', 'raw'], _no_command) == boot.EX_USAGE
    for argv in (['start', '/dev/nbd0', '/run/p', '/i'], ['start', '/dev/nbd0', '/run/p', '/i', 'raw', '-r'],
                 ['stop', '/dev/nbd0', '/run/p', '/i', 'raw']):
        assert boot.main(['/x/containerhost-overlayfs-nbd'] + argv, _no_command) == boot.EX_USAGE
        assert 'containerhost-overlayfs-nbd: usage: containerhost-overlayfs-nbd start DEVICE' in capsys.readouterr().err
    assert boot.main(['/x/other'], _no_command) == boot.EX_USAGE
    assert 'unknown program other' in capsys.readouterr().err
    assert boot.main(['/sbin/mount.overlay.containerhost', '/nonexistent.conf', '/srv/m'], _no_command) == boot.EX_FAIL
    assert 'cannot read the overlay spec /nonexistent.conf' in capsys.readouterr().err


def _imports(source):
    """The top-level modules a source imports."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def _in_standard_library(name):
    """Where the running Python finds the module (sys.stdlib_module_names is 3.10 and later only)."""
    origin = importlib.util.find_spec(name).origin
    paths = sysconfig.get_paths()
    installed = tuple(paths[key] + os.sep for key in ('purelib', 'platlib'))  # inside stdlib's dir in some layouts
    return origin in ('built-in', 'frozen') or (origin.startswith(paths['stdlib'] + os.sep)
                                                and not origin.startswith(installed))


def test_the_bundle_is_the_import_closure_of_the_helper_and_needs_only_the_standard_library():
    sources = helper_sources()
    for name, source in sources.items():
        assert set(collection_imports(source)) <= set(sources), name
        for module in _imports(source):
            if not module.startswith(boot.PACKAGE + '.'):
                assert _in_standard_library(module.split('.')[0]), (name, module)
    # the helper mounts a spec: none of the tree language, the plan or the apply comes with it
    assert 'boot._boot' in sources and 'kernel._verify' in sources and 'host._syscalls' in sources
    assert set(name.split('.')[0] for name in sources) == {'boot', 'host', 'kernel'}


def test_the_launcher_runs_the_helper_from_the_bundle_alone(tmp_path):
    """With only the installed files: -S keeps site-packages (and so ansible) off the path."""
    for name, source in helper_sources().items():
        parts = (boot.PACKAGE + '.' + name).split('.')
        for depth in range(1, len(parts)):
            (tmp_path / 'lib' / '/'.join(parts[:depth])).mkdir(parents=True, exist_ok=True)
            (tmp_path / 'lib' / '/'.join(parts[:depth]) / '__init__.py').write_text('')
        (tmp_path / 'lib' / ('/'.join(parts) + '.py')).write_text(source)
    launcher = boot.launcher(MARKER, sys.executable).replace(repr(boot.HELPER_LIB), repr(str(tmp_path / 'lib')))
    program = tmp_path / 'mount.overlay.containerhost'
    program.write_text(launcher)
    completed = subprocess.run([sys.executable, '-I', '-S', str(program), str(tmp_path / 'missing.conf'), '/srv/m'],
                               capture_output=True, text=True, check=False, env={'PATH': os.environ['PATH']})
    assert completed.returncode == boot.EX_FAIL, completed.stderr
    assert completed.stderr.startswith('mount.overlay.containerhost: cannot read the overlay spec'), completed.stderr
