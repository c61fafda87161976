#!/usr/bin/env bash
# A venv at DIR on the interpreter PYTHON holding exactly the packages of the lock LOCK (uv pip sync), made anew when
# it was made with another Python. UV names the uv binary (the Makefile's, pinned).
#
#   UV=.cache/uv/bin/uv scripts/venv.sh DIR PYTHON LOCK
set -euo pipefail
dir=$1 python=$2 lock=$3
version() { "$1" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])'; }
if [ -x "$dir/bin/python" ] && [ "$(version "$dir/bin/python")" != "$(version "$python")" ]; then
  echo "$dir was made with Python $(version "$dir/bin/python"): making it anew with $(version "$python")"
  rm -rf "$dir"
fi
[ -x "$dir/bin/python" ] || "$python" -m venv "$dir"
"${UV:?}" pip sync --quiet --python "$dir/bin/python" "$lock"
