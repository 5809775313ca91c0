package commitlog

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
)

// producerSeqs returns, for producer p, the seqs in the log in log order.
func producerSeqs(t *testing.T, l Log, p string) []uint64 {
	t.Helper()
	var s []uint64
	for _, r := range readAll(t, l) {
		if r.Producer == p {
			s = append(s, r.ProducerSeq)
		}
	}
	return s
}

// TestFailedSyncOrWrite checks the fsyncgate rule: after a failed write or
// fsync the log acknowledges nothing more, and a resend after reopening
// lands exactly once.
func TestFailedSyncOrWrite(t *testing.T) {
	cases := []struct {
		name  string
		fault Fault
	}{
		{"fsync", Fault{Op: OpSync, PathSuffix: segmentExt}},
		{"write", Fault{Op: OpWrite, PathSuffix: segmentExt}},
		{"torn write", Fault{Op: OpWrite, PathSuffix: segmentExt, TornBytes: -1}},
		{"torn write of the header", Fault{Op: OpWrite, PathSuffix: segmentExt, TornBytes: 5}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ffs := NewFaultFS(nil)
			dir := t.TempDir()
			opts := Options{FS: ffs}
			l := openFile(t, dir, opts)
			mustAppend(t, l, rec("t", "p", 1), rec("t", "p", 2))
			sizeBefore := l.Size()

			ffs.Inject(tc.fault)
			_, err := l.Append(context.Background(), []Record{rec("t", "p", 3), rec("t", "p", 4), rec("t", "p", 5)})
			if !errors.Is(err, ErrFailed) || !errors.Is(err, ErrInjected) {
				t.Fatalf("Append through a failing %s: %v, want ErrFailed wrapping the cause", tc.name, err)
			}
			if l.NextOffset() != 2 || l.HighWaterMark("p") != 2 || l.Size() != sizeBefore {
				t.Fatalf("a failed append was published: next %d, mark %d, size %d", l.NextOffset(), l.HighWaterMark("p"), l.Size())
			}
			syncs, writes := ffs.Count(OpSync), ffs.Count(OpWrite)
			if _, err := l.Append(context.Background(), []Record{rec("t", "p", 6)}); !errors.Is(err, ErrFailed) {
				t.Fatalf("Append after the failure on a healthy disk: %v, want ErrFailed", err)
			}
			done := make(chan error, 1)
			l.AppendAsync([]Record{rec("t", "p", 7)}, func(_ AppendResult, err error) { done <- err })
			if err := <-done; !errors.Is(err, ErrFailed) {
				t.Fatalf("AppendAsync after the failure: %v", err)
			}
			if ffs.Count(OpSync) != syncs || ffs.Count(OpWrite) != writes {
				t.Fatal("the failed log kept writing or fsyncing")
			}
			if recs, err := l.Read(0, 10, 1<<20); err != nil || len(recs) != 2 {
				t.Fatalf("reads of acknowledged records after the failure: %v, %d records", err, len(recs))
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}

			l = openFile(t, dir, Options{})
			// The acknowledged records, and maybe a prefix of the failed
			// batch (a torn write keeps its whole records).
			got := fmt.Sprint(producerSeqs(t, l, "p"))
			allowed := map[string]bool{"[1 2]": true, "[1 2 3]": tc.fault.TornBytes != 0, "[1 2 3 4]": tc.fault.TornBytes != 0, "[1 2 3 4 5]": tc.fault.Op == OpSync}
			if !allowed[got] {
				t.Fatalf("after reopen: seqs %s", got)
			}
			mustAppend(t, l, rec("t", "p", 3), rec("t", "p", 4), rec("t", "p", 5), rec("t", "p", 6))
			if got := fmt.Sprint(producerSeqs(t, l, "p")); got != "[1 2 3 4 5 6]" {
				t.Fatalf("after resending: %s", got)
			}
		})
	}
}

// TestNoAckAfterFailure runs many concurrent appenders into a failing
// fsync: every acknowledged record must survive and no append may be
// acknowledged once one failed.
func TestNoAckAfterFailure(t *testing.T) {
	ffs := NewFaultFS(nil)
	dir := t.TempDir()
	l := openFile(t, dir, Options{FS: ffs, SegmentBytes: 4096})
	ffs.Inject(Fault{Op: OpSync, PathSuffix: segmentExt, After: 2})

	type outcome struct {
		p   string
		seq uint64
		err error
	}
	var mu sync.Mutex
	var outcomes []outcome // in completion order
	var wg sync.WaitGroup
	for g := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := fmt.Sprint("p", g)
			// Windows of 5 appends in flight: at least 8 groups in all, so
			// the fault (third fsync) fires.
			for i := uint64(1); i <= 40; {
				var window sync.WaitGroup
				for range 5 {
					window.Add(1)
					seq := i
					l.AppendAsync([]Record{rec("t", p, seq)}, func(_ AppendResult, err error) {
						mu.Lock()
						outcomes = append(outcomes, outcome{p, seq, err})
						mu.Unlock()
						window.Done()
					})
					i++
				}
				window.Wait()
			}
		}()
	}
	wg.Wait()
	acked := map[string][]uint64{}
	failed := false
	for _, o := range outcomes {
		if o.err != nil {
			failed = true
			if !errors.Is(o.err, ErrFailed) && !errors.Is(o.err, ErrClosed) {
				t.Fatalf("unexpected error: %v", o.err)
			}
			continue
		}
		if failed {
			t.Fatalf("%s/%d acknowledged after an earlier append failed", o.p, o.seq)
		}
		acked[o.p] = append(acked[o.p], o.seq)
	}
	if !failed {
		t.Fatal("the fault never fired")
	}
	l.Close()

	l = openFile(t, dir, Options{})
	for p, seqs := range acked {
		got := producerSeqs(t, l, p)
		if len(got) < len(seqs) || fmt.Sprint(got[:len(seqs)]) != fmt.Sprint(seqs) {
			t.Fatalf("producer %s: acknowledged %v, log has %v", p, seqs, got)
		}
		for i := 1; i < len(got); i++ {
			if got[i] <= got[i-1] {
				t.Fatalf("producer %s: log has %v", p, got)
			}
		}
	}
}

// TestRollFailures covers faults while starting a new segment without a
// spare (TestRollIntoSpareFails covers one with).
func TestRollFailures(t *testing.T) {
	for _, fault := range []Fault{
		{Op: OpCreate, PathSuffix: segmentExt},
		{Op: OpSyncDir},
		{Op: OpSync, PathSuffix: segmentExt, After: 3},
	} {
		t.Run(string(fault.Op), func(t *testing.T) {
			ffs := NewFaultFS(nil)
			dir := t.TempDir()
			l := openFile(t, dir, Options{FS: ffs, SegmentBytes: 200, NoPreallocate: true})
			ffs.Inject(fault)
			var err error
			n := 0
			for ; n < 50 && err == nil; n++ {
				_, err = l.Append(context.Background(), []Record{rec("t", "p", uint64(n+1))})
			}
			if !errors.Is(err, ErrFailed) {
				t.Fatalf("after %d appends: %v, want ErrFailed", n, err)
			}
			l.Close()
			l = openFile(t, dir, Options{SegmentBytes: 200})
			got := producerSeqs(t, l, "p")
			if len(got) < n-1 {
				t.Fatalf("%d appends acknowledged, %d in the log", n-1, len(got))
			}
			mustAppend(t, l, rec("t", "p", uint64(n+1)))
		})
	}
}

// TestCheckpointFailureHoldsRetention: a failed checkpoint must not fail
// appends, and retention must keep the segments it does not cover.
func TestCheckpointFailureHoldsRetention(t *testing.T) {
	ffs := NewFaultFS(nil)
	dir := t.TempDir()
	opts := Options{FS: ffs, SegmentBytes: 500, RetentionBytes: 1}
	l := openFile(t, dir, opts)
	mustAppend(t, l, rec("t", "early", 9))
	ffs.Inject(Fault{Op: OpRename, PathSuffix: checkpointName, Sticky: true})
	for i := range 40 {
		mustAppend(t, l, rec("t", "p", uint64(i+1)))
	}
	if err := l.EnforceRetention(); err != nil {
		t.Fatal(err)
	}
	if l.FirstOffset() != 0 {
		t.Fatalf("retention deleted segments no checkpoint covers: first offset %d", l.FirstOffset())
	}
	ffs.Clear()
	// The next roll writes a checkpoint.
	rolls := l.Stats().Rolls
	for seq := uint64(41); l.Stats().Rolls == rolls; seq++ {
		if seq > 200 {
			t.Fatal("no roll")
		}
		mustAppend(t, l, rec("t", "p", seq))
	}
	if err := l.EnforceRetention(); err != nil {
		t.Fatal(err)
	}
	if l.FirstOffset() == 0 {
		t.Fatal("retention still held back after a checkpoint succeeded")
	}
	l.Close()
	l = openFile(t, dir, Options{SegmentBytes: 500})
	if hw := l.HighWaterMark("early"); hw != 9 {
		t.Fatalf("HighWaterMark(early) = %d after retention, want 9", hw)
	}
}
