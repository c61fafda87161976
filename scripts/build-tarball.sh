#!/usr/bin/env bash
# Build the collection's Galaxy tarball into DIR (default .cache/build) from the files a fresh clone has
# (scripts/copy-tree.sh; galaxy.yml build_ignore then leaves out what only development needs). Prints its path.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-.cache/build}")
source=$(mktemp -d)
trap 'rm -rf "$source"' EXIT
scripts/copy-tree.sh "$source"
mkdir -p "$out"
(cd "$source" && ansible-galaxy collection build --force --output-path "$out" >/dev/null)
ls "$out"/containerhost-overlayfs-*.tar.gz
