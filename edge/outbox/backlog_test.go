package outbox

import (
	"context"
	"testing"
	"time"
)

// TestOldestReceivedAndCommitLatency: OldestReceived follows the lowest
// record held as the cloud acknowledges, and every successful group commit
// lands in one bucket of the latency histogram.
func TestOldestReceivedAndCommitLatency(t *testing.T) {
	ctx := context.Background()
	o := openT(t, dbPath(t), Options{})
	if _, ok, err := o.OldestReceived(ctx); ok || err != nil {
		t.Fatalf("empty outbox: ok %v err %v", ok, err)
	}
	if l := o.CommitLatency(); l.Count != 0 || len(l.Counts) != len(CommitLatencyBounds)+1 {
		t.Fatalf("before any commit: %+v", l)
	}
	base := time.Unix(1700000000, 0)
	var seqs []uint64
	for i := range 3 {
		m := testMessage(1, i)
		m.Received = base.Add(time.Duration(i) * time.Minute)
		seq, err := o.AppendWait(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, seq)
	}
	got, ok, err := o.OldestReceived(ctx)
	if err != nil || !ok || !got.Equal(base) {
		t.Fatalf("oldest %v ok %v err %v, want %v", got, ok, err, base)
	}
	if err := o.Ack(seqs[1]); err != nil {
		t.Fatal(err)
	}
	if got, ok, err = o.OldestReceived(ctx); err != nil || !ok || !got.Equal(base.Add(2*time.Minute)) {
		t.Fatalf("after ack: oldest %v ok %v err %v", got, ok, err)
	}
	if err := o.Ack(seqs[2]); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := o.OldestReceived(ctx); ok || err != nil {
		t.Fatalf("all acked: ok %v err %v", ok, err)
	}

	l := o.CommitLatency()
	var sum uint64
	for _, n := range l.Counts {
		sum += n
	}
	if st := o.Stats(); l.Count != st.CommittedGroups || sum != l.Count || l.Count < 1 || l.Sum <= 0 {
		t.Fatalf("latency %+v, %d groups committed", l, st.CommittedGroups)
	}
}

func TestCommitTimerBuckets(t *testing.T) {
	var c commitTimer
	c.observe(0)                       // first bucket
	c.observe(time.Millisecond)        // on a bound: that bucket
	c.observe(3 * time.Millisecond)    // 0.005
	c.observe(time.Minute)             // above every bound
	c.observe(1500 * time.Microsecond) // 0.002
	want := map[int]uint64{0: 1, 1: 1, 2: 1, 3: 1, len(CommitLatencyBounds): 1}
	for i := range c.counts {
		if got := c.counts[i].Load(); got != want[i] {
			t.Errorf("bucket %d (<= %v): %d, want %d", i, bound(i), got, want[i])
		}
	}
}

func bound(i int) any {
	if i < len(CommitLatencyBounds) {
		return CommitLatencyBounds[i]
	}
	return "+Inf"
}
