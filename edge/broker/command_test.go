package broker

import (
	"bufio"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

func TestReservedACL(t *testing.T) {
	tests := []struct {
		id, topic        string
		write            bool
		allowed, decided bool
	}{
		{"a", "sensors/t", true, false, false},
		{"a", "sensors/#", false, false, false},
		{"a", "$tributary/commands/a/#", false, true, true},
		{"a", "$tributary/commands/a/reboot/+", false, true, true},
		{"a", "$tributary/commands/a/reboot/r1", false, true, true}, // a delivery's topic name
		{"a", "$tributary/commands/a", false, false, true},
		{"a", "$tributary/commands/ab/#", false, false, true},
		{"a", "$tributary/commands/b/#", false, false, true},
		{"a", "$tributary/commands/+/#", false, false, true},
		{"a", "$tributary/#", false, false, true},
		{"a", "$tributary", false, false, true},
		{"a", "$tributary/replies/a/r1", false, false, true},
		{"a", "$share/g/$tributary/commands/a/#", false, false, true},
		{"a", "$share/g/sensors/#", false, false, false},
		{"a/b", "$tributary/commands/a/b/#", false, false, true},
		{"a", "$tributary/commands/a/reboot/r1", true, false, true},
		{"a", "$tributary/replies/a/r1", true, true, true},
		{"a", "$tributary/replies/a/r1/x", true, false, true},
		{"a", "$tributary/replies/a/", true, false, true},
		{"a", "$tributary/replies/b/r1", true, false, true},
		{"a", "$tributary/state/a", true, true, true},
		{"a", "$tributary/state/a/x", true, false, true},
		{"a", "$tributary/state/b", true, false, true},
		{"a", "$tributary/other", true, false, true},
		{"", "$tributary/state/", true, false, true},
	}
	for _, tt := range tests {
		allowed, decided := reservedACL(tt.id, tt.topic, tt.write)
		if allowed != tt.allowed || decided != tt.decided {
			t.Errorf("reservedACL(%q, %q, write=%v) = %v, %v; want %v, %v", tt.id, tt.topic, tt.write, allowed, decided, tt.allowed, tt.decided)
		}
	}
	// The configured Authorizer cannot widen the reserved rules.
	a := reservedFirst{AllowAll{}}
	if a.Authorize(ClientInfo{ID: "a"}, "$tributary/commands/b/#", false) {
		t.Error("AllowAll widened the reserved rules")
	}
	if !a.Authorize(ClientInfo{ID: "a"}, "x/y", true) {
		t.Error("topics outside the reserved tree go to the Authorizer")
	}
}

// recordingObserver records what the broker reports; Replied accepts the
// request ids in known.
type recordingObserver struct {
	mu        sync.Mutex
	known     map[string]bool
	delivered []string
	replied   []string
	online    []string
	changed   chan struct{}
}

func newRecordingObserver(known ...string) *recordingObserver {
	o := &recordingObserver{known: map[string]bool{}, changed: make(chan struct{}, 1)}
	for _, k := range known {
		o.known[k] = true
	}
	return o
}

func (o *recordingObserver) note(list *[]string, s string) {
	o.mu.Lock()
	*list = append(*list, s)
	o.mu.Unlock()
	select {
	case o.changed <- struct{}{}:
	default:
	}
}

func (o *recordingObserver) Delivered(device, id string) { o.note(&o.delivered, device+"/"+id) }
func (o *recordingObserver) Online(device string)        { o.note(&o.online, device) }
func (o *recordingObserver) Replied(device, id string, payload []byte) bool {
	o.note(&o.replied, device+"/"+id+"="+string(payload))
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.known[id]
}

func (o *recordingObserver) has(t *testing.T, what string, list *[]string, want string) {
	t.Helper()
	waitUntil(t, what, func() bool {
		o.mu.Lock()
		defer o.mu.Unlock()
		for _, s := range *list {
			if s == want {
				return true
			}
		}
		return false
	})
}

func startCommandBroker(t *testing.T, ob Outbox, obs CommandObserver) *Broker {
	t.Helper()
	b, err := New(Config{Listeners: Listeners{TCP: TCPListener{Address: "127.0.0.1:0"}}}, ob, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.SetCommandObserver(obs); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("close broker: %v", err)
		}
	})
	return b
}

// TestReservedTopicsOverMQTT: the reserved rules as devices meet them, over
// MQTT 5 and 3.1.1, and what is forwarded from the reserved tree.
func TestReservedTopicsOverMQTT(t *testing.T) {
	ob := newFakeOutbox(t)
	obs := newRecordingObserver("r1")
	b := startCommandBroker(t, ob, obs)

	a, _ := dialRaw(t, b.Addr().TCP, "devA", 5, packets.Properties{})
	a.subscribe(1, packets.Subscription{Filter: "$tributary/commands/devA/#", Qos: 1})
	obs.has(t, "online after subscribing", &obs.online, "devA")
	for i, f := range []string{"$tributary/commands/devB/#", "$tributary/#", "$tributary/commands/+/#", "$tributary/replies/devA/#"} {
		a.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: uint16(10 + i),
			Filters: []packets.Subscription{{Filter: f, Qos: 1}}})
		ack := a.mustRead(packets.Suback)
		if len(ack.ReasonCodes) != 1 || ack.ReasonCodes[0] != packets.ErrNotAuthorized.Code {
			t.Errorf("subscribe %s: reason codes %x, want 0x87", f, ack.ReasonCodes)
		}
	}

	// MQTT 3.1.1 gets 0x80 for a refused subscription.
	old, _ := dialRaw(t, b.Addr().TCP, "dev311", 4, packets.Properties{})
	old.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: []packets.Subscription{{Filter: "$tributary/#", Qos: 1}}})
	if ack := old.mustRead(packets.Suback); len(ack.ReasonCodes) != 1 || ack.ReasonCodes[0] != 0x80 {
		t.Errorf("3.1.1 subscribe $tributary/#: reason codes %x, want 0x80", ack.ReasonCodes)
	}

	// Publishing on another device's reply or state topic, or any command
	// topic, is refused with 0x87.
	for i, topic := range []string{"$tributary/commands/devA/reboot/x", "$tributary/replies/devB/r1", "$tributary/state/devB"} {
		a.publish(uint16(20+i), 1, topic, []byte(`{}`), packets.Properties{})
		if ack := a.mustRead(packets.Puback); ack.ReasonCode != packets.ErrNotAuthorized.Code {
			t.Errorf("publish %s: reason %#x, want 0x87", topic, ack.ReasonCode)
		}
	}
	// Own state and a known reply are forwarded with their event types; an
	// unknown reply is acknowledged and dropped.
	a.publish(30, 1, "$tributary/state/devA", []byte(`{"fw":"1.2"}`), packets.Properties{})
	a.publish(31, 1, "$tributary/replies/devA/r1", []byte(`{"status":200}`), packets.Properties{})
	a.publish(32, 1, "$tributary/replies/devA/r2", []byte(`{"status":200}`), packets.Properties{})
	for range 3 {
		if ack := a.mustRead(packets.Puback); ack.ReasonCode != 0 {
			t.Errorf("PUBACK %d: reason %#x", ack.PacketID, ack.ReasonCode)
		}
	}
	records, _ := ob.snapshot()
	if len(records) != 2 {
		t.Fatalf("%d records in the outbox, want 2: %+v", len(records), records)
	}
	if r := records[0]; r.Topic != "$tributary/state/devA" || r.EventType != StateEventType || r.ClientID != "devA" {
		t.Errorf("state record %+v", r)
	}
	if r := records[1]; r.Topic != "$tributary/replies/devA/r1" || r.EventType != ReplyEventType {
		t.Errorf("reply record %+v", r)
	}
	obs.has(t, "reply reported", &obs.replied, `devA/r1={"status":200}`)
	if n := b.UnknownReplies(); n != 1 {
		t.Errorf("UnknownReplies = %d, want 1", n)
	}

	// A will on the reserved tree is refused at CONNECT.
	if err := connectWithWill(t, b, "devW", "$tributary/state/devW"); err == nil {
		t.Error("a will on $tributary/state was accepted")
	}
}

// connectWithWill returns nil if the broker accepted the connection.
func connectWithWill(t *testing.T, b *Broker, id, willTopic string) error {
	t.Helper()
	c := &rawClient{t: t, version: 5}
	conn, err := net.Dial("tcp", b.Addr().TCP.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(safetyTimeout))
	c.conn, c.r = conn, bufio.NewReader(conn)
	c.send(packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: 5,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, ClientIdentifier: id, Keepalive: 60,
			WillFlag: true, WillTopic: willTopic, WillPayload: []byte("x")},
	})
	ack, err := c.read()
	if err != nil {
		return err
	}
	if ack.ReasonCode != 0 {
		return errors.New("refused")
	}
	return nil
}

// TestPublishCommand: a command reaches its subscribed device with the MQTT 5
// properties of the contract; the PUBACK is reported as delivered; a device
// without a subscription is not published to; a session holding the command
// is not published to twice.
func TestPublishCommand(t *testing.T) {
	obs := newRecordingObserver()
	b := startCommandBroker(t, newFakeOutbox(t), obs)
	now := time.Now()
	cmd := Command{Device: "devA", Name: "reboot", RequestID: "r1", Payload: []byte(`{"delay":1}`), Expires: now.Add(90 * time.Second)}

	if err := b.PublishCommand(cmd, now); !errors.Is(err, ErrNoSubscriber) {
		t.Fatalf("unknown device: %v, want ErrNoSubscriber", err)
	}
	if err := b.PublishCommand(Command{Device: "a/b", Name: "x", RequestID: "r", Expires: now.Add(time.Minute)}, now); !errors.Is(err, ErrBadCommand) {
		t.Fatalf("device a/b: %v, want ErrBadCommand", err)
	}
	if err := b.PublishCommand(cmd, now.Add(90*time.Second)); !errors.Is(err, ErrCommandExpired) {
		t.Fatalf("at expiry: %v, want ErrCommandExpired", err)
	}

	a, _ := dialRaw(t, b.Addr().TCP, "devA", 5, packets.Properties{})
	if err := b.PublishCommand(cmd, now); !errors.Is(err, ErrNoSubscriber) {
		t.Fatalf("connected, not subscribed: %v, want ErrNoSubscriber", err)
	}
	a.subscribe(1, packets.Subscription{Filter: "$tributary/commands/devA/#", Qos: 1})
	if err := b.PublishCommand(cmd, now); err != nil {
		t.Fatal(err)
	}
	pk := a.mustRead(packets.Publish)
	if pk.TopicName != "$tributary/commands/devA/reboot/r1" || string(pk.Payload) != `{"delay":1}` || pk.FixedHeader.Qos != 1 || pk.FixedHeader.Retain {
		t.Errorf("command publish: topic %q payload %q qos %d retain %v", pk.TopicName, pk.Payload, pk.FixedHeader.Qos, pk.FixedHeader.Retain)
	}
	p := pk.Properties
	if p.ResponseTopic != "$tributary/replies/devA/r1" || string(p.CorrelationData) != "r1" || p.ContentType != "application/json" ||
		p.MessageExpiryInterval == 0 || p.MessageExpiryInterval > 90 {
		t.Errorf("command properties: response %q correlation %q content type %q expiry %d",
			p.ResponseTopic, p.CorrelationData, p.ContentType, p.MessageExpiryInterval)
	}
	// Not acknowledged yet: the session holds it, so no second publish.
	if err := b.PublishCommand(cmd, now); err != nil {
		t.Fatal(err)
	}
	a.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
	obs.has(t, "delivery reported", &obs.delivered, "devA/r1")
	// A ping round trip proves no second PUBLISH was queued before it.
	a.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	if next := a.mustReadAny(); next.FixedHeader.Type != packets.Pingresp {
		t.Fatalf("after the PUBACK got packet type %d, want PINGRESP", next.FixedHeader.Type)
	}
}

// TestCommandDeliveredAfterRestart: a command still in flight when the
// broker stops is restored from the sessions file, resent, and its PUBACK
// after the restart is reported to the observer. Nothing was published
// since that restart, so this fails if only PublishCommand enables the
// PUBACK lookup (commandState.mayHold).
func TestCommandDeliveredAfterRestart(t *testing.T) {
	dir := t.TempDir()
	start := func(obs CommandObserver) *sessionGateway {
		return startSessionGateway(t, dir, Config{}, func(b *Broker) error { return b.SetCommandObserver(obs) })
	}
	now := time.Now()
	cmd := Command{Device: "devA", Name: "reboot", RequestID: "r1", Payload: []byte(`{}`), Expires: now.Add(time.Hour)}

	g := start(newRecordingObserver())
	a, _ := dialRawSession(t, g.addr(), "devA", 4, false, packets.Properties{})
	a.subscribe(1, packets.Subscription{Filter: "$tributary/commands/devA/#", Qos: 1})
	if err := g.b.PublishCommand(cmd, now); err != nil {
		t.Fatal(err)
	}
	a.mustRead(packets.Publish) // not acknowledged
	a.conn.Close()
	waitUntil(t, "the device to leave", func() bool { return g.b.Stats().Clients == 0 })
	g.stop()

	obs := newRecordingObserver()
	g = start(obs)
	a, connack := dialRawSession(t, g.addr(), "devA", 4, false, packets.Properties{})
	if !connack.SessionPresent {
		t.Fatal("CONNACK without session present")
	}
	pk := a.mustRead(packets.Publish)
	if pk.TopicName != CommandTopic("devA", "reboot", "r1") {
		t.Fatalf("resent %q, want the command", pk.TopicName)
	}
	a.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
	obs.has(t, "delivery reported after the restart", &obs.delivered, "devA/r1")
}
