package dispatch

import (
	"context"
	"sync"
)

// queue is a lane's FIFO of events. It is unbounded on purpose: what bounds
// it is the tracker's window (Options.MaxPending), which the reader must pass
// before it pushes. A bounded channel per lane would let one stuck partition
// fill its lane and block the reader, stalling every other lane of the
// subscription after a few events instead of after MaxPending offsets.
//
// In unordered mode several workers pop from one queue; a pop that leaves
// items behind passes the wake-up on, so no worker sleeps on a non-empty
// queue.
type queue struct {
	mu    sync.Mutex
	items []item
	head  int
	ready chan struct{}
}

func newQueue() *queue { return &queue{ready: make(chan struct{}, 1)} }

func (q *queue) push(it item) {
	q.mu.Lock()
	q.items = append(q.items, it)
	q.mu.Unlock()
	q.wake()
}

func (q *queue) wake() {
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// pop returns the oldest item, waiting for one; false if ctx ended first.
func (q *queue) pop(ctx context.Context) (item, bool) {
	for {
		q.mu.Lock()
		if q.head < len(q.items) {
			it := q.items[q.head]
			q.items[q.head] = item{} // let the event be collected
			q.head++
			more := q.head < len(q.items)
			if !more {
				q.items, q.head = q.items[:0], 0
			} else if q.head >= 1024 && q.head*2 >= len(q.items) {
				n := copy(q.items, q.items[q.head:])
				clear(q.items[n:])
				q.items, q.head = q.items[:n], 0
			}
			q.mu.Unlock()
			if more {
				q.wake()
			}
			return it, true
		}
		q.mu.Unlock()
		select {
		case <-q.ready:
		case <-ctx.Done():
			return item{}, false
		}
	}
}

// takeMore appends to dst, without waiting, the items at the head of the
// queue while len(dst) < n, take(item) is true and the running total of
// size(item) stays within budget (the first item taken always fits). It
// stops at the first item take refuses, leaving it at the head: an ordered
// lane's order is kept.
func (q *queue) takeMore(dst []item, n int, budget int, take func(item) bool, size func(item) int) []item {
	q.mu.Lock()
	used := 0
	for len(dst) < n && q.head < len(q.items) {
		it := q.items[q.head]
		if !take(it) {
			break
		}
		if used += size(it); used > budget && len(dst) > 0 {
			break
		}
		dst = append(dst, it)
		q.items[q.head] = item{}
		q.head++
	}
	more := q.head < len(q.items)
	if !more {
		q.items, q.head = q.items[:0], 0
	}
	q.mu.Unlock()
	if more {
		q.wake()
	}
	return dst
}
