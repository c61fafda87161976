#!/usr/bin/env bash
# What AWX and Automation Platform users get from meta/execution-environment.yml: the tarball installed offline,
# `ansible-builder introspect` must find the collection's Python and system dependencies in it, and
# `ansible-builder create` must write a build context for an EE that installs the collection. No image is built
# (no container registry is reachable here). Runs from the tools venv (make execution-environment makes it).
set -euo pipefail
cd "$(dirname "$0")/.."
builder=$PWD/.cache/tools-venv/bin/ansible-builder
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tarball=$(scripts/build-tarball.sh "$work/built")
# From the tarball alone (--force: under make, ansible-galaxy sees the checkout as installed already).
ansible-galaxy collection install --offline --force -p "$work/collections" "$tarball" \
  >/dev/null

"$builder" introspect --sanitize "$work/collections" 2>/dev/null | tee "$work/introspect.yml"
for wanted in 'lxml>=5.0' 'util-linux \[platform:dpkg platform:rpm\]' 'qemu-utils \[platform:dpkg\]'; do
  grep -q -- "- '$wanted  # from collection containerhost.overlayfs'" "$work/introspect.yml" \
    || { echo "execution-environment: introspect did not find $wanted" >&2; exit 1; }
done

cp "$tarball" "$work/containerhost-overlayfs.tar.gz"
cat >"$work/execution-environment.yml" <<YAML
---
version: 3
images:
  base_image:
    name: quay.io/fedora/fedora:41
dependencies:
  ansible_core:
    package_pip: ansible-core>=2.19,<2.20
  ansible_runner:
    package_pip: ansible-runner
  galaxy:
    collections:
      - name: collections/containerhost-overlayfs.tar.gz
        type: file
additional_build_files:
  - src: containerhost-overlayfs.tar.gz
    dest: collections
YAML
(cd "$work" && "$builder" create --file execution-environment.yml --context context --output-filename Containerfile \
  >/dev/null)
test -s "$work/context/_build/collections/containerhost-overlayfs.tar.gz"
grep -q 'collections/containerhost-overlayfs.tar.gz' "$work/context/_build/requirements.yml"
grep -q 'install-from-bindep' "$work/context/Containerfile"
echo "execution-environment: introspect finds the collection's dependencies; create wrote a build context" \
  "($(wc -l <"$work/context/Containerfile") lines of Containerfile) that installs the collection's tarball"
