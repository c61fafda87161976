# Copyright (c) containerhost.overlayfs contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A target Python that this machine kind lacks (pyenv carries CPython 3.6 to 3.13; python.org is out of reach), as
Debian builds it: the .deb files that requirements/debian-pythonX.Y.lock pins, from the Debian mirror.

    scripts/debian_python.py install X.Y DIR    unpack them into DIR/root; prints the interpreter's path
    scripts/debian_python.py lock X.Y [--upgrade]

Debian builds that Python against a newer C library than this machine's, so the C library and the other libraries
it loads come with it: its interpreter is pointed (patchelf) at their dynamic loader, and its RPATH, which applies to
every library the process loads, extension modules' included, at their directory. It then runs anywhere on the
machine, makes venvs, and sees the machine's own mounts and devices, as a target's Python does.

lock takes the versions that requirements/debian-pythonX.Y.list's suite carries today, with their SHA-256; without
--upgrade it keeps the lock when it already holds the list's packages. install fails when a pinned file is gone
from the mirror (a Debian suite drops superseded versions): `make lock-upgrade` then takes today's.
"""

from __future__ import annotations

import glob
import hashlib
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIRROR = os.environ.get('OVERLAYFS_DEBIAN_MIRROR', 'http://deb.debian.org/debian')
HEADER = re.compile(r'^# scripts/debian_python\.py lock (?P<version>\S+): Debian (?P<suite>\S+), (?P<arch>\S+)$', re.M)


class Failure(Exception):
    pass


def _path(version, extension):
    return os.path.join(REPO, 'requirements', 'debian-python%s.%s' % (version, extension))


def read_list(version):
    """(suite, packages) that requirements/debian-pythonX.Y.list names."""
    suite, packages = None, []
    with open(_path(version, 'list'), encoding='utf-8') as handle:
        for line in handle:
            line = line.split('#', 1)[0].strip()
            if line.startswith('suite:'):
                suite = line.split(':', 1)[1].strip()
            elif line:
                packages.append(line)
    return suite, packages


def read_lock(version):
    """The text of requirements/debian-pythonX.Y.lock."""
    with open(_path(version, 'lock'), encoding='utf-8') as handle:
        return handle.read()


def parse_lock(version, text):
    """(suite, arch, [(package, version, pool path, sha256)]) of a lock's text."""
    header = HEADER.search(text)
    if not header or header.group('version') != version:
        raise Failure('%s has no header for Python %s; run make lock' % (_path(version, 'lock'), version))
    pins = [tuple(line.split()) for line in text.splitlines() if line and not line.startswith('#')]
    return header.group('suite'), header.group('arch'), pins


def host_arch():
    return subprocess.run(['dpkg', '--print-architecture'], capture_output=True, text=True, check=True).stdout.strip()


def _fetch(path):
    try:
        with urllib.request.urlopen('%s/%s' % (MIRROR, path), timeout=300) as response:
            return response.read()
    except urllib.error.URLError as error:
        raise Failure('%s/%s: %s' % (MIRROR, path, error))


def lock(version, upgrade):
    suite, packages = read_list(version)
    arch = host_arch()
    if not upgrade and os.path.exists(_path(version, 'lock')):
        locked_suite, locked_arch, pins = parse_lock(version, read_lock(version))
        if (locked_suite, locked_arch) == (suite, arch) and [pin[0] for pin in pins] == packages:
            return
    index = lzma.decompress(_fetch('dists/%s/main/binary-%s/Packages.xz' % (suite, arch))).decode('utf-8')
    found = {}
    for stanza in index.split('\n\n'):
        fields = dict(re.findall(r'^(Package|Version|Filename|SHA256): (\S+)$', stanza, re.M))
        if fields.get('Package') in packages:
            found.setdefault(fields['Package'], fields)
    missing = [package for package in packages if package not in found]
    if missing:
        raise Failure('Debian %s (%s) has no %s' % (suite, arch, ', '.join(missing)))
    lines = ['# scripts/debian_python.py lock %s: Debian %s, %s' % (version, suite, arch),
             '# package version pool-path sha256 (make lock-upgrade takes the versions the suite carries then)']
    lines += [' '.join(found[package][key] for key in ('Package', 'Version', 'Filename', 'SHA256'))
              for package in packages]
    with open(_path(version, 'lock'), 'w', encoding='utf-8') as handle:
        handle.write('\n'.join(lines) + '\n')


def install(version, dest):
    """Unpack the locked packages into DEST/root (unless the lock is already there) and return the interpreter."""
    interpreter = os.path.join(dest, 'root', 'usr', 'bin', 'python' + version)
    wanted = read_lock(version)
    if _installed_lock(dest) == wanted:
        return interpreter
    _suite, arch, pins = parse_lock(version, wanted)
    machine = host_arch()
    if arch != machine:
        raise Failure('%s pins %s packages; this machine is %s' % (_path(version, 'lock'), arch, machine))
    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix='.debian-python-', dir=parent)
    try:
        for package, package_version, path, sha256 in pins:
            data = _fetch(path)
            if hashlib.sha256(data).hexdigest() != sha256:
                raise Failure('%s %s: SHA-256 differs from the lock' % (package, package_version))
            deb = os.path.join(work, os.path.basename(path))
            with open(deb, 'wb') as handle:
                handle.write(data)
            subprocess.run(['dpkg-deb', '--extract', deb, os.path.join(work, 'root')], check=True)
            os.remove(deb)
        _point_at_own_libraries(os.path.join(work, 'root'), dest, version)
        with open(os.path.join(work, 'lock'), 'w', encoding='utf-8') as handle:
            handle.write(wanted)
        shutil.rmtree(dest, ignore_errors=True)
        os.rename(work, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return interpreter


def _installed_lock(dest):
    """The lock DEST was unpacked from, or None."""
    try:
        with open(os.path.join(dest, 'lock'), encoding='utf-8') as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def _point_at_own_libraries(root, dest, version):
    """The interpreter loads the unpacked C library, through its loader, at the paths it will have in DEST."""
    [loader] = glob.glob(os.path.join(root, 'usr', 'lib', '*', 'ld-linux*.so.*'))
    final = os.path.join(os.path.abspath(dest), 'root', os.path.relpath(loader, root))
    subprocess.run(['patchelf', '--set-interpreter', final, '--force-rpath', '--set-rpath', os.path.dirname(final),
                    os.path.join(root, 'usr', 'bin', 'python' + version)], check=True)


def main(argv):
    try:
        if len(argv) == 4 and argv[1] == 'install':
            print(install(argv[2], argv[3]))
        elif len(argv) in (3, 4) and argv[1] == 'lock' and argv[3:] in ([], ['--upgrade']):
            lock(argv[2], upgrade=argv[3:] == ['--upgrade'])
        else:
            sys.stderr.write(__doc__)
            return 2
    except (Failure, subprocess.CalledProcessError, OSError) as error:
        sys.stderr.write('debian_python.py: %s\n' % error)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
