package commitlog

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The log's decoders read bytes from disk, which a crash, a bad disk or an
// operator can leave in any state: none may panic, and whatever they accept
// must be consistent.

// validSegment returns the bytes of a small segment written by the log.
func validSegment(f *testing.F) []byte {
	dir := f.TempDir()
	l, err := Open(dir, Options{})
	if err != nil {
		f.Fatal(err)
	}
	for i, r := range []Record{
		{Topic: "a", Producer: "gw", ProducerSeq: 1, Value: []byte("hello")},
		{Topic: "b/c", Value: nil, Time: time.Unix(0, 12345)},
		{Topic: "a", Producer: "gw", ProducerSeq: 2, Value: bytes.Repeat([]byte{0}, 600)},
	} {
		if _, err := l.Append(f.Context(), []Record{r}); err != nil {
			f.Fatalf("append %d: %v", i, err)
		}
	}
	l.Close()
	b, err := os.ReadFile(filepath.Join(dir, segmentName(0)))
	if err != nil {
		f.Fatal(err)
	}
	return b
}

func FuzzFrame(f *testing.F) {
	seg := validSegment(f)
	f.Add(seg)
	f.Add(seg[:20])
	f.Add([]byte{})
	f.Add(make([]byte, 40))
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := checkFrame(b)
		if err != nil {
			return
		}
		if n < frameHeaderLen+minBodyLen || n > len(b) {
			t.Fatalf("checkFrame accepted a frame of %d bytes out of %d", n, len(b))
		}
		m, err := parseBody(b[frameHeaderLen:n])
		if err != nil {
			return
		}
		// What parses re-encodes to the same bytes.
		r := m.record()
		again := appendFrame(nil, &r, 0, 0)
		sealFrame(again, m.offset, m.nanos)
		if !bytes.Equal(again, b[:n]) {
			t.Fatalf("re-encoding differs:\n%x\n%x", again, b[:n])
		}
	})
}

func FuzzCheckpoint(f *testing.F) {
	f.Add(encodeCheckpoint(0, nil))
	f.Add(encodeCheckpoint(77, map[string]uint64{"gw-1": 5, "": 9, "gw-2": 1 << 60}))
	f.Add([]byte(checkpointMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := decodeCheckpoint(b)
		if err != nil {
			if !errors.Is(err, errBadCheckpoint) {
				t.Fatalf("error not wrapping errBadCheckpoint: %v", err)
			}
			return
		}
		if again := encodeCheckpoint(c.validUpTo, c.hwm); !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs:\n%x\n%x", again, b)
		}
	})
}

// FuzzRecover opens a log whose only segment holds arbitrary bytes: Open either fails with ErrCorrupt or recovers a log that
// reads back and takes appends.
func FuzzRecover(f *testing.F) {
	seg := validSegment(f)
	f.Add(seg)
	f.Add(seg[:len(seg)-3])
	f.Add(append(append([]byte{}, seg...), seg...))
	f.Add(append(append([]byte{}, seg[:50]...), make([]byte, 2000)...))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 1<<16 {
			return
		}
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, segmentName(0)), b, 0o644); err != nil {
			t.Fatal(err)
		}
		l, err := Open(dir, Options{FS: noSyncFS{}})
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Open: %v, want nil or ErrCorrupt", err)
			}
			return
		}
		defer l.Close()
		recs, err := l.Read(0, 1<<20, 1<<30)
		if err != nil || uint64(len(recs)) != l.NextOffset() {
			t.Fatalf("after recovery: Read %d records, %v; next offset %d", len(recs), err, l.NextOffset())
		}
		res, err := l.Append(t.Context(), []Record{{Topic: "after", Value: []byte("x")}})
		if err != nil || res.FirstOffset != uint64(len(recs)) {
			t.Fatalf("append after recovery: %+v %v", res, err)
		}
	})
}

// noSyncFS is OSFS without fsyncs, to keep fuzzing fast: durability is not
// what FuzzRecover tests.
type noSyncFS struct{ OSFS }

func (noSyncFS) SyncDir(string) error { return nil }

func (fs noSyncFS) OpenFile(name string, flag int, perm os.FileMode) (File, error) {
	f, err := fs.OSFS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return noSyncFile{f}, nil
}

type noSyncFile struct{ File }

func (noSyncFile) Sync() error { return nil }

// validSnapshot returns the bytes of a snapshot written by the log for a
// small closed segment.
func validSnapshot(f *testing.F) []byte {
	dir := f.TempDir()
	l, err := Open(dir, Options{SegmentBytes: 600, IndexIntervalBytes: 64, NoPreallocate: true})
	if err != nil {
		f.Fatal(err)
	}
	for i := range 12 {
		r := Record{Topic: []string{"a", "b/c", ""}[i%3], Producer: "gw", ProducerSeq: uint64(i + 1), Value: bytes.Repeat([]byte{byte(i)}, 40)}
		if _, err := l.Append(f.Context(), []Record{r}); err != nil {
			f.Fatal(err)
		}
	}
	l.Close()
	b, err := os.ReadFile(filepath.Join(dir, snapshotName(0)))
	if err != nil {
		f.Fatal(err)
	}
	return b
}

// FuzzSnapshot: the snapshot decoder never panics, and what it accepts
// re-encodes to the same bytes.
func FuzzSnapshot(f *testing.F) {
	snap := validSnapshot(f)
	f.Add(snap)
	f.Add(snap[:len(snap)-1])
	f.Add([]byte(snapshotMagic))
	f.Add(encodeSnapshot(&snapshot{base: 5, next: 6, size: 40, lastPos: 0, topics: []snapshotTopic{{name: "t", offsets: []uint64{5}}}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		sn, err := decodeSnapshot(b)
		if err != nil {
			if !errors.Is(err, errBadSnapshot) {
				t.Fatalf("error not wrapping errBadSnapshot: %v", err)
			}
			return
		}
		if again := encodeSnapshot(sn); !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs:\n%x\n%x", again, b)
		}
	})
}
