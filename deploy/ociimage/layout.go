package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Media types and annotation keys of the OCI image specification (v1.1).
const (
	mediaTypeIndex    = "application/vnd.oci.image.index.v1+json"
	mediaTypeManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaTypeConfig   = "application/vnd.oci.image.config.v1+json"
	mediaTypeLayer    = "application/vnd.oci.image.layer.v1.tar+gzip"
	annotationRefName = "org.opencontainers.image.ref.name"
)

// Descriptor points at a blob by digest (OCI image-spec descriptor.md).
type Descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Platform    *Platform         `json:"platform,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// Platform is the os/architecture/variant a manifest runs on.
type Platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	Variant      string `json:"variant,omitempty"`
}

// Index is an image index: index.json, or a multi-platform index blob.
type Index struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     string            `json:"mediaType"`
	Manifests     []Descriptor      `json:"manifests"`
	Annotations   map[string]string `json:"annotations,omitempty"`
}

// Manifest is one platform's image manifest.
type Manifest struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     string            `json:"mediaType"`
	Config        Descriptor        `json:"config"`
	Layers        []Descriptor      `json:"layers"`
	Annotations   map[string]string `json:"annotations,omitempty"`
}

// ImageConfig is the image configuration blob (OCI image-spec config.md).
type ImageConfig struct {
	Created      string          `json:"created"`
	Architecture string          `json:"architecture"`
	OS           string          `json:"os"`
	Variant      string          `json:"variant,omitempty"`
	Config       RuntimeConfig   `json:"config"`
	RootFS       RootFS          `json:"rootfs"`
	History      []HistoryRecord `json:"history"`
}

// RuntimeConfig is what a runtime uses to start a container from the image.
type RuntimeConfig struct {
	User         string              `json:"User,omitempty"`
	ExposedPorts map[string]struct{} `json:"ExposedPorts,omitempty"`
	Env          []string            `json:"Env,omitempty"`
	Entrypoint   []string            `json:"Entrypoint,omitempty"`
	Cmd          []string            `json:"Cmd,omitempty"`
	Volumes      map[string]struct{} `json:"Volumes,omitempty"`
	WorkingDir   string              `json:"WorkingDir,omitempty"`
	Labels       map[string]string   `json:"Labels,omitempty"`
	StopSignal   string              `json:"StopSignal,omitempty"`
}

// RootFS lists the uncompressed layer digests, bottom first.
type RootFS struct {
	Type    string   `json:"type"`
	DiffIDs []string `json:"diff_ids"`
}

// HistoryRecord describes how a layer was made.
type HistoryRecord struct {
	Created   string `json:"created"`
	CreatedBy string `json:"created_by"`
	Comment   string `json:"comment,omitempty"`
}

// Entry is one file system object of a layer. Paths are absolute inside the
// image ("/usr/bin/x"); parent directories are added as root-owned 0755 when
// not listed.
type Entry struct {
	Path string
	Mode os.FileMode // permission bits; ModeDir for a directory
	UID  int
	GID  int
	Data []byte // file content; nil for a directory
}

// Spec describes a multi-platform image.
type Spec struct {
	// Name is the image's title label, e.g. "tributary-cloud".
	Name string
	// Tag is the image's tag. index.json names the image "Name:Tag" (the
	// org.opencontainers.image.ref.name annotation): skopeo addresses it as
	// oci:DIR:Name:Tag, and podman load names it localhost/Name:Tag.
	// Required.
	Tag string
	// Created stamps the config and every tar header, so the same inputs give
	// the same digests.
	Created time.Time
	// Base holds the entries shared by every platform (users, CA
	// certificates, directories): one layer, one blob for all platforms.
	Base []Entry
	// Platforms are built in order; each adds its own layer on top of Base.
	Platforms []PlatformImage
	// Config is the runtime configuration of every platform.
	Config RuntimeConfig
}

// RefName is the name index.json gives the image: "Name:Tag", or the tag
// alone without a name.
func (s Spec) RefName() string {
	if s.Name == "" {
		return s.Tag
	}
	return s.Name + ":" + s.Tag
}

// PlatformImage is one platform's own layer.
type PlatformImage struct {
	Platform Platform
	Entries  []Entry
}

// Layout is a written OCI image layout.
type Layout struct {
	Dir   string
	Index Descriptor // the multi-platform index that index.json names
}

// WriteLayout writes spec as an OCI image layout in dir (created; an
// existing layout there is replaced): oci-layout, index.json naming one image
// index by spec.Tag, and every blob under blobs/sha256. Blobs are written to
// temporary names and renamed, index.json last, so a reader never sees a
// descriptor whose blob is missing.
func WriteLayout(dir string, spec Spec) (Layout, error) {
	if spec.Tag == "" || len(spec.Platforms) == 0 {
		return Layout{}, errors.New("oci: a tag and at least one platform are required")
	}
	if err := os.RemoveAll(dir); err != nil {
		return Layout{}, err
	}
	blobs := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return Layout{}, err
	}
	w := &blobWriter{dir: blobs}
	created := spec.Created.UTC().Format(time.RFC3339)

	base, err := buildLayer(spec.Base, spec.Created)
	if err != nil {
		return Layout{}, fmt.Errorf("oci: base layer: %w", err)
	}
	baseDesc, err := w.put(mediaTypeLayer, base.gz)
	if err != nil {
		return Layout{}, err
	}
	var manifests []Descriptor
	for _, p := range spec.Platforms {
		own, err := buildLayer(p.Entries, spec.Created)
		if err != nil {
			return Layout{}, fmt.Errorf("oci: %s layer: %w", platformString(p.Platform), err)
		}
		ownDesc, err := w.put(mediaTypeLayer, own.gz)
		if err != nil {
			return Layout{}, err
		}
		cfg := ImageConfig{
			Created:      created,
			Architecture: p.Platform.Architecture,
			OS:           p.Platform.OS,
			Variant:      p.Platform.Variant,
			Config:       spec.Config,
			RootFS:       RootFS{Type: "layers", DiffIDs: []string{base.diffID, own.diffID}},
			History: []HistoryRecord{
				{Created: created, CreatedBy: "tributary ociimage: base (users, CA certificates, directories)"},
				{Created: created, CreatedBy: "tributary ociimage: " + spec.Name + " for " + platformString(p.Platform)},
			},
		}
		cfgDesc, err := w.putJSON(mediaTypeConfig, cfg)
		if err != nil {
			return Layout{}, err
		}
		m := Manifest{SchemaVersion: 2, MediaType: mediaTypeManifest, Config: cfgDesc, Layers: []Descriptor{baseDesc, ownDesc}}
		mDesc, err := w.putJSON(mediaTypeManifest, m)
		if err != nil {
			return Layout{}, err
		}
		plat := p.Platform
		mDesc.Platform = &plat
		manifests = append(manifests, mDesc)
	}
	idxDesc, err := w.putJSON(mediaTypeIndex, Index{SchemaVersion: 2, MediaType: mediaTypeIndex, Manifests: manifests})
	if err != nil {
		return Layout{}, err
	}
	idxDesc.Annotations = map[string]string{annotationRefName: spec.RefName()}
	if err := writeFileAtomic(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return Layout{}, err
	}
	top, err := json.Marshal(Index{SchemaVersion: 2, MediaType: mediaTypeIndex, Manifests: []Descriptor{idxDesc}})
	if err != nil {
		return Layout{}, err
	}
	if err := writeFileAtomic(filepath.Join(dir, "index.json"), top); err != nil {
		return Layout{}, err
	}
	idxDesc.Annotations = nil
	return Layout{Dir: dir, Index: idxDesc}, nil
}

func platformString(p Platform) string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

type blobWriter struct{ dir string }

func (w *blobWriter) put(mediaType string, data []byte) (Descriptor, error) {
	sum := sha256.Sum256(data)
	hexSum := hex.EncodeToString(sum[:])
	if err := writeFileAtomic(filepath.Join(w.dir, hexSum), data); err != nil {
		return Descriptor{}, err
	}
	return Descriptor{MediaType: mediaType, Digest: "sha256:" + hexSum, Size: int64(len(data))}, nil
}

func (w *blobWriter) putJSON(mediaType string, v any) (Descriptor, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return Descriptor{}, err
	}
	return w.put(mediaType, data)
}

func writeFileAtomic(name string, data []byte) error {
	tmp := name + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, name)
}

type layer struct {
	gz     []byte
	diffID string // sha256 of the uncompressed tar
}

// buildLayer makes a gzip'd tar of entries, sorted by path, parents first,
// every header stamped with mtime so equal inputs give equal bytes.
func buildLayer(entries []Entry, mtime time.Time) (layer, error) {
	all := map[string]Entry{}
	for _, e := range entries {
		p := path.Clean("/" + e.Path)
		if p == "/" {
			return layer{}, fmt.Errorf("entry %q: not a file or directory below /", e.Path)
		}
		if _, dup := all[p]; dup {
			return layer{}, fmt.Errorf("entry %q listed twice", p)
		}
		e.Path = p
		all[p] = e
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			if _, ok := all[d]; !ok {
				all[d] = Entry{Path: d, Mode: os.ModeDir | 0o755}
			}
		}
	}
	for p, e := range all {
		if e.Mode.IsDir() {
			continue
		}
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			if !all[d].Mode.IsDir() {
				return layer{}, fmt.Errorf("entry %q: parent %q is a file", p, d)
			}
		}
	}
	paths := make([]string, 0, len(all))
	for p := range all {
		paths = append(paths, p)
	}
	sort.Strings(paths)

	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	for _, p := range paths {
		e := all[p]
		h := &tar.Header{
			Name:    strings.TrimPrefix(p, "/"),
			Mode:    int64(e.Mode.Perm()),
			Uid:     e.UID,
			Gid:     e.GID,
			ModTime: mtime.UTC().Truncate(time.Second),
			Format:  tar.FormatPAX,
		}
		if e.Mode&os.ModeSticky != 0 {
			h.Mode |= 0o1000
		}
		if e.Mode.IsDir() {
			h.Typeflag = tar.TypeDir
			h.Name += "/"
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(e.Data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return layer{}, err
		}
		if !e.Mode.IsDir() {
			if _, err := tw.Write(e.Data); err != nil {
				return layer{}, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return layer{}, err
	}
	diff := sha256.Sum256(raw.Bytes())

	var gz bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	if err != nil {
		return layer{}, err
	}
	if _, err := io.Copy(zw, &raw); err != nil {
		return layer{}, err
	}
	if err := zw.Close(); err != nil {
		return layer{}, err
	}
	return layer{gz: gz.Bytes(), diffID: "sha256:" + hex.EncodeToString(diff[:])}, nil
}

// WriteArchive writes the layout in dir as a tar (an "oci-archive", what
// `podman load -i` and `skopeo copy oci-archive:` read): oci-layout,
// index.json and the blobs, in a fixed order with fixed headers.
func WriteArchive(dir, name string, mtime time.Time) error {
	var files []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			rel, err := filepath.Rel(dir, p)
			if err != nil {
				return err
			}
			files = append(files, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(files)
	tmp := name + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	tw := tar.NewWriter(f)
	dirs := map[string]bool{}
	for _, rel := range files {
		for _, d := range []string{"blobs/", "blobs/sha256/"} {
			if strings.HasPrefix(rel, d) && !dirs[d] {
				dirs[d] = true
				if err := tw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755, ModTime: mtime.UTC(), Format: tar.FormatPAX}); err != nil {
					f.Close()
					return err
				}
			}
		}
		data, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(rel)))
		if err != nil {
			f.Close()
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Name: rel, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(data)), ModTime: mtime.UTC(), Format: tar.FormatPAX}); err != nil {
			f.Close()
			return err
		}
		if _, err := tw.Write(data); err != nil {
			f.Close()
			return err
		}
	}
	if err := tw.Close(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, name)
}
