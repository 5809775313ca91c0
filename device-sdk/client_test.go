package devicesdk

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	mqttsrv "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// recorder is a mochi hook that records publishes as the broker sees them.
type recorder struct {
	mqttsrv.HookBase
	mu   sync.Mutex
	msgs []string
}

func (r *recorder) ID() string { return "recorder" }
func (r *recorder) Provides(b byte) bool {
	return b == mqttsrv.OnPublish
}
func (r *recorder) OnPublish(cl *mqttsrv.Client, pk packets.Packet) (packets.Packet, error) {
	r.mu.Lock()
	r.msgs = append(r.msgs, pk.TopicName+"="+string(pk.Payload))
	r.mu.Unlock()
	return pk, nil
}

func startBroker(t *testing.T) (string, *recorder) {
	t.Helper()
	s := mqttsrv.New(&mqttsrv.Options{InlineClient: false})
	if err := s.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
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

func TestPublishWaitsForAck(t *testing.T) {
	addr, rec := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := Connect(ctx, Config{Broker: addr, DeviceID: "sensor-1"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(time.Second)
	for i := range 100 {
		if err := c.Publish(ctx, "sensors/t", []byte{byte('a' + i%26)}); err != nil {
			t.Fatal(err)
		}
		// An acknowledged publish has reached the broker's hook.
		rec.mu.Lock()
		n := len(rec.msgs)
		rec.mu.Unlock()
		if n != i+1 {
			t.Fatalf("publish %d returned before the broker had it (%d seen)", i, n)
		}
	}
}

func TestConfigRejected(t *testing.T) {
	ctx := context.Background()
	for _, cfg := range []Config{{DeviceID: "x"}, {Broker: "tcp://127.0.0.1:1"}} {
		if _, err := Connect(ctx, cfg); !errors.Is(err, ErrConfig) {
			t.Errorf("Connect(%+v) = %v, want ErrConfig", cfg, err)
		}
	}
}

func TestConnectRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	// Nothing listens on port 1: Connect keeps retrying until ctx ends.
	if _, err := Connect(ctx, Config{Broker: "tcp://127.0.0.1:1", DeviceID: "x", ConnectTimeout: 100 * time.Millisecond}); err == nil {
		t.Fatal("Connect to a closed port succeeded")
	}
}
