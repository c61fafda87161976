#!/usr/bin/env bash
# Builds the cached base image of a Debian test VM (see docs/testing-vm.md): bookworm (Debian 12) or
# trixie (Debian 13), for amd64 or arm64.
#
#   tests/vm/build-image.sh [RELEASE]                build unless a complete image for this recipe is cached
#   tests/vm/build-image.sh --force [RELEASE]        rebuild even when it is
#   tests/vm/build-image.sh RELEASE --arch arm64     the arm64 image (the arm64 smoke run uses trixie's)
#
# RELEASE is bookworm (the default) or trixie; ARCH is amd64 (the default) or arm64. Result, in
# ${OVERLAYFS_VM_CACHE:-/var/cache/containerhost-overlayfs-vm}/RELEASE/image/ (RELEASE-ARCH/image/ for arm64):
#   base.img       sparse 4 GB raw disk, one ext4 filesystem (no partition table), the guest's /
#   vmlinuz        the guest's kernel (linux-image-cloud-ARCH), booted with qemu -kernel
#   initrd.img     its initramfs (virtio_blk, ext4 etc. are modules in the cloud kernel)
#   id_ed25519     private key for root@guest (id_ed25519.pub is in /root/.ssh/authorized_keys)
#   cpu            the qemu -cpu the guest boots with, the one its build emulated
#   stamp          sha256 of this script: a changed recipe means a rebuild
#
# The image is built in a temporary directory next to image/ and renamed into place at the very end,
# so an interrupted build never leaves something that looks complete. Builds of different images may run
# at the same time (each has its own lock). Runs as root; installs the host packages it needs with
# apt-get. The Debian mirror is the one this machine's apt sources name for its own release
# (OVERLAYFS_VM_MIRROR overrides it). An image of another architecture than the host's is bootstrapped with
# debootstrap --foreign, and its programs run in the chroot through qemu-user, by a binfmt_misc entry that only
# lives as long as the build.
set -euo pipefail

SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")
RELEASES=(bookworm trixie)
ARCHES=(amd64 arm64)
IMAGE_SIZE=4G
HOST_PACKAGES=(debootstrap qemu-utils openssh-client e2fsprogs util-linux)
# What debootstrap gives the guest besides its minbase. dbus: without it SSH sessions print "Failed to connect
# to bus"; openssh-sftp-server: ansible's and scp's file transfers; qemu-utils, fuse3, kmod: qcow2 over nbd;
# zstd: a zstd-compressed initramfs (instead of gzip), quicker to unpack under TCG.
GUEST_PACKAGES=(systemd-sysv udev kmod dbus python3 openssh-server openssh-sftp-server qemu-utils fuse3
  initramfs-tools zstd iproute2 procps netbase util-linux e2fsprogs)
# Installed with apt in the chroot afterwards, with the kernel (their maintainer scripts need more than
# debootstrap's second stage gives: polkitd, for one, fails there). qemu-system-common: qemu-storage-daemon,
# for image layers through a FUSE export; libvirt-*, busybox-static: a libvirt LXC container on a tree.
APT_PACKAGES=(qemu-system-common libvirt-daemon-system libvirt-daemon-driver-lxc libvirt-clients busybox-static)

log() { printf '%s build-image: %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

force=false
SUITE=bookworm
ARCH=amd64
while [ $# -gt 0 ]; do
  case "$1" in
    --force) force=true ;;
    --arch) [ $# -gt 1 ] || die "--arch needs a value (${ARCHES[*]})"
            ARCH=$2; shift ;;
    --arch=*) ARCH=${1#--arch=} ;;
    -h|--help) sed -n '2,/^set -euo/p' "$SCRIPT" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option: $1 (try --help)" ;;
    *) [[ " ${RELEASES[*]} " == *" $1 "* ]] || die "unknown release: $1 (known: ${RELEASES[*]})"
       SUITE=$1 ;;
  esac
  shift
done
[[ " ${ARCHES[*]} " == *" $ARCH "* ]] || die "unknown architecture: $ARCH (known: ${ARCHES[*]})"
GUEST_KERNEL=linux-image-cloud-$ARCH
# GUEST_CPU: the CPU qemu emulates, qemu-user in a foreign build and qemu-system at each boot (the image's cpu file,
# which tests/helpers/vm.py reads).
case "$ARCH" in
  amd64) HOST_PACKAGES+=(qemu-system-x86); QEMU_USER_ARCH=x86_64; GUEST_CPU=max ;;
  # The arm64 guest only runs the smoke test: no libvirt (its install alone takes minutes under qemu-user). Its CPU
  # signs return addresses with the implementation-defined algorithm instead of QARMA5, which is slow to emulate:
  # Debian 13's kernel and programs use pointer authentication, and a boot to SSH took 130-260 s with QARMA5,
  # 68-91 s without.
  arm64) HOST_PACKAGES+=(qemu-system-arm); QEMU_USER_ARCH=aarch64; GUEST_CPU=max,pauth-impdef=on
         APT_PACKAGES=() ;;
esac
FOREIGN=false
if [ "$ARCH" != "$(dpkg --print-architecture)" ]; then
  FOREIGN=true
  HOST_PACKAGES+=(qemu-user-static)
  # Read by qemu-user: the chroot's programs (in_chroot passes it on) and debootstrap's second stage.
  export QEMU_CPU=$GUEST_CPU
fi
# amd64's images stay where they always were (tests/helpers/vm.py image_dir finds them by the same rule).
IMAGE_NAME=$SUITE
[ "$ARCH" = amd64 ] || IMAGE_NAME=$SUITE-$ARCH
CACHE=${OVERLAYFS_VM_CACHE:-/var/cache/containerhost-overlayfs-vm}/$IMAGE_NAME
IMAGE_DIR=$CACHE/image

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, chroot, apt-get)"

install_host_packages() {
  local pkg missing=()
  for pkg in "${HOST_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$pkg")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  log "installing host packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # The two releases' builds may both get here: apt-get takes its locks without waiting, so they take turns
  exec 9>/run/lock/containerhost-overlayfs-vm-apt.lock
  flock 9
  apt-get update -qq
  local apt_log
  apt_log=$(mktemp)
  if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$apt_log" 2>&1; then
    tail -n 30 "$apt_log" >&2
    rm -f "$apt_log"
    die "apt-get install ${missing[*]} failed (log above)"
  fi
  rm -f "$apt_log"
  exec 9>&-
}

# The first URI of an enabled `deb` source for this machine's own release in its apt sources (deb822
# *.sources files first, then the one-line format). The same mirror serves the other release.
apt_mirror() {
  local f uri suite
  suite=$(sed -n "s/^VERSION_CODENAME=//p" /etc/os-release)
  [ -n "$suite" ] || return 1
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    uri=$(awk -v suite="$suite" '
      BEGIN { RS = ""; FS = "\n" }
      {
        delete v
        for (i = 1; i <= NF; i++) {
          line = $i
          if (line ~ /^[ \t]*#/ || line !~ /:/) continue
          key = tolower(substr(line, 1, index(line, ":") - 1))
          val = substr(line, index(line, ":") + 1)
          gsub(/^[ \t]+|[ \t]+$/, "", val)
          v[key] = val
        }
        if (tolower(v["enabled"]) == "no") next
        if ((" " v["types"] " ") !~ / deb /) next
        if ((" " v["suites"] " ") !~ (" " suite " ")) next
        split(v["uris"], u, /[ \t]+/)
        if (u[1] != "") { print u[1]; exit }
      }' "$f")
    if [ -n "$uri" ]; then printf '%s\n' "$uri"; return 0; fi
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    uri=$(awk -v suite="$suite" '
      $1 == "deb" {
        i = 2
        if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
        if ($(i + 1) == suite) { print $i; exit }
      }' "$f")
    if [ -n "$uri" ]; then printf '%s\n' "$uri"; return 0; fi
  done
  return 1
}

# Runs a command in a private mount namespace: whatever it mounts (debootstrap mounts /proc and /sys in
# the target; the chroot steps mount /proc) is gone when it ends, even when it is killed, so the
# temporary tree can always be removed safely.
in_private_ns() { unshare --mount --propagation private "$@"; }

# chroot into the rootfs with /proc and /dev/pts mounted (in a private namespace) and a clean environment.
in_chroot() {
  local rootfs=$1; shift
  # shellcheck disable=SC2016  # $1 and $@ are the inner shell's
  in_private_ns sh -c 'mount -t proc proc "$1/proc" && mount -t devpts devpts "$1/dev/pts" && shift && exec chroot "$@"' \
    sh "$rootfs" "$rootfs" \
    /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
    ${QEMU_CPU:+"QEMU_CPU=$QEMU_CPU"} "$@"
}

# debootstrap; for another architecture, its first stage (unpacking) on the host and its second (configuring) in
# the chroot, through qemu-user.
bootstrap() {
  local rootfs=$1 mirror=$2 include
  include=$(IFS=,; echo "${GUEST_PACKAGES[*]}")
  if ! $FOREIGN; then
    in_private_ns debootstrap --variant=minbase --include="$include" "$SUITE" "$rootfs" "$mirror"
    return
  fi
  in_private_ns debootstrap --variant=minbase --include="$include" --foreign --arch="$ARCH" "$SUITE" "$rootfs" "$mirror"
  in_private_ns chroot "$rootfs" /debootstrap/debootstrap --second-stage
}

# binfmt_misc is mounted only in private mount namespaces, but its entries are the host's, and live as long as some
# mount of it does (kernel 6.18). The build registers an entry of its own (named with its pid) that runs the foreign
# programs through qemu-user, in a mount held by a process that dies with the build, even a killed one; the entry is
# removed too when the build ends (the host may have binfmt_misc mounted as well), and one a killed build left there
# by the next build.
BINFMT_PREFIX=containerhost-overlayfs-vm-qemu-$QEMU_USER_ARCH.
BINFMT_ENTRY=
BINFMT_HOLDER=
in_binfmt_misc() {
  # shellcheck disable=SC2016  # $@ is the inner shell's
  in_private_ns sh -c 'mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc && cd /proc/sys/fs/binfmt_misc && "$@"' sh "$@"
}

# shellcheck disable=SC2016  # $1 is the inner shell's
register_qemu_user() {
  local conf=/usr/lib/binfmt.d/qemu-$QEMU_USER_ARCH.conf line entry
  [ -r "$conf" ] || die "$conf is missing (qemu-user-static)"
  for entry in $(in_binfmt_misc sh -c 'ls -d "$1"* 2>/dev/null || true' sh "$BINFMT_PREFIX"); do
    kill -0 "${entry##*.}" 2>/dev/null || in_binfmt_misc sh -c 'echo -1 >"$1"' sh "$entry"
  done
  BINFMT_ENTRY=$BINFMT_PREFIX$$
  # Debian's entry, renamed; with F (fix binary) the kernel opens qemu now, so it runs inside the chroot too.
  line=$(sed -n "s/^:[^:]*:/:$BINFMT_ENTRY:/p" "$conf")
  [[ "${line##*:}" == *F* ]] || line+=F
  setpriv --pdeathsig KILL -- unshare --mount --propagation private sh -c \
    'mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc && printf "%s" "$1" >/proc/sys/fs/binfmt_misc/register &&
     exec sleep infinity' sh "$line" &
  BINFMT_HOLDER=$!
  for _ in $(seq 100); do
    in_binfmt_misc test -e "$BINFMT_ENTRY" && return 0
    kill -0 "$BINFMT_HOLDER" 2>/dev/null || break
    sleep 0.1
  done
  die "could not register $BINFMT_ENTRY with binfmt_misc"
}

# shellcheck disable=SC2016  # $1 is the inner shell's
unregister_qemu_user() {
  [ -n "$BINFMT_HOLDER" ] || return 0
  in_binfmt_misc sh -c '[ ! -e "$1" ] || echo -1 >"$1"' sh "$BINFMT_ENTRY"
  kill "$BINFMT_HOLDER" 2>/dev/null || true
  wait "$BINFMT_HOLDER" 2>/dev/null || true
  BINFMT_HOLDER=
}

configure_guest() {
  local rootfs=$1 mirror=$2 key=$3

  # No daemons started from the chroot while packages are installed.
  printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
  chmod 0755 "$rootfs/usr/sbin/policy-rc.d"

  local packages=("$GUEST_KERNEL" "${APT_PACKAGES[@]}")
  log "installing ${packages[*]} in the guest ($GUEST_KERNEL builds the initramfs)"
  printf 'deb %s %s main\n' "$mirror" "$SUITE" >"$rootfs/etc/apt/sources.list"
  if ! { in_chroot "$rootfs" apt-get update -qq && \
         in_chroot "$rootfs" apt-get install -y -qq --no-install-recommends "${packages[@]}"; } \
       >"$rootfs/../kernel-install.log" 2>&1; then
    tail -n 30 "$rootfs/../kernel-install.log" >&2
    die "installing ${packages[*]} in the guest failed (log above)"
  fi
  in_chroot "$rootfs" apt-get clean
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs/usr/sbin/policy-rc.d"

  echo testvm >"$rootfs/etc/hostname"
  cat >"$rootfs/etc/hosts" <<'EOF'
127.0.0.1	localhost
127.0.1.1	testvm
::1		localhost ip6-localhost ip6-loopback
EOF
  # The kernel mounts / read-write (root=/dev/vda rw); no fsck pass: every run starts from a clean image.
  printf '/dev/vda\t/\text4\trw,relatime\t0\t0\n' >"$rootfs/etc/fstab"

  # qemu's user network: DHCP on eth0 (net.ifnames=0), DNS at 10.0.2.3.
  mkdir -p "$rootfs/etc/systemd/network"
  cat >"$rootfs/etc/systemd/network/20-eth0.network" <<'EOF'
[Match]
Name=eth0

[Network]
DHCP=ipv4
EOF
  echo 'nameserver 10.0.2.3' >"$rootfs/etc/resolv.conf"
  in_chroot "$rootfs" systemctl enable --quiet systemd-networkd.service
  # Nothing that wakes up by itself during a test run; libvirt-guests (suspending domains at shutdown) makes every
  # reboot slower and no test needs it.
  in_chroot "$rootfs" systemctl mask --quiet apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
    e2scrub_reap.service fstrim.timer libvirt-guests.service
  # libvirt stays installed but does not start at boot (every boot is slower with it under TCG); the LXC test
  # enables it. Its sockets stay, so virsh still starts it on demand.
  if [ -e "$rootfs/usr/sbin/libvirtd" ]; then
    in_chroot "$rootfs" systemctl disable --quiet libvirtd.service virtlogd.service
  fi

  # root logs in with the generated key only.
  install -d -m 0700 "$rootfs/root/.ssh"
  install -m 0600 "$key.pub" "$rootfs/root/.ssh/authorized_keys"
  cat >"$rootfs/etc/ssh/sshd_config.d/testvm.conf" <<'EOF'
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
EOF
}

build() {
  local tmp=$1 mirror rootfs kernel initrd

  mirror=${OVERLAYFS_VM_MIRROR:-}
  if [ -z "$mirror" ]; then
    mirror=$(apt_mirror) || die "no 'deb' source for this machine's release in /etc/apt/sources.list{,.d/*}; set OVERLAYFS_VM_MIRROR"
  fi
  log "building the $SUITE image in $tmp (mirror $mirror)"
  rootfs=$tmp/rootfs

  log "generating the SSH key"
  ssh-keygen -q -t ed25519 -N '' -C "root@testvm ($(date -u +%F))" -f "$tmp/id_ed25519"

  if $FOREIGN; then
    log "registering qemu-$QEMU_USER_ARCH for the build's $ARCH programs (binfmt_misc, until the build ends)"
    register_qemu_user
  fi
  log "debootstrap --variant=minbase $SUITE (about a minute$($FOREIGN && echo '; far longer under qemu-user'))"
  if ! bootstrap "$rootfs" "$mirror" >"$tmp/debootstrap.log" 2>&1; then
    tail -n 30 "$tmp/debootstrap.log" >&2
    [ -f "$rootfs/debootstrap/debootstrap.log" ] && tail -n 30 "$rootfs/debootstrap/debootstrap.log" >&2
    die "debootstrap failed (log above)"
  fi

  configure_guest "$rootfs" "$mirror" "$tmp/id_ed25519"
  unregister_qemu_user

  kernel=$(find "$rootfs/boot" -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n 1)
  initrd=$(find "$rootfs/boot" -maxdepth 1 -name 'initrd.img-*' | sort -V | tail -n 1)
  if [ -z "$kernel" ] || [ -z "$initrd" ]; then die "no kernel or initramfs in $rootfs/boot"; fi
  [ -n "$(find "$rootfs/lib/modules" -name 'nbd.ko*' -print -quit)" ] || die "the guest kernel has no nbd module"
  install -m 0644 "$kernel" "$tmp/vmlinuz"
  install -m 0644 "$initrd" "$tmp/initrd.img"
  basename "$kernel" | sed 's/^vmlinuz-//' >"$tmp/kernel-version"
  echo "$GUEST_CPU" >"$tmp/cpu"

  log "mkfs.ext4 -d rootfs into a sparse $IMAGE_SIZE raw image"
  truncate -s "$IMAGE_SIZE" "$tmp/base.img"
  mkfs.ext4 -q -F -L testvm-root -d "$rootfs" "$tmp/base.img"
  rm -rf --one-file-system "$rootfs" "$tmp/debootstrap.log" "$tmp/kernel-install.log"

  echo "$RECIPE_HASH" >"$tmp/stamp"
}

install_host_packages

RECIPE_HASH=$(sha256sum "$SCRIPT" | cut -d' ' -f1)
mkdir -p "$CACHE"
# One build at a time; a second caller waits and then finds the image built.
exec 9>"$CACHE/.lock"
flock 9

# Leftovers of interrupted builds (their mounts lived in private namespaces and are gone).
rm -rf --one-file-system "$CACHE"/.build.* "$CACHE"/.old.*

if ! $force && [ -f "$IMAGE_DIR/base.img" ] && [ "$(cat "$IMAGE_DIR/stamp" 2>/dev/null)" = "$RECIPE_HASH" ]; then
  log "cached image is current: $IMAGE_DIR"
  exit 0
fi

start=$SECONDS
tmp=$(mktemp -d "$CACHE/.build.XXXXXX")
chmod 0755 "$tmp"
trap 'unregister_qemu_user; rm -rf --one-file-system "$tmp"' EXIT
trap 'exit 130' INT TERM HUP
build "$tmp"

# Into place: image/ only ever holds a complete build.
old=
if [ -e "$IMAGE_DIR" ]; then
  old=$(mktemp -u "$CACHE/.old.XXXXXX")
  mv -T "$IMAGE_DIR" "$old"
fi
mv -T "$tmp" "$IMAGE_DIR"
trap - EXIT
[ -z "$old" ] || rm -rf --one-file-system "$old"

log "image ready in $((SECONDS - start)) s: $IMAGE_DIR ($(du -h "$IMAGE_DIR/base.img" | cut -f1) used of $IMAGE_SIZE)"
