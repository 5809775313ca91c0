#!/usr/bin/env bash
# deploy/image/build.sh: build the flashable arm64 gateway image.
#
#   bash deploy/image/build.sh            (as root; after deploy/release.sh)
#
# Writes dist/image/tributary-gateway-arm64.img: a raw disk image with an MBR
# partition table,
#   1. TRIBBOOT  FAT32, 256 MiB: Raspberry Pi firmware, kernel, initrd and
#      device trees (Debian's raspi-firmware and linux-image-arm64), mounted
#      at /boot/firmware; the provisioning bundle goes in its tributary/
#      folder (see deploy/README.md),
#   2. TRIBROOT  ext4: Debian (SUITE, arm64, from Debian's own packages) with
#      systemd-networkd (DHCP on every wired interface), systemd-resolved,
#      systemd-timesyncd, OpenSSH (keys from the bundle; no passwords) and the
#      tributary-edge .deb from dist/deb installed and enabled,
# for Raspberry Pi 3, 4, 400 and CM4 (the boards Debian's raspi-firmware
# boots in 64-bit mode). The root file system grows to fill the card on the
# first boot.
#
# How: debootstrap --foreign --arch=arm64, then the second stage and every
# package script run in a chroot through qemu-aarch64-static (binfmt_misc);
# mkfs.ext4 -d and mtools fill the partitions without mounting anything.
# Needs root and the network to Debian's mirror. Installs what it needs with
# apt-get (debootstrap, qemu-user-static, binfmt-support, dosfstools, mtools,
# fdisk, e2fsprogs). Takes a long time the first time (the base system is
# configured under emulation: 47 minutes on 2 cores at load 2-7); the
# bootstrapped system and the one with the kernel are cached in $CACHE, keyed
# by suite, mirror and package lists, so later builds only redo the gateway
# layer and the image.
#
# Environment (all optional):
#   DEB      the tributary-edge arm64 .deb (default: newest in dist/deb)
#   OUT      the image file (default: dist/image/tributary-gateway-arm64.img)
#   SUITE    Debian release (default: bookworm)
#   MIRROR   Debian mirror (default: http://deb.debian.org/debian)
#   CACHE    base system cache directory (default: /var/cache/tributary-image;
#            CACHE= disables it)
#   WORK     scratch directory (default: a new one under /var/tmp, removed)
#   XZ=1     also write OUT.xz
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
here=$repo/deploy/image
t_all=$(date +%s)
say() { printf 'image: %s\n' "$*"; }
die() { printf 'image: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot, file ownership)"
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
OUT=${OUT:-dist/image/tributary-gateway-arm64.img}
CACHE=${CACHE-/var/cache/tributary-image}
mkdir -p "$(dirname "$OUT")"
OUT=$(realpath "$OUT")
BOOT_MB=256
OFFSET_MB=4

# --- tools -------------------------------------------------------------------
need=()
for t in debootstrap:debootstrap qemu-aarch64-static:qemu-user-static update-binfmts:binfmt-support \
	mkfs.vfat:dosfstools mcopy:mtools sfdisk:fdisk mkfs.ext4:e2fsprogs xz:xz-utils; do
	command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
	say "installing ${need[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Run arm64 programs through qemu: binfmt_misc with the F (fix binary) flag,
# so the chroot needs no copy of qemu.
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
	mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || die "cannot mount binfmt_misc"
fi
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null || die "qemu-aarch64 binfmt handler not enabled (update-binfmts --enable qemu-aarch64)"

WORK=${WORK:-$(mktemp -d /var/tmp/tributary-image.XXXXXX)}
rootfs=$WORK/rootfs
mounted=()
# mounts_under DIR: mount points at or below DIR, deepest first.
mounts_under() { awk -v d="$1" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/mounts | sort -r; }
cleanup() {
	for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -R -l "${mounted[i]}" 2>/dev/null || true; done
	# debootstrap's second stage mounts proc and sys itself.
	for m in $(mounts_under "$WORK"); do umount -l "$m" 2>/dev/null || true; done
	# Never rm -rf through a bind mount of the host's /dev.
	if [ -n "$(mounts_under "$WORK")" ]; then
		echo "image: $WORK still has mounts; not removing it" >&2
	elif [ -z "${KEEP_WORK:-}" ]; then
		rm -rf "$WORK"
	fi
}
trap cleanup EXIT
in_root() { chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"; }
mount_vfs() {
	mount -t proc proc "$rootfs/proc" && mounted+=("$rootfs/proc")
	mount -t sysfs sysfs "$rootfs/sys" && mounted+=("$rootfs/sys")
	# rbind brings /dev/pts along; rslave keeps unmounts here from
	# propagating to the host's /dev.
	mount --rbind /dev "$rootfs/dev" && mount --make-rslave "$rootfs/dev" && mounted+=("$rootfs/dev")
}
umount_vfs() {
	for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -R -l "${mounted[i]}" || true; done
	mounted=()
}

# --- 1. base system (cached) -------------------------------------------------
base_pkgs="systemd,systemd-sysv,systemd-timesyncd,systemd-resolved,udev,dbus,kmod,iproute2,iputils-ping,\
openssh-server,ca-certificates,procps,adduser,init-system-helpers,dosfstools,e2fsprogs,fdisk,apt"
kernel_pkgs="linux-image-arm64 raspi-firmware firmware-brcm80211"
raspi_default="ROOTPART=LABEL=TRIBROOT
CONSOLES=\"ttyS1,115200 tty0\"
KERNEL_ARGS=\"fsck.repair=yes rootwait\""
# Two cache levels, so a failure after the slow second stage does not
# repeat it: the bootstrapped system, and that with the kernel installed.
key1=$(printf '%s\n' "$SUITE" "$MIRROR" "$base_pkgs" "v2" | sha256sum | cut -c1-16)
key=$(printf '%s\n' "$key1" "$kernel_pkgs" "$raspi_default" | sha256sum | cut -c1-16)
cached1=${CACHE:+$CACHE/bootstrap-$SUITE-arm64-$key1.tar.gz}
cached=${CACHE:+$CACHE/base-$SUITE-arm64-$key.tar.gz}
save_cache() { # save_cache FILE
	[ -n "$1" ] || return 0
	mkdir -p "$CACHE"
	tar -czpf "$1.tmp" --numeric-owner -C "$rootfs" . && mv "$1.tmp" "$1"
	say "cached in $1"
}
# The chroot resolves names with the host's resolver while apt runs; the
# image keeps systemd-resolved's stub link.
host_resolv() {
	resolv_link=$(readlink "$rootfs/etc/resolv.conf" || true)
	cp --remove-destination /etc/resolv.conf "$rootfs/etc/resolv.conf"
}
image_resolv() {
	if [ -n "${resolv_link:-}" ]; then ln -sfn "$resolv_link" "$rootfs/etc/resolv.conf"; fi
}
t0=$(date +%s)
mkdir -p "$rootfs"
if [ -n "$cached" ] && [ -f "$cached" ]; then
	say "base system from cache $cached"
	tar -xzpf "$cached" --numeric-owner -C "$rootfs"
else
	if [ -n "$cached1" ] && [ -f "$cached1" ]; then
		say "bootstrapped system from cache $cached1"
		tar -xzpf "$cached1" --numeric-owner -C "$rootfs"
	else
		say "debootstrap $SUITE arm64 (first stage) from $MIRROR"
		debootstrap --arch=arm64 --foreign --variant=minbase --components=main,non-free-firmware \
			--include="$base_pkgs" "$SUITE" "$rootfs" "$MIRROR" >"$WORK/debootstrap1.log" 2>&1 ||
			{ tail -20 "$WORK/debootstrap1.log"; die "debootstrap first stage failed"; }
		say "debootstrap second stage (under qemu-aarch64; slow)"
		chroot "$rootfs" /debootstrap/debootstrap --second-stage >"$WORK/debootstrap2.log" 2>&1 ||
			{ tail -20 "$WORK/debootstrap2.log"; die "debootstrap second stage failed"; }
		for m in $(mounts_under "$rootfs"); do umount -l "$m"; done
		save_cache "$cached1"
	fi
	cat >"$rootfs/etc/apt/sources.list" <<-EOF
	deb $MIRROR $SUITE main non-free-firmware
	deb $MIRROR $SUITE-updates main non-free-firmware
	deb http://deb.debian.org/debian-security $SUITE-security main non-free-firmware
	EOF
	# Where raspi-firmware points the kernel at the root file system.
	printf '%s\n' "$raspi_default" >"$rootfs/etc/default/raspi-firmware"
	mkdir -p "$rootfs/boot/firmware"
	mount_vfs
	host_resolv
	say "installing $kernel_pkgs (under qemu-aarch64; slow)"
	in_root apt-get update -qq >"$WORK/apt.log" 2>&1 || { tail -20 "$WORK/apt.log"; die "apt-get update in the image failed"; }
	! grep -q '^[WE]:' "$WORK/apt.log" || { tail -20 "$WORK/apt.log"; die "apt-get update in the image failed"; }
	# raspi-firmware's kernel hook refuses to run unless /boot/firmware is
	# a mount point ("missing /boot/firmware, did you forget to mount
	# it?"), and this kernel may have no vfat: a tmpfs stands in while the
	# packages install, and its files are copied into the tree after.
	mount -t tmpfs -o size=512m,mode=0755 tmpfs "$rootfs/boot/firmware"
	# /etc/default/raspi-firmware (written above) is also a conffile of
	# raspi-firmware: without --force-confold dpkg stops at its prompt.
	if ! in_root apt-get install -y -qq --no-install-recommends \
		-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
		$kernel_pkgs >>"$WORK/apt.log" 2>&1; then
		grep -n -i -B3 -A3 'raspi' "$WORK/apt.log" | tail -40 >&2 || true
		tail -20 "$WORK/apt.log"
		umount "$rootfs/boot/firmware" || true
		die "kernel installation failed"
	fi
	fw=$(mktemp -d "$WORK/firmware.XXXXXX")
	cp -a "$rootfs/boot/firmware/." "$fw/"
	umount "$rootfs/boot/firmware"
	cp -a "$fw/." "$rootfs/boot/firmware/"
	rm -rf "$fw"
	in_root apt-get clean
	image_resolv
	umount_vfs
	save_cache "$cached"
fi
t_base=$(( $(date +%s) - t0 ))
[ -f "$rootfs/boot/firmware/config.txt" ] || die "raspi-firmware wrote no /boot/firmware/config.txt"
ls "$rootfs"/boot/firmware/vmlinuz-* >/dev/null 2>&1 || die "no kernel in /boot/firmware"

# --- 2. the gateway ----------------------------------------------------------
t0=$(date +%s)
DEB=${DEB:-$(ls -t "$repo"/dist/deb/tributary-edge_*_arm64.deb 2>/dev/null | head -1 || true)}
[ -n "$DEB" ] && [ -f "$DEB" ] || die "no tributary-edge arm64 .deb (run deploy/release.sh first, or set DEB); the base system is cached, so run again after"
DEB=$(realpath "$DEB")
echo tributary-gw >"$rootfs/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\ttributary-gw\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$rootfs/etc/hosts"
cat >"$rootfs/etc/fstab" <<-EOF
# <file system>  <mount point>   <type> <options>                 <dump> <pass>
LABEL=TRIBROOT   /               ext4   defaults,noatime          0      1
LABEL=TRIBBOOT   /boot/firmware  vfat   defaults,noatime,umask=0077 0    2
EOF
mkdir -p "$rootfs/etc/systemd/network"
cat >"$rootfs/etc/systemd/network/20-wired.network" <<-EOF
[Match]
Name=en* eth*

[Network]
DHCP=yes
EOF
install -m 0755 "$here/files/tributary-image-firstboot" "$rootfs/usr/lib/tributary-image-firstboot"
install -m 0644 "$here/files/tributary-image-firstboot.service" "$rootfs/etc/systemd/system/tributary-image-firstboot.service"
mount_vfs
in_root systemctl enable systemd-networkd systemd-resolved systemd-timesyncd tributary-image-firstboot.service >"$WORK/enable.log" 2>&1 ||
	{ cat "$WORK/enable.log"; die "systemctl enable failed in the image"; }
in_root passwd -l root >/dev/null
# Every card gets its own SSH host keys and machine id on its first boot.
rm -f "$rootfs"/etc/ssh/ssh_host_*
: >"$rootfs/etc/machine-id"
rm -f "$rootfs/var/lib/dbus/machine-id"

say "installing $(basename "$DEB")"
cp "$DEB" "$rootfs/tmp/tributary-edge.deb"
in_root dpkg -i /tmp/tributary-edge.deb >"$WORK/dpkg.log" 2>&1 || { cat "$WORK/dpkg.log"; die "dpkg -i failed"; }
rm -f "$rootfs/tmp/tributary-edge.deb"
[ -L "$rootfs/etc/systemd/system/multi-user.target.wants/tributary-edge.service" ] || die "tributary-edge.service is not enabled in the image"
version=$(in_root /usr/bin/tributary-edge -version) || die "the image's tributary-edge does not run under qemu"
say "installed: $version, $(in_root dpkg-query -W -f '${Package} ${Version}' tributary-edge)"
in_root apt-get clean
umount_vfs
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/tmp/* "$rootfs"/var/tmp/* "$rootfs"/var/log/*.log
mkdir -p "$rootfs/boot/firmware/tributary"
cat >"$rootfs/boot/firmware/tributary/README.txt" <<-EOF
Tributary gateway provisioning bundle. Put these files in this folder:

  cloud-address    one line: host:port of the cloud's QUIC endpoint
  ca.crt           \`tributary-cloud gateway add <id> -out DIR\` makes these three
  gateway.crt
  gateway.key
  edge.yaml        optional: a whole configuration for /etc/tributary/edge.yaml
  authorized_keys  optional: SSH public keys for root
  hostname         optional: the gateway's host name

On boot they are installed in /etc/tributary and removed from this
partition; APPLIED.txt then says when. See deploy/README.md in the
Tributary repository.
EOF
t_gw=$(( $(date +%s) - t0 ))

# --- 3. the disk image -------------------------------------------------------
t0=$(date +%s)
used_mb=$(du -sm --exclude=./boot/firmware "$rootfs" | cut -f1)
ROOT_MB=$(( used_mb * 5 / 4 + 256 ))
say "root file system: ${used_mb} MiB used, partition ${ROOT_MB} MiB (grows to the card on first boot)"
boot_img=$WORK/boot.img root_img=$WORK/root.img
rm -f "$boot_img" "$root_img"
truncate -s "${BOOT_MB}M" "$boot_img"
mkfs.vfat -F 32 -n TRIBBOOT "$boot_img" >/dev/null
MTOOLS_SKIP_CHECK=1 mcopy -s -p -i "$boot_img" "$rootfs"/boot/firmware/* ::/
rm -rf "$rootfs"/boot/firmware/*
truncate -s "${ROOT_MB}M" "$root_img"
mkfs.ext4 -q -F -L TRIBROOT -E root_owner=0:0 -d "$rootfs" "$root_img"
e2fsck -fn "$root_img" >/dev/null || die "e2fsck found errors in the root file system"

rm -f "$OUT.tmp"
truncate -s "$(( OFFSET_MB + BOOT_MB + ROOT_MB ))M" "$OUT.tmp"
sfdisk -q "$OUT.tmp" <<-EOF
label: dos
start=${OFFSET_MB}MiB, size=${BOOT_MB}MiB, type=c, bootable
start=$(( OFFSET_MB + BOOT_MB ))MiB, type=83
EOF
dd if="$boot_img" of="$OUT.tmp" bs=1M seek="$OFFSET_MB" conv=notrunc,sparse status=none
dd if="$root_img" of="$OUT.tmp" bs=1M seek="$(( OFFSET_MB + BOOT_MB ))" conv=notrunc,sparse status=none
mv "$OUT.tmp" "$OUT"
if [ "${XZ:-}" = 1 ]; then
	xz -T0 -6 -k -f "$OUT"
fi
t_img=$(( $(date +%s) - t0 ))

sfdisk -l "$OUT" | sed 's/^/  /'
say "wrote $OUT: $(du -h --apparent-size "$OUT" | cut -f1) ($(du -h "$OUT" | cut -f1) allocated)${XZ:+, $(du -h "$OUT.xz" 2>/dev/null | cut -f1) as .xz}"
say "times: base system ${t_base}s, gateway ${t_gw}s, image ${t_img}s, total $(( $(date +%s) - t_all ))s"
say "write it to a card with: sudo dd if=$OUT of=/dev/sdX bs=4M conv=fsync status=progress"
