package dispatch

import (
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/tributary-io/tributary/cloud/commitlog"
)

func TestReadyAt(t *testing.T) {
	logged := baseTime
	at := baseTime.Add(90 * time.Minute)
	for _, tc := range []struct {
		name    string
		v       any // nil: no deliverat
		want    time.Time
		wantErr string
	}{
		{"absent", nil, time.Time{}, ""},
		{"timestamp", at, at, ""},
		{"rfc3339 string", at.Format(time.RFC3339Nano), at, ""},
		{"in the past", baseTime.Add(-time.Hour), baseTime.Add(-time.Hour), ""},
		{"at the limit", baseTime.Add(2 * time.Hour), baseTime.Add(2 * time.Hour), ""},
		{"beyond max_delay", baseTime.Add(2*time.Hour + time.Second), time.Time{}, "more than max_delay"},
		{"not a time", "tomorrow", time.Time{}, "not a timestamp"},
		{"a number", int32(5), time.Time{}, "not a timestamp"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := makeEvent(1, 1)
			if tc.v != nil {
				e.SetExtension(ExtDeliverAt, tc.v)
			}
			got, err := readyAt(e, logged, 2*time.Hour)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("readyAt = %v, %v; want an error with %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || !got.Equal(tc.want) {
				t.Fatalf("readyAt = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func TestTokenBucket(t *testing.T) {
	b := newTokenBucket(10, 2) // 10/s, bursts of 2
	t0 := baseTime
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	steps := []struct {
		now, want time.Time
	}{
		{ms(0), ms(0)},       // burst
		{ms(0), ms(0)},       // burst
		{ms(0), ms(100)},     // reserved ahead
		{ms(50), ms(200)},    // still queued behind
		{ms(1000), ms(1000)}, // refilled (capped at the burst)
		{ms(1000), ms(1000)},
		{ms(1000), ms(1100)},
		{ms(900), ms(1200)}, // the clock went back: no tokens added
	}
	for i, s := range steps {
		if got := b.take(s.now); !got.Equal(s.want) {
			t.Fatalf("take %d at +%v = +%v, want +%v", i, s.now.Sub(t0), got.Sub(t0), s.want.Sub(t0))
		}
	}
	// Over a long run the average is the rate.
	b = newTokenBucket(250, 1)
	var last time.Time
	for range 1000 {
		last = b.take(t0)
	}
	if want := t0.Add(999 * 4 * time.Millisecond); last.Sub(want).Abs() > time.Microsecond {
		t.Fatalf("1000 takes at 250/s end at +%v, want +%v", last.Sub(t0), want.Sub(t0))
	}
}

// manualClock is a fake clock whose timers fire only when the test
// advances it.
type manualClock struct {
	mu     sync.Mutex
	t      time.Time
	timers []manualTimer
}

type manualTimer struct {
	at time.Time
	ch chan time.Time
}

func newManualClock() *manualClock { return &manualClock{t: baseTime} }

func (c *manualClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *manualClock) after(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.t
		return ch
	}
	c.timers = append(c.timers, manualTimer{c.t.Add(d), ch})
	return ch
}

// pending counts the timers not yet fired whose channel someone may still
// wait on (abandoned timers count too).
func (c *manualClock) pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// advance moves the clock by d and fires the timers that are due.
func (c *manualClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	c.fireLocked()
}

// advanceToNext moves the clock to the earliest timer and fires it (and any
// other due then). False if no timer is pending.
func (c *manualClock) advanceToNext() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.timers) == 0 {
		return false
	}
	next := c.timers[0].at
	for _, tm := range c.timers {
		if tm.at.Before(next) {
			next = tm.at
		}
	}
	if next.After(c.t) {
		c.t = next
	}
	c.fireLocked()
	return true
}

func (c *manualClock) fireLocked() {
	keep := c.timers[:0]
	for _, tm := range c.timers {
		if tm.at.After(c.t) {
			keep = append(keep, tm)
			continue
		}
		tm.ch <- c.t
	}
	c.timers = keep
}

// appendAt appends events whose records the log accepted at the given time.
func appendAt(t testing.TB, lg commitlog.Log, at time.Time, evs ...*event.Event) {
	t.Helper()
	var recs []commitlog.Record
	for _, e := range evs {
		recs = append(recs, commitlog.Record{Topic: e.Subject(), Value: encode(t, e), Time: at})
	}
	if _, err := lg.Append(t.Context(), recs); err != nil {
		t.Fatal(err)
	}
}

// keyedEvent is event i of partition key, with ids "<key>-<i>".
func keyedEvent(key string, i int) *event.Event {
	e := makeEvent(i, 1)
	e.SetID(fmt.Sprintf("%s-%d", key, i))
	e.SetExtension("partitionkey", key)
	return e
}

// twoLaneKeys returns two partition keys that fall in different lanes of 2.
func twoLaneKeys(t *testing.T) (string, string) {
	t.Helper()
	a := "dev-a"
	for i := range 100 {
		b := fmt.Sprintf("dev-b%d", i)
		if laneOf(b, 2) != laneOf(a, 2) {
			return a, b
		}
	}
	t.Fatal("no key in another lane")
	return "", ""
}

// TestDelayedEventHoldsOnlyItsLane: in an ordered subscription, an event
// with a deliverat an hour ahead holds the events behind it in its lane,
// and only those; when the clock reaches deliverat the lane resumes in
// order.
func TestDelayedEventHoldsOnlyItsLane(t *testing.T) {
	clock := newManualClock()
	lg := commitlog.NewMemory(clock.now)
	a, b := twoLaneKeys(t)
	held := keyedEvent(a, 0)
	held.SetExtension(ExtDeliverAt, clock.now().Add(time.Hour))
	appendAt(t, lg, clock.now(), held, keyedEvent(a, 1), keyedEvent(b, 0), keyedEvent(b, 1), keyedEvent(b, 2))

	s := newSink(t, nil)
	d := mustNew(t, lg, t.TempDir(), Options{Now: clock.now, After: clock.after})
	if err := d.Add(Subscription{ID: "delay", Sink: s.URL, Parallelism: 2}); err != nil {
		t.Fatal(err)
	}
	started(t, d)
	waitFor(t, "the other lane delivered and the delayed event waiting", func() bool {
		st, _ := d.Stats("delay")
		return s.delivered() == 3 && st.Delayed == 1 && clock.pending() == 1
	})
	if s.count(held.ID()) != 0 || s.count(a+"-1") != 0 {
		t.Fatal("the delayed lane sent before its time")
	}
	clock.advance(59 * time.Minute)
	if s.count(held.ID()) != 0 {
		t.Fatal("sent a minute early")
	}
	clock.advance(time.Minute)
	waitFor(t, "the delayed lane", func() bool { return s.delivered() == 5 })
	var order []string
	for _, r := range s.snapshot() {
		order = append(order, r.ev.ID())
	}
	if order[3] != held.ID() || order[4] != a+"-1" {
		t.Fatalf("delivery order %v: want %s then %s-1 last", order, held.ID(), a)
	}
	if st, _ := d.Stats("delay"); st.Delayed != 0 {
		t.Fatalf("Delayed = %d after delivery", st.Delayed)
	}
}

// TestDelayedEventUnordered: in an unordered subscription a delayed event
// holds nothing, not even the single worker.
func TestDelayedEventUnordered(t *testing.T) {
	clock := newManualClock()
	lg := commitlog.NewMemory(clock.now)
	held := keyedEvent("k", 0)
	held.SetExtension(ExtDeliverAt, clock.now().Add(time.Hour).Format(time.RFC3339))
	appendAt(t, lg, clock.now(), held, keyedEvent("k", 1), keyedEvent("k", 2))
	s := newSink(t, nil)
	unordered := false
	d := mustNew(t, lg, t.TempDir(), Options{Now: clock.now, After: clock.after})
	if err := d.Add(Subscription{ID: "u", Sink: s.URL, Parallelism: 1, Ordered: &unordered}); err != nil {
		t.Fatal(err)
	}
	started(t, d)
	waitFor(t, "the others delivered past the delayed one", func() bool { return s.delivered() == 2 && clock.pending() >= 1 })
	if s.count(held.ID()) != 0 {
		t.Fatal("delayed event sent early")
	}
	clock.advance(time.Hour)
	waitFor(t, "the delayed event", func() bool { return s.count(held.ID()) == 1 })
	waitFor(t, "cursor past all", func() bool { st, _ := d.Stats("u"); return st.LowWater == 3 })
}

// TestSubscriptionDelay: with delay set, nothing goes before the record is
// that old; the reader waits, so later records wait behind it.
func TestSubscriptionDelay(t *testing.T) {
	clock := newManualClock()
	lg := commitlog.NewMemory(clock.now)
	appendAt(t, lg, clock.now(), keyedEvent("k", 0), keyedEvent("k", 1))
	s := newSink(t, nil)
	d := mustNew(t, lg, t.TempDir(), Options{Now: clock.now, After: clock.after})
	if err := d.Add(Subscription{ID: "sd", Sink: s.URL, Delay: Duration(10 * time.Minute)}); err != nil {
		t.Fatal(err)
	}
	started(t, d)
	waitFor(t, "the reader waiting", func() bool { st, _ := d.Stats("sd"); return clock.pending() == 1 && st.ReadOffset == 1 })
	clock.advance(5 * time.Minute)
	appendAt(t, lg, clock.now(), keyedEvent("k", 2))
	clock.advance(5 * time.Minute)
	waitFor(t, "the first two", func() bool { return s.delivered() == 2 && clock.pending() >= 1 })
	if s.count("k-2") != 0 {
		t.Fatal("k-2 sent 5 minutes early")
	}
	clock.advance(5 * time.Minute)
	waitFor(t, "all", func() bool { return s.delivered() == 3 })
}

// TestBadDeliverAtDeadLettered: an unusable deliverat is a dead letter at
// once, with the reason, and does not hold the lane.
func TestBadDeliverAtDeadLettered(t *testing.T) {
	lg := commitlog.NewMemory(nil)
	far := keyedEvent("k", 0)
	far.SetExtension(ExtDeliverAt, time.Now().Add(48*time.Hour))
	bad := keyedEvent("k", 1)
	bad.SetExtension(ExtDeliverAt, "soon")
	appendAt(t, lg, time.Now(), far, bad, keyedEvent("k", 2))
	s := newSink(t, nil)
	d := mustNew(t, lg, t.TempDir(), Options{})
	if err := d.Add(Subscription{ID: "bad", Sink: s.URL}); err != nil {
		t.Fatal(err)
	}
	started(t, d)
	waitFor(t, "done", func() bool { st, _ := d.Stats("bad"); return st.DeadLettered == 2 && st.Delivered == 1 })
	dls := deadLetters(t, lg, "$deadletter/bad")
	if len(dls) != 2 || !strings.Contains(extString(t, dls[0], ExtDLReason), "max_delay") || !strings.Contains(extString(t, dls[1], ExtDLReason), "not a timestamp") {
		t.Fatalf("dead letters: %v", dls)
	}
}

// TestRateLimit drives a rate-limited subscription with a fake clock: at
// every moment the sink has seen no more than burst + rate × elapsed
// attempts, retries included, and everything gets through.
func TestRateLimit(t *testing.T) {
	for _, tc := range []struct {
		name    string
		ordered bool
		lanes   int
	}{{"ordered 4 lanes", true, 4}, {"unordered 3 workers", false, 3}, {"one lane", true, 1}} {
		t.Run(tc.name, func(t *testing.T) {
			const n, rate, burst = 24, 10, 3
			clock := newManualClock()
			lg := commitlog.NewMemory(clock.now)
			fillLog(t, lg, n, 6)
			var mu sync.Mutex
			var times []time.Time
			s := newSink(t, func(e *event.Event, attempt int) (int, http.Header) {
				mu.Lock()
				times = append(times, clock.now())
				mu.Unlock()
				if e.ID() == "ev-7" && attempt == 1 {
					return http.StatusServiceUnavailable, nil // one retry, which counts too
				}
				return http.StatusOK, nil
			})
			ordered := tc.ordered
			d := mustNew(t, lg, t.TempDir(), Options{Now: clock.now, After: clock.after})
			sub := Subscription{ID: "rl", Sink: s.URL, Parallelism: tc.lanes, Ordered: &ordered, RateLimit: rate, RateBurst: burst,
				Retry: RetryPolicy{MinBackoff: Duration(time.Millisecond)}}
			if err := d.Add(sub); err != nil {
				t.Fatal(err)
			}
			t0 := clock.now()
			started(t, d)
			deadline := time.Now().Add(45 * time.Second)
			tick := time.NewTicker(100 * time.Microsecond)
			defer tick.Stop()
			for s.delivered() < n {
				if time.Now().After(deadline) {
					t.Fatalf("stuck at %d delivered", s.delivered())
				}
				// Advance once every lane with work is waiting on the clock.
				st, _ := d.Stats("rl")
				if int64(clock.pending()) >= min(st.InFlight, int64(tc.lanes)) && st.InFlight > 0 {
					clock.advanceToNext()
				}
				<-tick.C
			}
			mu.Lock()
			defer mu.Unlock()
			sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
			if len(times) != n+1 {
				t.Fatalf("%d attempts, want %d", len(times), n+1)
			}
			for i, at := range times {
				allowed := burst + int(at.Sub(t0).Seconds()*rate+1e-9)
				if i+1 > allowed {
					t.Fatalf("attempt %d at +%v: over the limit (%d allowed)", i+1, at.Sub(t0), allowed)
				}
			}
			if end := times[n].Sub(t0); end < time.Duration(float64(n+1-burst)/rate*float64(time.Second)) {
				t.Fatalf("last attempt at +%v: faster than the rate", end)
			}
		})
	}
}

func TestScheduleSettingsValidate(t *testing.T) {
	for _, tc := range []struct {
		sub   Subscription
		field string
	}{
		{Subscription{Delay: Duration(-time.Second)}, "delay"},
		{Subscription{Delay: Duration(8 * 24 * time.Hour)}, "delay"},
		{Subscription{MaxDelay: Duration(-1)}, "max_delay"},
		{Subscription{RateLimit: -1}, "rate_limit"},
		{Subscription{RateLimit: 2e6}, "rate_limit"},
		{Subscription{RateBurst: 5}, "rate_burst"},
		{Subscription{RateLimit: 5, RateBurst: -1}, "rate_burst"},
	} {
		tc.sub.ID, tc.sub.Sink = "x", "http://127.0.0.1:1/"
		err := tc.sub.Validate()
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("%+v: %v, want an error on %s", tc.sub, err, tc.field)
		}
	}
	ok := Subscription{ID: "x", Sink: "http://127.0.0.1:1/", RateLimit: 0.5, Delay: Duration(time.Minute), MaxDelay: Duration(time.Hour)}
	c, err := ok.compile()
	if err != nil || c.rateBurst != 1 || c.maxDelay != time.Hour {
		t.Fatalf("compile: %+v %v", c, err)
	}
}
