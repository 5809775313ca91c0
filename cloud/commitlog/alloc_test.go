package commitlog

import (
	"context"
	"testing"
)

// TestAppendAllocations: a blocking Append reuses its request (see
// requestPool); what is left is per group commit (the group slice, the
// readers' change channel, the tail-cache chunk) plus the fsync's own.
func TestAppendAllocations(t *testing.T) {
	if testing.Short() {
		t.Skip("real fsyncs")
	}
	l := openFile(t, t.TempDir(), Options{NoPreallocate: true})
	recs := []Record{{Topic: "t", Producer: "p", Value: make([]byte, 200)}}
	seq := uint64(0)
	allocs := testing.AllocsPerRun(200, func() {
		seq++
		recs[0].ProducerSeq = seq
		if _, err := l.Append(context.Background(), recs); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("%.1f allocations per Append", allocs)
	if allocs > 8 { // 12 without the pool
		t.Errorf("%.1f allocations per single-record Append, want at most 8", allocs)
	}
}
