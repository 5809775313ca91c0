package commitlog

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"
)

// TestStats checks the counters against what the test did.
func TestStats(t *testing.T) {
	ffs := NewFaultFS(nil)
	c := newClock()
	l := openFile(t, t.TempDir(), Options{FS: ffs, SegmentBytes: 1000, RetentionAge: time.Hour, Now: c.Now, MaxRecordBytes: 500, NoPreallocate: true})
	if st := l.Stats(); st.Appended+st.Appends+st.Groups+st.Bytes+st.FsyncSeconds.Count != 0 || st.Segments != 1 || st.Failed {
		t.Fatalf("a new log: %+v", st)
	}
	for i := range 40 {
		mustAppend(t, l, rec("t", "p", uint64(i+1)))
	}
	mustAppend(t, l, rec("t", "p", 3), rec("t", "p", 41)) // one duplicate
	if _, err := l.Append(context.Background(), []Record{{Value: make([]byte, 600)}}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversize append: %v", err)
	}
	done := make(chan error, 1)
	l.AppendAsync([]Record{{Value: make([]byte, 600)}}, func(_ AppendResult, err error) { done <- err })
	if err := <-done; !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversize async append: %v", err)
	}
	st := l.Stats()
	if st.Appended != 41 || st.Duplicates != 1 || st.Appends != 42 || st.Failures != 1 {
		t.Fatalf("appended %d duplicates %d appends %d failures %d; want 41 1 42 1 (a refused Append never reaches the writer, a refused AppendAsync does)",
			st.Appended, st.Duplicates, st.Appends, st.Failures)
	}
	if st.Bytes != uint64(l.Size()) || st.SizeBytes != l.Size() || st.NextOffset != 41 || st.FirstOffset != 0 {
		t.Fatalf("bytes %d, size %d, log size %d, next %d", st.Bytes, st.SizeBytes, l.Size(), st.NextOffset)
	}
	if st.Groups != 41 || st.Rolls == 0 || st.Segments != int(st.Rolls)+1 {
		t.Fatalf("groups %d rolls %d segments %d", st.Groups, st.Rolls, st.Segments)
	}
	if h := st.FsyncSeconds; h.Count < st.Groups || h.Sum <= 0 || h.Buckets[len(h.Buckets)-1].CumulativeCount > h.Count {
		t.Fatalf("fsync histogram %+v for %d groups", h, st.Groups)
	}
	if h := st.GroupRecords; h.Count != st.Groups || h.Sum != float64(st.Appended) || h.Buckets[0].CumulativeCount != st.Groups {
		t.Fatalf("group sizes %+v for %d groups of one record", h, st.Groups)
	}
	if h := st.QueueSeconds; h.Count != st.Appends {
		t.Fatalf("queue histogram counts %d appends, want %d", h.Count, st.Appends)
	}
	if h := st.WriteSeconds; h.Count < st.Groups || h.Sum <= 0 {
		t.Fatalf("write histogram %+v for %d groups", h, st.Groups)
	}
	for i := 1; i < len(st.FsyncSeconds.Buckets); i++ {
		if b, p := st.FsyncSeconds.Buckets[i], st.FsyncSeconds.Buckets[i-1]; b.UpperBound <= p.UpperBound || b.CumulativeCount < p.CumulativeCount {
			t.Fatalf("buckets not cumulative and ascending: %+v", st.FsyncSeconds.Buckets)
		}
	}

	c.Advance(2 * time.Hour)
	if err := l.EnforceRetention(); err != nil {
		t.Fatal(err)
	}
	after := l.Stats()
	if after.RetentionSegments != st.Rolls || after.RetentionRecords != after.FirstOffset || after.RetentionBytes != st.Bytes-uint64(after.SizeBytes) {
		t.Fatalf("retention: %d segments, %d records, %d bytes; first offset now %d, size %d of %d",
			after.RetentionSegments, after.RetentionRecords, after.RetentionBytes, after.FirstOffset, after.SizeBytes, st.Bytes)
	}

	ffs.Inject(Fault{Op: OpSync, PathSuffix: segmentExt})
	if _, err := l.Append(context.Background(), []Record{rec("t", "p", 50)}); !errors.Is(err, ErrFailed) {
		t.Fatalf("append through a failing fsync: %v", err)
	}
	if st := l.Stats(); !st.Failed || st.Failures != 2 {
		t.Fatalf("after a failed fsync: failed %v, failures %d", st.Failed, st.Failures)
	}
}

func TestHistogramQuantile(t *testing.T) {
	var h histogram
	if q := h.snapshot().Quantile(0.5); q != -1 {
		t.Fatalf("empty histogram: %v", q)
	}
	for range 90 {
		h.observe(150 * time.Microsecond) // in (100 µs, 200 µs]
	}
	for range 10 {
		h.observe(3 * time.Millisecond) // in (2 ms, 5 ms]
	}
	h.observe(time.Minute) // above every bound
	s := h.snapshot()
	if s.Count != 101 || math.Abs(s.Sum-(90*150e-6+10*3e-3+60)) > 1e-9 {
		t.Fatalf("count %d sum %v", s.Count, s.Sum)
	}
	for _, tc := range []struct{ q, lo, hi float64 }{
		{0.5, 100e-6, 200e-6},
		{0.95, 2e-3, 5e-3},
		{1, 2.5, 2.5}, // above the last bound: the last bound
	} {
		if got := s.Quantile(tc.q); got < tc.lo || got > tc.hi {
			t.Errorf("Quantile(%v) = %v, want in [%v, %v]", tc.q, got, tc.lo, tc.hi)
		}
	}
}
