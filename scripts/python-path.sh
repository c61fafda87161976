#!/usr/bin/env bash
# The path of a Python X.Y interpreter on this machine: pyenv's newest X.Y.* (these machines carry CPython 3.6 to
# 3.13 there), else pythonX.Y on PATH. With none, says how to get one and exits 1.
set -euo pipefail
version=$1
if command -v pyenv >/dev/null 2>&1; then
  for release in $(pyenv versions --bare --skip-aliases | grep -E "^${version//./\\.}\.[0-9]+$" | sort -V -r); do
    interpreter=$(pyenv prefix "$release")/bin/python$version
    if [ -x "$interpreter" ]; then echo "$interpreter"; exit 0; fi
  done
fi
interpreter=$(PATH=$(printf '%s' "$PATH" | tr ':' '\n' | grep -v '/shims$' | paste -sd:) command -v "python$version" || true)
if [ -n "$interpreter" ]; then echo "$interpreter"; exit 0; fi
echo "Python $version is not on this machine: install it with pyenv (pyenv install $version, which needs python.org)" \
  "or from the distribution (apt-get install python$version, where Debian has it)" >&2
exit 1
