#!/usr/bin/env bash
# Build the collection's Galaxy tarball into DIR (default .cache/build) from the files git ships: tracked, and
# untracked but not ignored, as a fresh clone would have them (galaxy.yml build_ignore then leaves out what
# only development needs). Prints the tarball's path.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-.cache/build}")
source=$(mktemp -d)
trap 'rm -rf "$source"' EXIT
git ls-files --cached --others --exclude-standard -z \
  | while IFS= read -r -d '' path; do [ -e "$path" ] && printf '%s\0' "$path"; done \
  | tar --null -T - -cf - | tar -C "$source" -xf -
mkdir -p "$out"
(cd "$source" && ansible-galaxy collection build --force --output-path "$out" >/dev/null)
ls "$out"/containerhost-overlayfs-*.tar.gz
