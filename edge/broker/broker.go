// Package broker is the edge gateway's MQTT broker: a mochi-mqtt server
// whose publishes are routed by forwarding rules and, when forwarded,
// committed to the outbox before they are acknowledged (DESIGN.md contract
// 1: a QoS≥1 PUBACK means the message is in the SQLite outbox).
//
// # Why the PUBACK is written by this package (AckAsync)
//
// mochi writes a PUBACK after the OnPublish hook returns, on the client's
// read goroutine, and reads one packet per client at a time. Blocking
// OnPublish until the commit (AckSync) therefore puts one client's
// pipelined messages in separate commits: one fsync per message for a single
// busy device (≈ 1.9k msg/s measured against ≈ 18k for the asynchronous
// path, /work/shared/notes/edge-durable-ack.md). AckAsync instead queues the
// message to the outbox and hands mochi back an ignored QoS 0 copy (taken),
// which makes mochi skip its own acknowledgement, retention and delivery
// (as packets.ErrRejectPacket would, without the garbage); when the group commit
// reports back, this package delivers the messages to local subscribers (so
// a retained message is in place once its PUBACK is out, as with mochi) and
// writes the client's PUBACKs in the order the publishes arrived, coalesced
// into one socket write per client per batch. BenchmarkDurableAck measures
// both modes. The asynchronous path has to redo what mochi would have done:
//   - PUBACK order per client: a per-client FIFO (session) releases entries
//     only from its head, whatever order commits report in. A QoS 1 publish
//     that is not forwarded joins the FIFO too when it is not empty.
//   - Receive Maximum: the FIFO length is the client's unacknowledged count;
//     an MQTT 5 client past Limits.ReceiveMaximum is disconnected (0x93), an
//     MQTT 3.1.1 client is simply not read from until a slot frees.
//   - Local delivery with MQTT 5 properties: Server.Publish drops them, so
//     the message is injected through mochi's inline client and this
//     package's hook restores the publisher as the origin (NoLocal works).
//   - Slow sockets: each client's acknowledgements are written from a
//     goroutine of its own with a write deadline; one stuck client cannot
//     hold back the outbox writer or other clients.
//
// QoS 2 keeps mochi's PUBREC/PUBREL state machine, so it always takes the
// blocking path; QoS 0 is appended without waiting and delivered at once.
// Will messages on forwarded topics are appended when mochi sends them.
// Publishes from mochi's inline client (the gateway's own) are never
// forwarded.
//
// # Sessions and the replay after a crash
//
// With Config.Sessions.File, persistent sessions, their subscriptions and
// in-flight messages, and retained messages are kept in a SQLite file of
// their own (sessionStore explains why not in the outbox's) and restored by
// Start. A forwarded message is acknowledged once it is in the outbox, while
// its delivery to local subscribers is recorded in the sessions file a
// moment later; a delivery marker (deliveryMarks), committed with those
// records, says up to which outbox seq every delivery is recorded. Start
// delivers again every record after it (OutboxReader), before any client is
// served, so a crash between the PUBACK and that record costs a duplicate,
// not a loss.
//
// Known gaps: a client disconnected because its message could not be
// committed (MQTT 3.1.1 has no negative PUBACK) does not have its will
// published. The replay cannot bring back a record the cloud acknowledged
// (and the outbox deleted) before its local delivery was recorded, a window
// of a few hundred milliseconds at most; it is logged. A local-only message
// (not forwarded) queued for a persistent session in the moments before a
// crash may be lost. mochi resends a session's in-flight messages ordered by
// creation second only.
package broker

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tributary-io/tributary/edge/outbox"
)

// Outbox is the part of edge/outbox the broker uses. done must be called
// exactly once per Append, after the message is durably committed (seq,
// nil) or when it will not be (0, err); errors.Is(err, outbox.ErrQuotaExceeded)
// or outbox.ErrDiskFull marks a full store (MQTT 5 reason 0x97, else 0x80). done may run on any goroutine, including the caller's
// before Append returns, and must not be blocked on by Append. The broker
// does not modify m after Append.
type Outbox interface {
	Append(m outbox.Message, done func(seq uint64, err error))
}

// Stats are counters since New. All fields are cumulative except Clients.
type Stats struct {
	Clients      int64  // clients connected now
	Received     uint64 // client publishes that reached the broker's hook, and forwarded wills
	Forwarded    uint64 // publishes handed to the outbox
	Committed    uint64 // forwarded publishes the outbox committed
	CommitErrors uint64 // forwarded publishes the outbox failed to commit
	// Rejected counts publishes refused to their client: a negative
	// PUBACK, a disconnect instead of a PUBACK, or a dropped QoS 0 message
	// (commit failure, over-size payload, Receive Maximum exceeded).
	Rejected uint64
	// LocalDropped counts messages mochi dropped on the way to local
	// subscribers (full outbound queue or in-flight window).
	LocalDropped int64
	// Replayed counts forwarded messages delivered again to local
	// subscribers at Start, after the stored delivery marker.
	Replayed uint64
	// SessionErrors counts session-state changes that could not be stored
	// (Config.Sessions.File).
	SessionErrors uint64
	// RateLimited counts MQTT 5 publishes refused (0x96) or, at QoS 0,
	// dropped for exceeding Limits.PublishRate; they are in Rejected too.
	// Throttled counts MQTT 3.1.1 publishes whose client was not read from
	// until it was back under the rate.
	RateLimited, Throttled uint64
}

// Addrs are the bound listener addresses; nil for a listener that is not
// configured or not started.
type Addrs struct {
	TCP, TLS, WebSocket net.Addr
}

// ErrStarted is returned by Start and the setters after Start was called.
var ErrStarted = errors.New("broker: already started")

// ErrClosed is returned by Start after Close.
var ErrClosed = errors.New("broker: closed")

// Broker is the edge MQTT broker. Create it with New, configure it with the
// setters, then Start; Close stops it.
type Broker struct {
	cfg    Config // with defaults applied
	ob     Outbox
	log    *slog.Logger
	router *router
	now    func() time.Time
	auth   Authorizer
	// inflightSweep is how often mochi sweeps expired in-flight messages
	// (inflightSweepInterval; tests shorten it).
	inflightSweep time.Duration

	srv    *mqtt.Server
	inline *mqtt.Client

	mu      sync.Mutex // guards started, closed, addrs
	started bool
	closed  bool
	addrs   Addrs

	closing chan struct{}  // closed when Close begins
	work    sync.WaitGroup // outstanding appends, queued entries and drains

	willMu  sync.Mutex
	noWills bool // set once Close no longer accepts will messages

	sessMu   sync.RWMutex
	sessions map[*mqtt.Client]*session

	// store keeps persistent sessions (nil without Config.Sessions.File);
	// marks tracks local delivery of committed messages for the replay
	// after a crash (nil when there is no store or the outbox cannot be
	// read back). syncSeqs holds, per client, the seq of a forwarded
	// publish committed on the blocking path until mochi has delivered it.
	store    *sessionStore
	marks    *deliveryMarks
	syncSeqs sync.Map // *mqtt.Client → uint64
	replayed atomic.Uint64

	received, forwarded, committed, commitErrors, rejected atomic.Uint64

	rates                  *rateLimiter // nil without Limits.PublishRate
	rateLimited, throttled atomic.Uint64

	cmd commandState // commands.go
}

// clientWriteBuffer is how many bytes mochi gathers for one socket write
// while more packets are queued for the same client (it writes at once when
// the queue is empty, so this adds no latency). mochi's default, 2 KiB, is
// eight 200-byte deliveries; a subscriber sent a commit group's worth at a
// time then costs a write syscall per eight messages. The buffer exists
// only while the client's queue is not empty.
const clientWriteBuffer = 16 << 10

// New validates cfg, loads the credentials file if one is configured, and
// builds a broker that commits forwarded publishes to ob. logger nil
// discards logs. Nothing listens until Start.
func New(cfg Config, ob Outbox, logger *slog.Logger) (*Broker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if ob == nil {
		return nil, errors.New("broker: nil outbox")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.withDefaults()
	var auth Authorizer = AllowAll{}
	if cfg.Auth.CredentialsFile != "" {
		c, err := LoadCredentials(cfg.Auth.CredentialsFile)
		if err != nil {
			return nil, fmt.Errorf("auth.credentials_file: %w", err)
		}
		auth = c
	}
	return &Broker{
		cfg:           cfg,
		ob:            ob,
		log:           logger,
		router:        newRouter(cfg.Forwarding),
		rates:         newRateLimiter(cfg.Limits),
		now:           time.Now,
		auth:          auth,
		inflightSweep: inflightSweepInterval,
		closing:       make(chan struct{}),
		sessions:      make(map[*mqtt.Client]*session),
	}, nil
}

// SetClock replaces the clock that stamps outbox.Message.Received and paces
// Limits.PublishRate (time.Now by default). Call before Start.
func (b *Broker) SetClock(now func() time.Time) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.started {
		return ErrStarted
	}
	b.now = now
	return nil
}

// SetAuthorizer replaces the Authorizer chosen by Config.Auth with a. Call
// before Start.
func (b *Broker) SetAuthorizer(a Authorizer) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.started {
		return ErrStarted
	}
	b.auth = a
	return nil
}

// Start binds the listeners and starts serving. With Config.Sessions.File
// it first restores the stored sessions and, if the outbox can be read back
// (OutboxReader), delivers again to local subscribers the forwarded
// messages committed after the stored delivery marker (those a crash may
// have kept from them), before any client is served. On error nothing is
// left listening. Start may be called once.
func (b *Broker) Start() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	if b.started {
		return ErrStarted
	}

	lim := b.cfg.Limits
	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumClients = int64(lim.MaxConnections)
	caps.MaximumPacketSize = uint32(lim.MaxPayloadBytes + packetOverhead)
	caps.ReceiveMaximum = uint16(lim.ReceiveMaximum)
	caps.MaximumInflight = uint16(lim.MaxInflight)
	caps.MaximumClientWritesPending = int32(lim.MaxClientWritesPending)
	caps.MaximumMessageExpiryInterval = int64(max(lim.MessageExpiry, 0) / time.Second)
	caps.MaximumSessionExpiryInterval = uint32(lim.SessionExpiry / time.Second)
	// mochi never advertises Maximum Packet Size itself; the hook adds it to
	// CONNACK (OnPacketEncode).

	srv := mqtt.New(&mqtt.Options{
		Capabilities:             caps,
		Logger:                   slog.New(mochiHandler{inner: b.log.Handler()}).With("component", "mochi"),
		InlineClient:             true,
		SysTopicResendInterval:   10,
		ClientNetWriteBufferSize: clientWriteBuffer,
	})
	if err := slowInflightSweep(srv, b.inflightSweep); err != nil {
		b.log.Warn("mochi sweeps in-flight messages every second", "error", err)
	}
	inline, ok := srv.Clients.Get(mqtt.InlineClientId)
	if !ok {
		return errors.New("broker: mochi has no inline client")
	}
	// Deliveries are injected through the inline client; as MQTT 5 they keep
	// their message expiry.
	inline.Properties.ProtocolVersion = 5
	b.srv, b.inline = srv, inline

	var bound []net.Listener
	var store *sessionStore
	serving := false
	fail := func(err error) error {
		if serving {
			_ = srv.Close()
		}
		for _, ln := range bound {
			_ = ln.Close()
		}
		if store != nil {
			_ = store.close()
		}
		b.store, b.marks = nil, nil
		b.addrs = Addrs{}
		return err
	}

	// The store and the marker come first: the hooks read b.marks.
	var reader OutboxReader
	var replayFrom uint64
	if path := b.cfg.Sessions.File; path != "" {
		var err error
		if store, err = openSessionStore(path, b.log); err != nil {
			return fail(err)
		}
		if r, ok := b.ob.(OutboxReader); ok {
			saved, found, err := store.marker()
			if err != nil {
				return fail(err)
			}
			if !found {
				// A new sessions file: nothing of the outbox is owed to
				// local subscribers that this file could know about.
				saved = r.Stats().LastSeq
				if err := store.setMarker(saved); err != nil {
					return fail(fmt.Errorf("broker: sessions: %w", err))
				}
			}
			reader, replayFrom = r, saved
			b.marks = newDeliveryMarks(saved)
		}
		b.store = store
	}

	if err := srv.AddHook(&authHook{a: reservedFirst{b.auth}}, nil); err != nil {
		return fail(fmt.Errorf("broker: add auth hook: %w", err))
	}
	if err := srv.AddHook(&hook{b: b}, nil); err != nil {
		return fail(fmt.Errorf("broker: add hook: %w", err))
	}
	if err := srv.AddHook(&commandHook{b: b}, nil); err != nil {
		return fail(fmt.Errorf("broker: add commands hook: %w", err))
	}
	if store != nil {
		sh := newStoreHook(store)
		sh.restoredInflight = func() { b.cmd.mayHold.Store(true) }
		if err := srv.AddHook(sh, nil); err != nil {
			return fail(fmt.Errorf("broker: add sessions hook: %w", err))
		}
	}

	// Sockets are bound now, so an address in use fails Start early; they
	// are served only after the sessions are restored and replayed.
	var lns []listeners.Listener
	wt := lim.WriteTimeout
	if !b.cfg.Listeners.TCP.Disabled {
		ln, err := net.Listen("tcp", b.cfg.Listeners.TCP.Address)
		if err != nil {
			return fail(fmt.Errorf("broker: listeners.tcp.address: %w", err))
		}
		bound = append(bound, ln)
		b.addrs.TCP = ln.Addr()
		lns = append(lns, listeners.NewNet(listenerTCP, &deadlineListener{Listener: ln, timeout: wt}))
	}
	if t := b.cfg.Listeners.TLS; t != nil {
		tc, err := serverTLS("listeners.tls", t.CertFile, t.KeyFile, t.ClientCAFile)
		if err != nil {
			return fail(err)
		}
		ln, err := net.Listen("tcp", t.Address)
		if err != nil {
			return fail(fmt.Errorf("broker: listeners.tls.address: %w", err))
		}
		bound = append(bound, ln)
		b.addrs.TLS = ln.Addr()
		lns = append(lns, listeners.NewNet(listenerTLS, &deadlineListener{Listener: tlsListener(ln, tc), timeout: wt}))
	}
	if w := b.cfg.Listeners.WebSocket; w != nil {
		var tc *tls.Config
		if w.CertFile != "" {
			var err error
			if tc, err = serverTLS("listeners.websocket", w.CertFile, w.KeyFile, ""); err != nil {
				return fail(err)
			}
		}
		ln, err := net.Listen("tcp", w.Address)
		if err != nil {
			return fail(fmt.Errorf("broker: listeners.websocket.address: %w", err))
		}
		bound = append(bound, ln)
		b.addrs.WebSocket = ln.Addr()
		lns = append(lns, &wsListener{id: listenerWS, ln: ln, tls: tc, timeout: wt})
	}

	if store != nil {
		store.start(b.marks, replayFrom)
	}
	if err := srv.Serve(); err != nil { // restores stored sessions first
		return fail(fmt.Errorf("broker: serve: %w", err))
	}
	serving = true
	if reader != nil {
		n, err := b.replay(reader, replayFrom)
		if err != nil {
			return fail(err)
		}
		if n > 0 {
			b.log.Info("delivered again to local subscribers after a restart", "messages", n, "after_seq", replayFrom)
		}
	}
	for _, l := range lns {
		if err := srv.AddListener(l); err != nil {
			return fail(fmt.Errorf("broker: %s listener: %w", l.ID(), err))
		}
		srv.Listeners.Serve(l.ID(), srv.EstablishConnection)
	}
	b.started = true
	b.log.Info("broker started", "tcp", b.addrs.TCP, "tls", b.addrs.TLS, "websocket", b.addrs.WebSocket,
		"ack_mode", b.cfg.AckMode, "sessions", b.cfg.Sessions.File)
	return nil
}

// Addr returns the bound listener addresses (the real port for ":0").
func (b *Broker) Addr() Addrs {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.addrs
}

// Close stops the listeners, disconnects every client and waits until every
// message handed to the outbox has been reported back by it and processed
// (acknowledged if its client is still reachable, delivered locally). The
// outbox must therefore stay open until Close returns. A publish blocked
// waiting for its commit or for a Receive Maximum slot is abandoned without
// an acknowledgement; its client will resend it. Close is idempotent.
func (b *Broker) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	started := b.started
	b.mu.Unlock()
	close(b.closing)
	if !started {
		return nil
	}
	// mochi v2.7.9's own closer (closeListenerClients) calls
	// Clients.GetByListener, which read-locks the clients twice (itself,
	// then Len): a disconnecting client's Delete that queues for the write
	// lock between the two deadlocks Close. Closing the listeners first with
	// a closer that reads the clients once means Server.Close finds every
	// listener closed and calls its closer no more (each listener calls it on
	// its first Close only).
	b.srv.Listeners.CloseAll(b.disconnectListenerClients)
	err := b.srv.Close() // returns after every client's read goroutine, and so every will, is done
	b.willMu.Lock()
	b.noWills = true // a delayed will from mochi's event loop must not Add after Wait began
	b.willMu.Unlock()
	b.work.Wait()
	if b.store != nil {
		if serr := b.store.close(); serr != nil && err == nil {
			err = fmt.Errorf("broker: close sessions: %w", serr)
		}
	}
	return err
}

// disconnectListenerClients disconnects the clients connected through the
// listener id, as mochi's Server.Close would, reading the client list under
// one read lock (see Close).
func (b *Broker) disconnectListenerClients(id string) {
	for _, cl := range b.srv.Clients.GetAll() {
		if cl.Net.Listener == id && !cl.Closed() {
			_ = b.srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	}
}

// Stats returns a snapshot of the counters.
func (b *Broker) Stats() Stats {
	s := Stats{
		Received:     b.received.Load(),
		Forwarded:    b.forwarded.Load(),
		Committed:    b.committed.Load(),
		CommitErrors: b.commitErrors.Load(),
		Rejected:     b.rejected.Load(),
		Replayed:     b.replayed.Load(),
		RateLimited:  b.rateLimited.Load(),
		Throttled:    b.throttled.Load(),
	}
	b.mu.Lock()
	srv, store := b.srv, b.store
	b.mu.Unlock()
	if store != nil {
		s.SessionErrors = store.failures.Load()
	}
	if srv != nil {
		s.Clients = atomic.LoadInt64(&srv.Info.ClientsConnected)
		s.LocalDropped = atomic.LoadInt64(&srv.Info.MessagesDropped) + atomic.LoadInt64(&srv.Info.InflightDropped)
	}
	return s
}

func tlsListener(ln net.Listener, tc *tls.Config) net.Listener { return tls.NewListener(ln, tc) }
