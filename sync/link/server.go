package link

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
	"github.com/tributary-io/tributary/sync/flow"
	"github.com/tributary-io/tributary/sync/pki"
	"github.com/tributary-io/tributary/sync/wire"
)

// ServerConfig configures a Server. Fields left zero take the documented
// defaults.
type ServerConfig struct {
	// Addr is the UDP address ListenAndServe listens on. Zero means ":7443".
	Addr string
	// TLS must require and verify client certificates whose leaf carries a
	// gateway identity (pki.ServerTLS builds one). Required. NextProtos
	// empty means [ALPN].
	TLS *tls.Config
	// Window is the number of unacknowledged batches a gateway may have in
	// flight, announced in Welcome. Zero means 16.
	Window int
	// MaxFrameBytes is the largest frame accepted, announced in Welcome.
	// Zero means wire.MaxFrameBytes (16 MiB), which is also the ceiling.
	MaxFrameBytes int
	// MaxDecodedBytes limits a batch's decompressed records. Zero means
	// wire.DefaultMaxDecoded (64 MiB).
	MaxDecodedBytes int
	// HelloTimeout bounds the time from the QUIC handshake to a Hello.
	// Zero means 10 s.
	HelloTimeout time.Duration
	// ErrorLinger is how long the server waits, after sending an Error
	// frame, for the gateway to close the connection before closing it
	// itself (closing at once could drop the frame). Zero means 2 s.
	ErrorLinger time.Duration
	// MaxIdleTimeout closes a connection without traffic. Zero means 30 s.
	MaxIdleTimeout time.Duration
	// KeepAlivePeriod is the QUIC keep-alive period. Zero means 15 s.
	KeepAlivePeriod time.Duration
	// MaxBacklog is the flow-control threshold, in bytes of records the
	// server has accepted and the Sink has not yet made durable (all
	// gateways together). Gateways that accept credits get the full Window
	// while the backlog is below half of it, a window shrinking towards 1
	// above that, and a window of 0 (pause) from MaxBacklog on; see
	// flow.Credit. Zero means 64 MiB; negative disables credits (every
	// gateway keeps Window).
	MaxBacklog int64
	// WindowBytes caps the frame bytes a gateway that accepts credits may
	// have unacknowledged (one batch is always allowed), announced in its
	// credits and enforced. Zero means no byte cap.
	WindowBytes int64
	// DisableZeroRTT refuses 0-RTT data: resuming gateways then send their
	// Hello after the handshake. Zero (false) accepts it.
	DisableZeroRTT bool
	// StatelessResetKey lets the server answer packets of connections it
	// does not know (a previous process's, after a crash or restart) with a
	// QUIC stateless reset, so gateways learn at once that their connection
	// is gone and reconnect, instead of waiting for their idle timeout. It
	// must stay the same across restarts of the server on the same address
	// (keep it with the server's durable state) and must be secret. Nil
	// disables stateless resets.
	StatelessResetKey *quic.StatelessResetKey
	// OnCommandStatus, if set, receives every CommandStatus a gateway
	// sends (at least once each; see commands.go), on the session's reader
	// goroutine, before the status is acknowledged to the gateway. It must
	// not block for long. Nil drops statuses (they are still acknowledged).
	OnCommandStatus func(gateway string, st *syncv1.CommandStatus)
	// Logger receives the server's logs. Nil discards them.
	Logger *slog.Logger
}

const (
	defaultServerAddr   = ":7443"
	defaultServerWindow = 16
	defaultHelloTimeout = 10 * time.Second
	defaultErrorLinger  = 2 * time.Second
	defaultIdleTimeout  = 30 * time.Second
	defaultKeepAlive    = 15 * time.Second
	defaultMaxBacklog   = 64 << 20
)

// Validate reports a configuration that cannot work.
func (c *ServerConfig) Validate() error {
	switch {
	case c.TLS == nil:
		return errors.New("link: ServerConfig.TLS is required")
	case c.TLS.ClientAuth != tls.RequireAndVerifyClientCert:
		return errors.New("link: ServerConfig.TLS must require and verify client certificates")
	case c.Window < 0, c.MaxFrameBytes < 0, c.MaxDecodedBytes < 0, c.HelloTimeout < 0,
		c.ErrorLinger < 0, c.MaxIdleTimeout < 0, c.KeepAlivePeriod < 0, c.WindowBytes < 0:
		return errors.New("link: ServerConfig fields must not be negative")
	case c.MaxFrameBytes > wire.MaxFrameBytes:
		return fmt.Errorf("link: ServerConfig.MaxFrameBytes above %d", wire.MaxFrameBytes)
	}
	return nil
}

func (c ServerConfig) withDefaults() ServerConfig {
	if c.Addr == "" {
		c.Addr = defaultServerAddr
	}
	if c.Window == 0 {
		c.Window = defaultServerWindow
	}
	if c.MaxFrameBytes == 0 {
		c.MaxFrameBytes = wire.MaxFrameBytes
	}
	if c.MaxDecodedBytes == 0 {
		c.MaxDecodedBytes = wire.DefaultMaxDecoded
	}
	if c.HelloTimeout == 0 {
		c.HelloTimeout = defaultHelloTimeout
	}
	if c.ErrorLinger == 0 {
		c.ErrorLinger = defaultErrorLinger
	}
	if c.MaxIdleTimeout == 0 {
		c.MaxIdleTimeout = defaultIdleTimeout
	}
	if c.KeepAlivePeriod == 0 {
		c.KeepAlivePeriod = defaultKeepAlive
	}
	if c.MaxBacklog == 0 {
		c.MaxBacklog = defaultMaxBacklog
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.TLS != nil && len(c.TLS.NextProtos) == 0 {
		c.TLS = c.TLS.Clone()
		c.TLS.NextProtos = []string{ALPN}
	}
	return c
}

// ServerStats are cumulative counters of a Server.
type ServerStats struct {
	// Sessions is the number of live sessions (one per gateway at most).
	Sessions int
	// Accepted counts sessions welcomed; Superseded those closed because the
	// same gateway connected again; Refused connections turned away after
	// the TLS handshake (bad Hello, wrong gateway id, version, timeout).
	Accepted, Superseded, Refused uint64
	// Batches, Records and Bytes (frame bytes) received and handed to the
	// sink; AckedBatches acknowledged.
	Batches, Records, Bytes, AckedBatches uint64
	// ProtocolErrors counts sessions closed for a malformed or invalid
	// frame; SinkErrors those closed because an append failed.
	ProtocolErrors, SinkErrors uint64
	// Backlog is the bytes of records handed to the Sink and not yet
	// durable; Grant the window currently granted to gateways that accept
	// credits. Credits counts Credit updates sent (in Acks, after Welcome).
	Backlog int64
	Grant   int
	Credits uint64
	// ZeroRTT counts connections whose handshake completed after the
	// gateway sent 0-RTT data (their Hello). HandshakeFailures counts
	// connections whose handshake failed (a certificate TLS refused) or did
	// not complete within HelloTimeout (such as a replayed 0-RTT flight);
	// they are not in Refused.
	ZeroRTT, HandshakeFailures uint64
}

// Server is the cloud side of sync links: it accepts gateways' QUIC
// connections, appends their batches to the Sink and acknowledges each batch
// only once the Sink reported it durable.
//
// Goroutines: Serve runs the accept loop; each connection has a handler
// goroutine that reads frames and one that writes acks. Lock order:
// Server.creditMu before Server.mu before session.mu; session.wmu (frame
// writes) is never held while taking any of them.
type Server struct {
	cfg  ServerConfig
	sink Sink
	log  *slog.Logger

	mu       sync.Mutex
	serving  bool
	closed   bool
	quit     chan struct{} // closed by Close
	done     chan struct{} // closed when Serve returns
	addr     net.Addr
	sessions map[string]*session

	wg sync.WaitGroup // connection handlers

	accepted, superseded, refused         atomic.Uint64
	batches, records, bytes, ackedBatches atomic.Uint64
	protocolErrors, sinkErrors, credits   atomic.Uint64
	zeroRTT, handshakeFailures            atomic.Uint64

	credit   flow.Credit
	backlog  atomic.Int64 // bytes handed to the sink, not yet durable
	creditMu sync.Mutex   // serialises regrant
	grant    atomic.Int32 // flow.Credit.Grant of the backlog, as of the last regrant
}

// NewServer returns a Server appending to sink. cfg is checked by Serve.
func NewServer(cfg ServerConfig, sink Sink) *Server {
	cfg = cfg.withDefaults()
	s := &Server{
		cfg:      cfg,
		sink:     sink,
		log:      cfg.Logger,
		quit:     make(chan struct{}),
		done:     make(chan struct{}),
		sessions: map[string]*session{},
		credit:   flow.Credit{Window: cfg.Window, High: max(cfg.MaxBacklog, 0)},
	}
	s.grant.Store(int32(s.credit.Grant(0)))
	return s
}

// addBacklog counts n bytes more (or, negative, fewer) handed to the sink
// and not yet durable, and updates the grant.
func (s *Server) addBacklog(n int64) {
	s.backlog.Add(n)
	s.regrant()
}

// regrant recomputes the window granted to gateways and, when it changed,
// wakes every session so that it sends the new credit. It is serialised so
// that the last call always publishes the grant of the latest backlog: a
// stale pause with nothing left to complete would stall gateways for good.
func (s *Server) regrant() {
	s.creditMu.Lock()
	defer s.creditMu.Unlock()
	g := int32(s.credit.Grant(s.backlog.Load()))
	if s.grant.Swap(g) == g {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ss := range s.sessions {
		if ss.acceptsCredit {
			ss.signal()
		}
	}
}

// ListenAndServe listens on cfg.Addr (UDP) and serves until ctx ends or
// Close is called.
func (s *Server) ListenAndServe(ctx context.Context) error {
	if err := s.cfg.Validate(); err != nil {
		return err
	}
	pc, err := net.ListenPacket("udp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("link: listen: %w", err)
	}
	return s.Serve(ctx, pc)
}

// Serve accepts sync connections on pc until ctx ends or Close is called,
// then tells every live session the server is shutting down, waits for the
// handlers and returns nil. Serve owns pc and closes it before returning. It
// may be called once per Server; a second call, or a call after Close,
// returns ErrServerClosed.
func (s *Server) Serve(ctx context.Context, pc net.PacketConn) error {
	if err := s.cfg.Validate(); err != nil {
		pc.Close()
		return err
	}
	s.mu.Lock()
	if s.serving || s.closed {
		s.mu.Unlock()
		pc.Close()
		return ErrServerClosed
	}
	s.serving = true
	s.addr = pc.LocalAddr()
	s.mu.Unlock()
	defer close(s.done)

	qconf := &quic.Config{
		HandshakeIdleTimeout: s.cfg.HelloTimeout,
		MaxIdleTimeout:       s.cfg.MaxIdleTimeout,
		KeepAlivePeriod:      s.cfg.KeepAlivePeriod,
		// The control lane, plus room for the priority lanes of later versions.
		MaxIncomingStreams:    8,
		MaxIncomingUniStreams: -1,
		// 0-RTT Hellos are accepted but not acted on before the handshake
		// completes: see handle, and dial.go for the reasoning.
		Allow0RTT: !s.cfg.DisableZeroRTT,
	}
	setServerReceiveWindows(qconf) // quicwindows.go
	tr := &quic.Transport{Conn: pc, StatelessResetKey: s.cfg.StatelessResetKey}
	ln, err := tr.ListenEarly(s.cfg.TLS, qconf)
	if err != nil {
		pc.Close()
		return fmt.Errorf("link: listen: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-s.quit:
			cancel()
		case <-ctx.Done():
		}
	}()
	s.log.Info("sync server listening", "addr", pc.LocalAddr().String())
	for {
		conn, err := ln.Accept(ctx)
		if err != nil {
			break
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(ctx, conn)
		}()
	}
	// Shut down: live sessions get an Error(SHUTTING_DOWN) and their
	// handlers close them; then the listener and the socket go.
	s.mu.Lock()
	s.closed = true
	live := make([]*session, 0, len(s.sessions))
	for _, ss := range s.sessions {
		live = append(live, ss)
	}
	s.mu.Unlock()
	for _, ss := range live {
		ss.fail(syncv1.ErrorCode_ERROR_CODE_SHUTTING_DOWN, "server shutting down")
	}
	s.wg.Wait()
	ln.Close()
	tr.Close()
	pc.Close()
	s.log.Info("sync server stopped", "addr", pc.LocalAddr().String())
	return nil
}

// Addr is the address Serve listens on, or nil before Serve started.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Close stops the server as if Serve's context ended and waits for Serve to
// return. It is safe to call more than once, and before Serve.
func (s *Server) Close() error {
	s.mu.Lock()
	serving := s.serving
	if !s.closed {
		s.closed = true
		close(s.quit)
	}
	s.mu.Unlock()
	if serving {
		<-s.done
	}
	return nil
}

// Stats returns the server's counters.
func (s *Server) Stats() ServerStats {
	s.mu.Lock()
	n := len(s.sessions)
	s.mu.Unlock()
	return ServerStats{
		Sessions:          n,
		Accepted:          s.accepted.Load(),
		Superseded:        s.superseded.Load(),
		Refused:           s.refused.Load(),
		Batches:           s.batches.Load(),
		Records:           s.records.Load(),
		Bytes:             s.bytes.Load(),
		AckedBatches:      s.ackedBatches.Load(),
		ProtocolErrors:    s.protocolErrors.Load(),
		SinkErrors:        s.sinkErrors.Load(),
		Backlog:           s.backlog.Load(),
		Grant:             int(s.grant.Load()),
		Credits:           s.credits.Load(),
		ZeroRTT:           s.zeroRTT.Load(),
		HandshakeFailures: s.handshakeFailures.Load(),
	}
}

// refuse closes conn during the opening exchange: an Error frame on str if
// there is one, then the connection with the same code.
func (s *Server) refuse(conn *quic.Conn, str *quic.Stream, code syncv1.ErrorCode, msg string) {
	s.refused.Add(1)
	s.log.Warn("sync connection refused", "remote", conn.RemoteAddr().String(), "code", code.String(), "reason", msg)
	if str != nil {
		_ = str.SetWriteDeadline(time.Now().Add(s.cfg.ErrorLinger))
		if wire.WriteFrame(str, errorFrame(code, msg)) == nil {
			_ = str.Close()
			s.linger(conn)
		}
	}
	_ = conn.CloseWithError(closeCode(code), msg)
}

// linger waits up to ErrorLinger for the peer to close conn, so that a
// frame written just before reaches it.
func (s *Server) linger(conn *quic.Conn) {
	t := time.NewTimer(s.cfg.ErrorLinger)
	defer t.Stop()
	select {
	case <-conn.Context().Done():
	case <-t.C:
	}
}

// handle runs one connection from its TLS identity to its close.
//
// The listener hands over connections before their handshake completes,
// so that a resuming gateway's 0-RTT Hello waits in the stream; but nothing
// here happens before the handshake completes: 0-RTT data can be replayed
// by anyone who recorded it, and only the completed handshake proves the
// peer holds the gateway's key. A replayed Hello therefore never gets a
// Welcome nor supersedes the gateway's live session.
func (s *Server) handle(ctx context.Context, conn *quic.Conn) {
	hs := time.NewTimer(s.cfg.HelloTimeout)
	select {
	case <-conn.HandshakeComplete():
		hs.Stop()
	case <-conn.Context().Done():
		// TLS refused a certificate, or quic-go's handshake timeout
		// (HelloTimeout too) struck first: nothing more to say.
		hs.Stop()
		s.handshakeFailures.Add(1)
		return
	case <-hs.C:
		s.handshakeFailures.Add(1)
		s.log.Warn("sync connection closed: handshake not completed", "remote", conn.RemoteAddr().String())
		_ = conn.CloseWithError(closeCode(syncv1.ErrorCode_ERROR_CODE_PROTOCOL), "handshake not completed")
		return
	case <-ctx.Done():
		hs.Stop()
		_ = conn.CloseWithError(closeCode(syncv1.ErrorCode_ERROR_CODE_SHUTTING_DOWN), "server shutting down")
		return
	}
	if conn.ConnectionState().Used0RTT {
		s.zeroRTT.Add(1)
	}
	gw, err := peerGateway(conn)
	if err != nil {
		s.refuse(conn, nil, syncv1.ErrorCode_ERROR_CODE_UNAUTHORIZED, err.Error())
		return
	}
	hctx, cancel := context.WithTimeout(ctx, s.cfg.HelloTimeout)
	str, err := conn.AcceptStream(hctx)
	cancel()
	if err != nil {
		s.refuse(conn, nil, syncv1.ErrorCode_ERROR_CODE_PROTOCOL, "no control stream: "+err.Error())
		return
	}
	_ = str.SetReadDeadline(time.Now().Add(s.cfg.HelloTimeout))
	f, err := wire.ReadFrame(str, s.cfg.MaxFrameBytes)
	_ = str.SetReadDeadline(time.Time{})
	if err != nil {
		s.refuse(conn, str, syncv1.ErrorCode_ERROR_CODE_PROTOCOL, "reading Hello: "+err.Error())
		return
	}
	hello := f.GetHello()
	switch {
	case hello == nil:
		s.refuse(conn, str, syncv1.ErrorCode_ERROR_CODE_PROTOCOL, "expected Hello, got "+frameKind(f))
		return
	case hello.GetProtocolVersion() != syncv1.Version_VERSION_1:
		s.refuse(conn, str, syncv1.ErrorCode_ERROR_CODE_UNSUPPORTED_VERSION,
			fmt.Sprintf("protocol version %d not supported (want %d)", hello.GetProtocolVersion(), syncv1.Version_VERSION_1))
		return
	case hello.GetGatewayId() != "" && hello.GetGatewayId() != gw:
		s.refuse(conn, str, syncv1.ErrorCode_ERROR_CODE_UNAUTHORIZED,
			fmt.Sprintf("Hello names gateway %q but the certificate is %q", hello.GetGatewayId(), gw))
		return
	}

	ss := newSession(s, gw, conn, str)
	ss.acceptsCredit = hello.GetAcceptsCredit()
	ss.acceptsCommands = hello.GetAcceptsCommands() // commands.go
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		s.refuse(conn, str, syncv1.ErrorCode_ERROR_CODE_SHUTTING_DOWN, "server shutting down")
		return
	}
	old := s.sessions[gw]
	s.sessions[gw] = ss
	s.mu.Unlock()
	if old != nil {
		s.superseded.Add(1)
		s.log.Info("sync session superseded", "gateway", gw, "old_remote", old.conn.RemoteAddr().String())
		old.fail(syncv1.ErrorCode_ERROR_CODE_SHUTTING_DOWN, "superseded by a newer connection of the same gateway")
	}
	defer func() {
		s.mu.Lock()
		if s.sessions[gw] == ss {
			delete(s.sessions, gw)
		}
		s.mu.Unlock()
	}()
	s.accepted.Add(1)
	ss.run(hello)
}

// peerGateway returns the gateway id of conn's verified client certificate.
func peerGateway(conn *quic.Conn) (string, error) {
	chains := conn.ConnectionState().TLS.VerifiedChains
	if len(chains) == 0 || len(chains[0]) == 0 {
		return "", errors.New("no verified client certificate")
	}
	return pki.GatewayID(chains[0][0])
}
