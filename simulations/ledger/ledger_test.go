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
