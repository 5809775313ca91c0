package flow

// Credit is the cloud's flow-control policy: it sizes the window it grants
// each gateway from its append backlog, the bytes it has accepted from
// gateways and not yet made durable. While the log keeps up the backlog
// stays near zero and gateways get the full window; when the log falls
// behind (a slow disk, a burst of reconnecting gateways) the windows shrink
// and, past High, close, so the backlog cannot grow without bound in the
// cloud's memory. Gateways keep their records in their outboxes meanwhile.
//
// The window falls linearly from Window at Low to 1 just below High:
// gateways slow down gradually instead of all stopping and starting
// together.
type Credit struct {
	// Window is the full window, granted at or below Low. Values below 1
	// count as 1.
	Window int
	// Low is the backlog, in bytes, up to which the full window is granted.
	// High is the backlog from which the window is 0 (pause). High <= 0
	// disables the policy: Grant always returns Window. Low <= 0 or
	// Low >= High means High/2.
	Low, High int64
}

// Grant returns the window for a backlog of that many bytes.
func (c Credit) Grant(backlog int64) int {
	w := max(c.Window, 1)
	if c.High <= 0 {
		return w
	}
	low := c.Low
	if low >= c.High || low <= 0 {
		low = c.High / 2
	}
	switch {
	case backlog <= low:
		return w
	case backlog >= c.High:
		return 0
	}
	// 1 + (w-1)·(High-backlog)/(High-low), rounded down.
	return 1 + int(int64(w-1)*(c.High-backlog)/(c.High-low))
}
