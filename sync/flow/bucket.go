package flow

import "time"

// TokenBucket paces bytes to Rate per second, allowing bursts of Burst.
// Reserve never refuses: it lets the balance go negative and says how long
// the caller must wait, so a frame larger than Burst still goes out, late
// by its share of the rate.
type TokenBucket struct {
	// Rate is the sustained rate in bytes per second. Zero or negative
	// means unlimited.
	Rate float64
	// Burst is the most bytes sent without waiting after a quiet period.
	// Zero means a tenth of a second at Rate, at least 16 KiB.
	Burst float64

	tokens float64
	last   time.Time
}

func (b *TokenBucket) burst() float64 {
	if b.Burst > 0 {
		return b.Burst
	}
	return max(b.Rate/10, 16<<10)
}

// Reserve takes n bytes at now and returns how long to wait before sending
// them: zero if they fit in the current balance.
func (b *TokenBucket) Reserve(now time.Time, n int) time.Duration {
	if b.Rate <= 0 {
		return 0
	}
	if b.last.IsZero() {
		b.tokens = b.burst()
	} else if dt := now.Sub(b.last); dt > 0 {
		b.tokens = min(b.burst(), b.tokens+b.Rate*dt.Seconds())
	}
	if now.After(b.last) {
		b.last = now
	}
	b.tokens -= float64(n)
	if b.tokens >= 0 {
		return 0
	}
	return time.Duration(-b.tokens / b.Rate * float64(time.Second))
}
