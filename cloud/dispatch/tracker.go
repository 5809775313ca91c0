package dispatch

import (
	"context"
	"sync"
)

// tracker computes a subscription's low-water mark: the lowest offset handed
// out by the reader that is not yet completed. Lanes complete offsets out of
// order; the cursor may only move over a contiguous run of completed ones.
//
// It keeps one bit per offset in a ring of window slots, so at most window
// offsets can be outstanding between the low-water mark and the reader: when
// a slow lane holds the mark back that far, issue blocks and the reader waits.
// That bounds memory (and the redelivery after a crash) at the price of
// eventually stalling the subscription's other lanes behind a stuck one.
//
// The reader goroutine calls issue and reset; any goroutine calls complete
// and lowWater.
type tracker struct {
	mu    sync.Mutex
	base  uint64 // lowest offset not completed
	next  uint64 // next offset to issue
	done  []bool // ring: done[o%len] for base <= o < next
	moved chan struct{}
}

func newTracker(start uint64, window int) *tracker {
	return &tracker{base: start, next: start, done: make([]bool, window), moved: make(chan struct{}, 1)}
}

// issue registers offset off, which must be the next offset (the reader hands
// out offsets densely), waiting while the window is full.
func (t *tracker) issue(ctx context.Context, off uint64) error {
	for {
		t.mu.Lock()
		if off != t.next {
			t.mu.Unlock()
			panic("dispatch: tracker offsets issued out of order") // a bug in the reader, never input
		}
		if off-t.base < uint64(len(t.done)) {
			t.next++
			t.mu.Unlock()
			return nil
		}
		t.mu.Unlock()
		select {
		case <-t.moved:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// complete marks off done and advances the low-water mark over every
// contiguous completed offset. It returns true and the new mark if it moved.
func (t *tracker) complete(off uint64) (bool, uint64) {
	t.mu.Lock()
	if off < t.base || off >= t.next {
		t.mu.Unlock()
		return false, 0
	}
	n := uint64(len(t.done))
	t.done[off%n] = true
	moved := false
	for t.base < t.next && t.done[t.base%n] {
		t.done[t.base%n] = false
		t.base++
		moved = true
	}
	base := t.base
	t.mu.Unlock()
	if moved {
		select {
		case t.moved <- struct{}{}:
		default:
		}
	}
	return moved, base
}

// idle reports whether every issued offset is completed.
func (t *tracker) idle() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.base == t.next
}

// waitIdle blocks until every issued offset is completed.
func (t *tracker) waitIdle(ctx context.Context) error {
	for !t.idle() {
		select {
		case <-t.moved:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// reset moves an idle tracker to start at off (after records were removed
// by retention). It must only be called when idle.
func (t *tracker) reset(off uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.base != t.next {
		panic("dispatch: tracker reset while offsets are outstanding")
	}
	t.base, t.next = off, off
}

// lowWater returns the lowest offset not completed.
func (t *tracker) lowWater() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.base
}
