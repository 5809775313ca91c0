package link

import (
	"fmt"
	"sync"
	"sync/atomic"
)

// sourceAcker tells the Source what the cloud acknowledged, on a goroutine
// of its own. On a gateway Source.Ack deletes rows in an SQLite transaction
// that ends with an fsync; doing it on the send loop stalled sending for the
// length of every delete. Acks are cumulative, so a burst that arrives while
// one Ack runs collapses into one call with the highest seq.
//
// The Source sees Ack only from this goroutine, with seqs that grow.
type sourceAcker struct {
	src     Source
	applied *atomic.Uint64 // highest seq the Source acknowledged (Client.ackedSeq)

	mu   sync.Mutex
	want uint64 // highest seq posted: the cloud has it durably

	wake chan struct{} // cap 1: want changed, or stop
	errc chan error    // cap 1: an Ack failed; the session in progress ends
	stop chan struct{}
	done chan struct{}
}

func newSourceAcker(src Source, applied *atomic.Uint64) *sourceAcker {
	a := &sourceAcker{
		src: src, applied: applied, want: applied.Load(),
		wake: make(chan struct{}, 1), errc: make(chan error, 1),
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	go a.run()
	return a
}

// post records that the cloud holds every seq <= seq durably. Posting a
// seq at or below an earlier one retries a failed Ack.
func (a *sourceAcker) post(seq uint64) {
	a.mu.Lock()
	a.want = max(a.want, seq)
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// posted is the highest seq posted so far.
func (a *sourceAcker) posted() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.want
}

// close applies what is still pending, then stops the goroutine.
func (a *sourceAcker) close() {
	close(a.stop)
	<-a.done
}

func (a *sourceAcker) run() {
	defer close(a.done)
	for {
		select {
		case <-a.wake:
			a.apply()
		case <-a.stop:
			a.apply()
			return
		}
	}
}

// apply acknowledges the latest posted seq if the Source does not have it.
func (a *sourceAcker) apply() {
	a.mu.Lock()
	seq := a.want
	a.mu.Unlock()
	if seq <= a.applied.Load() {
		return
	}
	if err := a.src.Ack(seq); err != nil {
		select {
		case a.errc <- fmt.Errorf("source ack %d: %w", seq, err):
		default:
		}
		return
	}
	a.applied.Store(seq)
}
