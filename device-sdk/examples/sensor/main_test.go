package main

import (
	"context"
	"encoding/json"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	mqttsrv "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

type recorder struct {
	mqttsrv.HookBase
	mu   sync.Mutex
	msgs []packets.Packet
}

func (r *recorder) ID() string           { return "recorder" }
func (r *recorder) Provides(b byte) bool { return b == mqttsrv.OnPublish }
func (r *recorder) OnPublish(_ *mqttsrv.Client, pk packets.Packet) (packets.Packet, error) {
	r.mu.Lock()
	r.msgs = append(r.msgs, pk)
	r.mu.Unlock()
	return pk, nil
}

// The example publishes -count CloudEvents to a real broker and exits.
func TestSensorPublishesEvents(t *testing.T) {
	s := mqttsrv.New(&mqttsrv.Options{})
	rec := &recorder{}
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
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args := []string{"-broker", "tcp://" + l.Address(), "-device", "s1", "-buffer", t.TempDir(),
		"-count", "3", "-interval", "1ms"}
	if err := run(ctx, args, io.Discard); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.msgs) != 3 {
		t.Fatalf("broker saw %d messages, want 3", len(rec.msgs))
	}
	for i, pk := range rec.msgs {
		var ev event.Event
		if err := json.Unmarshal(pk.Payload, &ev); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if pk.TopicName != "telemetry/s1" || ev.Type() != "io.tributary.example.temperature" || ev.Source() != "/devices/s1" {
			t.Fatalf("message %d on %s: %s", i, pk.TopicName, ev.String())
		}
	}
}
