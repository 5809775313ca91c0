package commitlog

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// countingFS is OSFS counting the bytes read from each file.
type countingFS struct {
	OSFS
	mu   sync.Mutex
	read map[string]int64
}

func (c *countingFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	f, err := c.OSFS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &countingFile{File: f, fs: c, name: name}, nil
}

func (c *countingFS) bytesRead(name string) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.read[name]
}

type countingFile struct {
	File
	fs   *countingFS
	name string
}

func (f *countingFile) ReadAt(b []byte, off int64) (int, error) {
	n, err := f.File.ReadAt(b, off)
	f.fs.mu.Lock()
	f.fs.read[f.name] += int64(n)
	f.fs.mu.Unlock()
	return n, err
}

// snapshotLog writes a log of several closed segments: five topics, three
// producers, some record times out of order.
func snapshotLog(t *testing.T, dir string, opts Options) {
	t.Helper()
	c := newClock()
	opts.Now = c.Now
	l := openFile(t, dir, opts)
	for i := range 400 {
		r := Record{Topic: fmt.Sprint("topic/", i%5), Producer: fmt.Sprint("gw", i%3), ProducerSeq: uint64(i/3 + 1), Value: bytes.Repeat([]byte{byte(i)}, 30+i%90)}
		if i%17 == 0 {
			r.Time = c.Now().Add(-time.Hour)
		}
		mustAppend(t, l, r)
		c.Advance(time.Second)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

// sameLogs checks that two opens of the same log answer alike: records,
// topic reads, time lookups, marks, and every segment's index.
func sameLogs(t *testing.T, got, want *FileLog) {
	t.Helper()
	if d := diffRecords(readAll(t, got), readAll(t, want)); d != "" {
		t.Fatalf("records: %s", d)
	}
	if got.Size() != want.Size() || got.FirstOffset() != want.FirstOffset() || got.NextOffset() != want.NextOffset() {
		t.Fatalf("size %d first %d next %d, want %d %d %d", got.Size(), got.FirstOffset(), got.NextOffset(), want.Size(), want.FirstOffset(), want.NextOffset())
	}
	for i := range 6 {
		topic := fmt.Sprint("topic/", i)
		for _, from := range []uint64{0, 7, 150, 399} {
			g, gerr := got.ReadTopic(topic, from, 1000)
			w, werr := want.ReadTopic(topic, from, 1000)
			if gerr != nil || werr != nil || diffRecords(g, w) != "" {
				t.Fatalf("ReadTopic(%s, %d): %v %v %s", topic, from, gerr, werr, diffRecords(g, w))
			}
		}
	}
	all := readAll(t, want)
	for i := 0; i < len(all); i += 37 {
		r := all[i]
		for _, at := range []time.Time{r.Time, r.Time.Add(time.Millisecond), r.Time.Add(-time.Millisecond)} {
			g, gerr := got.OffsetForTime(at)
			w, werr := want.OffsetForTime(at)
			if gerr != nil || werr != nil || g != w {
				t.Fatalf("OffsetForTime(%v) = %d %v, want %d %v", at, g, gerr, w, werr)
			}
		}
	}
	for _, p := range []string{"gw0", "gw1", "gw2", "none"} {
		if got.HighWaterMark(p) != want.HighWaterMark(p) {
			t.Fatalf("HighWaterMark(%s) = %d, want %d", p, got.HighWaterMark(p), want.HighWaterMark(p))
		}
	}
	gs, ws := segmentsOf(got), segmentsOf(want)
	if len(gs) != len(ws) {
		t.Fatalf("%d segments, want %d", len(gs), len(ws))
	}
	for i := range gs {
		g, w := gs[i], ws[i]
		if g.base != w.base || g.size != w.size || g.next != w.next || g.runMax != w.runMax || !slices.Equal(g.index, w.index) {
			t.Fatalf("segment %d: base %d size %d next %d runMax %d index %v; want %d %d %d %d %v",
				i, g.base, g.size, g.next, g.runMax, g.index, w.base, w.size, w.next, w.runMax, w.index)
		}
	}
}

// TestOpenLoadsSnapshots: Open loads closed segments from their snapshots,
// reading only their last frame, and the log answers exactly as after a
// full scan.
func TestOpenLoadsSnapshots(t *testing.T) {
	for _, prealloc := range []bool{false, true} {
		t.Run(fmt.Sprint("preallocate=", prealloc), func(t *testing.T) {
			opts := Options{SegmentBytes: 4 << 10, IndexIntervalBytes: 256, NoPreallocate: !prealloc}
			dir := t.TempDir()
			snapshotLog(t, dir, opts)
			segs := segmentFiles(t, dir)
			if len(segs) < 5 {
				t.Fatalf("%d segments: the test needs more", len(segs))
			}
			for _, s := range segs[:len(segs)-1] {
				if _, err := os.Stat(s[:len(s)-len(segmentExt)] + snapshotExt); err != nil {
					t.Fatalf("closed segment without a snapshot: %v", err)
				}
			}
			full := t.TempDir()
			copyDir(t, dir, full)

			cfs := &countingFS{read: map[string]int64{}}
			o := opts
			o.FS = cfs
			l := openFile(t, dir, o)
			if l.loaded != len(segs)-1 || l.scanned != 1 {
				t.Fatalf("Open loaded %d snapshots and scanned %d segments; want %d and 1", l.loaded, l.scanned, len(segs)-1)
			}
			for _, s := range segs[:len(segs)-1] {
				if n := cfs.bytesRead(s); n > 300 {
					t.Fatalf("Open read %d bytes of closed segment %s", n, filepath.Base(s))
				}
			}
			o = opts
			o.VerifyOnOpen = true
			want := openFile(t, full, o)
			if want.loaded != 0 {
				t.Fatalf("VerifyOnOpen loaded %d snapshots", want.loaded)
			}
			sameLogs(t, l, want)
		})
	}
}

// TestSnapshotFallbacks: a snapshot that is damaged, missing, stale or
// not covered by the checkpoint is not used; the segment is scanned and
// its snapshot rewritten. An orphan snapshot is removed.
func TestSnapshotFallbacks(t *testing.T) {
	opts := Options{SegmentBytes: 4 << 10, IndexIntervalBytes: 256, NoPreallocate: true}
	base := t.TempDir()
	snapshotLog(t, base, opts)
	segs := segmentFiles(t, base)
	snap := func(dir string, i int) string {
		return filepath.Join(dir, filepath.Base(segs[i][:len(segs[i])-len(segmentExt)]+snapshotExt))
	}
	cases := []struct {
		name    string
		edit    func(t *testing.T, dir string)
		scanned int // segments Open scans, the active one included
		rewrite bool
	}{
		{"damaged", func(t *testing.T, dir string) {
			modifyFile(t, snap(dir, 1), func(b []byte) []byte { b[20] ^= 1; return b })
		}, 2, true},
		{"truncated", func(t *testing.T, dir string) {
			modifyFile(t, snap(dir, 2), func(b []byte) []byte { return b[:len(b)/2] })
		}, 2, true},
		{"missing", func(t *testing.T, dir string) { os.Remove(snap(dir, 0)) }, 2, true},
		{"another segment's", func(t *testing.T, dir string) {
			b, _ := os.ReadFile(snap(dir, 1))
			os.WriteFile(snap(dir, 2), b, 0o644)
		}, 2, true},
		{"zeros after the segment's records", func(t *testing.T, dir string) {
			modifyFile(t, filepath.Join(dir, filepath.Base(segs[1])), func(b []byte) []byte { return append(b, make([]byte, 3000)...) })
		}, 1, false},
		{"orphan", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, snapshotName(999999)), []byte("left behind"), 0o644)
		}, 1, false},
		{"no checkpoint", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, checkpointName)) }, len(segs), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir, full := t.TempDir(), t.TempDir()
			copyDir(t, base, dir)
			copyDir(t, base, full)
			tc.edit(t, dir)
			l := openFile(t, dir, opts)
			if l.scanned != tc.scanned {
				t.Fatalf("Open scanned %d segments, want %d", l.scanned, tc.scanned)
			}
			o := opts
			o.VerifyOnOpen = true
			sameLogs(t, l, openFile(t, full, o))
			if _, err := os.Stat(filepath.Join(dir, snapshotName(999999))); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("orphan snapshot: %v", err)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			again := openFile(t, dir, opts)
			if tc.rewrite && again.scanned != 1 {
				t.Fatalf("the next Open scanned %d segments: the snapshot was not rewritten", again.scanned)
			}
		})
	}
}

// TestRetentionRemovesSnapshots: retention deletes a segment's snapshot
// with it.
func TestRetentionRemovesSnapshots(t *testing.T) {
	dir := t.TempDir()
	l := openFile(t, dir, Options{SegmentBytes: 1000, RetentionBytes: 3000})
	for i := range 200 {
		mustAppend(t, l, rec("t", "p", uint64(i+1)))
	}
	if err := l.EnforceRetention(); err != nil {
		t.Fatal(err)
	}
	if l.FirstOffset() == 0 {
		t.Fatal("retention removed nothing")
	}
	snaps, _ := filepath.Glob(filepath.Join(dir, "*"+snapshotExt))
	segs := segmentFiles(t, dir)
	if len(snaps) != len(segs)-1 {
		t.Fatalf("%d snapshots for %d segments", len(snaps), len(segs))
	}
	for _, s := range snaps {
		if _, err := os.Stat(s[:len(s)-len(snapshotExt)] + segmentExt); err != nil {
			t.Fatalf("snapshot %s outlived its segment", filepath.Base(s))
		}
	}
}
