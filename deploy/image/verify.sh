#!/usr/bin/env bash
# deploy/image/verify.sh: check a built gateway image end to end, without
# hardware, under qemu-aarch64-static.
#
#   sudo bash deploy/image/verify.sh      (after release.sh and image/build.sh)
#
# On a sparse copy of the image (the image itself is not changed):
#  1. loop-mounts its root partition, and its boot partition at
#     /boot/firmware as the image's fstab does;
#  2. starts tributary-cloud (dist/bin, this host's architecture) on
#     loopback, mints a gateway certificate with `tributary-cloud gateway add`,
#     and copies the bundle (plus cloud-address) onto the boot partition with
#     mtools, as an operator does with a card reader;
#  3. runs the image's tributary-edge.service the way systemd would: its
#     conditions, ExecStartPre (provisioning, as root), then ExecStart as the
#     unit's User=, in a chroot, through qemu-aarch64 (binfmt_misc), with
#     -mqtt-listen and -metrics-listen added so nothing clashes with the host;
#  4. publishes with mosquitto_pub -q 1 and waits for the message in the
#     cloud's log (GET /v1/events);
#  5. upgrade: stops the cloud, publishes messages the gateway can only
#     buffer, stops the edge, installs a rebuilt higher version of the package
#     whose default edge.yaml differs (dpkg -i --force-confold, as unattended
#     upgrades do), checks the provisioned edge.yaml was kept, restarts both
#     and waits until every buffered message is in the log exactly once;
#  6. dpkg -r keeps the outbox and configuration, dpkg -P removes them.
# Prints one PASS line per check and exits non-zero at the first failure.
#
# Environment: IMAGE (default dist/image/tributary-gateway-arm64.img), CLOUD
# (default dist/bin/tributary-cloud-linux-<host arch>), DEB (the edge .deb the
# image was built with; default: newest ARCH one in dist/deb), ARCH (the
# image's Debian architecture, default arm64; another one skips the Raspberry
# Pi firmware checks and runs natively or through its binfmt handler),
# KEEP_WORK=1.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
t_all=$(date +%s)
say() { printf 'verify: %s\n' "$*"; }
passes=0
pass() { passes=$((passes + 1)); printf 'verify: PASS %s\n' "$*"; }
fail() { printf 'verify: FAIL %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "run as root (loop mounts, chroot)"
ARCH=${ARCH:-arm64}
IMAGE=${IMAGE:-dist/image/tributary-gateway-$ARCH.img}
arch=$(uname -m)
case "$arch" in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; esac
CLOUD=${CLOUD:-dist/bin/tributary-cloud-linux-$arch}
DEB=${DEB:-$(ls -t dist/deb/tributary-edge_*_"$ARCH".deb 2>/dev/null | head -1 || true)}
case "$ARCH" in arm64) machine=aarch64 ;; amd64) machine=x86_64 ;; armhf) machine=armv7l ;; *) machine=$ARCH ;; esac
[ -f "$IMAGE" ] || fail "no image $IMAGE (run deploy/image/build.sh)"
[ -x "$CLOUD" ] || fail "no cloud binary $CLOUD (run deploy/release.sh)"
[ -n "$DEB" ] && [ -f "$DEB" ] || fail "no tributary-edge arm64 .deb in dist/deb"
IMAGE=$(realpath "$IMAGE") CLOUD=$(realpath "$CLOUD") DEB=$(realpath "$DEB")

need=()
for t in qemu-aarch64-static:qemu-user-static update-binfmts:binfmt-support mosquitto_pub:mosquitto-clients \
	curl:curl mcopy:mtools sfdisk:fdisk dpkg-deb:dpkg; do
	command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
	say "installing ${need[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ "$ARCH" = arm64 ] && [ "$arch" != arm64 ]; then
	[ -e /proc/sys/fs/binfmt_misc/status ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
	[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
	grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null || fail "qemu-aarch64 binfmt handler not enabled"
fi

WORK=$(mktemp -d /var/tmp/tributary-verify.XXXXXX)
root=$WORK/root
pids=()
mounts_under() { awk -v d="$1" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/mounts | sort -r; }
cleanup() {
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	for m in $(mounts_under "$WORK"); do umount -l "$m" 2>/dev/null || true; done
	if [ -n "$(mounts_under "$WORK")" ]; then
		echo "verify: $WORK still has mounts; not removing it" >&2
	elif [ -z "${KEEP_WORK:-}" ]; then
		rm -rf "$WORK"
	else
		echo "verify: kept $WORK" >&2
	fi
}
trap cleanup EXIT

# wait_for WHAT SECONDS COMMAND...: poll COMMAND every 0.2 s until it
# succeeds, or fail after SECONDS.
wait_for() {
	local what=$1 secs=$2
	shift 2
	local deadline=$(($(date +%s) + secs))
	until "$@"; do
		[ "$(date +%s)" -lt "$deadline" ] || fail "timed out after ${secs}s waiting for $what"
		sleep 0.2
	done
}
alive() { kill -0 "$1" 2>/dev/null; }

# --- 1. the image's partitions -------------------------------------------------
say "copying $IMAGE"
cp --sparse=always "$IMAGE" "$WORK/gw.img"
# sfdisk -d lines: "<dev>1 : start=        8192, size=      524288, type=c, bootable"
part_field() { sfdisk -d "$WORK/gw.img" | awk -v n="$1" -v f="$2" '$1 ~ n"$" { for (i = 1; i <= NF; i++) if ($i ~ "^"f"=") { v = $(i+1); if ($i != f"=") v = substr($i, length(f) + 2); gsub(",", "", v); print v } }'; }
boot_start=$(part_field 1 start) boot_size=$(part_field 1 size)
root_start=$(part_field 2 start) root_size=$(part_field 2 size)
[ -n "$boot_start" ] && [ -n "$root_start" ] || fail "image has no two partitions: $(sfdisk -d "$WORK/gw.img")"
type1=$(sfdisk --part-type "$WORK/gw.img" 1 | tr -d ' ') type2=$(sfdisk --part-type "$WORK/gw.img" 2 | tr -d ' ')
[ "$type1" = c ] && [ "$type2" = 83 ] || fail "partition types $type1/$type2, want c (FAT32 LBA) and 83 (Linux)"
pass "partition table: FAT32 boot at sector $boot_start ($((boot_size / 2048)) MiB), Linux root at sector $root_start ($((root_size / 2048)) MiB)"
boot_at=$WORK/gw.img@@$((boot_start * 512))
export MTOOLS_SKIP_CHECK=1
label=$(mlabel -s -i "$boot_at" ::)
grep -q 'TRIBBOOT' <<<"$label" || fail "boot partition label: $label, want TRIBBOOT"
if [ "$ARCH" = arm64 ]; then
	for f in config.txt cmdline.txt; do
		mtype -i "$boot_at" "::/$f" >/dev/null 2>&1 || fail "boot partition has no $f (raspi-firmware)"
	done
	listing=$(mdir -b -i "$boot_at" ::/)
	grep -Eq 'vmlinuz-|kernel8\.img' <<<"$listing" || fail "boot partition has no kernel: $listing"
	grep -q 'root=LABEL=TRIBROOT' <(mtype -i "$boot_at" ::/cmdline.txt) || fail "cmdline.txt does not boot LABEL=TRIBROOT: $(mtype -i "$boot_at" ::/cmdline.txt)"
	pass "boot partition: TRIBBOOT with firmware config, kernel, cmdline root=LABEL=TRIBROOT"
else
	say "SKIPPED: Raspberry Pi firmware checks ($ARCH image)"
fi

# --- 2. a cloud on the host, and a provisioning bundle --------------------------
cloud_data=$WORK/cloud
: >"$WORK/cloud.log"
start_cloud() { # start_cloud SYNC_ADDR
	"$CLOUD" -data-dir "$cloud_data" -sync-listen "$1" -api-listen 127.0.0.1:0 >>"$WORK/cloud.log" 2>&1 &
	cloud_pid=$!
	pids+=("$cloud_pid")
	local n
	n=$(grep -c 'tributary-cloud started' "$WORK/cloud.log" || true)
	wait_for "tributary-cloud to start" 60 eval '[ "$(grep -c "tributary-cloud started" "$WORK/cloud.log")" -gt "$n" ] || { alive $cloud_pid || fail "cloud exited: $(tail -5 $WORK/cloud.log)"; false; }'
	local line
	line=$(grep 'tributary-cloud started' "$WORK/cloud.log" | tail -1)
	sync_addr=$(sed -n 's/.* sync=\([^ ]*\).*/\1/p' <<<"$line")
	api_addr=$(sed -n 's/.* api=\([^ ]*\).*/\1/p' <<<"$line")
	[ -n "$sync_addr" ] && [ -n "$api_addr" ] || fail "cannot read the cloud's addresses from: $line"
}
stop() { # stop PID: SIGTERM, wait, want exit status 0
	kill -TERM "$1"
	local rc=0
	wait "$1" || rc=$?
	[ "$rc" = 0 ] || fail "process $1 exited with $rc after SIGTERM"
}
start_cloud 127.0.0.1:0
token=$(cat "$cloud_data/api-token")
say "cloud running: sync $sync_addr (UDP), API $api_addr"
bundle=$WORK/bundle
"$CLOUD" gateway add gw-verify -data-dir "$cloud_data" -out "$bundle" >/dev/null
echo "$sync_addr" >"$bundle/cloud-address"
mmd -i "$boot_at" ::/tributary 2>/dev/null || true
mcopy -o -i "$boot_at" "$bundle"/cloud-address "$bundle"/ca.crt "$bundle"/gateway.crt "$bundle"/gateway.key ::/tributary/
pass "bundle for gw-verify minted by tributary-cloud gateway add and copied to the boot partition"

mkdir -p "$root"
mount -o loop,offset=$((root_start * 512)),sizelimit=$((root_size * 512)) "$WORK/gw.img" "$root"
boot_mounted=1
if ! mount -o loop,offset=$((boot_start * 512)),sizelimit=$((boot_size * 512)),umask=0077 -t vfat "$WORK/gw.img" "$root/boot/firmware" 2>/dev/null; then
	# This kernel has no vfat (some sandboxes): give the chroot a copy of the
	# boot partition's files instead, read with mtools.
	boot_mounted=
	say "no vfat in this kernel: /boot/firmware in the chroot is a copy of the boot partition's files (mtools)"
	mcopy -s -p -n -i "$boot_at" ::/tributary "$root/boot/firmware/"
	chmod -R go-rwx "$root/boot/firmware"
fi
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --rbind /dev "$root/dev" && mount --make-rslave "$root/dev"
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"; }
[ "$(in_root uname -m)" = "$machine" ] || fail "the chroot does not run $ARCH programs"
grep -q '^LABEL=TRIBBOOT[[:space:]]*/boot/firmware[[:space:]]*vfat' "$root/etc/fstab" || fail "fstab does not mount TRIBBOOT at /boot/firmware"
[ -L "$root/etc/systemd/system/multi-user.target.wants/tributary-edge.service" ] || fail "tributary-edge.service is not enabled in the image"
installed=$(in_root dpkg-query -W -f '${Version}' tributary-edge)
pass "root file system: $ARCH Debian, tributary-edge $installed installed and enabled; $(in_root tributary-edge -version)$([ "$ARCH" = "$arch" ] || echo " under qemu")"

# --- 3. the service, as systemd runs it ---------------------------------------------
unit=$root/lib/systemd/system/tributary-edge.service
unit_value() { sed -n "s/^$1=//p" "$unit"; }
pre=$(unit_value ExecStartPre) exec_start=$(unit_value ExecStart) user=$(unit_value User)
[ -n "$pre" ] && [ -n "$exec_start" ] && [ -n "$user" ] || fail "unit lacks ExecStartPre, ExecStart or User"
met=
while read -r cond; do
	p=${cond#|}
	[ -e "$root$p" ] && met=$p
done < <(unit_value ConditionPathExists)
[ -n "$met" ] || fail "no ConditionPathExists of the unit holds: systemd would skip the service"
[[ $pre == +* ]] || fail "ExecStartPre=$pre does not run as root (+)"
read -r -a pre_argv <<<"${pre#+}"
in_root "${pre_argv[@]}" 2>"$WORK/provision.log" || fail "provisioning failed: $(cat "$WORK/provision.log")"
addr=$(sed -n 's/^  address: "\(.*\)".*/\1/p' "$root/etc/tributary/edge.yaml")
[ "$addr" = "$sync_addr" ] || fail "edge.yaml cloud.address is \"$addr\", want $sync_addr"
# Owners by number: the host's names for the image's ids may differ.
image_gid=$(awk -F: '$1 == "tributary" { print $3 }' "$root/etc/group")
[ -n "$image_gid" ] || fail "no group tributary in the image"
key_owner() { stat -c '%a %u:%g' "$root/etc/tributary/gateway.key"; }
[ "$(key_owner)" = "640 0:$image_gid" ] || fail "gateway.key is $(key_owner), want 640 0:$image_gid (root:tributary)"
cmp -s "$bundle/gateway.crt" "$root/etc/tributary/gateway.crt" || fail "gateway.crt differs from the bundle's"
[ ! -e "$root/boot/firmware/tributary/gateway.key" ] && [ -e "$root/boot/firmware/tributary/APPLIED.txt" ] ||
	fail "the bundle's key is still on the boot partition, or no APPLIED.txt"
if [ -n "$boot_mounted" ]; then
	umount "$root/boot/firmware"
	listing=$(mdir -b -i "$boot_at" ::/tributary)
	! grep -q 'gateway.key' <<<"$listing" && grep -q 'APPLIED.txt' <<<"$listing" || fail "the FAT partition still holds the key: $listing"
fi
pass "ExecStartPre ($met held): bundle installed in /etc/tributary (key 640 root:tributary), cloud.address $addr, key removed from the boot partition"

uid=$(awk -F: -v u="$user" '$1 == u { print $3 ":" $4 }' "$root/etc/passwd")
[ -n "$uid" ] || fail "no user $user in the image"
read -r -a exec_argv <<<"$exec_start"
edge_log=$WORK/edge.log
start_edge() {
	: >"$edge_log"
	chroot --userspec="$uid" --groups="${uid#*:}" "$root" /usr/bin/env -i PATH=/usr/bin:/bin \
		"${exec_argv[@]}" -mqtt-listen 127.0.0.1:0 -metrics-listen 127.0.0.1:0 >"$edge_log" 2>&1 &
	edge_pid=$!
	pids+=("$edge_pid")
	wait_for "tributary-edge to start" 120 eval 'grep -q "tributary-edge started" "$edge_log" || { alive $edge_pid || fail "edge exited: $(tail -5 "$edge_log")"; false; }'
	mqtt_addr=$(sed -n 's/.*tributary-edge started.* mqtt=\([^ ]*\).*/\1/p' "$edge_log" | tail -1)
	mqtt_port=${mqtt_addr##*:}
	[ -n "$mqtt_port" ] || fail "cannot read the MQTT address from: $(grep started "$edge_log")"
}
start_edge
pass "ExecStart as $user ($uid): $(grep 'tributary-edge started' "$edge_log" | grep -o 'version=[^ ]*' | head -1), MQTT on 127.0.0.1:$mqtt_port, data in $(sed -n 's/.*data_dir=\([^ ]*\).*/\1/p' "$edge_log" | head -1)"

# --- 4. a device message through the gateway to the cloud's log ----------------------
run=$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
events() { curl -sf -H "Authorization: Bearer $token" "http://$api_addr/v1/events?from=0&limit=10000"; }
count_topic() { events | grep -o "\"topic\":\"$1\"" | wc -l; }
mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -q 1 -i "verify-$run" -t "verify/$run/first" -m "{\"run\":\"$run\",\"n\":0}" ||
	fail "mosquitto_pub was not acknowledged"
wait_for "the message in the cloud's log" 120 eval '[ "$(count_topic "verify/$run/first")" -ge 1 ]'
page=$(events)
grep -q "\"gateway\":\"gw-verify\"" <<<"$page" || fail "the log's record does not name gateway gw-verify"
[ "$(count_topic "verify/$run/first")" = 1 ] || fail "the message is in the log $(count_topic "verify/$run/first") times"
pass "device → MQTT (QoS 1) → image's tributary-edge → QUIC → tributary-cloud: in the log once, from gw-verify"

# --- 5. upgrade with buffered messages ----------------------------------------------------
stop "$cloud_pid"
n=20
for i in $(seq 1 $n); do
	mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -q 1 -i "verify-$run" -t "verify/$run/buffered/$i" -m "{\"n\":$i}" ||
		fail "publish $i while the cloud is down was not acknowledged"
done
stop "$edge_pid"
[ -s "$root/var/lib/tributary/edge/outbox.db" ] || fail "no outbox.db in /var/lib/tributary/edge"
pass "$n messages acknowledged with the cloud down; edge stopped cleanly (SIGTERM)"

old_version=$(dpkg-deb -f "$DEB" Version)
new_version="$old_version+verify1"
up=$WORK/upgrade
dpkg-deb -R "$DEB" "$up"
chmod 0755 "$up"
sed -i "s/^Version: .*/Version: $new_version/" "$up/DEBIAN/control"
echo "# A changed default, as a new release might ship." >>"$up/etc/tributary/edge.yaml"
(cd "$up" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) >"$up/DEBIAN/md5sums"
dpkg-deb --root-owner-group -b "$up" "$root/tmp/upgrade.deb" >/dev/null
before=$(sha256sum <"$root/etc/tributary/edge.yaml")
in_root dpkg -i --force-confold /tmp/upgrade.deb >"$WORK/upgrade.log" 2>&1 || fail "upgrade failed: $(cat "$WORK/upgrade.log")"
rm -f "$root/tmp/upgrade.deb"
[ "$(in_root dpkg-query -W -f '${Version}' tributary-edge)" = "$new_version" ] || fail "version after upgrade is not $new_version"
[ "$(sha256sum <"$root/etc/tributary/edge.yaml")" = "$before" ] || fail "the upgrade changed the provisioned edge.yaml"
grep -q 'A changed default' "$root/etc/tributary/edge.yaml.dpkg-dist" || fail "no edge.yaml.dpkg-dist with the new default"
[ "$(key_owner)" = "640 0:$image_gid" ] || fail "the upgrade changed gateway.key's mode or owner: $(key_owner)"
pass "upgrade $old_version → $new_version: provisioned edge.yaml kept (new default in edge.yaml.dpkg-dist), key kept"

start_cloud "$sync_addr"
start_edge
wait_for "all $n buffered messages in the log" 180 eval '[ "$(events | grep -o "\"topic\":\"verify/$run/buffered/[0-9]*\"" | sort -u | wc -l)" -ge $n ]'
total=$(events | grep -o "\"topic\":\"verify/$run/[^\"]*\"" | wc -l)
[ "$total" = $((n + 1)) ] || fail "the log holds $total records of this run, want $((n + 1)) (each once)"
pass "after the upgrade all $n buffered messages reached the cloud, each exactly once ($total records in all)"
stop "$edge_pid"
stop "$cloud_pid"

# --- 6. remove keeps data, purge deletes it --------------------------------------------
in_root dpkg -r tributary-edge >"$WORK/remove.log" 2>&1 || fail "dpkg -r failed: $(cat "$WORK/remove.log")"
[ -s "$root/var/lib/tributary/edge/outbox.db" ] && [ -f "$root/etc/tributary/edge.yaml" ] && [ ! -e "$root/usr/bin/tributary-edge" ] ||
	fail "after dpkg -r: outbox or config gone, or binary still there"
in_root dpkg -P tributary-edge >"$WORK/purge.log" 2>&1 || fail "dpkg -P failed: $(cat "$WORK/purge.log")"
[ ! -e "$root/var/lib/tributary/edge" ] && [ ! -e "$root/etc/tributary/edge.yaml" ] && [ ! -e "$root/etc/tributary/gateway.key" ] ||
	fail "after dpkg -P: data or configuration left"
pass "dpkg -r kept the outbox and configuration; dpkg -P removed them"

say "$passes passed, 0 failed ($(( $(date +%s) - t_all ))s)"
