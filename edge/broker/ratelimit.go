package broker

import (
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tributary-io/tributary/sync/flow"
)

// Per-client publish rate (Limits.PublishRate)
//
// Each client id has a token bucket of Limits.PublishBurst messages refilled
// at Limits.PublishRate a second; every publish (any QoS) takes one token.
// What happens to a publish that finds the bucket empty depends on what the
// protocol can say:
//
//   - MQTT 5 has a reason code for it: a QoS 1 publish gets PUBACK 0x96
//     (message rate too high), QoS 2 PUBREC 0x96, QoS 0 is dropped. The
//     message is neither stored nor forwarded nor delivered, and is counted
//     in Stats.RateLimited (the metric's drop reason "rate_limited").
//   - MQTT 3.1.1 has no negative acknowledgement; the only refusal is a
//     disconnect, which makes the device resend the same messages at once
//     and adds reconnect storms to the overload. So instead the broker
//     stops reading the client's connection until a token is there
//     (backpressure), as EMQX's messages_rate does: TCP flow control then
//     slows the device down, nothing is lost and nothing is refused.
//     Stats.Throttled counts publishes that had to wait.
//
// A refused MQTT 5 publish takes no token, so a client sending twice its
// rate still gets half of its messages through. Buckets are kept by client
// id, not by connection, so reconnecting does not refill one; a bucket is
// forgotten once its client has disconnected and it is full again.
type rateLimiter struct {
	rate  float64
	burst int
	// maxWait bounds one wait of a throttled reader before it looks at the
	// clock again, so an injected clock that jumps is noticed.
	maxWait time.Duration

	mu          sync.Mutex
	buckets     map[string]*flow.TokenBucket
	disconnects int // since the last sweep of full buckets
}

// rateSweepEvery is how many disconnects pass between sweeps that forget
// full buckets of clients that left with a partly empty one.
const rateSweepEvery = 1024

// codeRateTooHigh is the refusal an MQTT 5 client over its rate gets.
var codeRateTooHigh = packets.Code{Code: 0x96, Reason: "message rate too high"}

func newRateLimiter(l Limits) *rateLimiter {
	if l.PublishRate <= 0 {
		return nil
	}
	return &rateLimiter{rate: l.PublishRate, burst: l.PublishBurst, maxWait: 100 * time.Millisecond, buckets: map[string]*flow.TokenBucket{}}
}

// take takes one token from id's bucket at now if there is one. If there is
// not, it changes nothing and returns how long until there will be.
func (r *rateLimiter) take(id string, now time.Time) (ok bool, wait time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	tb := r.buckets[id]
	if tb == nil {
		tb = &flow.TokenBucket{Rate: r.rate, Burst: float64(r.burst)}
		r.buckets[id] = tb
	}
	// flow.TokenBucket never refuses (its balance goes negative); trying
	// on a copy keeps a refused take from being charged.
	try := *tb
	if wait = try.Reserve(now, 1); wait > 0 {
		return false, wait
	}
	*tb = try
	return true, 0
}

// full reports whether tb would grant a whole burst at now.
func (r *rateLimiter) full(tb *flow.TokenBucket, now time.Time) bool {
	probe := *tb
	return probe.Reserve(now, r.burst) == 0
}

// left forgets id's bucket if it is full, and every 1024 calls sweeps the
// full buckets of clients that left earlier.
func (r *rateLimiter) left(id string, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if tb := r.buckets[id]; tb != nil && r.full(tb, now) {
		delete(r.buckets, id)
	}
	if r.disconnects++; r.disconnects < rateSweepEvery {
		return
	}
	r.disconnects = 0
	for k, tb := range r.buckets {
		if r.full(tb, now) {
			delete(r.buckets, k)
		}
	}
}

// overRate applies Limits.PublishRate to one publish from cl and reports
// whether it must be refused with codeRateTooHigh. Only an MQTT 5 client is
// refused; an MQTT 3.1.1 client's read goroutine waits here for a token
// (backpressure) and is refused only if the broker closes or stops the
// client meanwhile. A device that hangs up while held back is noticed only
// when the wait ends (at most 1/PublishRate, since a refused take leaves no
// debt): nothing reads its socket until then. False when no rate is
// configured.
func (b *Broker) overRate(cl *mqtt.Client) bool {
	r := b.rates
	if r == nil {
		return false
	}
	ok, wait := r.take(cl.ID, b.now())
	if ok {
		return false
	}
	if cl.Properties.ProtocolVersion == 5 {
		b.rateLimited.Add(1)
		return true
	}
	b.throttled.Add(1)
	for !ok {
		t := time.NewTimer(min(wait, r.maxWait))
		select {
		case <-t.C:
		case <-b.closing:
			t.Stop()
			return true
		}
		if cl.Closed() {
			return true // stopped by the broker (a takeover, Close): nobody to hold back
		}
		ok, wait = r.take(cl.ID, b.now())
	}
	return false
}
