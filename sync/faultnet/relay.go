package faultnet

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Config configures a Relay.
type Config struct {
	// Target is the server's UDP address. Required.
	Target string
	// Listen is the relay's address. Zero means "127.0.0.1:0".
	Listen string
	// Up applies to datagrams from clients to Target, Down to the replies.
	// Zero values forward untouched.
	Up, Down Impairment
	// Seed seeds the relay's randomness. Zero means a random seed.
	Seed uint64
	// Now is the clock for blackholes. Nil means time.Now.
	Now func() time.Time
	// Logger receives the relay's logs. Nil discards them.
	Logger *slog.Logger
}

// Stats counts datagrams in both directions. Clients counts the client
// addresses seen, Rebinds the upstream sockets replaced by Rebind.
type Stats struct {
	Received, Sent, Dropped, Duplicated, Blackholed uint64
	Clients, Rebinds                                uint64
}

// Relay forwards UDP datagrams between clients and one target, impairing
// them. Each client address gets its own upstream socket, so the target
// sees one peer per client, as through a NAT.
//
// Goroutines: one reads the listening socket, one per client reads its
// upstream socket; delayed datagrams are sent from timers. All stop after
// Close.
type Relay struct {
	cfg    Config
	target *net.UDPAddr
	ln     *net.UDPConn
	log    *slog.Logger

	mu                                              sync.Mutex
	rnd                                             *rand.Rand
	up, down                                        Impairment
	blackUntil                                      time.Time
	clients                                         map[string]*net.UDPConn
	closed                                          bool
	wg                                              sync.WaitGroup
	received, sent, dropped, duplicated, blackholed atomic.Uint64
	clientsSeen, rebinds                            atomic.Uint64
}

// New starts a relay.
func New(cfg Config) (*Relay, error) {
	if cfg.Target == "" {
		return nil, errors.New("faultnet: Config.Target is required")
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	seed := cfg.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	target, err := net.ResolveUDPAddr("udp", cfg.Target)
	if err != nil {
		return nil, fmt.Errorf("faultnet: target: %w", err)
	}
	laddr, err := net.ResolveUDPAddr("udp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("faultnet: listen: %w", err)
	}
	ln, err := net.ListenUDP("udp", laddr)
	if err != nil {
		return nil, fmt.Errorf("faultnet: %w", err)
	}
	r := &Relay{
		cfg: cfg, target: target, ln: ln, log: cfg.Logger,
		rnd: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		up:  cfg.Up, down: cfg.Down,
		clients: map[string]*net.UDPConn{},
	}
	r.wg.Add(1)
	go r.readClients()
	return r, nil
}

// Addr is the address clients should dial.
func (r *Relay) Addr() net.Addr { return r.ln.LocalAddr() }

// SetImpairment changes both directions' impairments from now on.
func (r *Relay) SetImpairment(up, down Impairment) {
	r.mu.Lock()
	r.up, r.down = up, down
	r.mu.Unlock()
}

// Blackhole drops every datagram, both ways, for d from now.
func (r *Relay) Blackhole(d time.Duration) {
	r.mu.Lock()
	r.blackUntil = r.cfg.Now().Add(d)
	r.mu.Unlock()
}

// Stats returns the relay's counters.
func (r *Relay) Stats() Stats {
	return Stats{
		Received: r.received.Load(), Sent: r.sent.Load(), Dropped: r.dropped.Load(),
		Duplicated: r.duplicated.Load(), Blackholed: r.blackholed.Load(),
		Clients: r.clientsSeen.Load(), Rebinds: r.rebinds.Load(),
	}
}

// Rebind gives every client a new upstream socket, as a NAT does when its
// mapping expires or the uplink changes: from now on the target sees each
// client's datagrams come from a new address (replies to the old one are
// no longer delivered). The client notices nothing.
func (r *Relay) Rebind() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return net.ErrClosed
	}
	for key, old := range r.clients {
		client, err := net.ResolveUDPAddr("udp", key)
		if err != nil {
			return fmt.Errorf("faultnet: rebind %s: %w", key, err)
		}
		c, err := net.DialUDP("udp", nil, r.target)
		if err != nil {
			return fmt.Errorf("faultnet: rebind %s: %w", key, err)
		}
		r.clients[key] = c
		old.Close() // its reader returns
		r.rebinds.Add(1)
		r.wg.Add(1)
		go r.readTarget(c, client)
	}
	return nil
}

// Close stops the relay and waits for its reading goroutines.
func (r *Relay) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	err := r.ln.Close()
	for _, c := range r.clients {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
	return err
}

// plan decides one datagram's fate under the lock (rand.Rand is not safe
// for concurrent use).
func (r *Relay) plan(upward bool) []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.received.Add(1)
	if r.cfg.Now().Before(r.blackUntil) {
		r.blackholed.Add(1)
		return nil
	}
	imp := r.down
	if upward {
		imp = r.up
	}
	p := imp.Plan(r.rnd)
	switch len(p) {
	case 0:
		r.dropped.Add(1)
	case 2:
		r.duplicated.Add(1)
	}
	return p
}

// deliver sends b via send after each planned delay.
func (r *Relay) deliver(b []byte, delays []time.Duration, send func([]byte) error) {
	for _, d := range delays {
		if d <= 0 {
			if send(b) == nil {
				r.sent.Add(1)
			}
			continue
		}
		time.AfterFunc(d, func() {
			if send(b) == nil {
				r.sent.Add(1)
			}
		})
	}
}

func (r *Relay) readClients() {
	defer r.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, from, err := r.ln.ReadFromUDP(buf)
		if err != nil {
			return
		}
		up, err := r.upstream(from)
		if err != nil {
			r.log.Warn("faultnet: upstream socket", "err", err)
			continue
		}
		b := append([]byte(nil), buf[:n]...)
		r.deliver(b, r.plan(true), func(b []byte) error { _, err := up.Write(b); return err })
	}
}

// upstream returns the socket that speaks to the target for client from,
// creating it (and its reader) on first use.
func (r *Relay) upstream(from *net.UDPAddr) (*net.UDPConn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, net.ErrClosed
	}
	key := from.String()
	if c, ok := r.clients[key]; ok {
		return c, nil
	}
	c, err := net.DialUDP("udp", nil, r.target)
	if err != nil {
		return nil, err
	}
	r.clients[key] = c
	r.clientsSeen.Add(1)
	r.wg.Add(1)
	go r.readTarget(c, from)
	return c, nil
}

func (r *Relay) readTarget(c *net.UDPConn, client *net.UDPAddr) {
	defer r.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// ICMP port unreachable while the target restarts: keep going.
			continue
		}
		b := append([]byte(nil), buf[:n]...)
		r.deliver(b, r.plan(false), func(b []byte) error { _, err := r.ln.WriteToUDP(b, client); return err })
	}
}
