package commitlog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// waitFor polls cond every millisecond until it holds, failing the test
// after 30 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func fileSize(t testing.TB, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// dataEnd returns the end of a segment file's frames and checks that only
// zeros follow them.
func dataEnd(t testing.TB, path string) int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pos := 0
	for pos < len(b) {
		n, err := checkFrame(b[pos:])
		if err != nil {
			if !isZero(b[pos:]) {
				t.Fatalf("%s at %d: %v, and not zeros to the end", path, pos, err)
			}
			break
		}
		pos += n
	}
	return int64(pos)
}

// writeSpare leaves a whole spare of size bytes in dir, as a preparer
// would.
func writeSpare(t testing.TB, dir string, size int64) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, spareName), make([]byte, size), 0o644); err != nil {
		t.Fatal(err)
	}
}

type seqAppender struct {
	t     testing.TB
	l     *FileLog
	seq   uint64
	value []byte
	want  []Record
}

func (a *seqAppender) append(n int) {
	a.t.Helper()
	batch := make([]Record, n)
	for i := range batch {
		a.seq++
		batch[i] = Record{Topic: fmt.Sprint("t", a.seq%7), Producer: "p", ProducerSeq: a.seq, Value: a.value}
	}
	mustAppend(a.t, a.l, batch...)
}

// TestPreallocatedSegments: a busy log moves into zero-filled segments, a
// closed one is cut back to its records, and everything survives a reopen,
// which goes on in the preallocated segment.
func TestPreallocatedSegments(t *testing.T) {
	const seg = 64 << 10
	dir := t.TempDir()
	opts := Options{SegmentBytes: seg, IndexIntervalBytes: 1024}
	l := openFile(t, dir, opts)
	a := &seqAppender{t: t, l: l, value: bytes.Repeat([]byte("v"), 300)}
	a.append(120) // past half the first segment: a spare is wanted
	waitFor(t, "a spare", l.pre.isReady)
	if got := fileSize(t, filepath.Join(dir, spareName)); got != seg {
		t.Fatalf("spare is %d bytes, want %d", got, seg)
	}
	if _, err := os.Stat(filepath.Join(dir, spareTmp)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the spare's temporary file is still there: %v", err)
	}
	a.append(1) // the first segment was not preallocated: roll early
	if st := l.Stats(); st.Rolls != 1 || st.PreallocatedRolls != 1 {
		t.Fatalf("after the spare was ready: %d rolls, %d preallocated; want 1 and 1", st.Rolls, st.PreallocatedRolls)
	}
	segs := segmentFiles(t, dir)
	if len(segs) != 2 {
		t.Fatalf("%d segments, want 2", len(segs))
	}
	if end := dataEnd(t, segs[0]); fileSize(t, segs[0]) != end {
		t.Fatalf("the first segment is %d bytes, its records %d", fileSize(t, segs[0]), end)
	}
	if got := fileSize(t, segs[1]); got != seg {
		t.Fatalf("the preallocated segment is %d bytes, want %d", got, seg)
	}
	// Fill it: the next roll truncates it to its records.
	for l.Stats().Rolls < 2 {
		a.append(20)
	}
	segs = segmentFiles(t, dir)
	if end := dataEnd(t, segs[1]); fileSize(t, segs[1]) != end || end < seg/2 {
		t.Fatalf("closed preallocated segment: %d bytes on disk, %d of records", fileSize(t, segs[1]), end)
	}
	a.want = readAll(t, l)
	if len(a.want) != int(a.seq) {
		t.Fatalf("%d records read, %d appended", len(a.want), a.seq)
	}
	// Make sure the active segment is preallocated before the reopen.
	waitFor(t, "a preallocated active segment", func() bool {
		if s := segmentsOf(l); s[len(s)-1].prealloc {
			return true
		}
		a.append(20)
		return false
	})
	a.want = readAll(t, l)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	l = openFile(t, dir, opts)
	if d := diffRecords(readAll(t, l), a.want); d != "" {
		t.Fatalf("after reopen: %s", d)
	}
	if !segmentsOf(l)[len(segmentsOf(l))-1].prealloc {
		t.Fatal("the reopened active segment is not known to be preallocated")
	}
	a.l = l
	a.append(5)
	if st := l.Stats(); st.Rolls != 0 {
		t.Fatalf("a reopened preallocated segment was left: %d rolls", st.Rolls)
	}
	if got := len(readAll(t, l)); got != int(a.seq) {
		t.Fatalf("%d records after appending to the reopened log, want %d", got, a.seq)
	}
}

// TestPreallocatedTornTail: a torn group inside a preallocated segment is
// zeroed, not truncated, so that whole frames of it cannot reappear after
// shorter records are written where it was.
func TestPreallocatedTornTail(t *testing.T) {
	const seg = 64 << 10
	dir := t.TempDir()
	opts := Options{SegmentBytes: seg}
	writeSpare(t, dir, seg)
	l := openFile(t, dir, opts)
	mustAppend(t, l, rec("t", "p", 1))
	for i := range 12 {
		// The first append after the spare is ready rolls into it.
		mustAppend(t, l, Record{Topic: "t", Producer: "p", ProducerSeq: uint64(i + 2), Value: bytes.Repeat([]byte{byte(i)}, 700)})
	}
	if st := l.Stats(); st.PreallocatedRolls != 1 {
		t.Fatalf("%d preallocated rolls, want 1", st.PreallocatedRolls)
	}
	l.Close()
	segs := segmentFiles(t, dir)
	last := segs[len(segs)-1]
	b, err := os.ReadFile(last)
	if err != nil {
		t.Fatal(err)
	}
	var starts []int
	for pos := 0; ; {
		n, err := checkFrame(b[pos:])
		if err != nil {
			break
		}
		starts = append(starts, pos)
		pos += n
	}
	if len(starts) != 12 {
		t.Fatalf("the preallocated segment holds %d frames, want 12", len(starts))
	}
	// Tear the group of the last three records: a sector of the first
	// never reached the disk, the other two did.
	torn := starts[9]
	sector := (torn + 8 + 511) / 512 * 512
	clear(b[sector : sector+512])
	if sector+512 > starts[10] {
		t.Fatalf("test setup: the zeroed sector reaches the next frame")
	}
	if err := os.WriteFile(last, b, 0o644); err != nil {
		t.Fatal(err)
	}

	l = openFile(t, dir, opts)
	if got := l.NextOffset(); got != 10 {
		t.Fatalf("after the torn group: next offset %d, want 10", got)
	}
	if got := fileSize(t, last); got != seg {
		t.Fatalf("the preallocated segment is %d bytes after recovery, want %d", got, seg)
	}
	mustAppend(t, l, rec("after", "p", 100)) // much shorter than the torn records
	l.Close()

	l = openFile(t, dir, opts)
	got := readAll(t, l)
	if len(got) != 11 || got[10].Topic != "after" {
		t.Fatalf("after the second reopen: %d records, last %+v", len(got), got[len(got)-1])
	}
	if end := dataEnd(t, last); end == 0 {
		t.Fatal("no data in the last segment")
	}
}

// TestSpareAtOpen: Open removes a partial spare and adopts a whole one.
func TestSpareAtOpen(t *testing.T) {
	const seg = 32 << 10
	for _, tc := range []struct {
		name      string
		tmp       bool  // leave a temporary spare
		size      int64 // of segment.spare, 0 = none
		noPrealoc bool
		ready     bool
	}{
		{"partial", true, 0, false, false},
		{"wrong size", false, seg / 2, false, false},
		{"whole", true, seg, false, true},
		{"whole, preallocation off", false, seg, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.tmp {
				os.WriteFile(filepath.Join(dir, spareTmp), []byte("half written"), 0o644)
			}
			if tc.size > 0 {
				writeSpare(t, dir, tc.size)
			}
			l := openFile(t, dir, Options{SegmentBytes: seg, NoPreallocate: tc.noPrealoc})
			if _, err := os.Stat(filepath.Join(dir, spareTmp)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("temporary spare left: %v", err)
			}
			_, err := os.Stat(filepath.Join(dir, spareName))
			if exists := err == nil; exists != tc.ready || l.pre.isReady() != tc.ready {
				t.Fatalf("spare exists %v, ready %v; want %v", exists, l.pre.isReady(), tc.ready)
			}
			mustAppend(t, l, rec("t", "p", 1))
			mustAppend(t, l, rec("t", "p", 2))
			if st := l.Stats(); (st.PreallocatedRolls == 1) != tc.ready {
				t.Fatalf("%d preallocated rolls with a ready spare %v", st.PreallocatedRolls, tc.ready)
			}
		})
	}
}

// TestPreparerFailure: when spares cannot be written the log goes on with
// plain segments, and preallocates again once the disk recovers.
func TestPreparerFailure(t *testing.T) {
	ffs := NewFaultFS(nil)
	dir := t.TempDir()
	l := openFile(t, dir, Options{FS: ffs, SegmentBytes: 8 << 10})
	ffs.Inject(Fault{Op: OpWrite, PathSuffix: spareTmp, Sticky: true})
	a := &seqAppender{t: t, l: l, value: bytes.Repeat([]byte("x"), 200)}
	for l.Stats().Rolls < 5 {
		a.append(10)
	}
	if st := l.Stats(); st.PreallocatedRolls != 0 || st.Failed {
		t.Fatalf("with failing spares: %+v", st)
	}
	if ffs.Count(OpWrite) == 0 {
		t.Fatal("no write at all")
	}
	ffs.Clear()
	waitFor(t, "a preallocated roll", func() bool {
		a.append(10)
		return l.Stats().PreallocatedRolls > 0
	})
	got := readAll(t, l)
	if len(got) != int(a.seq) {
		t.Fatalf("%d records, want %d", len(got), a.seq)
	}
	for i, r := range got {
		if r.ProducerSeq != uint64(i+1) {
			t.Fatalf("record %d has seq %d", i, r.ProducerSeq)
		}
	}
}

// TestRollIntoSpareFails: a failed rename of the spare fails the log like
// a failed segment creation, and nothing acknowledged is lost.
func TestRollIntoSpareFails(t *testing.T) {
	ffs := NewFaultFS(nil)
	dir := t.TempDir()
	writeSpare(t, dir, 4096)
	l := openFile(t, dir, Options{FS: ffs, SegmentBytes: 4096})
	ffs.Inject(Fault{Op: OpRename, PathSuffix: segmentExt})
	mustAppend(t, l, rec("t", "p", 1))
	if _, err := l.Append(context.Background(), []Record{rec("t", "p", 2)}); !errors.Is(err, ErrFailed) {
		t.Fatalf("append that rolls into a spare that cannot be renamed: %v", err)
	}
	l.Close()
	l = openFile(t, dir, Options{SegmentBytes: 4096})
	if got := producerSeqs(t, l, "p"); fmt.Sprint(got) != "[1]" {
		t.Fatalf("after reopen: %v", got)
	}
	mustAppend(t, l, rec("t", "p", 2))
}
