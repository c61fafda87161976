#!/usr/bin/env bash
# The lock files: each requirements/*.in compiled by uv into exact pins (make lock, make lock-upgrade), and each
# requirements/debian-pythonX.Y.list's Debian packages pinned with their SHA-256 (scripts/debian_python.py). make setup
# installs the locks, never the .in files, so a fresh clone gets the same versions whatever day it is.
#
#   scripts/lock.sh UV            re-resolve after an .in changed, keeping every pin that still satisfies it
#   scripts/lock.sh UV --upgrade  the newest versions every .in allows
#
# Then prints each pin that changed. Every lock is compiled with -c requirements/constraints.txt; each lock's header
# is the command that made it, which tests/unit/test_locks.py reads to check the lock against its .in.
set -euo pipefail
cd "$(dirname "$0")/.."
uv=$1
shift
CONTROLLER=3.13  # the controller Python the tooling runs on (Makefile CONTROLLER_PYTHON)
OLDEST_TARGET=3.9  # the unit tests also run on the oldest target Python (make sanity)

# lock file, its .in, the Python it is for, extra uv options
LOCKS=(
  "ansible-test-2.20.txt ansible-test-2.20.in $CONTROLLER"
  "ansible-test-2.21.txt ansible-test-2.21.in $CONTROLLER"
  "ansible-test-2.22.txt ansible-test-2.22.in $CONTROLLER"
  "dev.txt dev.in $CONTROLLER"
  "docs.txt docs.in $CONTROLLER"
  "tools.txt tools.in $CONTROLLER"
  "bench.txt bench.in $CONTROLLER"
  "bench-collections.txt bench-collections.in $CONTROLLER --no-deps"
  "units-py$OLDEST_TARGET.txt units.in $OLDEST_TARGET"
)

before=$(mktemp -d)
trap 'rm -rf "$before"' EXIT
cp requirements/*.txt requirements/*.lock "$before/"
cd requirements
for entry in "${LOCKS[@]}"; do
  read -r lock source python extra <<<"$entry"
  # shellcheck disable=SC2086  # extra is a list of options
  "$uv" pip compile --quiet --python-version "$python" --python-platform x86_64-unknown-linux-gnu \
    -c constraints.txt $extra "$@" "$source" -o "$lock"
done
cd ..
for list in requirements/debian-python*.list; do
  lock=${list%.list}.lock
  version=${list#requirements/debian-python}
  python3 scripts/debian_python.py lock "${version%.list}" "$@"
  diff <(grep -v '^#' "$before/${lock##*/}" 2>/dev/null | cut -d' ' -f1,2) <(grep -v '^#' "$lock" | cut -d' ' -f1,2) \
    | sed -n "s/^< /  ${lock##*/}: was /p; s/^> /  ${lock##*/}: now /p" || true
done
for lock in requirements/*.txt; do
  name=$(basename "$lock")
  [ "$name" = constraints.txt ] && continue
  diff <(grep -hoE '^[A-Za-z0-9._-]+==[^ ;]+' "$before/$name" 2>/dev/null | sort) \
       <(grep -hoE '^[A-Za-z0-9._-]+==[^ ;]+' "$lock" | sort) \
    | sed -n "s/^< /  $name: was /p; s/^> /  $name: now /p" || true
done
