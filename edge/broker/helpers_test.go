package broker

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tributary-io/tributary/edge/outbox"
)

// safetyTimeout bounds every wait in these tests so a bug fails the test
// instead of hanging it. It is never the thing a test asserts.
const safetyTimeout = 30 * time.Second

// fakeOutbox is a group-committing outbox held in memory: the narrow seam
// the broker depends on, with the knobs tests need. Each group is fsync'd to
// a real file when sync is set, so a commit takes as long as a real one.
type fakeOutbox struct {
	in      chan fakeReq
	fail    func(outbox.Message) error // nil: every commit succeeds
	gate    bool                       // messages commit only as release allows
	reverse bool                       // call a group's callbacks in reverse order
	file    *os.File                   // non-nil: write and fsync each group
	stopped chan struct{}

	mu        sync.Mutex
	cond      *sync.Cond    // on mu: allowed grew
	allowed   int           // gated: messages that may still commit
	groups    []int         // sizes of the committed groups
	changed   chan struct{} // closed and replaced on every change
	seq       uint64
	appended  int
	committed map[string]uint64 // payload → seq
	records   []outbox.Record
	failed    []outbox.Message
	// committedAtAppend[payload] is how many messages were committed when
	// this payload was appended.
	committedAtAppend map[string]int
}

type fakeReq struct {
	m    outbox.Message
	done func(uint64, error)
}

type fakeOption func(*fakeOutbox)

func withFail(f func(outbox.Message) error) fakeOption { return func(o *fakeOutbox) { o.fail = f } }
func withGate() fakeOption                             { return func(o *fakeOutbox) { o.gate = true } }
func withReverse() fakeOption                          { return func(o *fakeOutbox) { o.reverse = true } }
func withFsync(t *testing.T) fakeOption {
	return func(o *fakeOutbox) {
		f, err := os.Create(t.TempDir() + "/groups")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		o.file = f
	}
}

func newFakeOutbox(t *testing.T, opts ...fakeOption) *fakeOutbox {
	o := &fakeOutbox{
		in:                make(chan fakeReq, 1<<16),
		stopped:           make(chan struct{}),
		changed:           make(chan struct{}),
		committed:         map[string]uint64{},
		committedAtAppend: map[string]int{},
	}
	o.cond = sync.NewCond(&o.mu)
	for _, opt := range opts {
		opt(o)
	}
	go o.run()
	t.Cleanup(o.close)
	return o
}

func (o *fakeOutbox) Append(m outbox.Message, done func(uint64, error)) {
	o.mu.Lock()
	o.appended++
	o.committedAtAppend[string(m.Payload)] = len(o.committed)
	o.notifyLocked()
	o.mu.Unlock()
	o.in <- fakeReq{m, done}
}

func (o *fakeOutbox) notifyLocked() {
	close(o.changed)
	o.changed = make(chan struct{})
}

func (o *fakeOutbox) run() {
	defer close(o.stopped)
	var group []fakeReq
	for {
		if len(group) == 0 {
			r, ok := <-o.in
			if !ok {
				return
			}
			group = append(group, r)
		}
		limit := 1 << 30
		if o.gate {
			// Wait for permission before gathering the rest, so that
			// everything appended meanwhile commits as one group.
			o.mu.Lock()
			for o.allowed == 0 {
				o.cond.Wait()
			}
			limit = o.allowed
			o.mu.Unlock()
		}
	collect:
		for len(group) < limit {
			select {
			case r, ok := <-o.in:
				if !ok {
					break collect
				}
				group = append(group, r)
			default:
				break collect
			}
		}
		n := min(len(group), limit)
		o.commit(group[:n])
		group = append(group[:0:0], group[n:]...)
	}
}

func (o *fakeOutbox) commit(group []fakeReq) {
	if o.file != nil {
		for _, r := range group {
			_, _ = o.file.Write(r.m.Payload)
		}
		_ = o.file.Sync()
	}
	seqs := make([]uint64, len(group))
	errs := make([]error, len(group))
	o.mu.Lock()
	if o.gate {
		o.allowed -= len(group)
	}
	for i, r := range group {
		if o.fail != nil {
			errs[i] = o.fail(r.m)
		}
		if errs[i] != nil {
			o.failed = append(o.failed, r.m)
			continue
		}
		o.seq++
		seqs[i] = o.seq
		o.committed[string(r.m.Payload)] = o.seq
		o.records = append(o.records, outbox.Record{Seq: o.seq, Message: r.m})
	}
	o.groups = append(o.groups, len(group))
	o.notifyLocked()
	o.mu.Unlock()
	for k := range group {
		i := k
		if o.reverse {
			i = len(group) - 1 - k
		}
		group[i].done(seqs[i], errs[i])
	}
}

func (o *fakeOutbox) close() {
	select {
	case <-o.stopped:
		return
	default:
	}
	if o.gate {
		o.release(1 << 30)
	}
	close(o.in)
	<-o.stopped
}

// release lets n more gated messages commit.
func (o *fakeOutbox) release(n int) {
	o.mu.Lock()
	o.allowed += n
	o.cond.Broadcast()
	o.mu.Unlock()
}

func (o *fakeOutbox) isCommitted(payload []byte) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	_, ok := o.committed[string(payload)]
	return ok
}

// waitFor polls cond (under the outbox lock) until it holds.
func (o *fakeOutbox) waitFor(t *testing.T, what string, cond func(o *fakeOutbox) bool) {
	t.Helper()
	deadline := time.After(safetyTimeout)
	for {
		o.mu.Lock()
		ok, ch := cond(o), o.changed
		o.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("outbox: gave up waiting for %s", what)
		}
	}
}

func (o *fakeOutbox) snapshot() (records []outbox.Record, failed []outbox.Message) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]outbox.Record(nil), o.records...), append([]outbox.Message(nil), o.failed...)
}

// startBroker starts a broker on 127.0.0.1:0 and closes it at cleanup
// (before the outbox, which was created first).
func startBroker(t *testing.T, cfg Config, ob Outbox) *Broker {
	t.Helper()
	if cfg.Listeners.TCP.Address == "" {
		cfg.Listeners.TCP.Address = "127.0.0.1:0"
	}
	b, err := New(cfg, ob, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if f, ok := ob.(*fakeOutbox); ok && f.gate {
			f.release(1 << 30) // a failed test may leave messages gated; Close waits for them
		}
		if err := b.Close(); err != nil {
			t.Errorf("close broker: %v", err)
		}
	})
	return b
}

// waitUntil polls cond until it holds; for state with no change signal.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(safetyTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(time.Millisecond) // polling interval, not a wait for an event
	}
}

// pahoClient connects an MQTT 3.1.1 paho client with a clean session and no
// reconnects.
func pahoClient(t *testing.T, url, id string, configure ...func(*paho.ClientOptions)) paho.Client {
	t.Helper()
	opts := paho.NewClientOptions().
		AddBroker(url).
		SetClientID(id).
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetKeepAlive(60 * time.Second).
		SetOrderMatters(false).
		SetMessageChannelDepth(1 << 16)
	for _, f := range configure {
		f(opts)
	}
	c := paho.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(safetyTimeout) || tok.Error() != nil {
		t.Fatalf("paho %s connect: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c
}

func tcpURL(b *Broker) string { return "tcp://" + b.Addr().TCP.String() }

func waitToken(t *testing.T, tok paho.Token) error {
	t.Helper()
	if !tok.WaitTimeout(safetyTimeout) {
		t.Fatal("paho token did not complete")
	}
	return tok.Error()
}

// rawClient speaks MQTT over a plain connection with mochi's packet codec:
// for MQTT 5 (paho.golang is not a dependency) and for asserting exact byte
// order on the wire.
type rawClient struct {
	t       *testing.T
	conn    net.Conn
	r       *bufio.Reader
	version byte
}

func dialRaw(t *testing.T, addr net.Addr, id string, version byte, props packets.Properties) (*rawClient, packets.Packet) {
	t.Helper()
	return dialRawUser(t, addr, id, "", "", version, props)
}

func dialRawUser(t *testing.T, addr net.Addr, id, user, password string, version byte, props packets.Properties) (*rawClient, packets.Packet) {
	t.Helper()
	conn, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(safetyTimeout))
	c := &rawClient{t: t, conn: conn, r: bufio.NewReader(conn), version: version}
	c.send(packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: version,
		Connect: packets.ConnectParams{
			ProtocolName:     []byte("MQTT"),
			Clean:            true,
			ClientIdentifier: id,
			Keepalive:        60,
			Username:         []byte(user),
			UsernameFlag:     user != "",
			Password:         []byte(password),
			PasswordFlag:     password != "",
		},
		Properties: props,
	})
	ack, err := c.read()
	if err != nil {
		t.Fatalf("read CONNACK: %v", err)
	}
	if ack.FixedHeader.Type != packets.Connack || ack.ReasonCode != 0 {
		t.Fatalf("CONNACK: type %d reason %#x", ack.FixedHeader.Type, ack.ReasonCode)
	}
	return c, ack
}

func (c *rawClient) send(pk packets.Packet) {
	c.t.Helper()
	pk.ProtocolVersion = c.version
	pk.Mods.AllowResponseInfo = true // else mochi's encoder drops response topic and correlation data
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&buf)
	case packets.Puback:
		err = pk.PubackEncode(&buf)
	case packets.Pubrel:
		err = pk.PubrelEncode(&buf)
	case packets.Pingreq:
		err = pk.PingreqEncode(&buf)
	default:
		err = fmt.Errorf("rawClient cannot send type %d", pk.FixedHeader.Type)
	}
	if err != nil {
		c.t.Fatal(err)
	}
	if _, err := c.conn.Write(buf.Bytes()); err != nil {
		c.t.Fatalf("raw write: %v", err)
	}
}

func (c *rawClient) publish(id uint16, qos byte, topic string, payload []byte, props packets.Properties) {
	c.t.Helper()
	c.send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos},
		PacketID:    id,
		TopicName:   topic,
		Payload:     payload,
		Properties:  props,
	})
}

func (c *rawClient) subscribe(id uint16, subs ...packets.Subscription) {
	c.t.Helper()
	c.send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
		PacketID:    id,
		Filters:     subs,
	})
	pk, err := c.read()
	if err != nil || pk.FixedHeader.Type != packets.Suback {
		c.t.Fatalf("SUBACK: type %d, %v", pk.FixedHeader.Type, err)
	}
	for _, code := range pk.ReasonCodes {
		if code >= 0x80 {
			c.t.Fatalf("subscription refused: %#x", code)
		}
	}
}

// read returns the next packet, or the read error (io.EOF once the broker
// closed the connection).
func (c *rawClient) read() (packets.Packet, error) {
	var fh packets.FixedHeader
	b, err := c.r.ReadByte()
	if err != nil {
		return packets.Packet{}, err
	}
	if err := fh.Decode(b); err != nil {
		return packets.Packet{}, err
	}
	fh.Remaining, _, err = packets.DecodeLength(c.r)
	if err != nil {
		return packets.Packet{}, err
	}
	body := make([]byte, fh.Remaining)
	if _, err := io.ReadFull(c.r, body); err != nil {
		return packets.Packet{}, err
	}
	pk := packets.Packet{FixedHeader: fh, ProtocolVersion: c.version}
	switch fh.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Pubrec:
		err = pk.PubrecDecode(body)
	case packets.Pubcomp:
		err = pk.PubcompDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Disconnect:
		err = pk.DisconnectDecode(body)
	case packets.Pingresp:
	default:
		err = fmt.Errorf("rawClient cannot decode type %d", fh.Type)
	}
	return pk, err
}

// mustRead reads the next packet and fails the test on error.
func (c *rawClient) mustRead(want byte) packets.Packet {
	c.t.Helper()
	pk, err := c.read()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	if pk.FixedHeader.Type != want {
		c.t.Fatalf("read packet type %d, want %d", pk.FixedHeader.Type, want)
	}
	return pk
}
