package devicesdk

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/tributary-io/tributary/edge/broker"
	"github.com/tributary-io/tributary/edge/outbox"
)

// startEdge starts the real edge broker committing sensors/# to a real
// SQLite outbox, and returns its MQTT URL and a reader of what the outbox
// committed (as topic=payload, in commit order).
func startEdge(t *testing.T) (string, func() []string) {
	t.Helper()
	ob, err := outbox.Open(filepath.Join(t.TempDir(), "outbox.db"), outbox.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := broker.Config{
		Listeners:  broker.Listeners{TCP: broker.TCPListener{Address: "127.0.0.1:0"}},
		Forwarding: []broker.Rule{{Filter: "sensors/#"}},
	}
	b, err := broker.New(cfg, ob, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(); ob.Close() })
	committed := func() []string {
		var out []string
		var after uint64
		for {
			recs, err := ob.Read(after, 1000, 0)
			if err != nil {
				t.Errorf("outbox read: %v", err)
				return out
			}
			if len(recs) == 0 {
				return out
			}
			for _, r := range recs {
				out = append(out, r.Topic+"="+string(r.Payload))
				after = r.Seq
			}
		}
	}
	return "tcp://" + b.Addr().TCP.String(), committed
}

// The crash scenario against the real gateway: a PUBACK there means
// committed to its SQLite outbox, so what is checked is what the gateway
// will forward to the cloud.
func TestCrashRebootEdgeGateway(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	addr, committed := startEdge(t)
	crashReboot(t, addr, committed)
}

// Events buffered offline reach the gateway's outbox as structured JSON
// CloudEvents, in order, once it is reachable.
func TestEventsThroughEdgeGateway(t *testing.T) {
	addr, committed := startEdge(t)
	g := newGate(t, addr, false)
	d, err := Open(testDeviceConfig(t, g.addr(), t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range 20 {
		ev := event.New()
		ev.SetType("io.tributary.test")
		ev.SetID(fmt.Sprintf("e%02d", i))
		if err := ev.SetData("application/json", map[string]int{"n": i}); err != nil {
			t.Fatal(err)
		}
		if err := d.PublishEvent(ctx, "sensors/ev", ev); err != nil {
			t.Fatal(err)
		}
	}
	g.set(true)
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	got := committed()
	if len(got) != 20 {
		t.Fatalf("outbox has %d records, want 20", len(got))
	}
	for i, m := range got {
		var ev event.Event
		if err := json.Unmarshal([]byte(m[len("sensors/ev="):]), &ev); err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		if ev.ID() != fmt.Sprintf("e%02d", i) {
			t.Fatalf("record %d is event %s", i, ev.ID())
		}
	}
}
