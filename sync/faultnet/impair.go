// Package faultnet is a fault-injecting UDP relay for tests: it sits
// between a QUIC client and server on 127.0.0.1 and loses, delays, jitters,
// duplicates and reorders datagrams, or swallows everything for a period
// (a blackhole, like a gateway's uplink going away).
//
// The decisions are made by Impairment.Plan, which is free of I/O and takes
// its randomness from the caller, so they can be tested without sockets.
package faultnet

import (
	"math/rand/v2"
	"time"
)

// Impairment says what happens to datagrams. The zero value forwards
// everything at once.
type Impairment struct {
	// Loss is the probability in [0, 1] that a datagram is dropped.
	Loss float64
	// Delay is added to every datagram. Zero means none.
	Delay time.Duration
	// Jitter adds a uniformly random [0, Jitter) on top of Delay. Zero
	// means none. Jitter larger than the gap between datagrams reorders
	// them.
	Jitter time.Duration
	// Duplicate is the probability in [0, 1] that a datagram is sent twice
	// (the copy with its own jitter).
	Duplicate float64
	// Reorder is the probability in [0, 1] that a datagram is held back by
	// ReorderDelay, letting the following ones overtake it.
	Reorder float64
	// ReorderDelay is the hold-back of a reordered datagram. Zero means 5 ms.
	ReorderDelay time.Duration
}

// Plan returns the delays after which one datagram is to be sent: none if
// it is lost, two if it is duplicated.
func (imp Impairment) Plan(r *rand.Rand) []time.Duration {
	if imp.Loss > 0 && r.Float64() < imp.Loss {
		return nil
	}
	n := 1
	if imp.Duplicate > 0 && r.Float64() < imp.Duplicate {
		n = 2
	}
	out := make([]time.Duration, n)
	for i := range out {
		d := imp.Delay
		if imp.Jitter > 0 {
			d += time.Duration(r.Int64N(int64(imp.Jitter)))
		}
		if imp.Reorder > 0 && r.Float64() < imp.Reorder {
			rd := imp.ReorderDelay
			if rd <= 0 {
				rd = 5 * time.Millisecond
			}
			d += rd
		}
		out[i] = d
	}
	return out
}
