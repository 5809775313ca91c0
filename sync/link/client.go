package link

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
	"github.com/tributary-io/tributary/sync/flow"
	"github.com/tributary-io/tributary/sync/wire"
)

// ClientConfig configures a Client. Fields left zero take the documented
// defaults.
type ClientConfig struct {
	// Addr is the cloud's UDP address, host:port. Required.
	Addr string
	// TLS presents the gateway certificate and verifies the cloud
	// (pki.ClientTLS builds one). Required. NextProtos empty means [ALPN].
	TLS *tls.Config
	// GatewayID is sent in Hello. The cloud takes the identity from the
	// certificate and refuses a Hello naming another gateway. Empty sends
	// none.
	GatewayID string
	// SoftwareVersion is sent in Hello for the cloud's logs. Empty sends none.
	SoftwareVersion string
	// Window caps the batches in flight; the cloud's Welcome.window caps it
	// too, the smaller wins. Zero means 8.
	Window int
	// MaxBatchBytes is the approximate payload of one batch, passed to
	// Source.Read; batches are also split to fit the cloud's frame limit.
	// Zero means 1 MiB.
	MaxBatchBytes int
	// MaxBatchRecords caps the records of one batch. Zero means 4096.
	MaxBatchRecords int
	// Linger is how long a batch that is not full waits for more records
	// before it is sent. Zero means 5 ms; negative sends at once.
	Linger time.Duration
	// CompressAbove zstd-compresses a batch whose records encode to more
	// bytes than this. Zero means 4 KiB; negative never compresses.
	CompressAbove int
	// MaxBytesPerSecond caps the link's batch bytes per second (a
	// gateway on a metered or shared uplink), with bursts of a tenth of a
	// second. Zero means unlimited.
	MaxBytesPerSecond int
	// Lanes lists the priority lanes above 0 (each below MaxLanes) that
	// the client drains, each on a QUIC stream of its own whose urgency is
	// the lane's number (see lanes.go). Lane 0 is drained on the control
	// stream. Non-empty requires a LaneSource, which is then read and
	// acknowledged per lane (lane 0 included). Empty (the zero value): one
	// lane, and the Source's Read, Wait and Ack drain every record.
	Lanes []uint32
	// Backoff spaces reconnect attempts. Its zero value is usable (see
	// flow.Backoff for its defaults). The Client owns it once Run starts.
	Backoff flow.Backoff
	// DialTimeout bounds connecting: QUIC and TLS handshakes, Hello and
	// Welcome. Zero means 10 s.
	DialTimeout time.Duration
	// KeepAlivePeriod is the QUIC keep-alive period, which keeps NAT
	// bindings and the idle timer alive on a quiet link. Zero means 15 s.
	KeepAlivePeriod time.Duration
	// MaxIdleTimeout closes a connection that heard nothing from the cloud
	// (keep-alives included) for this long. Zero means 30 s.
	MaxIdleTimeout time.Duration
	// LocalAddr is the local UDP address sessions (and Migrate) bind, each
	// on a new socket. Zero means any address and port ("0.0.0.0:0").
	LocalAddr string
	// DisableZeroRTT turns off session resumption: every session does a
	// full handshake and sends its Hello after it. Zero (false) resumes
	// with TLS session tickets and 0-RTT; the Hello waits for the resumed
	// handshake to complete, because of a data race in quic-go when a
	// stream is opened during 0-RTT (see openOnce in dial.go). A
	// ClientSessionCache set in TLS is used as is.
	DisableZeroRTT bool
	// OnState, if set, is called on every state change, from Run's
	// goroutine; err is why a session ended (nil otherwise). It must not
	// block.
	OnState func(state State, err error)
	// Commands, if set, makes the gateway accept cloud-to-device commands
	// (Hello.accepts_commands): requests go to it, their statuses back to
	// the cloud (see commands.go). Nil (the zero value): no commands.
	Commands Commands
	// Logger receives the client's logs. Nil discards them.
	Logger *slog.Logger
	// Now is the clock used for backoff decisions. Nil means time.Now.
	Now func() time.Time
}

const (
	defaultClientWindow  = 8
	defaultBatchBytes    = 1 << 20
	defaultBatchRecords  = 4096
	defaultLinger        = 5 * time.Millisecond
	defaultCompressAbove = 4 << 10
	defaultDialTimeout   = 10 * time.Second
)

// Validate reports a configuration that cannot work.
func (c *ClientConfig) Validate() error {
	switch {
	case c.Addr == "":
		return errors.New("link: ClientConfig.Addr is required")
	case c.TLS == nil:
		return errors.New("link: ClientConfig.TLS is required")
	case c.Window < 0, c.MaxBatchBytes < 0, c.MaxBytesPerSecond < 0, c.MaxBatchRecords < 0, c.DialTimeout < 0,
		c.KeepAlivePeriod < 0, c.MaxIdleTimeout < 0:
		return errors.New("link: ClientConfig fields must not be negative (except Linger, CompressAbove)")
	}
	return nil
}

func (c ClientConfig) withDefaults() ClientConfig {
	if c.Window == 0 {
		c.Window = defaultClientWindow
	}
	if c.MaxBatchBytes == 0 {
		c.MaxBatchBytes = defaultBatchBytes
	}
	if c.MaxBatchRecords == 0 {
		c.MaxBatchRecords = defaultBatchRecords
	}
	if c.Linger == 0 {
		c.Linger = defaultLinger
	}
	if c.CompressAbove == 0 {
		c.CompressAbove = defaultCompressAbove
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = defaultDialTimeout
	}
	if c.KeepAlivePeriod == 0 {
		c.KeepAlivePeriod = defaultKeepAlive
	}
	if c.MaxIdleTimeout == 0 {
		c.MaxIdleTimeout = defaultIdleTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.LocalAddr == "" {
		c.LocalAddr = "0.0.0.0:0"
	}
	if c.TLS != nil {
		c.TLS = clientTLS(&c)
	}
	return c
}

// State is the Client's link state.
type State int

const (
	// Disconnected: no session; waiting out the backoff (or not started).
	Disconnected State = iota
	// Connecting: dialing, or waiting for Welcome.
	Connecting
	// Connected: a session is open and forwarding.
	Connected
)

func (s State) String() string {
	switch s {
	case Disconnected:
		return "disconnected"
	case Connecting:
		return "connecting"
	case Connected:
		return "connected"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// ClientStats are a Client's counters. Sequences are outbox sequences.
type ClientStats struct {
	State State
	// SentSeq is the last seq sent in the current session; AckedSeq the
	// highest seq the cloud acknowledged (and the Source was told).
	SentSeq, AckedSeq uint64
	// BatchesSent, BatchesAcked, RecordsSent and BytesSent (frame bytes)
	// count over all sessions; resent records count again. RawBytes counts
	// the sent batches' record encodings before compression, so
	// RawBytes/BytesSent is the link's compression ratio.
	BatchesSent, BatchesAcked, RecordsSent, BytesSent, RawBytes uint64
	// Throttled is the total time batches waited for the bandwidth cap.
	Throttled time.Duration
	// Window and WindowBytes are the current session's send limits: the
	// smaller of Window and the cloud's credit, in batches (0: paused by
	// the cloud) and bytes (0: no byte limit).
	Window      int
	WindowBytes int64
	// Sessions counts Welcomes received; Reconnects sessions or dial
	// attempts that failed and were retried; ZeroRTT the sessions whose
	// Hello the cloud accepted as 0-RTT data; Migrations successful calls
	// of Migrate.
	Sessions, Reconnects, ZeroRTT, Migrations uint64
	// LastError is why the last session or dial attempt ended ("" if none).
	LastError string
}

// Client is the gateway side of a sync link: it drains a Source to the
// cloud and acknowledges to the Source what the cloud made durable.
//
// Records are sent in seq order, a window of batches at a time; records sent
// but not acknowledged when a session ends are sent again after the next
// Welcome, from the cloud's high-water mark (the cloud drops duplicates).
// The Source is told Ack(seq) only with seqs the cloud acknowledged, in
// increasing order.
type Client struct {
	cfg ClientConfig
	src Source
	log *slog.Logger

	runMu sync.Mutex // held by Run: one Run at a time

	state                                             atomic.Int32
	sentSeq, ackedSeq                                 atomic.Uint64
	batchesSent, batchesAcked, recordsSent, bytesSent atomic.Uint64
	rawBytes                                          atomic.Uint64
	window, windowBytes                               atomic.Int64
	sessions, reconnects, zeroRTT, migrations         atomic.Uint64
	throttled                                         atomic.Int64
	bucket                                            flow.TokenBucket // owned by Run's goroutine
	acker                                             *sourceAcker     // set by Run

	connMu  sync.Mutex
	live    *sessionConn // the session's connection, nil between sessions
	lastErr atomic.Pointer[string]

	ackersMu   sync.Mutex
	laneAckers map[uint32]*sourceAcker // lanes above 0 (lanes_client.go), set by Run

	cmds clientCommands // commands.go
}

// NewClient returns a Client draining src. cfg is checked by Run.
func NewClient(cfg ClientConfig, src Source) *Client {
	cfg = cfg.withDefaults()
	return &Client{cfg: cfg, src: src, log: cfg.Logger, bucket: flow.TokenBucket{Rate: float64(cfg.MaxBytesPerSecond)}}
}

// Stats returns the client's counters.
func (c *Client) Stats() ClientStats {
	st := ClientStats{
		State:        State(c.state.Load()),
		SentSeq:      c.sentSeq.Load(),
		AckedSeq:     c.ackedSeq.Load(),
		BatchesSent:  c.batchesSent.Load(),
		BatchesAcked: c.batchesAcked.Load(),
		RecordsSent:  c.recordsSent.Load(),
		BytesSent:    c.bytesSent.Load(),
		RawBytes:     c.rawBytes.Load(),
		Window:       int(c.window.Load()),
		WindowBytes:  c.windowBytes.Load(),
		Sessions:     c.sessions.Load(),
		Reconnects:   c.reconnects.Load(),
		ZeroRTT:      c.zeroRTT.Load(),
		Migrations:   c.migrations.Load(),
		Throttled:    time.Duration(c.throttled.Load()),
	}
	if p := c.lastErr.Load(); p != nil {
		st.LastError = *p
	}
	return st
}

func (c *Client) setState(s State, err error) {
	if err != nil {
		msg := err.Error()
		c.lastErr.Store(&msg)
	}
	if State(c.state.Swap(int32(s))) == s && err == nil {
		return
	}
	if c.cfg.OnState != nil {
		c.cfg.OnState(s, err)
	}
}

// Run keeps the link up until ctx ends, reconnecting with the backoff after
// every failure, and returns nil then. It returns early only for errors
// that retrying cannot fix: an invalid config, or ErrRecordTooLarge.
func (c *Client) Run(ctx context.Context) error {
	if err := c.cfg.Validate(); err != nil {
		return err
	}
	if !c.runMu.TryLock() {
		return errors.New("link: Client.Run is already running")
	}
	defer c.runMu.Unlock()
	defer c.setState(Disconnected, nil)
	if err := c.checkLanes(); err != nil {
		return err
	}
	defer c.startAckers()() // lanes_client.go
	for {
		err := c.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, ErrRecordTooLarge) {
			c.setState(Disconnected, err)
			c.log.Error("sync link stopped", "err", err)
			return err
		}
		c.reconnects.Add(1)
		delay := c.cfg.Backoff.Next(c.cfg.Now())
		c.setState(Disconnected, err)
		c.log.Warn("sync link down", "err", err, "retry_in", delay)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// session runs one connection: dial, Hello/Welcome, then the send loop. It
// returns why the session ended.
func (c *Client) session(ctx context.Context) (err error) {
	c.setState(Connecting, nil)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	dctx, dcancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer dcancel()
	sc := &sessionConn{}
	c.connMu.Lock()
	c.live = sc
	c.connMu.Unlock()
	defer func() {
		c.connMu.Lock()
		c.live = nil
		c.connMu.Unlock()
		sc.close()
	}()
	dialed, err := c.dial(dctx, sc)
	if err != nil {
		return err
	}
	// Closing twice is harmless: sendLoop closes with its own code first.
	defer func() { _ = dialed.CloseWithError(0, "") }()
	conn, str, welcome, err := c.open(dctx, dialed)
	if err != nil {
		return err
	}
	sc.mu.Lock()
	sc.conn = conn
	sc.mu.Unlock()
	dcancel()

	hwm := welcome.GetHighWaterMark()
	if acked := c.acker.posted(); hwm < acked {
		// The cloud holds less than it acknowledged before (a restored
		// log?). What the source deleted is gone; resume after it.
		c.log.Error("cloud high-water mark below an earlier ack", "high_water_mark", hwm, "acked", acked)
		hwm = acked
	}
	c.acker.post(hwm)
	win := flow.NewWindow(c.cfg.Window, hwm)
	if w := int(welcome.GetWindow()); w > 0 {
		win.SetLimits(min(c.cfg.Window, w), 0)
	}
	if cr := welcome.GetCredit(); cr != nil {
		c.applyCredit(win, cr)
	}
	c.window.Store(int64(win.Max()))
	c.windowBytes.Store(win.MaxBytes())
	maxFrame := wire.MaxFrameBytes
	if m := int(welcome.GetMaxFrameBytes()); m > 0 {
		maxFrame = min(maxFrame, m)
	}
	c.sessions.Add(1)
	c.sentSeq.Store(hwm)
	c.cfg.Backoff.Connected(c.cfg.Now())
	c.setState(Connected, nil)
	c.log.Info("sync link up", "addr", c.cfg.Addr, "high_water_mark", hwm, "window", win.Max(), "window_bytes", win.MaxBytes())

	defer c.startCommands(ctx, str)() // commands.go
	// lanes_client.go
	return c.runLanes(ctx, conn, str, win, maxFrame, welcome)
}

// applyCredit sets win's limits from a cloud credit, never above the
// client's own Window.
func (c *Client) applyCredit(win *flow.Window, cr *syncv1.Credit) {
	win.SetLimits(min(c.cfg.Window, int(min(cr.GetWindow(), 1<<30))), int64(min(cr.GetWindowBytes(), 1<<62)))
	c.window.Store(int64(win.Max()))
	c.windowBytes.Store(win.MaxBytes())
}

// handshake sends Hello and reads Welcome.
func (c *Client) handshake(str *quic.Stream) (*syncv1.Welcome, error) {
	deadline := time.Now().Add(c.cfg.DialTimeout)
	_ = str.SetDeadline(deadline)
	defer func() { _ = str.SetDeadline(time.Time{}) }()
	hello := &syncv1.Hello{
		ProtocolVersion: syncv1.Version_VERSION_1,
		GatewayId:       c.cfg.GatewayID,
		SoftwareVersion: c.cfg.SoftwareVersion,
		AcceptsCredit:   true,
		Lanes:           c.cfg.Lanes,
		AcceptsCommands: c.cfg.Commands != nil,
	}
	if first, err := c.src.Read(0, 1, 1); err == nil && len(first) > 0 {
		hello.FirstSeq = first[0].GetSeq() // informational: gaps from drop policies
	}
	if err := wire.WriteFrame(str, &syncv1.Frame{Body: &syncv1.Frame_Hello{Hello: hello}}); err != nil {
		return nil, fmt.Errorf("send Hello: %w", remoteClose(err))
	}
	f, err := wire.ReadFrame(str, wire.MaxFrameBytes)
	if err != nil {
		return nil, fmt.Errorf("read Welcome: %w", remoteClose(err))
	}
	if e := f.GetError(); e != nil {
		return nil, &RemoteError{Code: e.GetCode(), Message: e.GetMessage()}
	}
	w := f.GetWelcome()
	if w == nil {
		return nil, fmt.Errorf("%w: expected Welcome, got %s", ErrProtocol, frameKind(f))
	}
	if w.GetProtocolVersion() != syncv1.Version_VERSION_1 {
		return nil, fmt.Errorf("%w: Welcome with version %d", ErrProtocol, w.GetProtocolVersion())
	}
	return w, nil
}
