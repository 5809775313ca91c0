package ledger

import (
	"testing"
	"time"
)

func TestSummaryCountsEveryFate(t *testing.T) {
	l := New()
	t0 := time.Unix(1000, 0)
	for n := uint64(1); n <= 5; n++ {
		l.Published(Key{"d", n}, t0)
	}
	for _, n := range []uint64{1, 2, 3, 4} { // 5 never acked
		l.Acked(Key{"d", n})
	}
	for _, n := range []uint64{1, 3, 2, 2} { // 2 after 3: out of order; 2 twice: redelivery
		l.Delivered(Payload{Device: "d", N: n}, t0.Add(time.Duration(n)*time.Millisecond))
	}
	l.Delivered(Payload{Device: "ghost", N: 1}, t0)
	for _, n := range []uint64{1, 1, 2, 3} { // 1 twice in the log; 4 missing
		l.InLog(Key{"d", n})
	}
	s := l.Summarise(true)
	want := Summary{Published: 5, Acked: 4, InLog: 3, Delivered: 3, Lost: 1, Duplicates: 1, Redeliveries: 1, OutOfOrder: 1, Unknown: 1}
	if s.Published != want.Published || s.Acked != want.Acked || s.InLog != want.InLog || s.Delivered != want.Delivered ||
		s.Lost != want.Lost || s.Duplicates != want.Duplicates || s.Redeliveries != want.Redeliveries ||
		s.OutOfOrder != want.OutOfOrder || s.Unknown != want.Unknown {
		t.Fatalf("got %+v\nwant %+v", s, want)
	}
	if s.OK() {
		t.Fatal("a run with a lost message must not be OK")
	}
	if s.P50ms != 2 || s.MaxMs != 3 {
		t.Fatalf("latency p50 %v max %v, want 2 and 3 ms", s.P50ms, s.MaxMs)
	}
	if l.Pending() != 1 {
		t.Fatalf("pending %d, want 1 (message 4)", l.Pending())
	}
}

func TestPayloadRoundTrip(t *testing.T) {
	now := time.Unix(5, 7)
	b := MakePayload("dev-1", 42, now, 200)
	if len(b) != 200 {
		t.Fatalf("payload is %d bytes, want 200", len(b))
	}
	p, err := ParsePayload(b)
	if err != nil || p.Device != "dev-1" || p.N != 42 || p.Sent != now.UnixNano() {
		t.Fatalf("round trip: %+v, %v", p, err)
	}
	if _, err := ParsePayload([]byte("not json")); err == nil {
		t.Fatal("garbage parsed")
	}
}

// TestAccountTellsFatesApart drives every fate through a two-subscription
// ledger: delivered, dead-lettered, dropped at the edge (explained by
// counters), lost, duplicated in the log, resent by the device.
func TestAccountTellsFatesApart(t *testing.T) {
	l, err := NewWithSubscriptions([]Subscription{{ID: "all", Ordered: true}, {ID: "strict", Ordered: true}})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Unix(1000, 0)
	both := Meta{Gateway: "gw-1", Subs: 0b11}
	for n := uint64(1); n <= 8; n++ {
		l.PublishedMeta(Key{"d", n}, t0.Add(time.Duration(n)*time.Second), both)
		l.Acked(Key{"d", n})
	}
	l.PublishedMeta(Key{"e", 1}, t0, Meta{Gateway: "gw-2", Priority: 3, Subs: 0b01})
	l.Acked(Key{"e", 1})
	l.PublishedMeta(Key{"e", 2}, t0, Meta{Gateway: "gw-2", Priority: 3, Subs: 0b01})
	l.Acked(Key{"e", 2})
	l.PublishedMeta(Key{"f", 1}, t0, Meta{Gateway: "gw-2", Subs: 0b01}) // never acknowledged

	at := t0.Add(time.Minute)
	// 1, 2: delivered everywhere. 2 is in the log twice from one origin (a
	// duplicate) and once more from another (a device resend).
	for _, n := range []uint64{1, 2} {
		l.InLogFrom(Key{"d", n}, "gw-1", n)
		l.DeliveredTo(0, Payload{Device: "d", N: n}, at)
		l.DeliveredTo(1, Payload{Device: "d", N: n}, at)
	}
	l.InLogFrom(Key{"d", 2}, "gw-1", 2)
	l.InLogFrom(Key{"d", 2}, "gw-1", 99)
	// 3: delivered to all, dead-lettered by strict: dropped by policy.
	l.InLogFrom(Key{"d", 3}, "gw-1", 3)
	l.DeliveredTo(0, Payload{Device: "d", N: 3}, at)
	l.DeadLettered(Key{"d", 3}, 1, "gave up")
	// 4: in the log, delivered to all only: lost on strict.
	l.InLogFrom(Key{"d", 4}, "gw-1", 4)
	l.DeliveredTo(0, Payload{Device: "d", N: 4}, at)
	// 5..8: in the log, delivered to both, but strict's 5 arrives after 6
	// (out of order) and all redelivers 8.
	for _, n := range []uint64{5, 6, 7, 8} {
		l.InLogFrom(Key{"d", n}, "gw-1", n)
		l.DeliveredTo(0, Payload{Device: "d", N: n}, at)
	}
	for _, n := range []uint64{6, 5, 7, 8} {
		l.DeliveredTo(1, Payload{Device: "d", N: n}, at)
	}
	l.DeliveredTo(0, Payload{Device: "d", N: 8}, at)
	// e/1 and e/2 never reached the log: gw-2 counted one quota drop of
	// class 3, so one is dropped and one lost.
	s := l.Account(AccountOptions{CheckedLog: true, EdgeDrops: []EdgeDrops{{Gateway: "gw-2", Priority: 3, QuotaDropped: 1}}})
	check := func(name string, got, want int) {
		t.Helper()
		if got != want {
			t.Errorf("%s = %d, want %d (summary %+v)", name, got, want, s)
		}
	}
	check("published", s.Published, 11)
	check("acked", s.Acked, 10)
	check("failed", s.Failed, 1)
	check("in log", s.InLog, 8)
	check("delivered", s.Delivered, 6) // 1, 2, 5, 6, 7, 8
	check("dropped", s.Dropped, 2)     // d/3 (dead letter), e/1 or e/2 (quota)
	check("lost", s.Lost, 2)           // d/4 on strict, the other e
	check("duplicates", s.Duplicates, 1)
	check("device resends", s.DeviceResends, 1)
	check("redeliveries", s.Redeliveries, 1)
	check("out of order", s.OutOfOrder, 1)
	check("dead-letter drops", s.Drops[DropDeadLetter], 1)
	check("quota drops", s.Drops[DropQuota], 1)
	if s.OK() {
		t.Fatal("a run with lost messages must not be OK")
	}
	if len(s.Subscriptions) != 2 || s.Subscriptions[1].Missing != 1 || s.Subscriptions[1].DeadLettered != 1 || s.Subscriptions[0].Expected != 8 {
		t.Fatalf("per subscription: %+v", s.Subscriptions)
	}
	var gw2 GatewaySummary
	for _, g := range s.PerGateway {
		if g.Gateway == "gw-2" {
			gw2 = g
		}
	}
	if gw2.Published != 3 || gw2.Acked != 2 || gw2.Dropped != 1 || gw2.Lost != 1 {
		t.Fatalf("gw-2: %+v", gw2)
	}
	// Without the edge's counters both e messages are lost.
	if s := l.Account(AccountOptions{CheckedLog: true}); s.Lost != 3 || s.Dropped != 1 {
		t.Fatalf("without edge counters: lost %d dropped %d, want 3 and 1", s.Lost, s.Dropped)
	}
}

// TestUnexpectedDeliveryIsUnknown: a subscription delivering a message its
// filter should have excluded breaks the run.
func TestUnexpectedDeliveryIsUnknown(t *testing.T) {
	l, _ := NewWithSubscriptions([]Subscription{{ID: "a"}, {ID: "b"}})
	t0 := time.Unix(1, 0)
	l.PublishedMeta(Key{"d", 1}, t0, Meta{Subs: 0b01})
	l.Acked(Key{"d", 1})
	l.InLogFrom(Key{"d", 1}, "gw", 1)
	l.DeliveredTo(0, Payload{Device: "d", N: 1}, t0)
	l.DeliveredTo(1, Payload{Device: "d", N: 1}, t0)
	s := l.Account(AccountOptions{CheckedLog: true})
	if s.Unknown != 1 || s.Subscriptions[1].Unexpected != 1 || s.OK() {
		t.Fatalf("%+v", s)
	}
}

// TestPendingBefore counts unsettled (message, subscription) pairs by
// publish time, acknowledged or not, and settles them by delivery, dead
// letter or, for messages no subscription expects, the log.
func TestPendingBefore(t *testing.T) {
	l, _ := NewWithSubscriptions([]Subscription{{ID: "a"}, {ID: "b"}})
	t0 := time.Unix(100, 0)
	l.PublishedMeta(Key{"d", 1}, t0, Meta{Subs: 0b11})
	l.PublishedMeta(Key{"d", 2}, t0.Add(time.Second), Meta{Subs: 0b01})
	l.PublishedMeta(Key{"d", 3}, t0.Add(2*time.Second), Meta{}) // log only
	for _, c := range []struct {
		at   time.Duration
		want int
	}{{0, 0}, {time.Millisecond, 2}, {1500 * time.Millisecond, 3}, {time.Hour, 4}} {
		if got := l.PendingBefore(t0.Add(c.at)); got != c.want {
			t.Fatalf("PendingBefore(t0+%v) = %d, want %d", c.at, got, c.want)
		}
	}
	l.DeliveredTo(0, Payload{Device: "d", N: 1}, t0)
	l.DeliveredTo(0, Payload{Device: "d", N: 1}, t0) // a redelivery settles nothing more
	l.DeadLettered(Key{"d", 1}, 1, "x")
	l.DeadLettered(Key{"d", 1}, 1, "x")
	l.InLogFrom(Key{"d", 3}, "gw", 1)
	if got := l.PendingBefore(t0.Add(time.Hour)); got != 1 {
		t.Fatalf("pending %d, want 1 (d/2 on a)", got)
	}
	l.DeliveredTo(0, Payload{Device: "d", N: 2}, t0)
	if got := l.PendingBefore(t0.Add(time.Hour)); got != 0 {
		t.Fatalf("pending %d, want 0", got)
	}
}

func TestTooManySubscriptions(t *testing.T) {
	if _, err := NewWithSubscriptions(make([]Subscription, MaxSubscriptions+1)); err == nil {
		t.Fatal("accepted more subscriptions than a ledger tracks")
	}
}

// FuzzParsePayload: any bytes (a sink's request body, a log record) are a
// payload or an error, never a panic, and a parsed payload round-trips.
func FuzzParsePayload(f *testing.F) {
	f.Add(MakePayload("dev-1", 7, time.Unix(1, 2), 200))
	f.Add([]byte(`{"d":"x","n":18446744073709551615,"ts":-1}`))
	f.Add([]byte(`{"d":"","n":1}`))
	f.Add([]byte(`[1,2]`))
	f.Add([]byte(`{"d":"\u0000","n":1.5}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParsePayload(b)
		if err != nil {
			return
		}
		if p.Device == "" {
			t.Fatal("accepted a payload without a device")
		}
		q, err := ParsePayload(MakePayload(p.Device, p.N, time.Unix(0, p.Sent), 0))
		if err != nil || q.Device != p.Device || q.N != p.N || q.Sent != p.Sent {
			t.Fatalf("round trip of %+v: %+v, %v", p, q, err)
		}
	})
}
