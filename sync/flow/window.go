// Package flow holds the sync protocol's I/O-free state machines: the
// gateway's send window and its reconnect backoff, the cloud's credit
// policy, the gateway's bandwidth cap. They take events and the
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
	// ErrWindowFull means OnSend was called when the limits do not allow
	// another batch.
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
// It limits what is in flight to Max batches and, if MaxBytes is not 0, to
// MaxBytes bytes, except that one batch may always be sent when none is in
// flight (a batch larger than the byte limit must still go). The cloud's
// credits change both limits during a session (SetLimits); Max 0 pauses.
//
// The zero Window is not usable: call NewWindow.
type Window struct {
	max      int
	maxBytes int64
	inflight []inflight // unacknowledged batches, ascending
	bytes    int64      // sum of inflight sizes
	sent     uint64     // highest last_seq sent (or the start point)
	acked    uint64     // highest ack seen (or the start point)
}

type inflight struct {
	last uint64
	size int64
}

// NewWindow returns an empty window allowing size batches in flight (at
// least 1) and no byte limit, for a session that resumes after seq start:
// the first batch must end above start, and acks below start are
// backwards.
func NewWindow(size int, start uint64) *Window {
	return &Window{max: max(size, 1), sent: start, acked: start}
}

// SetLimits replaces the limits: batches (0 pauses sending; negative counts
// as 0) and bytes (0 or negative: no byte limit). Batches already in flight
// stay; lower limits only hold back later sends.
func (w *Window) SetLimits(batches int, bytes int64) {
	w.max = max(batches, 0)
	w.maxBytes = max(bytes, 0)
}

// Max is the number of batches allowed in flight.
func (w *Window) Max() int { return w.max }

// MaxBytes is the byte limit (0: none).
func (w *Window) MaxBytes() int64 { return w.maxBytes }

// Len is the number of batches in flight, Bytes their size.
func (w *Window) Len() int { return len(w.inflight) }

// Bytes is the size of the batches in flight, as given to OnSendSized.
func (w *Window) Bytes() int64 { return w.bytes }

// CanSend reports whether another batch may be sent as far as the batch
// limit is concerned; CanSendSized checks the byte limit too.
func (w *Window) CanSend() bool { return len(w.inflight) < w.max }

// CanSendSized reports whether a batch of size bytes may be sent now.
func (w *Window) CanSendSized(size int) bool {
	if !w.CanSend() {
		return false
	}
	return w.maxBytes == 0 || len(w.inflight) == 0 || w.bytes+int64(size) <= w.maxBytes
}

// Sent is the highest seq sent: the next batch reads records after it.
func (w *Window) Sent() uint64 { return w.sent }

// Acked is the highest seq acknowledged.
func (w *Window) Acked() uint64 { return w.acked }

// OnSend records a batch ending at lastSeq as sent, not counting its size.
func (w *Window) OnSend(lastSeq uint64) error { return w.OnSendSized(lastSeq, 0) }

// OnSendSized records a batch of size bytes ending at lastSeq as sent. It
// refuses (ErrWindowFull) a batch CanSendSized would not allow.
func (w *Window) OnSendSized(lastSeq uint64, size int) error {
	if !w.CanSendSized(size) {
		return fmt.Errorf("%w: %d batches, %d bytes in flight", ErrWindowFull, len(w.inflight), w.bytes)
	}
	if lastSeq <= w.sent {
		return fmt.Errorf("%w: %d after %d", ErrSeqNotIncreasing, lastSeq, w.sent)
	}
	w.inflight = append(w.inflight, inflight{last: lastSeq, size: int64(size)})
	w.bytes += int64(size)
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
	for released < len(w.inflight) && w.inflight[released].last <= ackedSeq {
		w.bytes -= w.inflight[released].size
		released++
	}
	w.inflight = w.inflight[released:]
	return released, nil
}
