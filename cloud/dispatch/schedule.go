package dispatch

import (
	"container/heap"
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/types"
)

// This file holds the delivery-time schedulers: when an event may first be
// sent (delayed delivery) and how fast a subscription may send (its rate
// limit). Both are plain values that are given the time and do no I/O; the
// runner turns their answers into waits on Options.After.

// ExtDeliverAt is the extension attribute that delays one event: a
// timestamp (a CloudEvents Timestamp, or a string in RFC 3339) before which
// it is not delivered. It is read after filtering and before the
// transformation, so a transformation cannot change it.
const ExtDeliverAt = "deliverat"

// Delay limits.
const (
	// DefaultMaxDelay is how far past the time the log accepted an event its
	// deliverat may lie when the subscription sets no max_delay.
	DefaultMaxDelay = 24 * time.Hour
	// maxDelayLimit bounds the delay and max_delay settings: a delayed event
	// holds the cursor, so long delays belong in a scheduler, not here.
	maxDelayLimit = 7 * 24 * time.Hour
)

// readyAt returns when an event whose record the log accepted at logged may
// first be sent, given its deliverat extension (if any) and the
// subscription's max_delay. A deliverat in the past, or absent, means now.
// An unreadable deliverat, or one more than maxDelay after logged, is an
// error: the event is dead-lettered with it as the reason.
func readyAt(e *event.Event, logged time.Time, maxDelay time.Duration) (time.Time, error) {
	v, ok := e.Extensions()[ExtDeliverAt]
	if !ok {
		return time.Time{}, nil
	}
	at, err := types.ToTime(v)
	if err != nil {
		return time.Time{}, fmt.Errorf("extension %s: %v is not a timestamp (want RFC 3339, such as 2025-03-01T08:00:00Z)", ExtDeliverAt, v)
	}
	if limit := logged.Add(maxDelay); at.After(limit) {
		return time.Time{}, fmt.Errorf("extension %s %s is more than max_delay %v after the event was logged (%s)",
			ExtDeliverAt, at.UTC().Format(time.RFC3339Nano), maxDelay, logged.UTC().Format(time.RFC3339Nano))
	}
	return at, nil
}

// tokenBucket is a subscription's rate limit: rate attempts per second on
// average, with bursts of up to burst attempts after a quiet spell.
//
// It is the token bucket written as GCRA (the "virtual scheduling" form):
// one time, tat, the theoretical arrival time of the next attempt, advanced
// by the emission interval 1/rate for each attempt; an attempt conforms
// once now >= tat - (burst-1)/rate. Kept in whole nanoseconds (the interval
// rounded up), so no floating-point drift lets an attempt go early.
//
// take hands out reservations rather than refusals: the caller waits until
// its reservation is due. So lanes queue fairly behind each other instead of
// polling, and a retry's attempt counts like any other.
type tokenBucket struct {
	interval  time.Duration // 1/rate, rounded up
	tolerance time.Duration // (burst-1) intervals
	tat       time.Time     // zero before the first take
}

func newTokenBucket(rate float64, burst int) *tokenBucket {
	interval := time.Duration(math.Ceil(float64(time.Second) / rate))
	return &tokenBucket{interval: max(interval, 1), tolerance: time.Duration(max(burst, 1)-1) * max(interval, 1)}
}

// take reserves one attempt at or after now and returns when it may be
// made. A clock that goes backwards grants nothing early.
func (b *tokenBucket) take(now time.Time) time.Time {
	tat := b.tat
	if tat.Before(now) {
		tat = now
	}
	at := tat.Add(-b.tolerance)
	if at.Before(now) {
		at = now
	}
	b.tat = tat.Add(b.interval)
	return at
}

// limiter makes a tokenBucket safe for the lanes of one subscription.
type limiter struct {
	mu sync.Mutex
	b  *tokenBucket
}

// wait blocks until the caller's reserved attempt is due, or ctx ends.
func (l *limiter) wait(ctx context.Context, now func() time.Time, after func(time.Duration) <-chan time.Time) error {
	l.mu.Lock()
	t := now()
	at := l.b.take(t)
	l.mu.Unlock()
	return sleepUntil(ctx, at, t, after)
}

// sleepUntil waits until at (the clock read now), or ctx ends.
func sleepUntil(ctx context.Context, at, now time.Time, after func(time.Duration) <-chan time.Time) error {
	if !at.After(now) {
		return ctx.Err()
	}
	select {
	case <-after(at.Sub(now)):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// delayQueue holds the events of an unordered subscription that are not yet
// due, and pushes each to the workers' queue when it is. (Ordered lanes do
// not use it: a lane must keep its order, so it waits for its own head
// event, and only that lane is held.) One goroutine, run, owns the timer;
// add may be called from any goroutine.
type delayQueue struct {
	mu    sync.Mutex
	h     itemHeap
	added chan struct{}
}

func newDelayQueue() *delayQueue { return &delayQueue{added: make(chan struct{}, 1)} }

func (d *delayQueue) add(it item) {
	d.mu.Lock()
	heap.Push(&d.h, it)
	d.mu.Unlock()
	select {
	case d.added <- struct{}{}:
	default:
	}
}

// len is the number of events waiting.
func (d *delayQueue) len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.h)
}

// run releases due events to out until ctx ends. It keeps one timer, for
// the earliest waiting event, and makes a new one only when that changes.
func (d *delayQueue) run(ctx context.Context, out *queue, now func() time.Time, after func(time.Duration) <-chan time.Time) {
	var wake <-chan time.Time
	var wakeAt time.Time
	for {
		d.mu.Lock()
		t := now()
		for len(d.h) > 0 && !d.h[0].ready.After(t) {
			out.push(heap.Pop(&d.h).(item))
		}
		switch {
		case len(d.h) == 0:
			wake, wakeAt = nil, time.Time{}
		case !d.h[0].ready.Equal(wakeAt) || !wakeAt.After(t):
			wakeAt = d.h[0].ready
			wake = after(wakeAt.Sub(t))
		}
		d.mu.Unlock()
		select {
		case <-wake:
		case <-d.added:
		case <-ctx.Done():
			return
		}
	}
}

// itemHeap orders items by ready time, then by offset.
type itemHeap []item

func (h itemHeap) Len() int { return len(h) }
func (h itemHeap) Less(i, j int) bool {
	if !h[i].ready.Equal(h[j].ready) {
		return h[i].ready.Before(h[j].ready)
	}
	return h[i].rec.Offset < h[j].rec.Offset
}
func (h itemHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *itemHeap) Push(x any)   { *h = append(*h, x.(item)) }
func (h *itemHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = item{}
	*h = old[:len(old)-1]
	return it
}
