# Copyright: containerhost.overlayfs developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Offline stand-in for the get-pip.py bootstrap script that ansible-test downloads.

ansible-test creates one virtual environment per sanity test without pip and then
runs ``python get_pip_<version>.py [pip options] pip==<version> --no-setuptools --no-wheel``
with the script it downloads from a host this project cannot reach. ``make setup``
copies this file to the cache path that ansible-test looks at first, so the
bootstrap becomes: ``python -m ensurepip`` (pip bundled with the interpreter),
or where there is none, Debian's pip wheel run from itself, then ``pip install`` of
the requested packages from the package index configured for pip.

This file is not executed directly; ansible-test runs it with the interpreter of
the virtual environment it is bootstrapping.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import subprocess
import sys

# get-pip.py options that are not pip install options.
GET_PIP_ONLY_OPTIONS = ('--no-setuptools', '--no-wheel')


def run(*args: str, quiet: bool = False) -> None:
    """Run the current interpreter with the given arguments, failing on a non-zero exit.

    With quiet, output is shown only when the command fails.
    """
    if not quiet:
        subprocess.run([sys.executable] + list(args), check=True)
        return

    result = subprocess.run([sys.executable] + list(args), check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    if result.returncode:
        sys.stdout.write(result.stdout.decode(errors='replace'))
        raise subprocess.CalledProcessError(result.returncode, result.args)


def bootstrap_pip() -> list[str]:
    """The arguments that run pip: ensurepip's, which works without network access (on Python < 3.12 it also brings
    setuptools); else, where Debian's build keeps ensurepip apart (scripts/debian_python.py), the pip wheel Debian
    ships, run from the wheel itself."""
    if importlib.util.find_spec('ensurepip'):
        run('-m', 'ensurepip', '--upgrade', quiet=True)
        return ['-m', 'pip']
    wheels = sorted(glob.glob(os.path.join(sys.base_prefix, 'share', 'python-wheels', 'pip-*.whl')))
    if not wheels:
        sys.exit('%s has neither ensurepip nor a pip wheel in %s/share/python-wheels' % (sys.executable, sys.base_prefix))
    return [os.path.join(wheels[-1], 'pip')]


def main() -> None:
    """Bootstrap pip into the running interpreter's (virtual) environment."""
    argv = sys.argv[1:]
    pip_args = [arg for arg in argv if arg not in GET_PIP_ONLY_OPTIONS]

    pip = bootstrap_pip()
    if pip_args:
        run(*pip, 'install', '--quiet', *pip_args)

    if '--no-setuptools' in argv and sys.version_info < (3, 12):
        # get-pip.py with --no-setuptools leaves setuptools out; match that.
        run('-m', 'pip', 'uninstall', '--yes', 'setuptools', quiet=True)


if __name__ == '__main__':
    try:
        main()
    except subprocess.CalledProcessError as ex:
        sys.exit(ex.returncode or 1)
