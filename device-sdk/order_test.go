package devicesdk

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// holdProxy is a TCP proxy in front of a broker that reads the device's
// side MQTT packet by packet: it always forwards a connection's first
// packet (CONNECT), and while holding it keeps back everything after it,
// in order, until release (the broker's side flows freely). Each packet
// read from the device is reported on up by its type (the high nibble of
// the first byte: 3 is PUBLISH). cut drops every connection, and with it
// whatever was held: a network that stalls, then fails.
type holdProxy struct {
	ln     net.Listener
	target string
	up     chan byte

	mu      sync.Mutex
	holding bool
	release chan struct{} // closed by release
	conns   []net.Conn
}

func newHoldProxy(t *testing.T, target string) *holdProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &holdProxy{
		ln: ln, target: strings.TrimPrefix(target, "tcp://"),
		up: make(chan byte, 1024), holding: true, release: make(chan struct{}),
	}
	go p.serve()
	t.Cleanup(func() { ln.Close(); p.cut() })
	return p
}

func (p *holdProxy) addr() string { return "tcp://" + p.ln.Addr().String() }

func (p *holdProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		b, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, b)
		p.mu.Unlock()
		go func() { p.upstream(b, c); b.Close(); c.Close() }()
		go func() { io.Copy(c, b); b.Close(); c.Close() }()
	}
}

// upstream copies the device's packets to the broker, holding all but the
// first while p holds. It keeps reading (and reporting) while the writer
// waits for release.
func (p *holdProxy) upstream(dst, src net.Conn) {
	q := make(chan []byte, 64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		failed := false
		for first := true; ; first = false {
			pk, ok := <-q
			if !ok {
				return
			}
			p.mu.Lock()
			holding, release := p.holding, p.release
			p.mu.Unlock()
			if holding && !first {
				// A cut closes dst before it closes release; the write
				// then fails.
				<-release
			}
			if !failed {
				_, err := dst.Write(pk)
				failed = err != nil
			}
		}
	}()
	defer func() { close(q); <-done }()
	r := bufio.NewReader(src)
	for {
		pk, err := readMQTTPacket(r)
		if err != nil {
			return
		}
		select {
		case p.up <- pk[0] >> 4:
		default:
		}
		q <- pk
	}
}

// readMQTTPacket reads one whole MQTT packet: fixed header, remaining
// length (a varint of up to 4 bytes) and body.
func readMQTTPacket(r *bufio.Reader) ([]byte, error) {
	h, err := r.ReadByte()
	if err != nil {
		return nil, err
	}
	pk := []byte{h}
	n, shift := 0, 0
	for i := 0; ; i++ {
		if i == 4 {
			return nil, errors.New("malformed remaining length")
		}
		b, err := r.ReadByte()
		if err != nil {
			return nil, err
		}
		pk = append(pk, b)
		n |= int(b&0x7f) << shift
		shift += 7
		if b&0x80 == 0 {
			break
		}
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	return append(pk, body...), nil
}

// releaseAll stops holding: held packets go on, in order.
func (p *holdProxy) releaseAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.holding {
		p.holding = false
		close(p.release)
	}
}

// cut closes every proxied connection; held packets are lost. The proxy
// keeps accepting (and holding, if it held).
func (p *holdProxy) cut() {
	p.mu.Lock()
	conns, old := p.conns, p.release
	p.conns = nil
	if p.holding {
		// New connections hold on a fresh channel; the old one is closed
		// below, once its connections are, so that its waiting goroutines
		// fail their write instead of forwarding a held packet.
		p.release = make(chan struct{})
	}
	holding := p.holding
	p.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	if holding {
		close(old)
	}
}

// waitPublish waits for the proxy to read a PUBLISH from the device.
func (p *holdProxy) waitPublish(t *testing.T, ctx context.Context, what string) {
	t.Helper()
	for {
		select {
		case typ := <-p.up:
			if typ == 3 {
				return
			}
		case <-ctx.Done():
			t.Fatalf("no PUBLISH from the device %s: %v", what, ctx.Err())
		}
	}
}

// msgHandler is a slog.Handler that reports records whose message
// contains substr.
type msgHandler struct {
	substr string
	ch     chan struct{}
}

func (h msgHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h msgHandler) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, h.substr) {
		select {
		case h.ch <- struct{}{}:
		default:
		}
	}
	return nil
}
func (h msgHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h msgHandler) WithGroup(string) slog.Handler      { return h }

// After a connection loss paho v1.5.1 completes the token of an
// unacknowledged publish without an error when it re-queues the message at
// the reconnect, before the message is even on the new connection. The
// Device must keep the message buffered and send nothing newer until the
// real PUBACK. The proxy holds the reconnected session's packets, so this
// state lasts until the test releases them.
func TestDeviceWaitsForPubackNotToken(t *testing.T) {
	addr, rec := startBroker(t)
	p := newHoldProxy(t, addr)
	claimed := make(chan struct{}, 1)
	cfg := testDeviceConfig(t, p.addr(), t.TempDir())
	cfg.Logger = slog.New(msgHandler{substr: "completed by paho's resend", ch: claimed})
	d, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	acked := d.progress()
	if err := d.Enqueue("sensors/t", []byte("m1")); err != nil {
		t.Fatal(err)
	}
	p.waitPublish(t, ctx, "before the cut")
	p.cut() // m1 in flight, held: never reached the broker
	p.waitPublish(t, ctx, "after the reconnect (paho's resend of m1)")
	select {
	case <-acked:
		t.Fatalf("m1 acknowledged in the buffer (stats %+v) while the broker has %d messages", d.Stats(), len(rec.snapshot()))
	case <-claimed:
	case <-ctx.Done():
		t.Fatal("the sender never saw m1's token complete after the reconnect")
	}
	if s := d.Stats(); s.Buffered != 1 || s.Acked != 0 {
		t.Fatalf("stats before any PUBACK %+v, want m1 still buffered", s)
	}
	if err := d.Enqueue("sensors/t", []byte("m2")); err != nil {
		t.Fatal(err)
	}
	if n := len(rec.snapshot()); n != 0 {
		t.Fatalf("broker saw %d messages through a holding proxy", n)
	}
	p.releaseAll()
	if err := d.Close(ctx); err != nil { // Close flushes
		t.Fatal(err)
	}
	checkInOrder(t, rec.snapshot(), []string{"sensors/t=m1", "sensors/t=m2"})
	if s := d.Stats(); s.Buffered != 0 || s.Acked != 2 {
		t.Fatalf("stats after close %+v", s)
	}
}
