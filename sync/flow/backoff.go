package flow

import (
	"math/rand/v2"
	"time"
)

// Backoff computes reconnect delays: exponential growth from Min to Max with
// full jitter, reset once a connection stayed healthy for ResetAfter.
//
// Use: call Connected(now) when a session is established, and Next(now) when
// it failed (or a dial failed) to learn how long to wait before the next
// attempt. The n-th consecutive failure waits a uniformly random duration in
// [Min, min(Max, Min·2^(n-1))]: the floor keeps a fleet from hammering a
// cloud that just restarted, the jitter spreads the fleet's reconnects.
type Backoff struct {
	// Min is the first delay's upper bound and every delay's floor. Zero
	// means 100 ms.
	Min time.Duration
	// Max caps the delay. Zero means 30 s; it is raised to Min if below.
	Max time.Duration
	// ResetAfter is how long a session must have lasted for the next failure
	// to start again at Min. Zero means 10 s.
	ResetAfter time.Duration
	// Rand draws the jitter. Nil means a generator seeded at random.
	Rand *rand.Rand

	failures  int
	connected time.Time // zero while not connected
}

const (
	defaultBackoffMin        = 100 * time.Millisecond
	defaultBackoffMax        = 30 * time.Second
	defaultBackoffResetAfter = 10 * time.Second
)

func (b *Backoff) limits() (lo, hi, reset time.Duration) {
	lo, hi, reset = b.Min, b.Max, b.ResetAfter
	if lo <= 0 {
		lo = defaultBackoffMin
	}
	if hi <= 0 {
		hi = defaultBackoffMax
	}
	hi = max(hi, lo)
	if reset <= 0 {
		reset = defaultBackoffResetAfter
	}
	return lo, hi, reset
}

// Connected records that a session was established at now.
func (b *Backoff) Connected(now time.Time) { b.connected = now }

// Failures is the number of consecutive failures counted so far.
func (b *Backoff) Failures() int { return b.failures }

// Next records a failure at now and returns the delay before the next
// attempt. A failure that ends a session established at least ResetAfter
// before now starts the sequence again at Min.
func (b *Backoff) Next(now time.Time) time.Duration {
	lo, hi, reset := b.limits()
	if !b.connected.IsZero() && now.Sub(b.connected) >= reset {
		b.failures = 0
	}
	b.connected = time.Time{}
	b.failures++
	ceil := lo
	for i := 1; i < b.failures && ceil < hi; i++ {
		ceil *= 2
	}
	ceil = min(ceil, hi)
	if b.Rand == nil {
		b.Rand = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	return lo + time.Duration(b.Rand.Int64N(int64(ceil-lo)+1))
}
