package link

import (
	"sync"
	"testing"

	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
	"github.com/tributary-io/tributary/sync/wire"
)

// holdSink holds the appends of one gateway until release; other gateways'
// appends pass.
type holdSink struct {
	*logSink
	gw string

	mu      sync.Mutex
	holding bool
	held    []func()
}

func (h *holdSink) AppendAsync(gw string, recs []wire.RawRecord, done func(error)) {
	h.mu.Lock()
	if h.holding && gw == h.gw {
		h.held = append(h.held, func() { h.logSink.AppendAsync(gw, recs, done) })
		h.mu.Unlock()
		return
	}
	h.mu.Unlock()
	h.logSink.AppendAsync(gw, recs, done)
}

func (h *holdSink) heldCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.held)
}

// release runs the held appends, in order and before any new one: one
// session's appends must reach the log in the order it made them.
func (h *holdSink) release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, f := range h.held {
		f()
	}
	h.holding, h.held = false, nil
}

// TestCreditPausesGateways: a log that stops making appends durable builds
// a backlog; past MaxBacklog the server grants a window of 0, so a gateway
// that connects then sends nothing, and the first gateway stops too; once
// the log catches up, both drain exactly once.
func TestCreditPausesGateways(t *testing.T) {
	p := newPKI(t)
	sink := &holdSink{logSink: newLogSink(), gw: "gw-a", holding: true}
	cfg := serverConfig(t, p)
	cfg.MaxBacklog = 1 // any backlog pauses
	srv := startServer(t, cfg, sink, nil)
	srcA, srcB := newSource(t), newSource(t)
	srcA.add(1500)
	srcB.add(1500)
	ccfg := clientConfig(t, p, srv.Addr().String(), "gw-a")
	ccfg.MaxBatchRecords = 100
	a := startClient(t, ccfg, srcA)
	eventually(t, "gateway A paused by a credit of 0", func() bool {
		return srv.Stats().Grant == 0 && a.Stats().Window == 0 && sink.heldCount() > 0
	})
	sentA := a.Stats().BatchesSent
	if sentA > uint64(cfg.Window) {
		t.Fatalf("gateway A sent %d batches into a window of %d", sentA, cfg.Window)
	}

	ccfg = clientConfig(t, p, srv.Addr().String(), "gw-b")
	ccfg.MaxBatchRecords = 100
	b := startClient(t, ccfg, srcB)
	eventually(t, "gateway B connected", func() bool { return b.Stats().Sessions == 1 })
	if st := b.Stats(); st.Window != 0 || st.BatchesSent != 0 {
		t.Fatalf("gateway B welcomed during a full backlog: window %d, sent %d batches", st.Window, st.BatchesSent)
	}
	if hwm := sink.log.HighWaterMark("gw-b"); hwm != 0 {
		t.Fatalf("gateway B appended up to %d while paused", hwm)
	}

	sink.release()
	eventually(t, "both drained", func() bool {
		_, ackedA := srcA.state()
		_, ackedB := srcB.state()
		return ackedA == 1500 && ackedB == 1500
	})
	checkLog(t, sink.log, "gw-a", 1500)
	checkLog(t, sink.log, "gw-b", 1500)
	st := srv.Stats()
	if st.Credits == 0 || st.ProtocolErrors != 0 || st.Backlog != 0 {
		t.Fatalf("server stats %+v", st)
	}
	if a.Stats().Window != 8 || b.Stats().Sessions != 1 {
		t.Fatalf("after the backlog drained: A %+v, B %+v", a.Stats(), b.Stats())
	}
}

// TestCreditByteWindow: with a byte cap, a gateway keeps no more
// unacknowledged bytes than granted (the server enforces the cap and would
// close the session), however many batches its window allows.
func TestCreditByteWindow(t *testing.T) {
	p := newPKI(t)
	sink := &holdSink{logSink: newLogSink(), gw: "gw-1", holding: true}
	cfg := serverConfig(t, p)
	cfg.WindowBytes = 40 << 10
	srv := startServer(t, cfg, sink, nil)
	src := newSource(t)
	src.add(2000)
	ccfg := clientConfig(t, p, srv.Addr().String(), "gw-1")
	ccfg.MaxBatchRecords = 100 // ~17 KiB uncompressed: two fit in 40 KiB
	ccfg.CompressAbove = -1
	c := startClient(t, ccfg, src)
	eventually(t, "two batches held", func() bool { return sink.heldCount() == 2 })
	if st := c.Stats(); st.WindowBytes != 40<<10 || st.Window != 8 || st.BatchesSent != 2 {
		t.Fatalf("client stats %+v", st)
	}
	sink.release()
	eventually(t, "drained", func() bool { _, a := src.state(); return a == 2000 })
	checkLog(t, sink.log, "gw-1", 2000)
	if st, cs := srv.Stats(), c.Stats(); st.ProtocolErrors != 0 || cs.Sessions != 1 {
		t.Fatalf("server %+v, client %+v", st, cs)
	}
}

// TestNoCreditsForOldGateways: a gateway that does not announce
// accepts_credit gets no Credit, in Welcome or Acks, even when the grant
// changes, and keeps the static window.
func TestNoCreditsForOldGateways(t *testing.T) {
	p := newPKI(t)
	sink := &holdSink{logSink: newLogSink(), gw: "gw-new", holding: true}
	cfg := serverConfig(t, p)
	cfg.MaxBacklog = 1
	srv := startServer(t, cfg, sink, nil)
	conn, str := rawConn(t, srv.Addr().String(), p.clientTLS(t, "gw-old", nil))
	_ = conn
	w := handshakeRaw(t, str, "gw-old")
	if w.GetCredit() != nil || w.GetWindow() != uint32(cfg.Window) {
		t.Fatalf("Welcome to an old gateway: %v", w)
	}
	// A new gateway's held appends close the grant.
	src := newSource(t)
	src.add(500)
	startClient(t, clientConfig(t, p, srv.Addr().String(), "gw-new"), src)
	eventually(t, "grant closed", func() bool { return srv.Stats().Grant == 0 && srv.Stats().Credits > 0 })
	b, err := wire.EncodeRecords([]*syncv1.Record{record(1), record(2)}, 0)
	if err != nil {
		t.Fatal(err)
	}
	writeFrame(t, str, &syncv1.Frame{Body: &syncv1.Frame_Batch{Batch: b}})
	f := readFrame(t, str)
	if f.GetAck().GetAckedSeq() != 2 || f.GetAck().GetCredit() != nil {
		t.Fatalf("old gateway got %v, want a plain Ack of 2", f)
	}
	sink.release()
}
