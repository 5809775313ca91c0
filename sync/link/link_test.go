package link

import (
	"net"
	"sync"
	"testing"

	"github.com/tributary-io/tributary/sync/wire"
)

// TestEndToEnd drains 10,000 records, half of them published while the link
// runs, and checks every one is in the log exactly once and in order, and
// that the source deleted nothing the log did not already hold.
func TestEndToEnd(t *testing.T) {
	p := newPKI(t)
	sink := newLogSink()
	srv := startServer(t, serverConfig(t, p), sink, nil)
	src := newSource(t)
	src.checkAck = func(upTo uint64) {
		if hwm := sink.log.HighWaterMark("gw-1"); hwm < upTo {
			t.Errorf("source acked up to %d while the log holds only up to %d", upTo, hwm)
		}
	}
	src.add(5000)
	var mu sync.Mutex
	var states []State
	cfg := clientConfig(t, p, srv.Addr().String(), "gw-1")
	cfg.OnState = func(s State, _ error) {
		mu.Lock()
		states = append(states, s)
		mu.Unlock()
	}
	c := startClient(t, cfg, src)
	eventually(t, "first half acknowledged", func() bool { _, a := src.state(); return a == 5000 })
	for range 50 {
		src.add(100)
	}
	eventually(t, "all acknowledged", func() bool { _, a := src.state(); return a == 10000 })

	checkLog(t, sink.log, "gw-1", 10000)
	if held, _ := src.state(); held != 0 {
		t.Fatalf("source still holds %d records", held)
	}
	st := c.Stats()
	if st.State != Connected || st.Sessions != 1 || st.Reconnects != 0 || st.AckedSeq != 10000 || st.SentSeq != 10000 {
		t.Fatalf("client stats %+v", st)
	}
	if st.Throttled != 0 {
		t.Fatalf("uncapped client throttled for %v", st.Throttled)
	}
	if st.BatchesSent < 10000/256 || st.BatchesAcked != st.BatchesSent {
		t.Fatalf("client batches: sent %d acked %d", st.BatchesSent, st.BatchesAcked)
	}
	ss := srv.Stats()
	if ss.Sessions != 1 || ss.Records != 10000 || ss.Batches != st.BatchesSent || ss.ProtocolErrors+ss.SinkErrors != 0 {
		t.Fatalf("server stats %+v", ss)
	}
	if sink.dups() != 0 {
		t.Fatalf("%d duplicates sent without any reconnect", sink.dups())
	}
	mu.Lock()
	defer mu.Unlock()
	if len(states) < 2 || states[0] != Connecting || states[1] != Connected {
		t.Fatalf("state changes %v", states)
	}
}

// gateSink passes appends through, except that while holding it queues
// those whose first seq is above holdAbove; release runs them.
type gateSink struct {
	*logSink
	mu        sync.Mutex
	holding   bool
	holdAbove uint64
	held      []func()
	minHeld   uint64 // lowest first seq of a held append
}

func (g *gateSink) AppendAsync(gw string, recs []wire.RawRecord, done func(error)) {
	g.mu.Lock()
	if g.holding && recs[0].Seq > g.holdAbove {
		g.held = append(g.held, func() { g.logSink.AppendAsync(gw, recs, done) })
		if g.minHeld == 0 || recs[0].Seq < g.minHeld {
			g.minHeld = recs[0].Seq
		}
		g.mu.Unlock()
		return
	}
	g.mu.Unlock()
	g.logSink.AppendAsync(gw, recs, done)
}

func (g *gateSink) heldCount() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.held)
}

// stopHolding lets new appends through and returns the held ones.
func (g *gateSink) stopHolding() []func() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.holding = false
	h := g.held
	g.held = nil
	return h
}

// TestServerRestart kills the cloud side mid-stream, with batches received
// but not yet durable, and brings a new Server up on the same address and
// log. The dead session's appends land late, after the gateway resent the
// same records: the log must still hold each record exactly once.
func TestServerRestart(t *testing.T) {
	p := newPKI(t)
	sink := &gateSink{logSink: newLogSink(), holding: true, holdAbove: 3000}
	srv1 := startServer(t, serverConfig(t, p), sink, nil)
	addr := srv1.Addr().String()
	src := newSource(t)
	src.add(10000)
	c := startClient(t, clientConfig(t, p, addr, "gw-1"), src)
	eventually(t, "batches held past seq 3000", func() bool { return sink.heldCount() >= 2 })
	sink.mu.Lock()
	minHeld := sink.minHeld
	sink.mu.Unlock()
	if _, acked := src.state(); acked >= minHeld {
		t.Fatalf("source acked %d although the batch from %d is not durable", acked, minHeld)
	}
	srv1.Close()
	pc := listenAgain(t, addr)
	held := sink.stopHolding()
	startServer(t, serverConfig(t, p), sink, pc)
	eventually(t, "all acknowledged after restart", func() bool { _, a := src.state(); return a == 10000 })
	for _, f := range held {
		f() // the dead session's appends become durable late
	}
	checkLog(t, sink.log, "gw-1", 10000)
	if sink.dups() == 0 {
		t.Fatal("no duplicates were dropped: the late appends did not exercise dedup")
	}
	if st := c.Stats(); st.Reconnects < 1 || st.Sessions < 2 {
		t.Fatalf("client stats %+v", st)
	}
}

// listenAgain binds addr again once the old socket is gone.
func listenAgain(t *testing.T, addr string) net.PacketConn {
	t.Helper()
	var pc net.PacketConn
	eventually(t, "rebinding "+addr, func() bool {
		var err error
		pc, err = net.ListenPacket("udp", addr)
		return err == nil
	})
	return pc
}

func TestLaneProducer(t *testing.T) {
	seen := map[string]bool{}
	for _, gw := range []string{"gw-1", "gw-1.lane", "a_b"} {
		for _, lane := range []uint32{0, 1, 2, 10} {
			p := LaneProducer(gw, lane)
			if seen[p] {
				t.Fatalf("producer %q named twice", p)
			}
			seen[p] = true
			if (lane == 0) != (p == gw) {
				t.Fatalf("LaneProducer(%q, %d) = %q", gw, lane, p)
			}
			if g, l := ParseLaneProducer(p); g != gw || l != lane {
				t.Fatalf("ParseLaneProducer(%q) = %q, %d", p, g, l)
			}
		}
	}
}
