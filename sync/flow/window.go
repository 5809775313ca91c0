// Package flow holds the sync protocol's I/O-free state machines: the
// gateway's send window and its reconnect backoff. They take events and the
// current time and say what to do; the caller owns sockets, timers and
// goroutines. None of the types is safe for concurrent use.
package flow

import (
	"errors"
	"fmt"
)

// Sentinel errors. Compare with errors.Is. ErrAckBackwards and
// ErrAckBeyondSent are protocol errors of the peer: the session is unusable.
var (
	// ErrWindowFull means OnSend was called with Len() == Max().
	ErrWindowFull = errors.New("flow: window full")
	// ErrSeqNotIncreasing means OnSend with a last_seq not above Sent().
	ErrSeqNotIncreasing = errors.New("flow: batch seq not increasing")
	// ErrAckBackwards means an ack below an earlier ack.
	ErrAckBackwards = errors.New("flow: ack goes backwards")
	// ErrAckBeyondSent means an ack above the highest seq sent.
	ErrAckBeyondSent = errors.New("flow: ack beyond what was sent")
)

// Window tracks the batches a session has sent and not yet seen
// acknowledged, keyed by each batch's last_seq. Acks are cumulative: an ack
// of seq releases every batch whose last_seq is at or below it.
//
// The zero Window is not usable: call NewWindow.
type Window struct {
	max      int
	inflight []uint64 // last_seq of unacknowledged batches, ascending
	sent     uint64   // highest last_seq sent (or the start point)
	acked    uint64   // highest ack seen (or the start point)
}

// NewWindow returns an empty window allowing size batches in flight (at
// least 1) for a session that resumes after seq start: the first batch must
// end above start, and acks below start are backwards.
func NewWindow(size int, start uint64) *Window {
	return &Window{max: max(size, 1), sent: start, acked: start}
}

// Max is the number of batches allowed in flight.
func (w *Window) Max() int { return w.max }

// Len is the number of batches in flight.
func (w *Window) Len() int { return len(w.inflight) }

// CanSend reports whether another batch may be sent.
func (w *Window) CanSend() bool { return len(w.inflight) < w.max }

// Sent is the highest seq sent: the next batch reads records after it.
func (w *Window) Sent() uint64 { return w.sent }

// Acked is the highest seq acknowledged.
func (w *Window) Acked() uint64 { return w.acked }

// OnSend records a batch ending at lastSeq as sent.
func (w *Window) OnSend(lastSeq uint64) error {
	if !w.CanSend() {
		return fmt.Errorf("%w: %d batches in flight", ErrWindowFull, len(w.inflight))
	}
	if lastSeq <= w.sent {
		return fmt.Errorf("%w: %d after %d", ErrSeqNotIncreasing, lastSeq, w.sent)
	}
	w.inflight = append(w.inflight, lastSeq)
	w.sent = lastSeq
	return nil
}

// OnAck applies a cumulative ack and returns how many batches it released.
// An ack equal to the previous one releases nothing and is not an error; an
// ack inside a batch (below its last_seq) releases the batches before it.
// It refuses an ack below Acked() or above Sent(), changing nothing.
func (w *Window) OnAck(ackedSeq uint64) (released int, err error) {
	if ackedSeq < w.acked {
		return 0, fmt.Errorf("%w: %d after %d", ErrAckBackwards, ackedSeq, w.acked)
	}
	if ackedSeq > w.sent {
		return 0, fmt.Errorf("%w: ack %d, sent up to %d", ErrAckBeyondSent, ackedSeq, w.sent)
	}
	w.acked = ackedSeq
	for released < len(w.inflight) && w.inflight[released] <= ackedSeq {
		released++
	}
	w.inflight = w.inflight[released:]
	return released, nil
}
