package outbox

import "testing"

// TestAckSizes: the sizes Ack sums are those committed, by class, for any
// range after the last Ack; anything else reports that it cannot tell.
func TestAckSizes(t *testing.T) {
	var a ackSizes
	if _, ok := a.sum(0, 1, nil); ok {
		t.Fatal("zero ackSizes answered")
	}
	a.reset(101)
	var batch []*pending
	var seqs []uint64
	seq := uint64(101)
	for i := range 5000 {
		p := &pending{m: Message{Priority: uint8(i % 3), Payload: make([]byte, i%7)}, stored: int64(100 + i)}
		batch = append(batch, p)
		if i%11 == 5 {
			p.refused = ErrQuotaExceeded
			seqs = append(seqs, 0)
			continue
		}
		seqs = append(seqs, seq)
		seq++
	}
	a.committed(batch, seqs, false)
	want := func(lo, hi uint64) map[uint8]classState {
		m := map[uint8]classState{}
		for i, p := range batch {
			if s := seqs[i]; s > lo && s <= hi {
				d := m[p.m.Priority]
				d.add(classState{records: 1, bytes: p.stored, payload: int64(len(p.m.Payload))})
				m[p.m.Priority] = d
			}
		}
		return m
	}
	check := func(lo, hi uint64) {
		t.Helper()
		gone, ok := a.sum(lo, hi, nil)
		if !ok {
			t.Fatalf("sum(%d, %d) failed", lo, hi)
		}
		w := want(lo, hi)
		if len(gone) != len(w) {
			t.Fatalf("sum(%d, %d): %d classes, want %d", lo, hi, len(gone), len(w))
		}
		for _, d := range gone {
			if d.classState != w[d.class] {
				t.Fatalf("sum(%d, %d) class %d: %+v, want %+v", lo, hi, d.class, d.classState, w[d.class])
			}
		}
	}
	check(100, 100)
	check(100, 3000)
	a.acked(3000, 3001, seq-1)
	check(3000, 4000)
	if _, ok := a.sum(100, 3500, nil); ok {
		t.Fatal("sum over acknowledged seqs answered")
	}
	if _, ok := a.sum(3000, seq, nil); ok {
		t.Fatal("sum beyond the last seq answered")
	}
	a.acked(4400, 4401, seq-1) // compacts
	check(4400, seq-1)
	a.committed(batch[:1], []uint64{seq + 5}, false) // a gap: cannot tell any more
	if _, ok := a.sum(4400, 4500, nil); ok {
		t.Fatal("sizes with a gap answered")
	}
	a.acked(seq+5, 0, seq+5) // empty again
	a.committed(batch[:2], []uint64{seq + 6, seq + 7}, false)
	if gone, ok := a.sum(seq+5, seq+7, nil); !ok || len(gone) != 2 || gone[0].records != 1 || gone[1].bytes != batch[1].stored {
		t.Fatalf("after emptying: %+v, %v", gone, ok)
	}
	a.committed(batch[:1], []uint64{seq + 8}, true) // a quota drop
	if _, ok := a.sum(seq+5, seq+7, nil); ok {
		t.Fatal("sizes after a drop answered")
	}
}
