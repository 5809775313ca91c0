package faultnet

import (
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"
)

func TestPlan(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	tests := []struct {
		name string
		imp  Impairment
		want []time.Duration
	}{
		{"zero forwards at once", Impairment{}, []time.Duration{0}},
		{"loss 1 drops", Impairment{Loss: 1}, nil},
		{"duplicate 1 sends twice", Impairment{Duplicate: 1}, []time.Duration{0, 0}},
		{"delay", Impairment{Delay: 3 * time.Millisecond}, []time.Duration{3 * time.Millisecond}},
		{"reorder holds back", Impairment{Reorder: 1}, []time.Duration{5 * time.Millisecond}},
		{"reorder delay", Impairment{Reorder: 1, ReorderDelay: time.Millisecond, Delay: time.Millisecond}, []time.Duration{2 * time.Millisecond}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.imp.Plan(r)
			if len(got) != len(tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Fatalf("got %v, want %v", got, tt.want)
				}
			}
		})
	}
}

func TestPlanRates(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	imp := Impairment{Loss: 0.2, Duplicate: 0.1, Delay: time.Millisecond, Jitter: time.Millisecond}
	lost, dup := 0, 0
	const n = 10000
	for range n {
		p := imp.Plan(r)
		switch len(p) {
		case 0:
			lost++
		case 2:
			dup++
		}
		for _, d := range p {
			if d < time.Millisecond || d >= 2*time.Millisecond {
				t.Fatalf("delay %v outside [1ms, 2ms)", d)
			}
		}
	}
	if lost < 1800 || lost > 2200 {
		t.Fatalf("lost %d of %d, want about 20%%", lost, n)
	}
	if dup < 650 || dup > 950 { // 10% of the 80% kept
		t.Fatalf("duplicated %d of %d, want about 8%%", dup, n)
	}
}

// echoServer answers every datagram with the same bytes.
func echoServer(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			c.WriteToUDP(buf[:n], from)
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return c
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (f *fakeClock) Now() time.Time { f.mu.Lock(); defer f.mu.Unlock(); return f.now }
func (f *fakeClock) Advance(d time.Duration) {
	f.mu.Lock()
	f.now = f.now.Add(d)
	f.mu.Unlock()
}

// roundTrip sends msg through the relay and reports whether the echo came
// back within a generous deadline.
func roundTrip(t *testing.T, c *net.UDPConn, msg string, wait time.Duration) bool {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	for {
		c.SetReadDeadline(time.Now().Add(wait))
		n, err := c.Read(buf)
		if err != nil {
			return false
		}
		if string(buf[:n]) == msg {
			return true
		}
	}
}

func TestRelayForwardsAndBlackholes(t *testing.T) {
	echo := echoServer(t)
	clock := &fakeClock{now: time.Unix(1000, 0)}
	r, err := New(Config{Target: echo.LocalAddr().String(), Seed: 7, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	c, err := net.DialUDP("udp", nil, r.Addr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !roundTrip(t, c, "one", 10*time.Second) {
		t.Fatal("no echo through a clean relay")
	}
	r.Blackhole(time.Minute)
	// Nothing can come back while the (fake) minute lasts; a short wait
	// suffices to see that, since a forwarded echo takes microseconds.
	if roundTrip(t, c, "two", 200*time.Millisecond) {
		t.Fatal("echo through a blackhole")
	}
	clock.Advance(time.Minute)
	if !roundTrip(t, c, "three", 10*time.Second) {
		t.Fatal("no echo after the blackhole")
	}
	st := r.Stats()
	if st.Blackholed != 1 || st.Received != 5 || st.Sent != 4 {
		t.Fatalf("stats %+v", st)
	}
}

func TestRelayDuplicatesAndLoses(t *testing.T) {
	echo := echoServer(t)
	r, err := New(Config{Target: echo.LocalAddr().String(), Up: Impairment{Duplicate: 1}, Down: Impairment{Loss: 1}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	c, err := net.DialUDP("udp", nil, r.Addr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if roundTrip(t, c, "x", 200*time.Millisecond) {
		t.Fatal("echo came back although the down direction loses everything")
	}
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for st := r.Stats(); st.Duplicated != 1 || st.Dropped != 2; st = r.Stats() {
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v, want 1 duplicated and both echoes dropped", st)
		}
		<-tick.C
	}
	r.SetImpairment(Impairment{}, Impairment{})
	if !roundTrip(t, c, "y", 10*time.Second) {
		t.Fatal("no echo after clearing the impairments")
	}
}

// TestRelayRebind: after Rebind the target sees the client from a new
// address, and replies still reach the client.
func TestRelayRebind(t *testing.T) {
	target, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	r, err := New(Config{Target: target.LocalAddr().String()})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	c, err := net.DialUDP("udp", nil, r.Addr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// echoFrom reads one datagram at the target, echoes it and returns
	// where it came from.
	echoFrom := func(msg string) string {
		t.Helper()
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		target.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, from, err := target.ReadFromUDP(buf)
		if err != nil || string(buf[:n]) != msg {
			t.Fatalf("target read %q, %v", buf[:n], err)
		}
		if _, err := target.WriteToUDP(buf[:n], from); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if n, err := c.Read(buf); err != nil || string(buf[:n]) != msg {
			t.Fatalf("client read %q, %v", buf[:n], err)
		}
		return from.String()
	}
	before := echoFrom("one")
	if err := r.Rebind(); err != nil {
		t.Fatal(err)
	}
	after := echoFrom("two")
	if before == after {
		t.Fatalf("target sees the client at %s before and after Rebind", before)
	}
	if st := r.Stats(); st.Clients != 1 || st.Rebinds != 1 {
		t.Fatalf("stats %+v", st)
	}
}
