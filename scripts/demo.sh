#!/usr/bin/env bash
# The demo: the seed's XML examples mounted on localhost by ansible-playbook, inside a throwaway private
# mount namespace on a scratch tmpfs, so nothing reaches the host's mount table. Run it with `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${OVERLAYFS_DEMO_IN_NAMESPACE:-}" != 1 ]; then
  exec env OVERLAYFS_DEMO_IN_NAMESPACE=1 unshare --mount --propagation private "$0" "$@"
fi

root=$(mktemp -d /tmp/overlayfs-demo.XXXXXX)
mount -t tmpfs -o mode=0755 overlayfs-demo "$root"

cleanup() {
  # Loop devices are not namespaced: detach the ones the demo's images still hold, while their backing
  # files still show under $root (a mounted one goes when its last mount does).
  losetup --list --noheadings --output NAME,BACK-FILE \
    | awk -v prefix="$root/" 'index($2, prefix) == 1 { print $1 }' \
    | xargs --no-run-if-empty -n1 losetup --detach || true
  umount --recursive --lazy "$root" || true
  rmdir "$root"
}
trap cleanup EXIT

export ANSIBLE_NOCOLOR=${ANSIBLE_NOCOLOR:-1}
ansible-playbook -i localhost, -c local \
  -e "ansible_python_interpreter=$(command -v python)" \
  -e "demo_root=$root" \
  examples/demo.yml
