package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// readBlob returns the blob d names after checking its size and digest.
func readBlob(t *testing.T, dir string, d Descriptor) []byte {
	t.Helper()
	hexSum, ok := strings.CutPrefix(d.Digest, "sha256:")
	if !ok {
		t.Fatalf("digest %q is not sha256", d.Digest)
	}
	data, err := os.ReadFile(filepath.Join(dir, "blobs", "sha256", hexSum))
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(data)) != d.Size {
		t.Fatalf("blob %s: %d bytes, descriptor says %d", d.Digest, len(data), d.Size)
	}
	sum := sha256.Sum256(data)
	if got := hex.EncodeToString(sum[:]); got != hexSum {
		t.Fatalf("blob %s hashes to %s", hexSum, got)
	}
	return data
}

func decodeJSON(t *testing.T, data []byte, v any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%v in %s", err, data)
	}
}

type tarFile struct {
	hdr  *tar.Header
	data []byte
}

// readLayer decompresses a layer, checks its diff id and returns its entries.
func readLayer(t *testing.T, gz []byte, diffID string) map[string]tarFile {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(raw)
	if got := "sha256:" + hex.EncodeToString(sum[:]); got != diffID {
		t.Fatalf("layer diff id %s, config says %s", got, diffID)
	}
	files := map[string]tarFile{}
	tr := tar.NewReader(bytes.NewReader(raw))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimSuffix(h.Name, "/")
		if _, dup := files[name]; dup {
			t.Fatalf("layer lists %s twice", name)
		}
		// Parents come before children, as unpackers expect.
		if parent := filepath.Dir(name); parent != "." {
			if _, ok := files[parent]; !ok {
				t.Fatalf("layer lists %s before its directory %s", name, parent)
			}
		}
		files[name] = tarFile{h, data}
	}
	return files
}

type image struct {
	config ImageConfig
	files  map[string]tarFile // both layers merged, top wins
}

// verifyLayout checks an OCI layout the way a registry push or an unpacker
// would (every digest, size, media type and diff id) and returns the image of
// each platform, keyed "os/arch[/variant]".
func verifyLayout(t *testing.T, dir, tag string) (Descriptor, map[string]image) {
	t.Helper()
	layoutFile, err := os.ReadFile(filepath.Join(dir, "oci-layout"))
	if err != nil {
		t.Fatal(err)
	}
	var lv struct {
		ImageLayoutVersion string `json:"imageLayoutVersion"`
	}
	decodeJSON(t, layoutFile, &lv)
	if lv.ImageLayoutVersion != "1.0.0" {
		t.Fatalf("oci-layout: %s", layoutFile)
	}
	top, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	var idx Index
	decodeJSON(t, top, &idx)
	if idx.SchemaVersion != 2 || idx.MediaType != mediaTypeIndex || len(idx.Manifests) != 1 {
		t.Fatalf("index.json: %s", top)
	}
	d := idx.Manifests[0]
	if d.MediaType != mediaTypeIndex || d.Annotations[annotationRefName] != tag {
		t.Fatalf("index.json names %+v, want an image index tagged %q", d, tag)
	}
	var multi Index
	decodeJSON(t, readBlob(t, dir, d), &multi)
	if multi.SchemaVersion != 2 || multi.MediaType != mediaTypeIndex {
		t.Fatalf("image index: %+v", multi)
	}
	images := map[string]image{}
	for _, md := range multi.Manifests {
		if md.MediaType != mediaTypeManifest || md.Platform == nil {
			t.Fatalf("index entry %+v: want a manifest with a platform", md)
		}
		var m Manifest
		decodeJSON(t, readBlob(t, dir, md), &m)
		if m.SchemaVersion != 2 || m.MediaType != mediaTypeManifest || m.Config.MediaType != mediaTypeConfig {
			t.Fatalf("manifest %+v", m)
		}
		var cfg ImageConfig
		decodeJSON(t, readBlob(t, dir, m.Config), &cfg)
		if cfg.OS != md.Platform.OS || cfg.Architecture != md.Platform.Architecture || cfg.Variant != md.Platform.Variant {
			t.Fatalf("config platform %s/%s/%s, index says %+v", cfg.OS, cfg.Architecture, cfg.Variant, md.Platform)
		}
		if cfg.RootFS.Type != "layers" || len(cfg.RootFS.DiffIDs) != len(m.Layers) || len(cfg.History) != len(m.Layers) {
			t.Fatalf("config rootfs %+v for %d layers", cfg.RootFS, len(m.Layers))
		}
		img := image{config: cfg, files: map[string]tarFile{}}
		for i, ld := range m.Layers {
			if ld.MediaType != mediaTypeLayer {
				t.Fatalf("layer media type %q", ld.MediaType)
			}
			for name, f := range readLayer(t, readBlob(t, dir, ld), cfg.RootFS.DiffIDs[i]) {
				img.files[name] = f
			}
		}
		key := platformString(*md.Platform)
		if _, dup := images[key]; dup {
			t.Fatalf("platform %s listed twice", key)
		}
		images[key] = img
	}
	return d, images
}

// build runs the command as release.sh does, on stand-in binaries.
func build(t *testing.T, out string, extra ...string) {
	t.Helper()
	src := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(src, name)
		if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	args := []string{
		"-name", "tributary-cloud", "-tag", "1.2.3-4-gabc",
		"-binary", "linux/amd64=" + write("amd64", "binary for amd64"),
		"-binary", "linux/arm64=" + write("arm64", "binary for arm64"),
		"-binary", "linux/arm/v7=" + write("armv7", "binary for armv7"),
		"-file", "/etc/tributary/cloud.yaml=" + write("cloud.yaml", "data_dir: /var/lib/tributary/cloud\n"),
		"-ca-bundle", write("ca.pem", "-----BEGIN CERTIFICATE-----\n"),
		"-state-dir", "/var/lib/tributary/cloud",
		"-port", "7443/udp", "-port", "8080/tcp",
		"-cmd", "-config", "-cmd", "/etc/tributary/cloud.yaml",
		"-epoch", "1700000000",
		"-out", out,
	}
	var stderr bytes.Buffer
	if code := run(append(args, extra...), io.Discard, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
}

func TestLayoutIsValidAndComplete(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "layout")
	archive := filepath.Join(t.TempDir(), "image.tar")
	build(t, dir, "-archive", archive)
	_, images := verifyLayout(t, dir, "tributary-cloud:1.2.3-4-gabc")
	if len(images) != 3 {
		t.Fatalf("%d platforms, want 3", len(images))
	}
	for plat, want := range map[string]string{"linux/amd64": "binary for amd64", "linux/arm64": "binary for arm64", "linux/arm/v7": "binary for armv7"} {
		img, ok := images[plat]
		if !ok {
			t.Fatalf("no %s image", plat)
		}
		bin := img.files["usr/bin/tributary-cloud"]
		if bin.hdr == nil || string(bin.data) != want || bin.hdr.Mode != 0o755 || bin.hdr.Uid != 0 {
			t.Errorf("%s: /usr/bin/tributary-cloud = %+v %q", plat, bin.hdr, bin.data)
		}
		state := img.files["var/lib/tributary/cloud"]
		if state.hdr == nil || state.hdr.Typeflag != tar.TypeDir || state.hdr.Uid != imageUID || state.hdr.Gid != imageGID || state.hdr.Mode != 0o750 {
			t.Errorf("%s: state directory %+v", plat, state.hdr)
		}
		if tmp := img.files["tmp"]; tmp.hdr == nil || tmp.hdr.Mode != 0o1777 {
			t.Errorf("%s: /tmp %+v", plat, tmp.hdr)
		}
		if !strings.Contains(string(img.files["etc/passwd"].data), "tributary:x:65532:65532:") {
			t.Errorf("%s: /etc/passwd %q", plat, img.files["etc/passwd"].data)
		}
		for _, f := range []string{"etc/tributary/cloud.yaml", "etc/ssl/certs/ca-certificates.crt", "etc/group", "etc/nsswitch.conf"} {
			if img.files[f].hdr == nil {
				t.Errorf("%s: no %s", plat, f)
			}
		}
		c := img.config.Config
		if c.User != "65532:65532" || strings.Join(c.Entrypoint, " ") != "/usr/bin/tributary-cloud" ||
			strings.Join(c.Cmd, " ") != "-config /etc/tributary/cloud.yaml" || c.WorkingDir != "/var/lib/tributary/cloud" {
			t.Errorf("%s: runtime config %+v", plat, c)
		}
		if _, ok := c.ExposedPorts["7443/udp"]; !ok || len(c.ExposedPorts) != 2 {
			t.Errorf("%s: ports %v", plat, c.ExposedPorts)
		}
		if _, ok := c.Volumes["/var/lib/tributary/cloud"]; !ok {
			t.Errorf("%s: volumes %v", plat, c.Volumes)
		}
		if img.config.Created != "2023-11-14T22:13:20Z" {
			t.Errorf("%s: created %q", plat, img.config.Created)
		}
	}

	// The archive holds exactly the layout's files, byte for byte.
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	n := 0
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeDir {
			continue
		}
		got, _ := io.ReadAll(tr)
		want, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(h.Name)))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("archive entry %s differs from the layout (%v)", h.Name, err)
		}
		n++
	}
	blobs, _ := os.ReadDir(filepath.Join(dir, "blobs", "sha256"))
	if n != len(blobs)+2 {
		t.Fatalf("archive has %d files, layout %d blobs + 2", n, len(blobs))
	}
}

func TestLayoutIsReproducible(t *testing.T) {
	a, b := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	build(t, a)
	build(t, b)
	da, _ := verifyLayout(t, a, "tributary-cloud:1.2.3-4-gabc")
	db, _ := verifyLayout(t, b, "tributary-cloud:1.2.3-4-gabc")
	if da.Digest != db.Digest {
		t.Fatalf("same inputs, different digests: %s and %s", da.Digest, db.Digest)
	}
	c := filepath.Join(t.TempDir(), "c")
	build(t, c, "-epoch", "1700000001")
	if dc, _ := verifyLayout(t, c, "tributary-cloud:1.2.3-4-gabc"); dc.Digest == da.Digest {
		t.Fatal("a different timestamp gave the same digest")
	}
}

// TestSharedBaseLayer: every platform's first layer is the same blob.
func TestSharedBaseLayer(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "layout")
	build(t, dir)
	blobs, err := os.ReadDir(filepath.Join(dir, "blobs", "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	// 1 base layer + 3 × (own layer, config, manifest) + 1 image index.
	if len(blobs) != 11 {
		t.Fatalf("%d blobs, want 11", len(blobs))
	}
}

func TestBadArguments(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "bin")
	if err := os.WriteFile(bin, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "out")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no tag", []string{"-name", "x", "-out", out, "-binary", "linux/amd64=" + bin}, "-tag"},
		{"bad tag", []string{"-name", "x", "-tag", "1.0+dirty", "-out", out, "-binary", "linux/amd64=" + bin}, "-tag"},
		{"bad platform", []string{"-name", "x", "-tag", "t", "-out", out, "-binary", "amd64=" + bin}, "-binary"},
		{"missing binary", []string{"-name", "x", "-tag", "t", "-out", out, "-binary", "linux/amd64=" + bin + ".nope"}, "-binary"},
		{"bad port", []string{"-name", "x", "-tag", "t", "-out", out, "-binary", "linux/amd64=" + bin, "-port", "7443/sctp"}, "-port"},
		{"relative file", []string{"-name", "x", "-tag", "t", "-out", out, "-binary", "linux/amd64=" + bin, "-file", "etc/x=" + bin}, "-file"},
		{"file over binary", []string{"-name", "x", "-tag", "t", "-out", out, "-binary", "linux/amd64=" + bin, "-file", "/usr/bin/x=" + bin}, "twice"},
		{"file under file", []string{"-name", "x", "-tag", "t", "-out", out, "-binary", "linux/amd64=" + bin, "-file", "/usr/bin/x/y=" + bin}, "is a file"},
	} {
		var stderr bytes.Buffer
		if code := run(tc.args, io.Discard, &stderr); code == 0 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%s: exit %d, stderr %q; want an error about %s", tc.name, code, stderr.String(), tc.want)
		}
	}
}

// TestSkopeoReadsLayout asks skopeo, where installed, to read the layout and
// copy every platform out of it (which checks every digest again).
func TestSkopeoReadsLayout(t *testing.T) {
	skopeo, err := exec.LookPath("skopeo")
	if err != nil {
		t.Skip("skopeo not installed (apt-get install skopeo)")
	}
	dir := filepath.Join(t.TempDir(), "layout")
	archive := filepath.Join(t.TempDir(), "image.tar")
	build(t, dir, "-archive", archive)
	for _, ref := range []string{"oci:" + dir + ":tributary-cloud:1.2.3-4-gabc", "oci-archive:" + archive + ":tributary-cloud:1.2.3-4-gabc"} {
		out, err := exec.Command(skopeo, "inspect", "--override-os", "linux", "--override-arch", "arm64", ref).CombinedOutput()
		if err != nil {
			t.Fatalf("skopeo inspect %s: %v\n%s", ref, err, out)
		}
		var info struct {
			Architecture string
			Layers       []string
		}
		if err := json.Unmarshal(out, &info); err != nil || info.Architecture != "arm64" || len(info.Layers) != 2 {
			t.Fatalf("skopeo inspect %s: %s (%v)", ref, out, err)
		}
	}
	dst := t.TempDir()
	if out, err := exec.Command(skopeo, "copy", "--all", "oci:"+dir+":tributary-cloud:1.2.3-4-gabc", "dir:"+dst).CombinedOutput(); err != nil {
		t.Fatalf("skopeo copy --all: %v\n%s", err, out)
	}

	// The same copy fails once one byte of a layer changes: the digests are
	// what skopeo checks, so the check above means something.
	blobs, err := os.ReadDir(filepath.Join(dir, "blobs", "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	var biggest string
	var size int64
	for _, b := range blobs {
		if info, err := b.Info(); err == nil && info.Size() > size {
			biggest, size = b.Name(), info.Size()
		}
	}
	p := filepath.Join(dir, "blobs", "sha256", biggest)
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(skopeo, "copy", "--all", "oci:"+dir+":tributary-cloud:1.2.3-4-gabc", "dir:"+t.TempDir()).CombinedOutput(); err == nil {
		t.Fatalf("skopeo copied a layout with a corrupted blob:\n%s", out)
	}
}
