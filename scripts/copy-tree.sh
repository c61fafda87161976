#!/usr/bin/env bash
# Copy the files a fresh clone has (tracked, and untracked but not ignored; less those deleted from the work
# tree) into DEST, as they are in the work tree. What ansible-test and ansible-galaxy collection build see.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=$1
mkdir -p "$dest"
git ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' f; do if [ -e "$f" ] || [ -L "$f" ]; then printf '%s\0' "$f"; fi; done \
  | tar -c --null --verbatim-files-from --no-recursion -T - -f - \
  | tar -x -C "$dest" -f -
