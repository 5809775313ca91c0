package link

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"

	"github.com/quic-go/quic-go"

	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
)

// ErrNotConnected is returned by Client.Migrate when no session is live.
var ErrNotConnected = errors.New("link: not connected")

// How a session starts, and why it is safe to start it in 0-RTT.
//
// The Client keeps TLS session tickets, so every session after the first
// resumes: the QUIC handshake carries no certificates and no signatures (on
// a gateway's small CPU and metered uplink both count), and the Hello travels
// as 0-RTT data in the first flight. 0-RTT data can be replayed by anyone
// who recorded it, so the server gives it no power: it acts on nothing,
// not even the Hello it already holds, until the handshake has completed,
// which a replayer cannot do without the gateway's key. A replayed Hello
// therefore never gets a Welcome, never supersedes the gateway's live
// session, and no Batch can arrive before the handshake completes (the
// gateway sends them only after the Welcome, and the server reads them only
// after the handshake). Were a batch ever replayed, the (gateway, seq)
// deduplication of the log would drop it. What 0-RTT saves is the Hello's
// round trip: the Welcome leaves the server as soon as the handshake
// completes.
//
// Each session has a QUIC Transport of its own on a fresh UDP socket.
// Migrate adds another socket to the live connection (a gateway whose uplink
// changed) and switches to it once the path is validated; the connection,
// its streams and the batches in flight carry on. A transport cannot be
// closed while the connection it dialed lives (it would tear the
// connection down), so the session closes all of its transports when it
// ends.

// sessionConn is a live session's connection and the sockets it uses.
type sessionConn struct {
	mu     sync.Mutex
	conn   *quic.Conn
	trs    []*quic.Transport
	pcs    []net.PacketConn
	closed bool
}

// add registers a transport for closing with the session; false if the
// session has ended (the caller closes them).
func (sc *sessionConn) add(tr *quic.Transport, pc net.PacketConn) bool {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.closed {
		return false
	}
	sc.trs = append(sc.trs, tr)
	sc.pcs = append(sc.pcs, pc)
	return true
}

// close closes every transport and socket of the session.
func (sc *sessionConn) close() {
	sc.mu.Lock()
	trs, pcs := sc.trs, sc.pcs
	sc.closed, sc.trs, sc.pcs = true, nil, nil
	sc.mu.Unlock()
	for i := range trs {
		_ = trs[i].Close()
		_ = pcs[i].Close()
	}
}

// listen opens a UDP socket on the configured local address.
func (c *Client) listen() (net.PacketConn, error) {
	pc, err := net.ListenPacket("udp", c.cfg.LocalAddr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", c.cfg.LocalAddr, err)
	}
	return pc, nil
}

func (c *Client) quicConfig() *quic.Config {
	return &quic.Config{
		HandshakeIdleTimeout:  c.cfg.DialTimeout,
		MaxIdleTimeout:        c.cfg.MaxIdleTimeout,
		KeepAlivePeriod:       c.cfg.KeepAlivePeriod,
		MaxIncomingStreams:    -1,
		MaxIncomingUniStreams: -1,
	}
}

// dial connects to the cloud on a new transport registered with sc. With
// 0-RTT enabled the connection is returned before the handshake completes.
func (c *Client) dial(ctx context.Context, sc *sessionConn) (*quic.Conn, error) {
	addr, err := net.ResolveUDPAddr("udp", c.cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", c.cfg.Addr, err)
	}
	pc, err := c.listen()
	if err != nil {
		return nil, err
	}
	tr := &quic.Transport{Conn: pc}
	if !sc.add(tr, pc) {
		_ = pc.Close()
		return nil, net.ErrClosed
	}
	var conn *quic.Conn
	if c.cfg.DisableZeroRTT {
		conn, err = tr.Dial(ctx, addr, c.cfg.TLS, c.quicConfig())
	} else {
		conn, err = tr.DialEarly(ctx, addr, c.cfg.TLS, c.quicConfig())
	}
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", c.cfg.Addr, err)
	}
	sc.mu.Lock()
	sc.conn = conn
	sc.mu.Unlock()
	return conn, nil
}

// open opens the control stream and exchanges Hello and Welcome. If the
// cloud rejected the 0-RTT attempt (it lost its ticket keys, or its
// configuration changed), it waits for the handshake and does it again
// over 1-RTT; the returned connection is the one to use.
func (c *Client) open(ctx context.Context, conn *quic.Conn) (*quic.Conn, *quic.Stream, *syncv1.Welcome, error) {
	str, welcome, err := c.openOnce(ctx, conn)
	if errors.Is(err, quic.Err0RTTRejected) {
		c.log.Info("0-RTT rejected by the cloud; handshaking in 1-RTT")
		if conn, err = conn.NextConnection(ctx); err != nil {
			return nil, nil, nil, fmt.Errorf("after 0-RTT rejection: %w", remoteClose(err))
		}
		str, welcome, err = c.openOnce(ctx, conn)
	}
	if err != nil {
		return nil, nil, nil, err
	}
	if conn.ConnectionState().Used0RTT {
		c.zeroRTT.Add(1)
	}
	return conn, str, welcome, nil
}

func (c *Client) openOnce(ctx context.Context, conn *quic.Conn) (*quic.Stream, *syncv1.Welcome, error) {
	// Wait for the handshake before opening the stream, even on a 0-RTT
	// connection. quic-go (v0.65, upstream issue quic-go#4303) creates a
	// stream's flow controller from the peer's transport parameters while
	// the handshake may be replacing them on the connection's goroutine: a
	// data race that -race reports in TestZeroRTTResumption. The handshake
	// channel closes after the parameters are applied, which orders the
	// two. The resumed session still skips the certificate exchange; the
	// Hello goes out one round trip later than true 0-RTT would send it,
	// until the upstream fix lets this wait go. A connection that fails
	// (0-RTT rejected included) falls through to OpenStreamSync, which
	// returns its error.
	select {
	case <-conn.HandshakeComplete():
	case <-conn.Context().Done():
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("open stream: %w", remoteClose(err))
	}
	welcome, err := c.handshake(str)
	if err != nil {
		return nil, nil, err
	}
	return str, welcome, nil
}

// Migrate moves the live session to a new UDP socket on
// ClientConfig.LocalAddr, as a gateway does when its uplink or address
// changes: it probes the new path (a round trip to the cloud), switches the
// connection to it and keeps going; the session, its window and the batches
// in flight survive, nothing is resent. It returns ErrNotConnected if no
// session is live, and the probe's error if the cloud cannot be reached
// over the new path (the connection then stays on the old one). Migrate is
// safe to call from any goroutine.
func (c *Client) Migrate(ctx context.Context) error {
	c.connMu.Lock()
	sc := c.live
	c.connMu.Unlock()
	if sc == nil {
		return ErrNotConnected
	}
	sc.mu.Lock()
	conn := sc.conn
	sc.mu.Unlock()
	if conn == nil {
		return ErrNotConnected
	}
	pc, err := c.listen()
	if err != nil {
		return err
	}
	tr := &quic.Transport{Conn: pc}
	if !sc.add(tr, pc) {
		_ = pc.Close()
		return ErrNotConnected
	}
	path, err := conn.AddPath(tr)
	if err != nil {
		return fmt.Errorf("link: migrate: %w", err)
	}
	if err := path.Probe(ctx); err != nil {
		_ = path.Close()
		return fmt.Errorf("link: migrate: probing %s: %w", pc.LocalAddr(), err)
	}
	if err := path.Switch(); err != nil {
		_ = path.Close()
		return fmt.Errorf("link: migrate: switching to %s: %w", pc.LocalAddr(), err)
	}
	c.migrations.Add(1)
	c.log.Info("sync link migrated", "local", pc.LocalAddr().String())
	return nil
}

// clientTLS returns cfg's TLS configuration with ALPN set and a session
// ticket cache (for resumption and 0-RTT) unless one is set or 0-RTT is
// disabled.
func clientTLS(cfg *ClientConfig) *tls.Config {
	t := cfg.TLS.Clone()
	if len(t.NextProtos) == 0 {
		t.NextProtos = []string{ALPN}
	}
	if t.ClientSessionCache == nil && !cfg.DisableZeroRTT {
		t.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	}
	return t
}
