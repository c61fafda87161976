#!/usr/bin/env bash
# The collection's docsite, as antsibull-docs users build it: from the tarball installed offline, `antsibull-docs
# lint-collection-docs` clean, `sphinx-init` and `collection`, then Sphinx. It fails on any warning but those the
# missing network causes (the intersphinx inventories of docs.ansible.com and docs.python.org, and the labels of
# the Ansible docs they hold), and on a link of the guides to a page or section that does not exist. The RST of
# the guides must be what docs/*.md make (scripts/docsite.py). Runs from the docs venv (make docs makes it); the
# site is left in .cache/docsite/build/html.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$PWD/.cache/docs-venv
site=$PWD/.cache/docsite
export PATH=$venv/bin:$PATH
"$venv/bin/python" scripts/docsite.py check

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tarball=$(scripts/build-tarball.sh "$work/built")
export ANSIBLE_COLLECTIONS_PATH=$work/collections
ansible-galaxy collection install --offline --force -p "$work/collections" "$tarball" >/dev/null

(cd "$work/collections/ansible_collections/containerhost/overlayfs" \
  && antsibull-docs lint-collection-docs --plugin-docs --check-extra-docs-refs .)

rm -rf "$site" && mkdir -p "$site" && chmod 0700 "$site"
antsibull-docs sphinx-init --use-current --fail-on-error --dest-dir "$site" containerhost.overlayfs >/dev/null
chmod 0700 "$site/rst"  # antsibull-docs wants it writable by itself only
antsibull-docs --config-file "$site/antsibull-docs.cfg" collection --cleanup everything --fail-on-error \
  --use-current --dest-dir "$site/rst" containerhost.overlayfs
# Its warnings and errors go to the log, which is checked below (and shown whole if Sphinx fails).
sphinx-build -M html "$site/rst" "$site/build" -c "$site" --keep-going -q -w "$site/warnings.log" 2>/dev/null \
  || { cat "$site/warnings.log" >&2; exit 1; }

# A warning is one line starting with a path or WARNING:, and the lines below it that do not.
unexpected=$(awk '
  /^(\/|WARNING:)/ { keep = !(/failed to reach any of the inventories/ \
                             || /undefined label: .(common_return_values|action_plugins|ansible_configuration_settings)./) }
  keep' "$site/warnings.log")
if [ -n "$unexpected" ]; then
  printf 'docsite: warnings the missing network does not explain:\n%s\n' "$unexpected" >&2
  exit 1
fi
"$venv/bin/python" scripts/docsite.py links "$site/build/html"
echo "docsite: $(find "$site/build/html/collections" -name '*.html' | wc -l) pages in $site/build/html"
