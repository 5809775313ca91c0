package link

import (
	"context"
	"crypto/rand"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// mutePC is a PacketConn that can be made to swallow everything it is asked
// to send: a server "crashes" without a CONNECTION_CLOSE reaching anyone.
type mutePC struct {
	net.PacketConn
	muted atomic.Bool
}

func (m *mutePC) WriteTo(b []byte, addr net.Addr) (int, error) {
	if m.muted.Load() {
		return len(b), nil
	}
	return m.PacketConn.WriteTo(b, addr)
}

// TestStatelessResetAfterServerCrash: a server that vanishes silently is
// replaced by a new one on the same address with the same
// StatelessResetKey. Idle timeouts are ten minutes and keep-alives one, so
// only the new server's stateless reset can end the client's old connection
// within the test: the client must open a second session and deliver what
// it queued meanwhile.
func TestStatelessResetAfterServerCrash(t *testing.T) {
	p := newPKI(t)
	var key quic.StatelessResetKey
	if _, err := rand.Read(key[:]); err != nil {
		t.Fatal(err)
	}
	cfg := serverConfig(t, p)
	cfg.StatelessResetKey = &key
	cfg.MaxIdleTimeout, cfg.KeepAlivePeriod = 10*time.Minute, time.Minute
	sink := newLogSink()

	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := udp.LocalAddr().String()
	first := &mutePC{PacketConn: udp}
	srv1 := NewServer(cfg, sink)
	served := make(chan error, 1)
	go func() { served <- srv1.Serve(context.Background(), first) }()

	ccfg := clientConfig(t, p, addr, "gw-reset")
	ccfg.MaxIdleTimeout, ccfg.KeepAlivePeriod = 10*time.Minute, time.Minute
	src := newSource(t)
	c := startClient(t, ccfg, src)
	src.add(100)
	eventually(t, "the first 100 records acknowledged", func() bool { _, acked := src.state(); return acked == 100 })

	// The crash: nothing more leaves the first server, then it goes.
	first.muted.Store(true)
	srv1.Close()
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	udp2, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatalf("rebind %s: %v", addr, err)
	}
	startServer(t, cfg, sink, udp2)

	src.add(100)
	eventually(t, "the next 100 records acknowledged by the new server", func() bool { _, acked := src.state(); return acked == 200 })
	st := c.Stats()
	if st.Sessions != 2 {
		t.Fatalf("sessions = %d, want 2 (the old connection and one after the reset)", st.Sessions)
	}
	if !strings.Contains(st.LastError, "stateless reset") {
		t.Errorf("the old session ended with %q, want a stateless reset", st.LastError)
	}
	checkLog(t, sink.log, "gw-reset", 200)
}
