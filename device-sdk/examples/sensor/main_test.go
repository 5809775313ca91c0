package main

import (
	"context"
	"encoding/json"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	mqtt "github.com/eclipse/paho.mqtt.golang"
	mqttsrv "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	devicesdk "github.com/tributary-io/tributary/device-sdk"
)

// recorder records publishes and reports subscriptions.
type recorder struct {
	mqttsrv.HookBase
	mu   sync.Mutex
	msgs []packets.Packet
	subs chan string   // client id + " " + filter, for each subscription
	pubs chan struct{} // a tick for each publish (dropped when full)
}

func (r *recorder) ID() string { return "recorder" }
func (r *recorder) Provides(b byte) bool {
	return b == mqttsrv.OnPublish || b == mqttsrv.OnSubscribed
}
func (r *recorder) OnPublish(_ *mqttsrv.Client, pk packets.Packet) (packets.Packet, error) {
	r.mu.Lock()
	r.msgs = append(r.msgs, pk)
	r.mu.Unlock()
	select {
	case r.pubs <- struct{}{}:
	default:
	}
	return pk, nil
}
func (r *recorder) OnSubscribed(cl *mqttsrv.Client, pk packets.Packet, _ []byte) {
	for _, f := range pk.Filters {
		select {
		case r.subs <- cl.ID + " " + f.Filter:
		default:
		}
	}
}

// onTopic returns the recorded publishes on topic.
func (r *recorder) onTopic(topic string) []packets.Packet {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []packets.Packet
	for _, pk := range r.msgs {
		if pk.TopicName == topic {
			out = append(out, pk)
		}
	}
	return out
}

func startBroker(t *testing.T) (string, *recorder) {
	t.Helper()
	s := mqttsrv.New(&mqttsrv.Options{})
	rec := &recorder{subs: make(chan string, 100), pubs: make(chan struct{}, 1)}
	if err := s.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.AddHook(rec, nil); err != nil {
		t.Fatal(err)
	}
	l := listeners.NewTCP(listeners.Config{ID: "t", Address: "127.0.0.1:0"})
	if err := s.AddListener(l); err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return "tcp://" + l.Address(), rec
}

// The example publishes -count CloudEvents to a real broker and exits.
func TestSensorPublishesEvents(t *testing.T) {
	addr, rec := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args := []string{"-broker", addr, "-device", "s1", "-buffer", t.TempDir(),
		"-count", "3", "-interval", "1ms"}
	if err := run(ctx, args, io.Discard); err != nil {
		t.Fatal(err)
	}
	msgs := rec.onTopic("telemetry/s1")
	if len(msgs) != 3 {
		t.Fatalf("broker saw %d readings, want 3", len(msgs))
	}
	if st := rec.onTopic(devicesdk.StateTopic("s1")); len(st) != 1 || !strings.Contains(string(st[0].Payload), `"firmware":"1.0.0"`) {
		t.Fatalf("state publishes %v", st)
	}
	for i, pk := range msgs {
		var ev event.Event
		if err := json.Unmarshal(pk.Payload, &ev); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if pk.TopicName != "telemetry/s1" || ev.Type() != "io.tributary.example.temperature" || ev.Source() != "/devices/s1" {
			t.Fatalf("message %d on %s: %s", i, pk.TopicName, ev.String())
		}
	}
}

// The example answers the reboot command (202 on the reply topic), reboots
// (reports a new boot with reboots=1), and answers other commands 404.
func TestSensorAnswersReboot(t *testing.T) {
	addr, rec := startBroker(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	args := []string{"-broker", addr, "-device", "s2", "-buffer", t.TempDir(), "-interval", "1h", "-state-interval", "1h", "-firmware", "2.1"}
	go func() { done <- run(ctx, args, io.Discard) }()
	waitFor(t, rec.subs, "s2 $tributary/commands/s2/+/+")

	caller := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(addr).SetClientID("caller"))
	if tok := caller.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("caller: %v", tok.Error())
	}
	defer caller.Disconnect(0)
	replies := make(chan mqtt.Message, 10)
	if tok := caller.Subscribe("$tributary/replies/s2/+", 1, func(_ mqtt.Client, m mqtt.Message) { replies <- m }); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("caller subscribe: %v", tok.Error())
	}
	command := func(name, id string) devicesdk.CommandReply {
		t.Helper()
		if tok := caller.Publish(devicesdk.CommandTopic("s2", name, id), 1, false, `{"reason":"test"}`); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
		select {
		case m := <-replies:
			var r devicesdk.CommandReply
			if m.Topic() != devicesdk.ReplyTopic("s2", id) || json.Unmarshal(m.Payload(), &r) != nil {
				t.Fatalf("reply %s on %s", m.Payload(), m.Topic())
			}
			return r
		case <-time.After(30 * time.Second):
			t.Fatalf("no reply to %s", name)
			return devicesdk.CommandReply{}
		}
	}
	if r := command("reboot", "r1"); r.Status != 202 || string(r.Payload) != `{"firmware":"2.1","rebooting":true}` {
		t.Fatalf("reboot reply %d %s", r.Status, r.Payload)
	}
	// After the reboot the device subscribes again and reports reboots=1.
	waitFor(t, rec.subs, "s2 $tributary/commands/s2/+/+")
	if r := command("dance", "r2"); r.Status != 404 || string(r.Payload) != `{"error":"no handler for command dance"}` {
		t.Fatalf("unknown command reply %d %s", r.Status, r.Payload)
	}
	// The new boot's state is buffered right after Open, so it may be sent
	// after the reply to a command that arrived first.
	timeout := time.After(30 * time.Second)
	for states := rec.onTopic(devicesdk.StateTopic("s2")); len(states) < 2; states = rec.onTopic(devicesdk.StateTopic("s2")) {
		select {
		case <-rec.pubs:
		case <-timeout:
			t.Fatalf("%d state publishes, want 2", len(states))
		}
	}
	if states := rec.onTopic(devicesdk.StateTopic("s2")); len(states) != 2 || !strings.Contains(string(states[1].Payload), `"reboots":1`) {
		t.Fatalf("state publishes: %d, last %s", len(states), states[len(states)-1].Payload)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, ch <-chan string, want string) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case got := <-ch:
			if got == want {
				return
			}
		case <-timeout:
			t.Fatalf("never saw %s", want)
		}
	}
}
