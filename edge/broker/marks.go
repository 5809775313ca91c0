package broker

import (
	"slices"
	"sync"
)

// deliveryMarks tracks which committed outbox sequence numbers have been
// handed to local delivery, and so how far a replay after a crash has to go
// back (notes/edge-durable-ack.md pitfall 6): floor is the highest seq such
// that every committed seq at or below it was delivered.
//
// Sequence numbers become known through the outbox's commit callbacks. The
// outbox assigns them in commit order and a group's callbacks run before the
// next group commits, so a seq not seen yet is higher than every seq seen;
// callbacks within a group may still arrive out of order, which committed
// handles. All methods are safe for concurrent use; committed, seen and
// delivered do nothing on a nil *deliveryMarks (no marker kept).
type deliveryMarks struct {
	mu      sync.Mutex
	pending []pendingSeq // pending[head:]: committed, delivery to come, ascending seq
	head    int
	maxSeen uint64 // highest seq seen, delivered or not
}

type pendingSeq struct {
	seq  uint64
	done bool
}

// newDeliveryMarks starts with every seq up to base delivered.
func newDeliveryMarks(base uint64) *deliveryMarks {
	return &deliveryMarks{maxSeen: base}
}

// committed records seq as committed with its local delivery still to come.
func (m *deliveryMarks) committed(seq uint64) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.maxSeen = max(m.maxSeen, seq)
	n := len(m.pending)
	if n == m.head || m.pending[n-1].seq < seq {
		m.pending = append(m.pending, pendingSeq{seq: seq})
		return
	}
	i, found := slices.BinarySearchFunc(m.pending[m.head:], seq, cmpPending)
	if !found {
		m.pending = slices.Insert(m.pending, m.head+i, pendingSeq{seq: seq})
	}
}

// seen records seq as committed and already delivered (QoS 0 and will
// messages, which mochi delivers without waiting for the commit).
func (m *deliveryMarks) seen(seq uint64) {
	if m == nil {
		return
	}
	m.mu.Lock()
	m.maxSeen = max(m.maxSeen, seq)
	m.mu.Unlock()
}

// delivered records that seq, reported by committed, has been delivered.
func (m *deliveryMarks) delivered(seq uint64) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	live := m.pending[m.head:]
	i, found := slices.BinarySearchFunc(live, seq, cmpPending)
	if !found {
		return
	}
	live[i].done = true
	for m.head < len(m.pending) && m.pending[m.head].done {
		m.head++
	}
	switch {
	case m.head == len(m.pending):
		m.pending, m.head = m.pending[:0], 0
	case m.head > 1024 && m.head > len(m.pending)/2:
		// Compact now and then, so the backing array does not creep.
		m.pending = m.pending[:copy(m.pending, m.pending[m.head:])]
		m.head = 0
	}
}

// floor returns the highest seq with every committed seq at or below it
// delivered.
func (m *deliveryMarks) floor() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.head < len(m.pending) {
		return m.pending[m.head].seq - 1
	}
	return m.maxSeen
}

func cmpPending(p pendingSeq, seq uint64) int {
	switch {
	case p.seq < seq:
		return -1
	case p.seq > seq:
		return 1
	}
	return 0
}
