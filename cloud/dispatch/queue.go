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
