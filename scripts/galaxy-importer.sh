#!/usr/bin/env bash
# Run galaxy-importer, the checker Galaxy runs on upload, over the tarball scripts/build-tarball.sh builds, from
# the tools venv (make galaxy-importer makes it). Fails on any error or warning. Its ansible-test step is off: it
# needs a container engine; `make sanity` runs ansible-test sanity.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.cache/tools-venv
tarball=$(scripts/build-tarball.sh .cache/build)
config=$(mktemp)
log=$(mktemp)
trap 'rm -f "$config" "$log"' EXIT
printf '[galaxy-importer]\nRUN_ANSIBLE_TEST = False\nRUN_ANSIBLE_LINT = True\n' >"$config"
status=0
# From .cache/build: it leaves its importer_result.json in the directory it runs in.
(cd .cache/build && PATH="$OLDPWD/$venv/bin:$PATH" GALAXY_IMPORTER_CONFIG="$config" "$OLDPWD/$venv/bin/python" \
  -m galaxy_importer.main "$tarball") >"$log" 2>&1 || status=$?
cat "$log"
if [ "$status" -ne 0 ] || grep -qE '^(ERROR|WARNING)' "$log"; then
  echo "galaxy-importer: $tarball has errors or warnings (exit status $status)" >&2
  exit 1
fi
echo "galaxy-importer: $tarball passes with no error and no warning"
