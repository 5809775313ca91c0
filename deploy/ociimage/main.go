// Command ociimage builds a multi-platform OCI image of one Tributary binary
// without a container engine: it writes an OCI image layout (oci-layout,
// index.json, blobs/sha256) and, with -archive, the same layout as a tar.
// `skopeo copy --all oci:DIR:NAME:TAG docker://REGISTRY/NAME:TAG` pushes it,
// `podman load -i ARCHIVE` loads it as localhost/NAME:TAG (the platform of the
// host).
//
// The image has two layers. The first, shared by every platform, holds
// /etc/passwd and /etc/group with root and the unprivileged user tributary
// (uid and gid 65532, which the image runs as), /etc/nsswitch.conf, the CA
// certificates given with -ca-bundle, /tmp and the state directory (owned by
// tributary). The second holds the platform's binary at /usr/bin/NAME and the
// files given with -file. Every timestamp is SOURCE_DATE_EPOCH (or -epoch), so
// equal inputs give equal digests.
//
// Usage (deploy/release.sh runs it):
//
//	ociimage -name tributary-cloud -tag 1.2.3 \
//	  -binary linux/amd64=dist/bin/tributary-cloud-linux-amd64 \
//	  -binary linux/arm64=dist/bin/tributary-cloud-linux-arm64 \
//	  -file /etc/tributary/cloud.yaml=deploy/package/cloud.yaml \
//	  -state-dir /var/lib/tributary/cloud -port 7443/udp -port 8080/tcp \
//	  -cmd -config -cmd /etc/tributary/cloud.yaml \
//	  -out dist/oci/tributary-cloud -archive dist/oci/tributary-cloud.tar
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// UID and GID of the user the images run as (distroless' "nonroot").
const (
	imageUID = 65532
	imageGID = 65532
)

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(s string) error { *m = append(*m, s); return nil }

var tagRe = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ociimage", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var binaries, files, ports, cmd, labels multi
	name := fs.String("name", "", "image and binary `name`, e.g. tributary-edge (required)")
	tag := fs.String("tag", "", "image `tag`; index.json names the image NAME:TAG (required)")
	fs.Var(&binaries, "binary", "`os/arch[/variant]=path` of the binary for one platform (repeat for each)")
	fs.Var(&files, "file", "`/image/path=host-path`: a 0644 file in every platform's layer (repeatable)")
	stateDir := fs.String("state-dir", "", "`directory` owned by the image user, declared a volume and the working directory")
	fs.Var(&ports, "port", "exposed `port/proto`, e.g. 7443/udp (repeatable)")
	fs.Var(&cmd, "cmd", "one `argument` of the default command after the entrypoint (repeatable)")
	fs.Var(&labels, "label", "`key=value` image label (repeatable)")
	caBundle := fs.String("ca-bundle", "/etc/ssl/certs/ca-certificates.crt", "host `file` of CA certificates installed at /etc/ssl/certs/ca-certificates.crt (\"\" = none)")
	epoch := fs.Int64("epoch", -1, "timestamp of every file and of the config, in Unix `seconds` (default: $SOURCE_DATE_EPOCH, else 0)")
	out := fs.String("out", "", "output layout `directory` (replaced; required)")
	archive := fs.String("archive", "", "also write the layout as this tar `file`")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "ociimage: "+format+"\n", a...)
		return 2
	}
	if *name == "" || *out == "" || len(binaries) == 0 {
		return fail("-name, -out and at least one -binary are required")
	}
	if !tagRe.MatchString(*tag) {
		return fail("-tag %q is not a valid tag ([A-Za-z0-9_][A-Za-z0-9_.-]{0,127})", *tag)
	}
	created := time.Unix(0, 0)
	switch {
	case *epoch >= 0:
		created = time.Unix(*epoch, 0)
	case os.Getenv("SOURCE_DATE_EPOCH") != "":
		s, err := strconv.ParseInt(os.Getenv("SOURCE_DATE_EPOCH"), 10, 64)
		if err != nil || s < 0 {
			return fail("SOURCE_DATE_EPOCH=%q is not a Unix time", os.Getenv("SOURCE_DATE_EPOCH"))
		}
		created = time.Unix(s, 0)
	}

	spec := Spec{Name: *name, Tag: *tag, Created: created}
	spec.Base = baseEntries(*stateDir)
	if *caBundle != "" {
		data, err := os.ReadFile(*caBundle)
		if err != nil {
			return fail("-ca-bundle: %v", err)
		}
		spec.Base = append(spec.Base, Entry{Path: "/etc/ssl/certs/ca-certificates.crt", Mode: 0o644, Data: data})
	}
	var extra []Entry
	for _, f := range files {
		dst, src, ok := strings.Cut(f, "=")
		if !ok || !strings.HasPrefix(dst, "/") {
			return fail("-file %q: want /image/path=host-path", f)
		}
		data, err := os.ReadFile(src)
		if err != nil {
			return fail("-file: %v", err)
		}
		extra = append(extra, Entry{Path: dst, Mode: 0o644, Data: data})
	}
	for _, b := range binaries {
		plat, src, ok := strings.Cut(b, "=")
		p, err := parsePlatform(plat)
		if !ok || err != nil {
			return fail("-binary %q: want os/arch[/variant]=path (%v)", b, err)
		}
		data, err := os.ReadFile(src)
		if err != nil {
			return fail("-binary: %v", err)
		}
		entries := append([]Entry{{Path: "/usr/bin/" + *name, Mode: 0o755, Data: data}}, extra...)
		spec.Platforms = append(spec.Platforms, PlatformImage{Platform: p, Entries: entries})
	}

	cfg := RuntimeConfig{
		User:       fmt.Sprintf("%d:%d", imageUID, imageGID),
		Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin"},
		Entrypoint: []string{"/usr/bin/" + *name},
		Cmd:        cmd,
		StopSignal: "SIGTERM",
		Labels: map[string]string{
			"org.opencontainers.image.title":   *name,
			"org.opencontainers.image.version": *tag,
			"org.opencontainers.image.source":  "https://github.com/tributary-io/tributary",
		},
	}
	for _, l := range labels {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return fail("-label %q: want key=value", l)
		}
		cfg.Labels[k] = v
	}
	if len(ports) > 0 {
		cfg.ExposedPorts = map[string]struct{}{}
		for _, p := range ports {
			num, proto, ok := strings.Cut(p, "/")
			if n, err := strconv.Atoi(num); !ok || err != nil || n < 1 || n > 65535 || (proto != "tcp" && proto != "udp") {
				return fail("-port %q: want port/tcp or port/udp", p)
			}
			cfg.ExposedPorts[p] = struct{}{}
		}
	}
	if *stateDir != "" {
		cfg.Volumes = map[string]struct{}{*stateDir: {}}
		cfg.WorkingDir = *stateDir
	}
	spec.Config = cfg

	l, err := WriteLayout(*out, spec)
	if err != nil {
		fmt.Fprintf(stderr, "ociimage: %v\n", err)
		return 1
	}
	if *archive != "" {
		if err := WriteArchive(*out, *archive, created); err != nil {
			fmt.Fprintf(stderr, "ociimage: archive: %v\n", err)
			return 1
		}
	}
	fmt.Fprintf(stdout, "%s:%s %s (%d platforms)\n", *out, spec.RefName(), l.Index.Digest, len(spec.Platforms))
	return 0
}

// parsePlatform reads "linux/arm64" or "linux/arm/v7".
func parsePlatform(s string) (Platform, error) {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return Platform{}, fmt.Errorf("platform %q is not os/arch[/variant]", s)
	}
	p := Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	return p, nil
}

// baseEntries is the shared layer: users, name service switch, /tmp and the
// state directory.
func baseEntries(stateDir string) []Entry {
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\ntributary:x:%d:%d:Tributary:/var/lib/tributary:/sbin/nologin\n", imageUID, imageGID)
	group := fmt.Sprintf("root:x:0:\ntributary:x:%d:\n", imageGID)
	e := []Entry{
		{Path: "/etc/passwd", Mode: 0o644, Data: []byte(passwd)},
		{Path: "/etc/group", Mode: 0o644, Data: []byte(group)},
		// Go's resolver reads it: files (/etc/hosts) before DNS.
		{Path: "/etc/nsswitch.conf", Mode: 0o644, Data: []byte("hosts: files dns\n")},
		{Path: "/etc/tributary", Mode: os.ModeDir | 0o755},
		{Path: "/root", Mode: os.ModeDir | 0o700},
		{Path: "/tmp", Mode: os.ModeDir | os.ModeSticky | 0o777},
		{Path: "/var/lib/tributary", Mode: os.ModeDir | 0o755},
	}
	if stateDir != "" && stateDir != "/var/lib/tributary" {
		e = append(e, Entry{Path: stateDir, Mode: os.ModeDir | 0o750, UID: imageUID, GID: imageGID})
	}
	return e
}
