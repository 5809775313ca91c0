package outbox

import "math"

// Ack's accounting without a second pass over the acknowledged range.
//
// An Ack must subtract what it deletes from the per-class totals (records,
// stored bytes, payload bytes), and SQLite can only tell by reading the
// range before deleting it: a pass as long as the DELETE's own, a sixth of
// a drain's outbox time. But the writer inserted those records itself and
// knew their sizes then. ackSizes keeps them, a few bytes a record, for the
// seqs committed since the outbox was last empty, and Ack sums them
// instead.
//
// That holds only while Acks are the only deletions: a quota drop, an
// expiry or a lane Ack removes records from the middle, so any of them
// makes the sizes invalid until the outbox is next empty, and Acks count in
// SQLite again. So does an outbox opened with records in it (their sizes
// were not seen), and one holding more than maxAckSizes records (the
// memory is bounded).

// maxAckSizes bounds the records whose sizes are kept: 12 MiB of them.
const maxAckSizes = 1 << 20

type rowSize struct {
	stored, payload uint32
	class           uint8
}

type ackSizes struct {
	valid bool
	start uint64    // seq of rows[head]
	rows  []rowSize // rows[head:] are seqs start, start+1, ...
	head  int
}

// reset starts over with an empty outbox whose next seq is next.
func (a *ackSizes) reset(next uint64) {
	a.valid, a.start, a.rows, a.head = true, next, a.rows[:0], 0
}

func (a *ackSizes) invalidate() {
	a.valid, a.rows, a.head = false, nil, 0
}

// committed records a committed group's inserted records (seqs[i] != 0),
// or invalidates the sizes if the group dropped records.
func (a *ackSizes) committed(batch []*pending, seqs []uint64, dropped bool) {
	if !a.valid {
		return
	}
	if dropped {
		a.invalidate()
		return
	}
	for i, p := range batch {
		seq := seqs[i]
		if seq == 0 {
			continue // refused
		}
		if seq != a.start+uint64(len(a.rows)-a.head) || len(a.rows)-a.head >= maxAckSizes ||
			int64(p.stored) > math.MaxUint32 || int64(len(p.m.Payload)) > math.MaxUint32 {
			a.invalidate()
			return
		}
		a.rows = append(a.rows, rowSize{stored: uint32(p.stored), payload: uint32(len(p.m.Payload)), class: p.m.Priority})
	}
}

// sum adds up, by class into gone, the records with acked < seq <= hi;
// false when the sizes cannot tell.
func (a *ackSizes) sum(acked, hi uint64, gone []classDelta) ([]classDelta, bool) {
	n := uint64(len(a.rows) - a.head)
	if !a.valid || acked+1 < a.start || hi < acked || hi >= a.start+n {
		return gone, false
	}
	for _, r := range a.rows[a.head+int(acked+1-a.start) : a.head+int(hi+1-a.start)] {
		i := len(gone) - 1
		for i >= 0 && gone[i].class != r.class {
			i--
		}
		if i < 0 {
			gone = append(gone, classDelta{class: r.class})
			i = len(gone) - 1
		}
		gone[i].records++
		gone[i].bytes += int64(r.stored)
		gone[i].payload += int64(r.payload)
	}
	return gone, true
}

// acked drops the sizes of seqs <= hi once an Ack deleted them; first is
// the lowest seq left (0: the outbox is empty), last the highest committed.
func (a *ackSizes) acked(hi, first, last uint64) {
	if first == 0 {
		a.reset(last + 1)
		return
	}
	if !a.valid || hi < a.start {
		return
	}
	k := min(int(hi+1-a.start), len(a.rows)-a.head)
	a.head += k
	a.start += uint64(k)
	if a.head > len(a.rows)/2 && a.head > 1024 {
		a.rows = a.rows[:copy(a.rows, a.rows[a.head:])]
		a.head = 0
	}
}
