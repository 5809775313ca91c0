package broker

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tributary-io/tributary/edge/outbox"
)

var ackModes = []AckMode{AckAsync, AckSync}

// TestEveryPubackFollowsItsCommit: 20 paho clients publish QoS 1 with many
// messages in flight each; whenever a client holds a PUBACK, the outbox must
// already have committed that message. Every message is counted: all are
// acknowledged, committed exactly once and delivered to a local subscriber.
func TestEveryPubackFollowsItsCommit(t *testing.T) {
	const clients, perClient = 20, 50
	for _, mode := range ackModes {
		t.Run(string(mode), func(t *testing.T) {
			ob := newFakeOutbox(t, withFsync(t)) // commits cost a real fsync
			b := startBroker(t, Config{AckMode: mode}, ob)

			got := make(chan string, clients*perClient)
			sub := pahoClient(t, tcpURL(b), "local-sub")
			if err := waitToken(t, sub.Subscribe("sensors/#", 1, func(_ paho.Client, m paho.Message) {
				got <- string(m.Payload())
			})); err != nil {
				t.Fatal(err)
			}

			var acked, early atomic.Int64
			var wg sync.WaitGroup
			for c := range clients {
				pub := pahoClient(t, tcpURL(b), fmt.Sprintf("dev-%02d", c))
				wg.Add(1)
				go func() {
					defer wg.Done()
					toks := make([]paho.Token, perClient)
					for i := range perClient {
						toks[i] = pub.Publish(fmt.Sprintf("sensors/dev-%02d/temp", c), 1, false, fmt.Sprintf("c%02d-m%03d", c, i))
					}
					for i, tok := range toks {
						if !tok.WaitTimeout(safetyTimeout) || tok.Error() != nil {
							t.Errorf("dev-%02d message %d: not acknowledged: %v", c, i, tok.Error())
							continue
						}
						// The PUBACK has arrived: its commit must precede it.
						if !ob.isCommitted(fmt.Appendf(nil, "c%02d-m%03d", c, i)) {
							early.Add(1)
						}
						acked.Add(1)
					}
				}()
			}
			wg.Wait()
			if n := early.Load(); n > 0 {
				t.Errorf("%d PUBACKs arrived before their message was committed", n)
			}
			if n := acked.Load(); n != clients*perClient {
				t.Fatalf("%d messages acknowledged, want %d", n, clients*perClient)
			}

			records, _ := ob.snapshot()
			seen := map[string]bool{}
			for _, r := range records {
				p := string(r.Payload)
				if seen[p] {
					t.Errorf("payload %q committed twice", p)
				}
				seen[p] = true
				want := "dev-" + p[1:3]
				if r.ClientID != want || r.Topic != "sensors/"+want+"/temp" || r.QoS != 1 || r.EventType != DefaultEventType {
					t.Errorf("record %+v", r)
				}
			}
			if len(seen) != clients*perClient {
				t.Errorf("%d distinct messages committed, want %d", len(seen), clients*perClient)
			}

			delivered := map[string]bool{}
			deadline := time.After(safetyTimeout)
			for len(delivered) < clients*perClient {
				select {
				case p := <-got:
					delivered[p] = true
				case <-deadline:
					t.Fatalf("local subscriber got %d of %d messages", len(delivered), clients*perClient)
				}
			}
			st := b.Stats()
			if st.Received != clients*perClient || st.Forwarded != clients*perClient ||
				st.Committed != clients*perClient || st.CommitErrors != 0 || st.Rejected != 0 {
				t.Errorf("stats %+v", st)
			}
			if st.Clients != clients+1 {
				t.Errorf("stats: %d clients connected, want %d", st.Clients, clients+1)
			}
		})
	}
}

var errCommit = errors.New("injected commit failure")

// failOutbox fails messages whose payload starts with "fail" (a generic
// error) or "full" (disk full).
func failOutbox(t *testing.T, opts ...fakeOption) *fakeOutbox {
	return newFakeOutbox(t, append(opts, withFail(func(m outbox.Message) error {
		switch {
		case strings.HasPrefix(string(m.Payload), "fail"):
			return errCommit
		case strings.HasPrefix(string(m.Payload), "full"):
			return fmt.Errorf("commit: %w", outbox.ErrDiskFull)
		case strings.HasPrefix(string(m.Payload), "quota"):
			return outbox.ErrQuotaExceeded
		}
		return nil
	}))...)
}

// TestCommitFailureMQTT311 with paho: a message that cannot be committed is
// never acknowledged and its client is disconnected (no negative PUBACK in
// 3.1.1), so it will resend.
func TestCommitFailureMQTT311(t *testing.T) {
	for _, mode := range ackModes {
		t.Run(string(mode), func(t *testing.T) {
			ob := failOutbox(t)
			b := startBroker(t, Config{AckMode: mode}, ob)
			lost := make(chan error, 1)
			c := pahoClient(t, tcpURL(b), "dev", func(o *paho.ClientOptions) {
				o.SetConnectionLostHandler(func(_ paho.Client, err error) { lost <- err })
			})
			if err := waitToken(t, c.Publish("sensors/a", 1, false, "ok-1")); err != nil {
				t.Fatalf("ok-1: %v", err)
			}
			if err := waitToken(t, c.Publish("sensors/a", 1, false, "fail-1")); err == nil {
				t.Fatal("fail-1 was acknowledged although its commit failed")
			}
			select {
			case <-lost:
			case <-time.After(safetyTimeout):
				t.Fatal("client not disconnected")
			}
			if ob.isCommitted([]byte("fail-1")) || !ob.isCommitted([]byte("ok-1")) {
				t.Fatal("outbox content wrong")
			}
			waitUntil(t, "stats", func() bool { st := b.Stats(); return st.CommitErrors == 1 && st.Rejected == 1 })
		})
	}
}

// TestCommitFailureMQTT311Wire checks the bytes: PUBACKs for the messages
// before the failed one, then the connection closes, with no PUBACK for the
// failed message or anything after it.
func TestCommitFailureMQTT311Wire(t *testing.T) {
	for _, mode := range ackModes {
		t.Run(string(mode), func(t *testing.T) {
			ob := failOutbox(t)
			b := startBroker(t, Config{AckMode: mode}, ob)
			c, _ := dialRaw(t, b.Addr().TCP, "dev", 4, packets.Properties{})
			c.publish(1, 1, "sensors/a", []byte("ok-1"), packets.Properties{})
			c.publish(2, 1, "sensors/a", []byte("fail-2"), packets.Properties{})
			c.publish(3, 1, "sensors/a", []byte("ok-3"), packets.Properties{})
			var ids []uint16
			for {
				pk, err := c.read()
				if err != nil {
					break // closed by the broker
				}
				if pk.FixedHeader.Type == packets.Puback {
					ids = append(ids, pk.PacketID)
				}
			}
			if len(ids) != 1 || ids[0] != 1 {
				t.Fatalf("PUBACKs for %v, want only [1]", ids)
			}
		})
	}
}

// TestCommitFailureMQTT5: negative PUBACKs with reason codes, in order, and
// the connection stays up.
func TestCommitFailureMQTT5(t *testing.T) {
	for _, mode := range ackModes {
		t.Run(string(mode), func(t *testing.T) {
			ob := failOutbox(t)
			b := startBroker(t, Config{AckMode: mode}, ob)
			c, _ := dialRaw(t, b.Addr().TCP, "dev5", 5, packets.Properties{})
			c.publish(1, 1, "sensors/a", []byte("fail-1"), packets.Properties{})
			c.publish(2, 1, "sensors/a", []byte("ok-2"), packets.Properties{})
			c.publish(3, 1, "sensors/a", []byte("full-3"), packets.Properties{})
			c.publish(4, 2, "sensors/a", []byte("fail-4"), packets.Properties{}) // QoS 2: negative PUBREC
			c.publish(5, 1, "sensors/a", []byte("quota-5"), packets.Properties{})
			// PUBACKs keep their order, PUBRECs theirs (MQTT 5 §4.6); a
			// QoS 2 ack may overtake QoS 1 acks waiting for their commit.
			type ack struct {
				id     uint16
				reason byte
			}
			var pubacks, pubrecs []ack
			for len(pubacks)+len(pubrecs) < 5 {
				pk := c.mustReadAny()
				a := ack{pk.PacketID, pk.ReasonCode}
				switch pk.FixedHeader.Type {
				case packets.Puback:
					pubacks = append(pubacks, a)
				case packets.Pubrec:
					pubrecs = append(pubrecs, a)
				default:
					t.Fatalf("packet type %d", pk.FixedHeader.Type)
				}
				if a.reason >= 0x80 && pk.Properties.ReasonString == "" {
					t.Errorf("ack %d has no reason string", a.id)
				}
			}
			if fmt.Sprint(pubacks) != "[{1 128} {2 0} {3 151} {5 151}]" || fmt.Sprint(pubrecs) != "[{4 128}]" {
				t.Fatalf("PUBACKs %v, PUBRECs %v", pubacks, pubrecs)
			}
			c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
			c.mustRead(packets.Pingresp)
			st := b.Stats()
			if st.CommitErrors != 4 || st.Rejected != 4 || st.Committed != 1 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

// TestAsyncAckOrder: commits report back in reverse order and a local-only
// QoS 1 message sits between two forwarded ones; PUBACKs and local
// deliveries still follow arrival order, and nothing is acknowledged before
// the outbox lets the first message commit.
func TestAsyncAckOrder(t *testing.T) {
	ob := newFakeOutbox(t, withGate(), withReverse())
	b := startBroker(t, Config{Forwarding: []Rule{{Filter: "sensors/#"}}}, ob)
	sub, _ := dialRaw(t, b.Addr().TCP, "sub", 5, packets.Properties{})
	sub.subscribe(1, packets.Subscription{Filter: "#", Qos: 1})

	c, _ := dialRaw(t, b.Addr().TCP, "dev", 4, packets.Properties{})
	c.publish(1, 1, "sensors/a", []byte("f1"), packets.Properties{})
	c.publish(2, 1, "local/x", []byte("l2"), packets.Properties{})
	c.publish(3, 1, "sensors/a", []byte("f3"), packets.Properties{})
	c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	// The broker reads on while f1 waits for its commit: PINGRESP comes
	// first, proving that no PUBACK (not even l2's) went out before it.
	c.mustRead(packets.Pingresp)
	ob.waitFor(t, "two appends", func(o *fakeOutbox) bool { return o.appended == 2 })
	ob.release(2)
	for _, id := range []uint16{1, 2, 3} {
		if pk := c.mustRead(packets.Puback); pk.PacketID != id {
			t.Fatalf("PUBACK for %d, want %d", pk.PacketID, id)
		}
	}
	for _, want := range []string{"f1", "l2", "f3"} {
		pk := sub.mustRead(packets.Publish)
		if string(pk.Payload) != want {
			t.Fatalf("subscriber got %q, want %q", pk.Payload, want)
		}
		sub.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
	}
	ob.mu.Lock()
	groups := append([]int(nil), ob.groups...)
	ob.mu.Unlock()
	if len(groups) != 1 || groups[0] != 2 {
		t.Errorf("commit groups %v: the test wanted f1 and f3 in one reversed group", groups)
	}
}

// TestLocalTopicsStayLocal: topics the rules do not forward never reach the
// outbox but do reach local subscribers, at every QoS and in both modes.
func TestLocalTopicsStayLocal(t *testing.T) {
	for _, mode := range ackModes {
		t.Run(string(mode), func(t *testing.T) {
			ob := newFakeOutbox(t)
			b := startBroker(t, Config{AckMode: mode, Forwarding: []Rule{
				{Filter: "sensors/debug/#", Local: true},
				{Filter: "sensors/#", Type: "io.tributary.reading", Priority: 4},
			}}, ob)
			got := make(chan string, 16)
			sub := pahoClient(t, tcpURL(b), "sub")
			if err := waitToken(t, sub.Subscribe("#", 2, func(_ paho.Client, m paho.Message) { got <- m.Topic() })); err != nil {
				t.Fatal(err)
			}
			pub := pahoClient(t, tcpURL(b), "dev")
			topics := []string{"local/a", "sensors/debug/x", "sensors/t", "other"}
			for _, topic := range topics {
				for qos := range byte(3) {
					if err := waitToken(t, pub.Publish(topic, qos, false, topic)); err != nil {
						t.Fatalf("%s qos %d: %v", topic, qos, err)
					}
				}
			}
			count := map[string]int{}
			for range len(topics) * 3 {
				select {
				case topic := <-got:
					count[topic]++
				case <-time.After(safetyTimeout):
					t.Fatalf("local deliveries %v", count)
				}
			}
			for _, topic := range topics {
				if count[topic] != 3 {
					t.Errorf("%s delivered %d times, want 3", topic, count[topic])
				}
			}
			records, _ := ob.snapshot()
			if len(records) != 3 {
				t.Fatalf("%d records in the outbox, want the 3 of sensors/t", len(records))
			}
			for _, r := range records {
				if r.Topic != "sensors/t" || r.EventType != "io.tributary.reading" || r.Priority != 4 {
					t.Errorf("record %+v", r)
				}
			}
			if st := b.Stats(); st.Received != 12 || st.Forwarded != 3 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

// TestMQTT5MessageAndDelivery: the outbox message carries what the device
// sent (user properties, content type, user name) and the injected clock;
// local delivery keeps MQTT 5 properties and honours NoLocal.
func TestMQTT5MessageAndDelivery(t *testing.T) {
	received := time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC)
	for _, mode := range ackModes {
		t.Run(string(mode), func(t *testing.T) {
			ob := newFakeOutbox(t)
			b, err := New(Config{
				AckMode:    mode,
				Listeners:  Listeners{TCP: TCPListener{Address: "127.0.0.1:0"}},
				Forwarding: []Rule{{Filter: "sensors/#", Type: "io.tributary.t", Priority: 2}},
			}, ob, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := b.SetClock(func() time.Time { return received }); err != nil {
				t.Fatal(err)
			}
			if err := b.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { b.Close() })
			if err := b.SetClock(time.Now); !errors.Is(err, ErrStarted) {
				t.Errorf("SetClock after Start: %v", err)
			}

			other, _ := dialRaw(t, b.Addr().TCP, "other", 5, packets.Properties{})
			other.subscribe(1, packets.Subscription{Filter: "sensors/#", Qos: 1})
			dev, connack := dialRawUser(t, b.Addr().TCP, "dev", "alice", "", 5, packets.Properties{})
			if connack.Properties.MaximumPacketSize != DefaultMaxPayloadBytes+packetOverhead {
				t.Errorf("CONNACK maximum packet size %d", connack.Properties.MaximumPacketSize)
			}
			dev.subscribe(1,
				packets.Subscription{Filter: "sensors/dev/#", Qos: 1, NoLocal: true},
				packets.Subscription{Filter: "echo/#", Qos: 1})
			props := packets.Properties{
				ContentType:     "application/json",
				ResponseTopic:   "reply/dev",
				CorrelationData: []byte{1, 2, 3},
				User:            []packets.UserProperty{{Key: "unit", Val: "C"}, {Key: "unit", Val: "K"}},
			}
			dev.publish(7, 1, "sensors/dev/temp", []byte(`{"t":21}`), props)
			dev.publish(8, 1, "echo/1", []byte("echo"), packets.Properties{})

			// The other subscriber gets the message with its properties.
			pk := other.mustRead(packets.Publish)
			if pk.TopicName != "sensors/dev/temp" || pk.Properties.ContentType != "application/json" ||
				pk.Properties.ResponseTopic != "reply/dev" || string(pk.Properties.CorrelationData) != "\x01\x02\x03" ||
				len(pk.Properties.User) != 2 || pk.Properties.User[1] != (packets.UserProperty{Key: "unit", Val: "K"}) {
				t.Errorf("delivered %+v", pk)
			}
			// The publisher gets its two PUBACKs and echo/1, but not its own
			// sensors message (NoLocal): it would have come before echo/1,
			// since local deliveries keep publish order. echo/1 may come
			// before or between the PUBACKs: AckAsync delivers a batch before
			// writing its PUBACKs, and the client's delivery queue and the
			// PUBACK writer are separate goroutines (MQTT orders PUBACKs
			// among themselves, not against deliveries). Waiting for echo/1
			// to be the last packet hung this test for 30 s in CI.
			var acks []uint16
			echoed := false
			for len(acks) < 2 || !echoed {
				pk = dev.mustReadAny()
				switch pk.FixedHeader.Type {
				case packets.Puback:
					acks = append(acks, pk.PacketID)
				case packets.Publish:
					if pk.TopicName != "echo/1" || echoed {
						t.Fatalf("publisher received %q (echo/1 seen: %v): want echo/1 once and nothing under NoLocal", pk.TopicName, echoed)
					}
					echoed = true
					dev.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
				default:
					t.Fatalf("publisher received packet type %d", pk.FixedHeader.Type)
				}
			}
			if acks[0] != 7 || acks[1] != 8 {
				t.Errorf("PUBACK order %v", acks)
			}

			records, _ := ob.snapshot()
			if len(records) != 1 {
				t.Fatalf("%d records", len(records))
			}
			m := records[0].Message
			want := outbox.Message{
				ClientID: "dev", Username: "alice", Topic: "sensors/dev/temp", Payload: []byte(`{"t":21}`),
				QoS: 1, ContentType: "application/json", EventType: "io.tributary.t", Priority: 2,
				Received:       received,
				UserProperties: []outbox.UserProperty{{Key: "unit", Value: "C"}, {Key: "unit", Value: "K"}},
			}
			if fmt.Sprint(m) != fmt.Sprint(want) {
				t.Errorf("outbox message\n got %+v\nwant %+v", m, want)
			}
		})
	}
}

func (c *rawClient) mustReadAny() packets.Packet {
	c.t.Helper()
	pk, err := c.read()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return pk
}

// TestReceiveMaximumMQTT5: a client that exceeds the advertised Receive
// Maximum while its messages wait for a commit is disconnected with 0x93.
func TestReceiveMaximumMQTT5(t *testing.T) {
	ob := newFakeOutbox(t, withGate())
	b := startBroker(t, Config{Limits: Limits{ReceiveMaximum: 2}}, ob)
	c, connack := dialRaw(t, b.Addr().TCP, "dev", 5, packets.Properties{})
	if connack.Properties.ReceiveMaximum != 2 {
		t.Fatalf("CONNACK receive maximum %d", connack.Properties.ReceiveMaximum)
	}
	for id := uint16(1); id <= 3; id++ {
		c.publish(id, 1, "sensors/a", fmt.Appendf(nil, "m%d", id), packets.Properties{})
	}
	pk := c.mustRead(packets.Disconnect)
	if pk.ReasonCode != packets.ErrReceiveMaximum.Code {
		t.Fatalf("DISCONNECT reason %#x", pk.ReasonCode)
	}
	if _, err := c.read(); err == nil {
		t.Fatal("connection still open")
	}
	ob.release(2)
	if st := b.Stats(); st.Rejected != 1 || st.Forwarded != 2 {
		t.Errorf("stats %+v", st)
	}
}

// TestReceiveMaximumMQTT311: with no Receive Maximum in 3.1.1, a client
// past the limit is simply not read until an acknowledgement frees a slot.
func TestReceiveMaximumMQTT311(t *testing.T) {
	ob := newFakeOutbox(t, withGate())
	b := startBroker(t, Config{Limits: Limits{ReceiveMaximum: 2}}, ob)
	c, _ := dialRaw(t, b.Addr().TCP, "dev", 4, packets.Properties{})
	for id := uint16(1); id <= 3; id++ {
		c.publish(id, 1, "sensors/a", fmt.Appendf(nil, "m%d", id), packets.Properties{})
	}
	ob.waitFor(t, "two appends", func(o *fakeOutbox) bool { return o.appended == 2 })
	ob.release(1)
	ob.waitFor(t, "the third append", func(o *fakeOutbox) bool { return o.appended == 3 })
	ob.release(2)
	for id := uint16(1); id <= 3; id++ {
		if pk := c.mustRead(packets.Puback); pk.PacketID != id {
			t.Fatalf("PUBACK %d, want %d", pk.PacketID, id)
		}
	}
	ob.mu.Lock()
	at := ob.committedAtAppend["m3"]
	ob.mu.Unlock()
	if at < 1 {
		t.Fatalf("m3 was appended while %d messages were committed: it should have waited for a slot", at)
	}
}

// TestOversizePayload: over-size publishes are refused with 0x97 (MQTT 5) or
// a disconnect (3.1.1) and never reach the outbox.
func TestOversizePayload(t *testing.T) {
	for _, mode := range ackModes {
		t.Run(string(mode), func(t *testing.T) {
			ob := newFakeOutbox(t)
			b := startBroker(t, Config{AckMode: mode, Limits: Limits{MaxPayloadBytes: 8}}, ob)
			c5, _ := dialRaw(t, b.Addr().TCP, "dev5", 5, packets.Properties{})
			c5.publish(1, 1, "sensors/a", []byte("123456789"), packets.Properties{})
			c5.publish(2, 1, "sensors/a", []byte("12345678"), packets.Properties{})
			if pk := c5.mustRead(packets.Puback); pk.PacketID != 1 || pk.ReasonCode != 0x97 {
				t.Fatalf("oversize: PUBACK %d reason %#x", pk.PacketID, pk.ReasonCode)
			}
			if pk := c5.mustRead(packets.Puback); pk.PacketID != 2 || pk.ReasonCode != 0 {
				t.Fatalf("fits: PUBACK %d reason %#x", pk.PacketID, pk.ReasonCode)
			}
			c4, _ := dialRaw(t, b.Addr().TCP, "dev4", 4, packets.Properties{})
			c4.publish(1, 1, "sensors/a", []byte("123456789"), packets.Properties{})
			if pk, err := c4.read(); err == nil {
				t.Fatalf("3.1.1 client got packet type %d, want the connection closed", pk.FixedHeader.Type)
			}
			records, _ := ob.snapshot()
			if len(records) != 1 || string(records[0].Payload) != "12345678" {
				t.Fatalf("records %+v", records)
			}
		})
	}
}

// TestRetained: once the publisher holds the PUBACK of a retained message, a
// new subscriber gets it; the outbox records the retain flag.
func TestRetained(t *testing.T) {
	for _, mode := range ackModes {
		t.Run(string(mode), func(t *testing.T) {
			ob := newFakeOutbox(t)
			b := startBroker(t, Config{AckMode: mode}, ob)
			pub := pahoClient(t, tcpURL(b), "dev")
			if err := waitToken(t, pub.Publish("sensors/state", 1, true, "on")); err != nil {
				t.Fatal(err)
			}
			got := make(chan paho.Message, 1)
			sub := pahoClient(t, tcpURL(b), "late-sub")
			if err := waitToken(t, sub.Subscribe("sensors/#", 1, func(_ paho.Client, m paho.Message) { got <- m })); err != nil {
				t.Fatal(err)
			}
			select {
			case m := <-got:
				if string(m.Payload()) != "on" || !m.Retained() {
					t.Fatalf("got %q retained=%v", m.Payload(), m.Retained())
				}
			case <-time.After(safetyTimeout):
				t.Fatal("retained message not delivered")
			}
			records, _ := ob.snapshot()
			if len(records) != 1 || !records[0].Retain {
				t.Fatalf("records %+v", records)
			}
		})
	}
}

// TestWillForwarded: a will message on a forwarded topic reaches the outbox
// when its client drops without DISCONNECT.
func TestWillForwarded(t *testing.T) {
	ob := newFakeOutbox(t)
	b := startBroker(t, Config{}, ob)
	c := &rawClient{t: t, version: 4}
	conn, err := net.Dial("tcp", b.Addr().TCP.String())
	if err != nil {
		t.Fatal(err)
	}
	c.conn, c.r = conn, bufio.NewReader(conn)
	c.send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), Clean: true, ClientIdentifier: "dev", Keepalive: 60,
			WillFlag: true, WillTopic: "sensors/dev/status", WillPayload: []byte("offline"), WillQos: 1,
		},
	})
	c.mustRead(packets.Connack)
	conn.Close() // no DISCONNECT: the will is due
	ob.waitFor(t, "the will", func(o *fakeOutbox) bool { return len(o.records) == 1 })
	records, _ := ob.snapshot()
	if r := records[0]; r.Topic != "sensors/dev/status" || string(r.Payload) != "offline" || r.ClientID != "dev" || r.QoS != 1 {
		t.Fatalf("record %+v", r)
	}
}

// TestAsyncRetainedWaitsForCommit: in AckAsync mode mochi must not retain
// (nor deliver, nor acknowledge) a publish before its commit; once the
// PUBACK is out the retained message is in place.
func TestAsyncRetainedWaitsForCommit(t *testing.T) {
	ob := newFakeOutbox(t, withGate())
	b := startBroker(t, Config{}, ob)
	sub, _ := dialRaw(t, b.Addr().TCP, "sub", 4, packets.Properties{})
	sub.subscribe(1, packets.Subscription{Filter: "#", Qos: 1})
	c, _ := dialRaw(t, b.Addr().TCP, "dev", 4, packets.Properties{})
	c.send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Retain: true},
		PacketID:    1, TopicName: "sensors/state", Payload: []byte("on"),
	})
	c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	c.mustRead(packets.Pingresp) // the publish was read and handed to the outbox, no PUBACK before
	ob.waitFor(t, "the append", func(o *fakeOutbox) bool { return o.appended == 1 })
	if _, ok := b.srv.Topics.Retained.Get("sensors/state"); ok {
		t.Fatal("retained before its commit")
	}
	sub.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	sub.mustRead(packets.Pingresp) // nothing delivered before the commit either
	ob.release(1)
	if pk := c.mustRead(packets.Puback); pk.PacketID != 1 {
		t.Fatalf("PUBACK %d", pk.PacketID)
	}
	if pk, ok := b.srv.Topics.Retained.Get("sensors/state"); !ok || string(pk.Payload) != "on" {
		t.Fatalf("retained %q (%v) after the PUBACK", pk.Payload, ok)
	}
	if pk := sub.mustRead(packets.Publish); string(pk.Payload) != "on" {
		t.Fatalf("delivered %q", pk.Payload)
	}
}
