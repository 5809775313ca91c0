package broker

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"
)

// testClock is a clock that moves only when the test says so.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newTestClock() *testClock { return &testClock{t: time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)} }

func (c *testClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// startBrokerClock is startBroker with an injected clock.
func startBrokerClock(t *testing.T, cfg Config, ob Outbox, clock *testClock) *Broker {
	t.Helper()
	cfg.Listeners.TCP.Address = "127.0.0.1:0"
	b, err := New(cfg, ob, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.SetClock(clock.now); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("close broker: %v", err)
		}
	})
	return b
}

func recordPayloads(ob *fakeOutbox) map[string]bool {
	records, _ := ob.snapshot()
	got := map[string]bool{}
	for _, r := range records {
		got[string(r.Payload)] = true
	}
	return got
}

// TestPublishRateMQTT5: with the clock stopped, an MQTT 5 client that has
// used its burst gets PUBACK 0x96 for further QoS 1 publishes and PUBREC
// 0x96 for QoS 2, its QoS 0 publishes are dropped, and none of them is stored; another client is not
// affected; once the clock moves the client is served again.
func TestPublishRateMQTT5(t *testing.T) {
	for _, mode := range ackModes {
		t.Run(string(mode), func(t *testing.T) {
			clock := newTestClock()
			ob := newFakeOutbox(t)
			b := startBrokerClock(t, Config{AckMode: mode, Limits: Limits{PublishRate: 1, PublishBurst: 2}}, ob, clock)

			fast, _ := dialRaw(t, b.Addr().TCP, "fast", 5, packets.Properties{})
			for id := uint16(1); id <= 4; id++ {
				fast.publish(id, 1, "sensors/fast", fmt.Appendf(nil, "fast-%d", id), packets.Properties{})
			}
			fast.publish(0, 0, "sensors/fast", []byte("fast-qos0"), packets.Properties{})
			for id := uint16(1); id <= 4; id++ {
				pk := fast.mustRead(packets.Puback)
				want := byte(0)
				if id > 2 {
					want = 0x96
				}
				if pk.PacketID != id || pk.ReasonCode != want {
					t.Fatalf("PUBACK %d reason %#x, want %d reason %#x", pk.PacketID, pk.ReasonCode, id, want)
				}
			}
			// The QoS 0 publish gets no answer: make sure it was refused
			// before the clock moves, or it could take the token meant
			// for publish 5.
			waitUntil(t, "the QoS 0 publish refused", func() bool { return b.Stats().RateLimited == 3 })

			other, _ := dialRaw(t, b.Addr().TCP, "other", 5, packets.Properties{})
			for id := uint16(1); id <= 2; id++ {
				other.publish(id, 1, "sensors/other", fmt.Appendf(nil, "other-%d", id), packets.Properties{})
				if pk := other.mustRead(packets.Puback); pk.PacketID != id || pk.ReasonCode != 0 {
					t.Fatalf("other client: PUBACK %d reason %#x", pk.PacketID, pk.ReasonCode)
				}
			}

			clock.advance(time.Second) // one token back
			fast.publish(5, 1, "sensors/fast", []byte("fast-5"), packets.Properties{})
			if pk := fast.mustRead(packets.Puback); pk.PacketID != 5 || pk.ReasonCode != 0 {
				t.Fatalf("after a second: PUBACK %d reason %#x", pk.PacketID, pk.ReasonCode)
			}
			fast.publish(6, 1, "sensors/fast", []byte("fast-6"), packets.Properties{})
			if pk := fast.mustRead(packets.Puback); pk.PacketID != 6 || pk.ReasonCode != 0x96 {
				t.Fatalf("second publish after a second: PUBACK %d reason %#x", pk.PacketID, pk.ReasonCode)
			}
			fast.publish(7, 2, "sensors/fast", []byte("fast-qos2"), packets.Properties{})
			if pk := fast.mustRead(packets.Pubrec); pk.PacketID != 7 || pk.ReasonCode != 0x96 {
				t.Fatalf("QoS 2 over the rate: PUBREC %d reason %#x", pk.PacketID, pk.ReasonCode)
			}

			ob.waitFor(t, "five commits", func(o *fakeOutbox) bool { return len(o.committed) == 5 })
			got := recordPayloads(ob)
			for _, p := range []string{"fast-1", "fast-2", "fast-5", "other-1", "other-2"} {
				if !got[p] {
					t.Errorf("%s not stored", p)
				}
			}
			if len(got) != 5 {
				t.Errorf("stored %v, want exactly five messages", got)
			}
			st := b.Stats()
			if st.RateLimited != 5 || st.Throttled != 0 || st.Rejected != 5 {
				t.Errorf("stats: rate limited %d, throttled %d, rejected %d; want 5, 0, 5", st.RateLimited, st.Throttled, st.Rejected)
			}
		})
	}
}

// TestPublishRateMQTT311: with the clock stopped, a paho MQTT 3.1.1 client
// past its burst is not refused or disconnected but not read from: its
// third publish stays unacknowledged and unstored while another client
// publishes freely; each second of clock releases one more.
func TestPublishRateMQTT311(t *testing.T) {
	clock := newTestClock()
	ob := newFakeOutbox(t)
	b := startBrokerClock(t, Config{Limits: Limits{PublishRate: 1, PublishBurst: 2}}, ob, clock)

	slow := pahoClient(t, tcpURL(b), "slow")
	var toks []paho.Token
	for i := 1; i <= 4; i++ {
		toks = append(toks, slow.Publish("sensors/slow", 1, false, fmt.Sprintf("slow-%d", i)))
	}
	for i := range 2 {
		if err := waitToken(t, toks[i]); err != nil {
			t.Fatalf("publish %d: %v", i+1, err)
		}
	}
	waitUntil(t, "the third publish to be throttled", func() bool { return b.Stats().Throttled == 1 })

	other := pahoClient(t, tcpURL(b), "other")
	for i := 1; i <= 2; i++ { // its own whole burst
		if err := waitToken(t, other.Publish("sensors/other", 1, false, fmt.Sprintf("other-%d", i))); err != nil {
			t.Fatalf("other client: %v", err)
		}
	}
	if toks[2].WaitTimeout(0) {
		t.Fatalf("third publish acknowledged with the clock stopped (error %v)", toks[2].Error())
	}
	if got := recordPayloads(ob); got["slow-3"] || !got["other-2"] {
		t.Fatalf("stored %v while slow-3 should wait", got)
	}

	clock.advance(time.Second)
	if err := waitToken(t, toks[2]); err != nil {
		t.Fatalf("publish 3: %v", err)
	}
	clock.advance(time.Second)
	if err := waitToken(t, toks[3]); err != nil {
		t.Fatalf("publish 4: %v", err)
	}
	if !slow.IsConnectionOpen() {
		t.Fatal("throttled client was disconnected")
	}
	got := recordPayloads(ob)
	for i := 1; i <= 4; i++ {
		if !got[fmt.Sprintf("slow-%d", i)] {
			t.Errorf("slow-%d not stored", i)
		}
	}
	// Throttled is 1 or 2: the fourth publish may be read only after the
	// clock moved a second time.
	if st := b.Stats(); st.RateLimited != 0 || st.Rejected != 0 || st.Throttled == 0 {
		t.Errorf("stats: rate limited %d, rejected %d, throttled %d", st.RateLimited, st.Rejected, st.Throttled)
	}
}

// TestRateLimiterForgetsFullBuckets: a bucket outlives its client while it
// is partly empty (reconnecting does not refill it) and is forgotten once
// full.
func TestRateLimiterForgetsFullBuckets(t *testing.T) {
	r := newRateLimiter(Config{Limits: Limits{PublishRate: 2}}.withDefaults().Limits)
	now := newTestClock().now()
	for range 2 {
		if ok, _ := r.take("a", now); !ok {
			t.Fatal("burst refused")
		}
	}
	ok, wait := r.take("a", now)
	if ok || wait != 500*time.Millisecond {
		t.Fatalf("over the burst: ok %v wait %v, want a refusal and 500ms", ok, wait)
	}
	r.left("a", now)
	if ok, _ := r.take("a", now); ok {
		t.Fatal("reconnecting refilled the bucket")
	}
	r.left("a", now.Add(time.Second))
	if len(r.buckets) != 0 {
		t.Fatalf("full bucket kept: %d", len(r.buckets))
	}
	// A client that left with an empty bucket is swept later.
	_, _ = r.take("b", now)
	_, _ = r.take("b", now)
	r.left("b", now)
	for range rateSweepEvery {
		r.left("gone", now.Add(time.Hour))
	}
	if len(r.buckets) != 0 {
		t.Fatalf("sweep kept %d buckets", len(r.buckets))
	}
}

func TestPublishRateConfig(t *testing.T) {
	c, err := ParseConfig([]byte("limits:\n  publish_rate: 2.5\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.withDefaults().Limits; got.PublishRate != 2.5 || got.PublishBurst != 3 {
		t.Fatalf("rate %v burst %d, want 2.5 and 3", got.PublishRate, got.PublishBurst)
	}
	if newRateLimiter(Config{}.withDefaults().Limits) != nil {
		t.Fatal("a zero rate must mean no limit")
	}
	for _, l := range []Limits{{PublishRate: -1}, {PublishRate: math.NaN()}, {PublishRate: math.Inf(1)}, {PublishRate: 1, PublishBurst: -1}} {
		if err := (Config{Limits: l}).Validate(); !errors.Is(err, ErrConfig) {
			t.Errorf("%+v: err %v, want ErrConfig", l, err)
		}
	}
}
