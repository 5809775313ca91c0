#!/usr/bin/env bash
# deploy/release.sh: build every release artefact into dist/.
#
#   dist/bin/tributary-edge-linux-{arm64,armv7,amd64}   static, stripped
#   dist/bin/tributary-cloud-linux-{amd64,arm64}
#   dist/deb/tributary-edge_<deb version>_{arm64,armhf,amd64}.deb
#   dist/deb/tributary-cloud_<deb version>_{amd64,arm64}.deb
#   dist/oci/tributary-{edge,cloud}/        OCI image layouts (amd64 + arm64 index)
#   dist/oci/tributary-{edge,cloud}.tar     the same as oci-archives (podman load -i)
#   dist/SHA256SUMS, dist/VERSION
#
# Environment:
#   VERSION       version stamped into the binaries (default: git describe
#                 --tags --always --dirty)
#   DEB_VERSION   Debian package version (default: derived from VERSION:
#                 v1.2.3-4-gabc -> 1.2.3+4.gabc; a bare commit (no tag) ->
#                 0.0~git<commit time>.<hash>, so later commits and any tagged
#                 release sort after it)
#   DIST          output directory (default: dist)
#   RELEASE_FROM  head (default): build the committed HEAD, exported with
#                 git archive into a temporary directory, so uncommitted edits
#                 in the checkout are not shipped; worktree: build the files
#                 as they are (the version then ends in -dirty if any differ)
#   NO_APT=1      never apt-get install missing checking tools (qemu-user-static,
#                 skopeo); checks that need them are then skipped, and say so
#
# Needs Go and dpkg-deb (Debian's dpkg). Checks after building: every binary
# is static and reports its version (arm64 and armv7 under qemu-user-static),
# every package's contents and control data, and every OCI layout with skopeo.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export PATH="/usr/local/go/bin:$PATH"

say() { printf 'release: %s\n' "$*"; }
die() { printf 'release: %s\n' "$*" >&2; exit 1; }
t_all=$(date +%s)

DIST=${DIST:-dist}
mkdir -p "$DIST"
DIST=$(cd "$DIST" && pwd)
src=$root
if [ "${RELEASE_FROM:-head}" = head ] && git rev-parse -q --verify HEAD >/dev/null 2>&1; then
	src=$(mktemp -d)
	trap 'rm -rf "$src"' EXIT
	git archive HEAD | tar -x -C "$src"
	VERSION=${VERSION:-$(git describe --tags --always 2>/dev/null)}
	say "building HEAD ($(git rev-parse --short HEAD)) from a clean export"
elif [ "${RELEASE_FROM:-head}" != worktree ] && [ "${RELEASE_FROM:-head}" != head ]; then
	die "RELEASE_FROM=$RELEASE_FROM: want head or worktree"
fi
VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
commit_time=$(git log -1 --format=%ct 2>/dev/null || date +%s)
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$commit_time}
if [ -z "${DEB_VERSION:-}" ]; then
	if [[ $VERSION =~ ^v?[0-9]+(\.[0-9]+)+(-[0-9]+-g[0-9a-f]+)?(-dirty)?$ ]]; then
		DEB_VERSION=$(sed -e 's/^v//' -e 's/-/+/' -e 's/-/./g' <<<"$VERSION")
	else
		DEB_VERSION="0.0~git$(date -u -d "@$commit_time" +%Y%m%d%H%M%S).$(tr -- '-' '.' <<<"$VERSION")"
	fi
fi
# OCI tags allow [A-Za-z0-9_.-]; '+' is not one of them.
OCI_TAG=$(tr -c 'A-Za-z0-9_.\n-' '-' <<<"$VERSION")
cd "$src"
say "version $VERSION, package version $DEB_VERSION, image tag $OCI_TAG, into $DIST"

command -v go >/dev/null || die "Go is not installed (/usr/local/go/bin/go)"
command -v dpkg-deb >/dev/null || die "dpkg-deb is not installed (Debian's dpkg package)"

# want CMD PACKAGE: make CMD available, installing PACKAGE with apt-get if
# allowed; returns 1 if it stays missing.
want() {
	command -v "$1" >/dev/null && return 0
	if [ "${NO_APT:-}" != 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		say "installing $2 (for $1)"
		{ apt-get install -y -qq "$2" || { apt-get update -qq && apt-get install -y -qq "$2"; }; } >/dev/null 2>&1 || true
	fi
	command -v "$1" >/dev/null
}

rm -rf "$DIST/bin" "$DIST/deb" "$DIST/oci" "$DIST/SHA256SUMS"
mkdir -p "$DIST/bin" "$DIST/deb" "$DIST/oci"

# --- 1. binaries -------------------------------------------------------------
t0=$(date +%s)
ldflags="-s -w -buildid= -X main.version=$VERSION"
build() { # build CMD GOARCH GOARM SUFFIX
	local out="$DIST/bin/$(basename "$1")-linux-$4"
	CGO_ENABLED=0 GOOS=linux GOARCH=$2 GOARM=$3 go build -trimpath -ldflags "$ldflags" -o "$out" "./$1"
	say "built $(basename "$out") ($(du -h "$out" | cut -f1))"
}
build edge/cmd/tributary-edge arm64 "" arm64
build edge/cmd/tributary-edge arm 7 armv7
build edge/cmd/tributary-edge amd64 "" amd64
build cloud/cmd/tributary-cloud amd64 "" amd64
build cloud/cmd/tributary-cloud arm64 "" arm64
t_bin=$(( $(date +%s) - t0 ))

# Every binary is static (no program interpreter) and stripped (no symbols).
for b in "$DIST"/bin/*; do
	# (Output captured first: grep -q closing the pipe early would fail the
	# pipeline under pipefail.)
	headers=$(LC_ALL=C readelf -lW "$b") sections=$(LC_ALL=C readelf -SW "$b")
	if grep -q 'Requesting program interpreter' <<<"$headers"; then die "$b is dynamically linked"; fi
	if grep -q ' \.symtab ' <<<"$sections"; then die "$b is not stripped"; fi
done
check_version() { # check_version NAME RUNNER...
	local bin=$1; shift
	local got
	got=$("$@" "$DIST/bin/$bin" -version 2>&1) || die "$bin -version failed: $got"
	[ "$got" = "${bin%-linux-*} $VERSION" ] || die "$bin -version said \"$got\", want \"${bin%-linux-*} $VERSION\""
	say "$bin -version: $got${*:+ (under $*)}"
}
check_version tributary-edge-linux-amd64
check_version tributary-cloud-linux-amd64
if want qemu-aarch64-static qemu-user-static; then
	check_version tributary-edge-linux-arm64 qemu-aarch64-static
	check_version tributary-cloud-linux-arm64 qemu-aarch64-static
	check_version tributary-edge-linux-armv7 qemu-arm-static
else
	say "SKIPPED: arm64/armv7 version check (no qemu-user-static)"
fi

# --- 2. Debian packages ------------------------------------------------------
t0=$(date +%s)
# deb PART ARCH BINARY: build tributary-PART for Debian architecture ARCH.
deb() {
	local part=$1 arch=$2 bin=$3 pkg=tributary-$1
	local stage
	stage=$(mktemp -d)
	# mktemp makes it 0700; the package's ./ entry must not carry that to /.
	chmod 0755 "$stage"
	install -d -m 0755 "$stage/DEBIAN" "$stage/usr/bin" "$stage/lib/systemd/system" \
		"$stage/etc/tributary" "$stage/usr/lib/sysctl.d" "$stage/usr/share/doc/$pkg/examples"
	install -m 0755 "$bin" "$stage/usr/bin/$pkg"
	install -m 0644 "deploy/systemd/$pkg.service" "$stage/lib/systemd/system/$pkg.service"
	install -m 0644 "deploy/config/$part.yaml" "$stage/usr/share/doc/$pkg/examples/$part.yaml"
	if [ "$part" = edge ]; then
		install -m 0644 deploy/config/edge.yaml "$stage/etc/tributary/edge.yaml"
		install -d -m 0755 "$stage/usr/lib/tributary"
		install -m 0755 deploy/provision/tributary-edge-provision "$stage/usr/lib/tributary/tributary-edge-provision"
	else
		install -m 0644 deploy/package/cloud.yaml "$stage/etc/tributary/cloud.yaml"
	fi
	sed "s/@PKG@/$pkg/g" deploy/package/sysctl.conf >"$stage/usr/lib/sysctl.d/60-$pkg.conf"
	chmod 0644 "$stage/usr/lib/sysctl.d/60-$pkg.conf"
	install -m 0644 deploy/README.md "$stage/usr/share/doc/$pkg/README.md"
	local desc
	if [ "$part" = edge ]; then
		desc="Tributary edge gateway: MQTT broker with a durable outbox
 An MQTT 3.1.1/5 broker for devices that commits every forwarded message
 to a SQLite outbox before acknowledging it, and store-and-forwards the
 outbox over QUIC (mutual TLS) to tributary-cloud. A provisioning bundle
 on the boot partition configures it on first start."
	else
		desc="Tributary cloud: sync server, central log and push delivery
 The QUIC endpoint Tributary gateways forward to, the central commit log
 every message is appended to, and push delivery of CloudEvents to HTTP
 sinks, with an HTTP API."
	fi
	cat >"$stage/DEBIAN/control" <<-EOF
	Package: $pkg
	Version: $DEB_VERSION
	Architecture: $arch
	Maintainer: Tributary maintainers <noreply@tributary-io.github.io>
	Installed-Size: $(du -sk --exclude=DEBIAN "$stage" | cut -f1)
	Depends: adduser, init-system-helpers (>= 1.54~)
	Section: net
	Priority: optional
	Homepage: https://github.com/tributary-io/tributary
	Description: $desc
	EOF
	echo "/etc/tributary/$part.yaml" >"$stage/DEBIAN/conffiles"
	install -m 0755 deploy/package/postinst deploy/package/prerm deploy/package/postrm "$stage/DEBIAN/"
	(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) >"$stage/DEBIAN/md5sums"
	chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/conffiles" "$stage/DEBIAN/md5sums"
	local out="$DIST/deb/${pkg}_${DEB_VERSION}_${arch}.deb"
	dpkg-deb --root-owner-group -Zxz --build "$stage" "$out" >/dev/null
	rm -rf "$stage"
	# What dpkg will see.
	[ "$(dpkg-deb -f "$out" Package Version Architecture | tr '\n' ' ')" = "Package: $pkg Version: $DEB_VERSION Architecture: $arch " ] ||
		die "$out: control fields wrong"
	local contents
	contents=$(dpkg-deb -c "$out")
	grep -q '^drwxr-xr-x root/root .* \./$' <<<"$contents" || die "$out: its ./ entry is not 0755 root/root"
	grep -q "^-rwxr-xr-x root/root .* ./usr/bin/$pkg\$" <<<"$contents" || die "$out: no root-owned executable /usr/bin/$pkg"
	[ "$(dpkg-deb -I "$out" conffiles)" = "/etc/tributary/$part.yaml" ] || die "$out: conffiles wrong"
	# systemd's own check of the unit, against the package's files (and the
	# host's targets, which the unit refers to).
	if command -v systemd-analyze >/dev/null && [ -d /lib/systemd/system ]; then
		local sa
		sa=$(mktemp -d)
		dpkg-deb -x "$out" "$sa"
		cp -a /lib/systemd/system/*.target /lib/systemd/system/*.slice "$sa/lib/systemd/system/" 2>/dev/null || true
		local complaints
		complaints=$(systemd-analyze verify --root="$sa" "$pkg.service" 2>&1) || die "systemd-analyze verify $pkg.service: $complaints"
		[ -z "$complaints" ] || die "systemd-analyze verify $pkg.service: $complaints"
		rm -rf "$sa"
	fi
	say "packaged $(basename "$out") ($(du -h "$out" | cut -f1))"
}
deb edge arm64 "$DIST/bin/tributary-edge-linux-arm64"
deb edge armhf "$DIST/bin/tributary-edge-linux-armv7"
deb edge amd64 "$DIST/bin/tributary-edge-linux-amd64"
deb cloud amd64 "$DIST/bin/tributary-cloud-linux-amd64"
deb cloud arm64 "$DIST/bin/tributary-cloud-linux-arm64"
t_deb=$(( $(date +%s) - t0 ))

# --- 3. OCI images -----------------------------------------------------------
t0=$(date +%s)
revision=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)
go build -o "$DIST/.ociimage" ./deploy/ociimage
ca_bundle=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca_bundle" ] || want update-ca-certificates ca-certificates || true
[ -f "$ca_bundle" ] || die "$ca_bundle missing (Debian's ca-certificates): the cloud image needs it for HTTPS sinks"
"$DIST/.ociimage" -name tributary-edge -tag "$OCI_TAG" \
	-binary "linux/amd64=$DIST/bin/tributary-edge-linux-amd64" \
	-binary "linux/arm64=$DIST/bin/tributary-edge-linux-arm64" \
	-binary "linux/arm/v7=$DIST/bin/tributary-edge-linux-armv7" \
	-file /etc/tributary/edge.yaml=deploy/config/edge.yaml \
	-state-dir /var/lib/tributary/edge -port 1883/tcp -port 8883/tcp \
	-cmd -config -cmd /etc/tributary/edge.yaml \
	-label "org.opencontainers.image.description=Tributary edge gateway" \
	-label "org.opencontainers.image.revision=$revision" \
	-ca-bundle "$ca_bundle" -out "$DIST/oci/tributary-edge" -archive "$DIST/oci/tributary-edge.tar"
"$DIST/.ociimage" -name tributary-cloud -tag "$OCI_TAG" \
	-binary "linux/amd64=$DIST/bin/tributary-cloud-linux-amd64" \
	-binary "linux/arm64=$DIST/bin/tributary-cloud-linux-arm64" \
	-file /etc/tributary/cloud.yaml=deploy/package/cloud.yaml \
	-state-dir /var/lib/tributary/cloud -port 7443/udp -port 8080/tcp \
	-cmd -config -cmd /etc/tributary/cloud.yaml \
	-label "org.opencontainers.image.description=Tributary cloud" \
	-label "org.opencontainers.image.revision=$revision" \
	-ca-bundle "$ca_bundle" -out "$DIST/oci/tributary-cloud" -archive "$DIST/oci/tributary-cloud.tar"
rm -f "$DIST/.ociimage"
if want skopeo skopeo; then
	for img in tributary-edge tributary-cloud; do
		for arch in amd64 arm64; do
			got=$(skopeo inspect --override-os linux --override-arch "$arch" --format '{{.Os}}/{{.Architecture}} {{len .Layers}} layers' "oci:$DIST/oci/$img:$img:$OCI_TAG")
			[ "$got" = "linux/$arch 2 layers" ] || die "skopeo inspect $img $arch: $got"
		done
		# A full copy reads every blob and checks its digest, as a push would.
		scratch=$(mktemp -d)
		skopeo copy -q --all "oci-archive:$DIST/oci/$img.tar:$img:$OCI_TAG" "dir:$scratch" || die "skopeo copy --all $img failed"
		rm -rf "$scratch"
		say "skopeo: $img:$OCI_TAG reads and copies (amd64, arm64$([ "$img" = tributary-edge ] && echo ', arm/v7'))"
	done
else
	say "SKIPPED: skopeo check of the OCI layouts (no skopeo)"
fi
t_oci=$(( $(date +%s) - t0 ))

# --- 4. checksums and summary ------------------------------------------------
echo "$VERSION" >"$DIST/VERSION"
(cd "$DIST" && find bin deb -type f | LC_ALL=C sort | xargs sha256sum && sha256sum oci/*.tar) >"$DIST/SHA256SUMS.tmp"
mv "$DIST/SHA256SUMS.tmp" "$DIST/SHA256SUMS"

say "artefacts:"
(cd "$DIST" && du -sh bin/* deb/* oci/* | sed 's/^/  /')
say "times: binaries ${t_bin}s, packages ${t_deb}s, images ${t_oci}s, total $(( $(date +%s) - t_all ))s"
