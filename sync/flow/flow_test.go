package flow

import (
	"errors"
	"math/rand/v2"
	"testing"
	"time"
)

func TestWindow(t *testing.T) {
	type step struct {
		send     uint64 // OnSend(send) when ack == 0 && send != 0
		ack      uint64 // OnAck(ack) when non-zero
		released int
		err      error
	}
	tests := []struct {
		name  string
		max   int
		start uint64
		steps []step
		// after the steps:
		len         int
		sent, acked uint64
	}{
		{"send and ack one by one", 2, 0, []step{
			{send: 10}, {ack: 10, released: 1}, {send: 20}, {ack: 20, released: 1},
		}, 0, 20, 20},
		{"cumulative ack releases several", 3, 0, []step{
			{send: 10}, {send: 20}, {send: 30}, {ack: 20, released: 2},
		}, 1, 30, 20},
		{"full window", 2, 0, []step{
			{send: 10}, {send: 20}, {send: 30, err: ErrWindowFull},
		}, 2, 20, 0},
		{"ack inside a batch releases the ones before", 3, 0, []step{
			{send: 10}, {send: 20}, {ack: 15, released: 1}, {ack: 20, released: 1},
		}, 0, 20, 20},
		{"repeated ack is harmless", 3, 0, []step{
			{send: 10}, {ack: 10, released: 1}, {ack: 10, released: 0},
		}, 0, 10, 10},
		{"ack backwards", 3, 0, []step{
			{send: 10}, {send: 20}, {ack: 20, released: 2}, {ack: 10, err: ErrAckBackwards},
		}, 0, 20, 20},
		{"ack beyond sent", 3, 0, []step{
			{send: 10}, {ack: 11, err: ErrAckBeyondSent},
		}, 1, 10, 0},
		{"resume: first batch must pass the start", 3, 100, []step{
			{send: 100, err: ErrSeqNotIncreasing}, {send: 150}, {ack: 99, err: ErrAckBackwards}, {ack: 150, released: 1},
		}, 0, 150, 150},
		{"seq must increase", 3, 0, []step{
			{send: 10}, {send: 10, err: ErrSeqNotIncreasing}, {send: 5, err: ErrSeqNotIncreasing},
		}, 1, 10, 0},
		{"zero max means one", 0, 0, []step{
			{send: 1}, {send: 2, err: ErrWindowFull},
		}, 1, 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := NewWindow(tt.max, tt.start)
			for i, s := range tt.steps {
				var err error
				var released int
				if s.ack != 0 {
					released, err = w.OnAck(s.ack)
				} else {
					err = w.OnSend(s.send)
				}
				if !errors.Is(err, s.err) || (s.err == nil && err != nil) {
					t.Fatalf("step %d: err %v, want %v", i, err, s.err)
				}
				if released != s.released {
					t.Fatalf("step %d: released %d, want %d", i, released, s.released)
				}
			}
			if w.Len() != tt.len || w.Sent() != tt.sent || w.Acked() != tt.acked {
				t.Fatalf("len %d sent %d acked %d, want %d %d %d", w.Len(), w.Sent(), w.Acked(), tt.len, tt.sent, tt.acked)
			}
			if w.CanSend() != (w.Len() < w.Max()) {
				t.Fatal("CanSend inconsistent")
			}
		})
	}
}

func TestBackoffGrowsWithinBounds(t *testing.T) {
	b := &Backoff{Min: 100 * time.Millisecond, Max: time.Second, ResetAfter: time.Minute, Rand: rand.New(rand.NewPCG(1, 2))}
	now := time.Unix(1000, 0)
	ceilings := []time.Duration{100, 200, 400, 800, 1000, 1000, 1000}
	for i, c := range ceilings {
		c *= time.Millisecond
		d := b.Next(now)
		if d < b.Min || d > c {
			t.Fatalf("failure %d: delay %v outside [%v, %v]", i+1, d, b.Min, c)
		}
	}
	if b.Failures() != len(ceilings) {
		t.Fatalf("failures %d", b.Failures())
	}
}

func TestBackoffJitterSpreads(t *testing.T) {
	b := &Backoff{Min: time.Millisecond, Max: time.Second, Rand: rand.New(rand.NewPCG(3, 4))}
	now := time.Unix(1000, 0)
	for range 20 {
		b.Next(now) // reach the cap
	}
	seen := map[time.Duration]bool{}
	lowHalf := 0
	for range 200 {
		d := b.Next(now)
		seen[d] = true
		if d < 500*time.Millisecond {
			lowHalf++
		}
	}
	if len(seen) < 150 || lowHalf < 50 || lowHalf > 150 {
		t.Fatalf("jitter not spread: %d distinct, %d of 200 in the low half", len(seen), lowHalf)
	}
}

func TestBackoffReset(t *testing.T) {
	b := &Backoff{Min: 100 * time.Millisecond, Max: 10 * time.Second, ResetAfter: 5 * time.Second, Rand: rand.New(rand.NewPCG(5, 6))}
	t0 := time.Unix(1000, 0)
	for range 5 {
		b.Next(t0)
	}
	// A short session does not reset the sequence.
	b.Connected(t0)
	b.Next(t0.Add(4 * time.Second))
	if b.Failures() != 6 {
		t.Fatalf("short session: failures %d, want 6", b.Failures())
	}
	// A healthy session does.
	b.Connected(t0.Add(10 * time.Second))
	if d := b.Next(t0.Add(15 * time.Second)); b.Failures() != 1 || d != b.Min {
		t.Fatalf("after a healthy session: failures %d delay %v", b.Failures(), d)
	}
}

func TestBackoffDefaults(t *testing.T) {
	var b Backoff
	d := b.Next(time.Unix(0, 0))
	if d != defaultBackoffMin {
		t.Fatalf("first default delay %v", d)
	}
	for range 40 {
		d = b.Next(time.Unix(0, 0))
	}
	if d < defaultBackoffMin || d > defaultBackoffMax {
		t.Fatalf("default delay %v out of bounds", d)
	}
}

func TestTokenBucket(t *testing.T) {
	t0 := time.Unix(1000, 0)
	type step struct {
		at   time.Duration // since t0
		n    int
		wait time.Duration
	}
	tests := []struct {
		name  string
		b     TokenBucket
		steps []step
	}{
		{"unlimited", TokenBucket{}, []step{{0, 1 << 30, 0}, {0, 1 << 30, 0}}},
		{"burst then paced", TokenBucket{Rate: 1000, Burst: 500}, []step{
			{0, 500, 0},                      // the burst
			{0, 100, 100 * time.Millisecond}, // 100 bytes in debt at 1000 B/s
			{100 * time.Millisecond, 100, 100 * time.Millisecond}, // debt repaid, new debt
			{time.Second, 100, 0}, // refilled (capped at the burst)
		}},
		{"big frame waits its share", TokenBucket{Rate: 1000, Burst: 100}, []step{
			{0, 2100, 2 * time.Second},
			{2 * time.Second, 50, 50 * time.Millisecond},
		}},
		{"refill capped at burst", TokenBucket{Rate: 1000, Burst: 200}, []step{
			{0, 200, 0}, {time.Hour, 200, 0}, {time.Hour, 1, time.Millisecond},
		}},
		{"clock going backwards adds nothing", TokenBucket{Rate: 1000, Burst: 100}, []step{
			{time.Second, 100, 0}, {0, 100, 100 * time.Millisecond},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.b
			for i, s := range tt.steps {
				if got := b.Reserve(t0.Add(s.at), s.n); got != s.wait {
					t.Fatalf("step %d: wait %v, want %v", i, got, s.wait)
				}
			}
		})
	}
}

func TestWindowLimits(t *testing.T) {
	w := NewWindow(4, 0)
	w.SetLimits(3, 100)
	if !w.CanSendSized(500) {
		t.Fatal("an empty window must take one batch of any size")
	}
	if err := w.OnSendSized(10, 500); err != nil {
		t.Fatal(err)
	}
	if w.CanSendSized(1) || !errors.Is(w.OnSendSized(11, 1), ErrWindowFull) {
		t.Fatal("byte limit not enforced with a batch in flight")
	}
	if _, err := w.OnAck(10); err != nil || w.Bytes() != 0 || w.Len() != 0 {
		t.Fatalf("ack: %v, %d bytes, %d batches in flight", err, w.Bytes(), w.Len())
	}
	for i, size := range []int{40, 60} {
		if err := w.OnSendSized(uint64(20+i), size); err != nil {
			t.Fatal(err)
		}
	}
	if w.CanSendSized(1) || w.Bytes() != 100 {
		t.Fatalf("100 bytes in flight of 100: CanSendSized(1) %v, Bytes %d", w.CanSendSized(1), w.Bytes())
	}
	if released, _ := w.OnAck(20); released != 1 || w.Bytes() != 60 || !w.CanSendSized(40) || w.CanSendSized(41) {
		t.Fatalf("after releasing 40 bytes: released %d, Bytes %d", released, w.Bytes())
	}

	// A credit of 0 pauses even an empty window; batches in flight above a
	// lowered limit stay until acked.
	w.SetLimits(0, 0)
	if w.CanSendSized(0) {
		t.Fatal("paused window can send")
	}
	if _, err := w.OnAck(21); err != nil || w.CanSend() {
		t.Fatalf("paused window after ack: %v, CanSend %v", err, w.CanSend())
	}
	w.SetLimits(2, 0)
	for i := range 2 {
		if err := w.OnSendSized(uint64(30+i), 1<<30); err != nil {
			t.Fatalf("no byte limit: %v", err)
		}
	}
	w.SetLimits(1, 0)
	if w.CanSend() || w.Len() != 2 {
		t.Fatalf("lowered below what is in flight: CanSend %v, Len %d", w.CanSend(), w.Len())
	}
	if released, _ := w.OnAck(30); released != 1 || w.CanSend() {
		t.Fatal("one in flight of a window of one: must wait")
	}
	if released, _ := w.OnAck(31); released != 1 || !w.CanSend() {
		t.Fatal("empty window of one: must send")
	}
}

func TestCreditGrant(t *testing.T) {
	tests := []struct {
		c       Credit
		backlog int64
		want    int
	}{
		{Credit{Window: 16}, 1 << 40, 16},                     // disabled
		{Credit{Window: 0, High: 100}, 0, 1},                  // window at least 1
		{Credit{Window: 16, Low: 100, High: 200}, 0, 16},      // idle
		{Credit{Window: 16, Low: 100, High: 200}, 100, 16},    // at Low
		{Credit{Window: 16, Low: 100, High: 200}, 101, 15},    // just above
		{Credit{Window: 16, Low: 100, High: 200}, 150, 8},     // half way
		{Credit{Window: 16, Low: 100, High: 200}, 199, 1},     // just below High
		{Credit{Window: 16, Low: 100, High: 200}, 200, 0},     // pause
		{Credit{Window: 16, Low: 100, High: 200}, 1 << 40, 0}, // far behind
		{Credit{Window: 8, Low: 500, High: 200}, 100, 8},      // Low >= High: High/2
		{Credit{Window: 8, Low: 500, High: 200}, 150, 4},
		{Credit{Window: 8, High: 200}, 100, 8}, // Low unset: High/2
		{Credit{Window: 8, High: 200}, 101, 7},
	}
	for _, tt := range tests {
		if got := tt.c.Grant(tt.backlog); got != tt.want {
			t.Errorf("%+v.Grant(%d) = %d, want %d", tt.c, tt.backlog, got, tt.want)
		}
	}
	// Monotonic: more backlog never grants more.
	c := Credit{Window: 64, Low: 1000, High: 5000}
	prev := c.Grant(0)
	for b := int64(0); b < 6000; b += 7 {
		g := c.Grant(b)
		if g > prev {
			t.Fatalf("Grant(%d) = %d above Grant of a smaller backlog (%d)", b, g, prev)
		}
		prev = g
	}
}
