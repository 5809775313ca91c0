package link

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/quicvarint"
)

// flakySource fails the Acks it is told to, ending the session, so that the
// client reconnects.
type flakySource struct {
	*memSource
	fail atomic.Int32
}

func (f *flakySource) Ack(upTo uint64) error {
	if f.fail.Load() > 0 {
		f.fail.Add(-1)
		return errors.New("disk hiccup")
	}
	return f.memSource.Ack(upTo)
}

// TestZeroRTTResumption: the second session resumes with the ticket of the
// first and 0-RTT, which the cloud accepts (the Hello itself waits for the
// handshake: quic-go#4303); the records still arrive exactly once.
func TestZeroRTTResumption(t *testing.T) {
	p := newPKI(t)
	sink := newLogSink()
	srv := startServer(t, serverConfig(t, p), sink, nil)
	src := &flakySource{memSource: newSource(t)}
	src.add(1000)
	c := startClient(t, clientConfig(t, p, srv.Addr().String(), "gw-1"), src)
	eventually(t, "first records acknowledged", func() bool { _, a := src.state(); return a > 0 })
	if st := c.Stats(); st.ZeroRTT != 0 || st.Sessions != 1 {
		t.Fatalf("first session: %+v", st)
	}
	src.fail.Store(1)
	src.add(1000)
	eventually(t, "all acknowledged", func() bool { _, a := src.state(); return a == 2000 })
	checkLog(t, sink.log, "gw-1", 2000)
	st := c.Stats()
	if st.Sessions < 2 || st.ZeroRTT < 1 {
		t.Fatalf("client %+v: want a second session over 0-RTT", st)
	}
	if ss := srv.Stats(); ss.ZeroRTT < 1 || ss.Accepted < 2 {
		t.Fatalf("server %+v", ss)
	}
}

// TestZeroRTTDisabled: without resumption no session uses 0-RTT.
func TestZeroRTTDisabled(t *testing.T) {
	p := newPKI(t)
	sink := newLogSink()
	srv := startServer(t, serverConfig(t, p), sink, nil)
	src := &flakySource{memSource: newSource(t)}
	src.add(500)
	cfg := clientConfig(t, p, srv.Addr().String(), "gw-1")
	cfg.DisableZeroRTT = true
	c := startClient(t, cfg, src)
	eventually(t, "first records acknowledged", func() bool { _, a := src.state(); return a > 0 })
	src.fail.Store(1)
	src.add(500)
	eventually(t, "all acknowledged", func() bool { _, a := src.state(); return a == 1000 })
	// The failed Ack ends the session, but a later Ack can land before the
	// session loop has seen the failure: wait for the second session.
	eventually(t, "a second session", func() bool { return c.Stats().Sessions >= 2 })
	if st := c.Stats(); st.ZeroRTT != 0 {
		t.Fatalf("client %+v", st)
	}
}

// notifyCache is a session cache that reports when a ticket is stored.
type notifyCache struct {
	tls.ClientSessionCache
	put chan struct{}
}

func (n *notifyCache) Put(key string, cs *tls.ClientSessionState) {
	n.ClientSessionCache.Put(key, cs)
	if cs != nil {
		select {
		case n.put <- struct{}{}:
		default:
		}
	}
}

// noFinishConn passes a client's Initial and 0-RTT packets and swallows
// every datagram holding a Handshake or 1-RTT packet, so the server gets
// the ClientHello and the 0-RTT data but never the client's Finished: what
// a replay of the client's first flight looks like to the server.
type noFinishConn struct {
	net.PacketConn
	dropped atomic.Int64
}

func (c *noFinishConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	if carriesHandshakeOr1RTT(b) {
		c.dropped.Add(1)
		return len(b), nil
	}
	return c.PacketConn.WriteTo(b, addr)
}

// carriesHandshakeOr1RTT walks the coalesced QUIC v1 packets of a datagram
// (RFC 9000 section 17).
func carriesHandshakeOr1RTT(b []byte) bool {
	for len(b) > 0 {
		if b[0]&0x80 == 0 {
			return true // short header: 1-RTT
		}
		typ := (b[0] & 0x30) >> 4
		if typ == 2 {
			return true // Handshake
		}
		i := 5        // first byte, version
		for range 2 { // destination and source connection IDs
			if i >= len(b) {
				return false
			}
			i += 1 + int(b[i])
		}
		if i > len(b) {
			return false
		}
		rest := b[i:]
		if typ == 0 { // Initial: token
			n, l, err := quicvarint.Parse(rest)
			if err != nil || l+int(n) > len(rest) {
				return false
			}
			rest = rest[l+int(n):]
		}
		n, l, err := quicvarint.Parse(rest)
		if err != nil || l+int(n) > len(rest) {
			return false
		}
		b = rest[l+int(n):]
	}
	return false
}

// TestZeroRTTHelloNotActedOn: a Hello that arrives as 0-RTT data on a
// connection whose handshake never completes (a replay of a gateway's
// first flight) gets no Welcome, supersedes nothing, and is dropped after
// HelloTimeout; the gateway's live session carries on.
func TestZeroRTTHelloNotActedOn(t *testing.T) {
	p := newPKI(t)
	sink := newLogSink()
	scfg := serverConfig(t, p)
	scfg.HelloTimeout = time.Second
	srv := startServer(t, scfg, sink, nil)
	addr := srv.Addr().(*net.UDPAddr)

	// The "replayer" holds a session ticket of gw-1.
	tlsConf := p.clientTLS(t, "gw-1", nil)
	cache := &notifyCache{ClientSessionCache: tls.NewLRUClientSessionCache(4), put: make(chan struct{}, 1)}
	tlsConf.ClientSessionCache = cache
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	first, err := quic.DialAddr(ctx, addr.String(), tlsConf, &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-cache.put:
	case <-ctx.Done():
		t.Fatal("no session ticket")
	}
	first.CloseWithError(0, "")
	// It never sent a Hello: once the server noticed, it refused it.
	eventually(t, "the ticket's connection refused", func() bool { return srv.Stats().Refused == 1 })

	// The real gateway connects and stays connected.
	src := newSource(t)
	src.add(1000)
	c := startClient(t, clientConfig(t, p, addr.String(), "gw-1"), src)
	eventually(t, "gateway connected", func() bool { _, a := src.state(); return a > 0 })
	refusedBefore := srv.Stats().Refused
	failuresBefore := srv.Stats().HandshakeFailures

	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	filter := &noFinishConn{PacketConn: pc}
	tr := &quic.Transport{Conn: filter}
	defer func() { tr.Close(); pc.Close() }()
	conn, err := tr.DialEarly(ctx, addr, tlsConf, &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	str, err := conn.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	writeFrame(t, str, helloFrame("gw-1", 1))
	// The client's side of the handshake completes (only its Finished is
	// lost), which tells whether the server took the 0-RTT data.
	select {
	case <-conn.HandshakeComplete():
	case <-ctx.Done():
		t.Fatal("replayer handshake")
	}
	if !conn.ConnectionState().Used0RTT {
		t.Fatal("the server did not accept the 0-RTT Hello: the test would prove nothing")
	}
	eventually(t, "the replayed connection dropped", func() bool { return srv.Stats().HandshakeFailures > failuresBefore })
	_ = str.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, err := str.Read(make([]byte, 1)); n > 0 {
		t.Fatalf("the replayer was answered (%d bytes, %v)", n, err)
	}
	src.add(1000)
	eventually(t, "all acknowledged", func() bool { _, a := src.state(); return a == 2000 })
	checkLog(t, sink.log, "gw-1", 2000)
	if st := srv.Stats(); st.Superseded != 0 || st.Accepted != 1 || st.Refused != refusedBefore {
		t.Fatalf("server %+v", st)
	}
	if st := c.Stats(); st.Sessions != 1 || st.Reconnects != 0 {
		t.Fatalf("the live session was disturbed: %+v", st)
	}
	if filter.dropped.Load() == 0 {
		t.Fatal("the filter dropped nothing")
	}
}
