package devicesdk

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/tributary-io/tributary/edge/broker"
	"github.com/tributary-io/tributary/edge/outbox"
)

// observer is the gateway's command bookkeeping as the test sees it: every
// request id is known and replies are recorded.
type observer struct {
	online  chan string // a device id each time one connects or subscribes
	replies chan string // request id + " " + payload
}

func (o *observer) Delivered(device, requestID string) {}

func (o *observer) Replied(device, requestID string, payload []byte) bool {
	o.replies <- requestID + " " + string(payload)
	return true
}

func (o *observer) Online(device string) {
	select {
	case o.online <- device:
	default:
	}
}

// The SDK against the real edge broker's command path: the gateway's
// PublishCommand reaches the handler, the reply passes the gateway's
// reserved-topic ACL and is forwarded, and a state patch is committed to
// the outbox as an io.tributary.device.state event.
func TestCommandsAndStateThroughEdgeGateway(t *testing.T) {
	ob, err := outbox.Open(filepath.Join(t.TempDir(), "outbox.db"), outbox.Options{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(broker.Config{
		Listeners:  broker.Listeners{TCP: broker.TCPListener{Address: "127.0.0.1:0"}},
		Forwarding: []broker.Rule{{Filter: "sensors/#"}},
	}, ob, nil)
	if err != nil {
		t.Fatal(err)
	}
	obs := &observer{online: make(chan string, 10), replies: make(chan string, 10)}
	if err := b.SetCommandObserver(obs); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(); ob.Close() })

	dcfg := testDeviceConfig(t, "tcp://"+b.Addr().TCP.String(), t.TempDir())
	dcfg.DeviceID = "gw-dev"
	dcfg.Commands = map[string]CommandHandler{"echo": echo}
	d, err := Open(dcfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	defer d.Close(ctx)

	// The gateway publishes only to a subscribed device (ErrNoSubscriber
	// until the SDK's subscription is in place); it calls Online when the
	// device subscribes.
	cmd := broker.Command{Device: "gw-dev", Name: "echo", RequestID: "r1", Payload: []byte(`{"v":1}`), Expires: time.Now().Add(time.Minute)}
	for {
		err := b.PublishCommand(cmd, time.Now())
		if err == nil {
			break
		}
		if !errors.Is(err, broker.ErrNoSubscriber) {
			t.Fatalf("PublishCommand: %v", err)
		}
		select {
		case <-obs.online:
		case <-ctx.Done():
			t.Fatalf("PublishCommand: %v", err)
		}
	}
	select {
	case got := <-obs.replies:
		if got != `r1 {"status":200,"payload":{"got":{"v":1},"id":"r1","name":"echo"}}` {
			t.Fatalf("gateway got reply %s", got)
		}
	case <-ctx.Done():
		t.Fatal("no reply reached the gateway")
	}

	if err := d.ReportState(ctx, map[string]any{"fw": "9", "gone": nil}); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	recs, err := ob.Read(0, 100, 0)
	if err != nil {
		t.Fatal(err)
	}
	var state, reply int
	for _, r := range recs {
		switch r.Topic {
		case StateTopic("gw-dev"):
			state++
			var m map[string]any
			if r.EventType != broker.StateEventType || json.Unmarshal(r.Payload, &m) != nil || m["fw"] != "9" || len(m) != 2 {
				t.Fatalf("state record type %q payload %s", r.EventType, r.Payload)
			}
		case ReplyTopic("gw-dev", "r1"):
			reply++
			if r.EventType != broker.ReplyEventType {
				t.Fatalf("reply record type %q", r.EventType)
			}
		}
	}
	if state != 1 || reply != 1 {
		t.Fatalf("outbox has %d state and %d reply records, want 1 and 1", state, reply)
	}
}
