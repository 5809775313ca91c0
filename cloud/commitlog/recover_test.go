package commitlog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// fillLog appends n records from 3 producers over 5 topics, one Append per
// record, and returns them as read back.
func fillLog(t *testing.T, l *FileLog, n int) []Record {
	t.Helper()
	for i := range n {
		p := fmt.Sprintf("gw%d", i%3)
		mustAppend(t, l, Record{Topic: fmt.Sprintf("topic/%d", i%5), Producer: p, ProducerSeq: uint64(i/3 + 1), Value: bytes.Repeat([]byte{byte(i)}, 20+i%50)})
	}
	return readAll(t, l)
}

func segmentFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*"+segmentExt))
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(m)
	return m
}

func TestReopenKeepsEverything(t *testing.T) {
	dir := t.TempDir()
	c := newClock()
	opts := Options{SegmentBytes: 2000, IndexIntervalBytes: 300, Now: c.Now}
	l := openFile(t, dir, opts)
	want := fillLog(t, l, 200)
	if n := len(segmentFiles(t, dir)); n < 5 {
		t.Fatalf("only %d segments: the test needs rolls", n)
	}
	topicWant, _ := l.ReadTopic("topic/2", 37, 1000)
	timeWant, _ := l.OffsetForTime(want[77].Time)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	l = openFile(t, dir, opts)
	if d := diffRecords(readAll(t, l), want); d != "" {
		t.Fatalf("after reopen: %s", d)
	}
	if l.NextOffset() != 200 || l.FirstOffset() != 0 {
		t.Fatalf("after reopen: first %d next %d", l.FirstOffset(), l.NextOffset())
	}
	for p, hw := range map[string]uint64{"gw0": 67, "gw1": 67, "gw2": 66} {
		if got := l.HighWaterMark(p); got != hw {
			t.Errorf("HighWaterMark(%s) = %d, want %d", p, got, hw)
		}
	}
	topicGot, err := l.ReadTopic("topic/2", 37, 1000)
	if err != nil || diffRecords(topicGot, topicWant) != "" || len(topicGot) == 0 {
		t.Fatalf("ReadTopic after reopen: %v %s", err, diffRecords(topicGot, topicWant))
	}
	if got, err := l.OffsetForTime(want[77].Time); err != nil || got != timeWant || got != 77 {
		t.Fatalf("OffsetForTime after reopen: %d %v, want %d", got, err, timeWant)
	}
	res := mustAppend(t, l, rec("x", "gw0", 67), rec("x", "gw0", 68))
	if res != (AppendResult{Appended: 1, Duplicates: 1, FirstOffset: 200, LastOffset: 200}) {
		t.Fatalf("append after reopen: %+v", res)
	}
}

// closedLog writes n records to a fresh log and closes it.
func closedLog(t *testing.T, dir string, opts Options, n int) []Record {
	t.Helper()
	l := openFile(t, dir, opts)
	want := fillLog(t, l, n)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return want
}

// frameStarts returns the position of every frame of a segment file.
func frameStarts(t *testing.T, path string) []int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var starts []int64
	for pos := 0; pos < len(b); {
		n, err := checkFrame(b[pos:])
		if err != nil {
			t.Fatalf("%s at %d: %v", path, pos, err)
		}
		starts = append(starts, int64(pos))
		pos += n
	}
	return starts
}

func modifyFile(t *testing.T, path string, fn func(b []byte) []byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, fn(b), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestTornTailIsCut damages the end of a log of plain (not preallocated)
// segments; TestPreallocatedTornTail covers preallocated ones.
func TestTornTailIsCut(t *testing.T) {
	opts := Options{SegmentBytes: 3000, IndexIntervalBytes: 200, NoPreallocate: true}
	base := t.TempDir()
	want := closedLog(t, base, opts, 60)
	segs := segmentFiles(t, base)
	last := segs[len(segs)-1]
	starts := frameStarts(t, last)
	if len(starts) < 3 {
		t.Fatalf("last segment has %d records; want a few", len(starts))
	}
	lastStart := starts[len(starts)-1]
	st, _ := os.Stat(last)
	size := st.Size()

	cases := []struct {
		name string
		edit func(b []byte) []byte
		keep int // records of the last segment that survive, from its end
	}{
		{"one byte short", func(b []byte) []byte { return b[:len(b)-1] }, -1},
		{"header only", func(b []byte) []byte { return b[:lastStart+frameHeaderLen] }, -1},
		{"half a header", func(b []byte) []byte { return b[:lastStart+3] }, -1},
		{"zeros appended", func(b []byte) []byte { return append(b, make([]byte, 5000)...) }, 0}, // unused space: kept
		{"garbage appended", func(b []byte) []byte { return append(b, "not a frame at all"...) }, 0},
		{"last record's checksum bad", func(b []byte) []byte { b[len(b)-1] ^= 0xff; return b }, -1},
		{"last two records torn with a zero page", func(b []byte) []byte {
			// A write whose middle reached the disk as zeros, its end intact:
			// pages out of order. Not corruption.
			prev := starts[len(starts)-2]
			z := make([]byte, 1100) // holds a whole aligned sector
			return append(b[:prev+10:prev+10], append(z, b[prev+10:]...)...)
		}, -2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			copyDir(t, base, dir)
			path := filepath.Join(dir, filepath.Base(last))
			modifyFile(t, path, tc.edit)
			l := openFile(t, dir, opts)
			keep := len(want) + tc.keep
			if tc.keep == 0 {
				keep = len(want)
			}
			if d := diffRecords(readAll(t, l), want[:keep]); d != "" {
				t.Fatalf("after recovery: %s", d)
			}
			st, _ := os.Stat(path)
			wantSize := size
			if tc.name == "zeros appended" {
				wantSize += 5000
			}
			switch tc.keep {
			case -1:
				wantSize = lastStart
			case -2:
				wantSize = starts[len(starts)-2]
			}
			if st.Size() != wantSize {
				t.Fatalf("segment is %d bytes after recovery, want %d", st.Size(), wantSize)
			}
			// The log goes on from the cut.
			res := mustAppend(t, l, rec("after", "new", 1))
			if res.FirstOffset != uint64(keep) {
				t.Fatalf("next append got offset %d, want %d", res.FirstOffset, keep)
			}
			l.Close()
			l2 := openFile(t, dir, opts)
			if got := readAll(t, l2); len(got) != keep+1 || got[keep].Topic != "after" {
				t.Fatalf("second reopen: %d records", len(got))
			}
		})
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	ents, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestCorruptionIsReported damages acknowledged records. Damage in the
// active segment, or that changes a closed segment's size or last frame,
// fails Open; damage inside a closed segment is found by Open only with
// VerifyOnOpen, and otherwise by the read that meets it.
func TestCorruptionIsReported(t *testing.T) {
	opts := Options{SegmentBytes: 1500, IndexIntervalBytes: 200, NoPreallocate: true}
	base := t.TempDir()
	closedLog(t, base, opts, 60)
	segs := segmentFiles(t, base)
	if len(segs) < 3 {
		t.Fatalf("%d segments; want at least 3", len(segs))
	}
	first, last := segs[0], segs[len(segs)-1]
	lastStarts := frameStarts(t, last)
	firstStarts := frameStarts(t, first)

	cases := []struct {
		name string
		file string
		edit func(b []byte) []byte
		pos  int64
		// inside: inside a closed segment, seen only by a full scan
		inside bool
	}{
		{"bit flip in an old segment's value", first, func(b []byte) []byte { b[firstStarts[2]+40] ^= 1; return b }, firstStarts[2], true},
		{"bit flip in an old segment's last record", first, func(b []byte) []byte { b[len(b)-3] ^= 1; return b }, firstStarts[len(firstStarts)-1], false},
		{"old segment cut short", first, func(b []byte) []byte { return b[:len(b)-5] }, firstStarts[len(firstStarts)-1], false},
		{"bit flip in the middle of the last segment", last, func(b []byte) []byte { b[lastStarts[1]+30] ^= 0x10; return b }, lastStarts[1], false},
		{"length of a middle record damaged", last, func(b []byte) []byte { b[lastStarts[1]+2] = 0x7f; return b }, lastStarts[1], false},
		{"zeroed header in the middle", last, func(b []byte) []byte { copy(b[lastStarts[1]:], make([]byte, 8)); return b }, lastStarts[1], false},
	}
	for _, tc := range cases {
		for _, verify := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/verify=%v", tc.name, verify), func(t *testing.T) {
				dir := t.TempDir()
				copyDir(t, base, dir)
				path := filepath.Join(dir, filepath.Base(tc.file))
				modifyFile(t, path, tc.edit)
				before, _ := os.ReadFile(path)
				o := opts
				o.VerifyOnOpen = verify
				l, err := Open(dir, o)
				if tc.inside && !verify {
					if err != nil {
						t.Fatalf("Open: %v; damage inside a closed segment should be left to reads", err)
					}
					defer l.Close()
					_, err = l.Read(0, 100, 1<<20)
				} else if err == nil {
					l.Close()
					t.Fatal("Open succeeded on a damaged log")
				}
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("got %v, want ErrCorrupt", err)
				}
				if !strings.Contains(err.Error(), filepath.Base(tc.file)) || !strings.Contains(err.Error(), fmt.Sprintf("byte %d", tc.pos)) {
					t.Fatalf("error does not name the file and position (%s, byte %d): %v", filepath.Base(tc.file), tc.pos, err)
				}
				after, _ := os.ReadFile(path)
				if !bytes.Equal(before, after) {
					t.Fatal("Open changed a corrupt file")
				}
			})
		}
	}
}

func TestMissingSegmentsAreReported(t *testing.T) {
	opts := Options{SegmentBytes: 1000}
	t.Run("gap", func(t *testing.T) {
		dir := t.TempDir()
		closedLog(t, dir, opts, 60)
		segs := segmentFiles(t, dir)
		os.Remove(segs[1])
		if _, err := Open(dir, opts); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "missing") {
			t.Fatalf("Open with a missing middle segment: %v", err)
		}
	})
	t.Run("oldest without checkpoint", func(t *testing.T) {
		dir := t.TempDir()
		closedLog(t, dir, opts, 60)
		os.Remove(segmentFiles(t, dir)[0])
		os.Remove(filepath.Join(dir, checkpointName))
		if _, err := Open(dir, opts); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Open without the oldest segment and checkpoint: %v", err)
		}
	})
	t.Run("damaged checkpoint", func(t *testing.T) {
		dir := t.TempDir()
		closedLog(t, dir, opts, 60)
		modifyFile(t, filepath.Join(dir, checkpointName), func(b []byte) []byte { b[10] ^= 1; return b })
		if _, err := Open(dir, opts); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), checkpointName) {
			t.Fatalf("Open with a damaged checkpoint: %v", err)
		}
	})
	t.Run("stale temporary checkpoint is ignored", func(t *testing.T) {
		dir := t.TempDir()
		want := closedLog(t, dir, opts, 60)
		os.WriteFile(filepath.Join(dir, checkpointName+".tmp"), []byte("half"), 0o644)
		l := openFile(t, dir, opts)
		if d := diffRecords(readAll(t, l), want); d != "" {
			t.Fatal(d)
		}
		if _, err := os.Stat(filepath.Join(dir, checkpointName+".tmp")); !os.IsNotExist(err) {
			t.Fatalf("stale temporary checkpoint not removed: %v", err)
		}
	})
}

// TestHighWaterMarksSurviveRetention checks that a producer whose records
// were all deleted by retention still has its mark, across a reopen.
func TestHighWaterMarksSurviveRetention(t *testing.T) {
	dir := t.TempDir()
	c := newClock()
	opts := Options{SegmentBytes: 1000, RetentionBytes: 3000, Now: c.Now}
	l := openFile(t, dir, opts)
	mustAppend(t, l, rec("t", "early", 41), rec("t", "early", 42))
	for i := range 200 {
		mustAppend(t, l, rec("t", "busy", uint64(i+1)))
	}
	if err := l.EnforceRetention(); err != nil {
		t.Fatal(err)
	}
	if l.FirstOffset() <= 2 {
		t.Fatalf("retention kept the first records (first offset %d)", l.FirstOffset())
	}
	if l.Size() > opts.RetentionBytes+opts.SegmentBytes {
		t.Fatalf("log is %d bytes, retention allows %d", l.Size(), opts.RetentionBytes+opts.SegmentBytes)
	}
	first := l.FirstOffset()
	l.Close()

	l = openFile(t, dir, opts)
	if l.FirstOffset() != first {
		t.Fatalf("first offset %d after reopen, want %d", l.FirstOffset(), first)
	}
	if hw := l.HighWaterMark("early"); hw != 42 {
		t.Fatalf("HighWaterMark(early) after retention and reopen = %d, want 42", hw)
	}
	if res := mustAppend(t, l, rec("t", "early", 42)); res.Duplicates != 1 {
		t.Fatalf("a resend of a deleted record was appended: %+v", res)
	}
	if _, err := l.Read(0, 1, 1); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("Read(0): %v", err)
	}
}

func TestTooLarge(t *testing.T) {
	l := openFile(t, t.TempDir(), Options{MaxRecordBytes: 1000})
	ok := Record{Topic: "t", Value: make([]byte, 1000-27-1)}
	if encodedLen(&ok) != 1000 {
		t.Fatalf("encoded length %d", encodedLen(&ok))
	}
	big := Record{Topic: "t", Value: make([]byte, 1000)}
	if _, err := l.Append(context.Background(), []Record{ok, big}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Append of an oversize record: %v", err)
	}
	done := make(chan error, 1)
	l.AppendAsync([]Record{ok, big}, func(_ AppendResult, err error) { done <- err })
	if err := <-done; !errors.Is(err, ErrTooLarge) {
		t.Fatalf("AppendAsync of an oversize record: %v", err)
	}
	if l.NextOffset() != 0 {
		t.Fatal("part of a refused batch was appended")
	}
	mustAppend(t, l, ok)
	if _, err := l.Append(context.Background(), []Record{{Time: time.Date(1500, 1, 1, 0, 0, 0, 0, time.UTC)}}); err == nil {
		t.Fatal("a time Unix nanoseconds cannot hold was accepted")
	}
}

func TestSecondOpenIsRefused(t *testing.T) {
	dir := t.TempDir()
	l := openFile(t, dir, Options{})
	if l2, err := Open(dir, Options{}); !errors.Is(err, ErrLocked) {
		if err == nil {
			l2.Close()
		}
		t.Fatalf("second Open of a directory in use: %v, want ErrLocked", err)
	}
	mustAppend(t, l, rec("t", "p", 1))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openFile(t, dir, Options{})
	if l.NextOffset() != 1 {
		t.Fatalf("after reopen: next offset %d", l.NextOffset())
	}
}
