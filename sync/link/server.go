package link

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
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
)

// Validate reports a configuration that cannot work.
func (c *ServerConfig) Validate() error {
	switch {
	case c.TLS == nil:
		return errors.New("link: ServerConfig.TLS is required")
	case c.TLS.ClientAuth != tls.RequireAndVerifyClientCert:
		return errors.New("link: ServerConfig.TLS must require and verify client certificates")
	case c.Window < 0, c.MaxFrameBytes < 0, c.MaxDecodedBytes < 0, c.HelloTimeout < 0,
		c.ErrorLinger < 0, c.MaxIdleTimeout < 0, c.KeepAlivePeriod < 0:
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
}

// Server is the cloud side of sync links: it accepts gateways' QUIC
// connections, appends their batches to the Sink and acknowledges each batch
// only once the Sink reported it durable.
//
// Goroutines: Serve runs the accept loop; each connection has a handler
// goroutine that reads frames and one that writes acks. Lock order: Server.mu
// before session.mu; session.wmu (frame writes) is never held while taking
// either.
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
	protocolErrors, sinkErrors            atomic.Uint64
}

// NewServer returns a Server appending to sink. cfg is checked by Serve.
func NewServer(cfg ServerConfig, sink Sink) *Server {
	cfg = cfg.withDefaults()
	return &Server{
		cfg:      cfg,
		sink:     sink,
		log:      cfg.Logger,
		quit:     make(chan struct{}),
		done:     make(chan struct{}),
		sessions: map[string]*session{},
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
	}
	ln, err := quic.Listen(pc, s.cfg.TLS, qconf)
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
		Sessions:       n,
		Accepted:       s.accepted.Load(),
		Superseded:     s.superseded.Load(),
		Refused:        s.refused.Load(),
		Batches:        s.batches.Load(),
		Records:        s.records.Load(),
		Bytes:          s.bytes.Load(),
		AckedBatches:   s.ackedBatches.Load(),
		ProtocolErrors: s.protocolErrors.Load(),
		SinkErrors:     s.sinkErrors.Load(),
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
func (s *Server) handle(ctx context.Context, conn *quic.Conn) {
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

// session is one gateway's live connection on the server.
type session struct {
	srv  *Server
	gw   string
	conn *quic.Conn
	str  *quic.Stream

	wmu sync.Mutex // serialises writes to str; guards failed writes

	mu      sync.Mutex
	pending []*pendingBatch // appended, not yet acknowledged, in order
	eof     bool            // the gateway closed its side of the stream

	wake     chan struct{} // cap 1: a pending batch completed, or eof
	failed   chan struct{} // closed by fail
	failOnce sync.Once
	code     syncv1.ErrorCode // set by fail before failed is closed
	reason   string
}

type pendingBatch struct {
	last uint64
	done bool
	err  error
}

func newSession(s *Server, gw string, conn *quic.Conn, str *quic.Stream) *session {
	return &session{
		srv: s, gw: gw, conn: conn, str: str,
		wake:   make(chan struct{}, 1),
		failed: make(chan struct{}),
	}
}

func (ss *session) signal() {
	select {
	case ss.wake <- struct{}{}:
	default:
	}
}

// write sends one frame unless the session has failed.
func (ss *session) write(f *syncv1.Frame) error {
	ss.wmu.Lock()
	defer ss.wmu.Unlock()
	select {
	case <-ss.failed:
		return errors.New("session failed")
	default:
	}
	// A gateway that stops reading must not pin this goroutine (and wmu)
	// forever: QUIC keep-alives would keep the connection up.
	_ = ss.str.SetWriteDeadline(time.Now().Add(ss.srv.cfg.MaxIdleTimeout))
	return wire.WriteFrame(ss.str, f)
}

// fail ends the session with an Error frame: it is the last frame written,
// the send side is closed, and run closes the connection with code once the
// gateway closed it or ErrorLinger passed. Only the first call counts.
func (ss *session) fail(code syncv1.ErrorCode, reason string) {
	ss.failOnce.Do(func() {
		ss.wmu.Lock()
		defer ss.wmu.Unlock()
		ss.code, ss.reason = code, reason
		close(ss.failed)
		_ = ss.str.SetWriteDeadline(time.Now().Add(ss.srv.cfg.ErrorLinger))
		if err := wire.WriteFrame(ss.str, errorFrame(code, reason)); err == nil {
			_ = ss.str.Close()
		}
		ss.str.CancelRead(quic.StreamErrorCode(code))
	})
}

// run serves the session after Hello until it ends.
func (ss *session) run(hello *syncv1.Hello) {
	s := ss.srv
	log := s.log.With("gateway", ss.gw, "remote", ss.conn.RemoteAddr().String())
	hwm := s.sink.HighWaterMark(ss.gw)
	err := ss.write(&syncv1.Frame{Body: &syncv1.Frame_Welcome{Welcome: &syncv1.Welcome{
		ProtocolVersion: syncv1.Version_VERSION_1,
		HighWaterMark:   hwm,
		Window:          uint32(s.cfg.Window),
		MaxFrameBytes:   uint32(s.cfg.MaxFrameBytes),
	}}})
	if err != nil {
		log.Info("sync session lost before Welcome", "err", err)
		_ = ss.conn.CloseWithError(0, "")
		return
	}
	log.Info("sync session open", "high_water_mark", hwm, "software_version", hello.GetSoftwareVersion(), "first_seq", hello.GetFirstSeq())

	ackerDone := make(chan struct{})
	go func() {
		defer close(ackerDone)
		ss.ackLoop()
	}()
	readErr := ss.readLoop(hwm)
	switch {
	case readErr == nil:
		// The gateway half-closed: wait for the acks of what it sent.
		select {
		case <-ackerDone:
		case <-ss.failed:
		case <-ss.conn.Context().Done():
		}
	case errors.Is(readErr, wire.ErrFrameTooLarge):
		s.protocolErrors.Add(1)
		ss.fail(syncv1.ErrorCode_ERROR_CODE_FRAME_TOO_LARGE, readErr.Error())
	case errors.Is(readErr, ErrProtocol), errors.Is(readErr, wire.ErrMalformed),
		errors.Is(readErr, wire.ErrInvalidBatch), errors.Is(readErr, wire.ErrDecodedTooLarge),
		errors.Is(readErr, io.ErrUnexpectedEOF):
		s.protocolErrors.Add(1)
		ss.fail(syncv1.ErrorCode_ERROR_CODE_PROTOCOL, readErr.Error())
	}
	var code syncv1.ErrorCode
	select {
	case <-ss.failed:
		code = ss.code
		log.Warn("sync session closed with error", "code", code.String(), "reason", ss.reason)
		s.linger(ss.conn)
		_ = ss.conn.CloseWithError(closeCode(code), ss.reason)
	default:
		log.Info("sync session closed", "err", readErr)
		_ = ss.conn.CloseWithError(0, "")
	}
	ss.signal()
	<-ackerDone
}

// readLoop reads batches and hands them to the sink until the stream ends
// (nil), the connection fails (its error) or a frame breaks the protocol (an
// error wrapping a wire sentinel or ErrProtocol). after is the sequence the
// first batch must pass.
func (ss *session) readLoop(after uint64) error {
	s := ss.srv
	r := &countingReader{r: ss.str}
	for {
		before := r.n
		f, err := wire.ReadFrame(r, s.cfg.MaxFrameBytes)
		if err != nil {
			if err == io.EOF {
				ss.mu.Lock()
				ss.eof = true
				ss.mu.Unlock()
				ss.signal()
				return nil
			}
			return err
		}
		b := f.GetBatch()
		if b == nil {
			return fmt.Errorf("%w: expected Batch, got %s", ErrProtocol, frameKind(f))
		}
		recs, err := wire.DecodeBatchRaw(b, s.cfg.MaxDecodedBytes)
		if err != nil {
			return err
		}
		if first := recs[0].Seq; first <= after {
			return fmt.Errorf("%w: batch starts at seq %d, not above %d", ErrProtocol, first, after)
		}
		after = b.GetLastSeq()
		pb := &pendingBatch{last: after}
		ss.mu.Lock()
		if len(ss.pending) >= s.cfg.Window {
			ss.mu.Unlock()
			return fmt.Errorf("%w: more than %d batches unacknowledged", ErrProtocol, s.cfg.Window)
		}
		ss.pending = append(ss.pending, pb)
		ss.mu.Unlock()
		s.batches.Add(1)
		s.records.Add(uint64(len(recs)))
		s.bytes.Add(uint64(r.n - before))
		s.sink.AppendAsync(ss.gw, recs, func(err error) {
			ss.mu.Lock()
			pb.done, pb.err = true, err
			ss.mu.Unlock()
			ss.signal()
		})
	}
}

// ackLoop writes an Ack for each completed batch, strictly in batch order,
// and fails the session at the first append error. It returns when the
// session failed, the connection closed, or the gateway half-closed and
// every batch was acknowledged.
func (ss *session) ackLoop() {
	s := ss.srv
	for {
		select {
		case <-ss.wake:
		case <-ss.failed:
			return
		case <-ss.conn.Context().Done():
			return
		}
		ss.mu.Lock()
		var last uint64
		n := 0
		var appendErr error
		for n < len(ss.pending) && ss.pending[n].done {
			if appendErr = ss.pending[n].err; appendErr != nil {
				break
			}
			last = ss.pending[n].last
			n++
		}
		ss.pending = ss.pending[n:]
		drained := ss.eof && len(ss.pending) == 0
		ss.mu.Unlock()
		if n > 0 {
			if err := ss.write(&syncv1.Frame{Body: &syncv1.Frame_Ack{Ack: &syncv1.Ack{AckedSeq: last}}}); err != nil {
				return
			}
			s.ackedBatches.Add(uint64(n))
		}
		if appendErr != nil {
			s.sinkErrors.Add(1)
			ss.fail(syncv1.ErrorCode_ERROR_CODE_INTERNAL, "append failed: "+appendErr.Error())
			return
		}
		if drained {
			return
		}
	}
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
