package broker

import (
	"log/slog"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// TestSlowInflightSweep fails when a mochi upgrade moves the ticker that
// slowInflightSweep resets (the broker would then sweep every second again,
// which the edge-ingest benchmark measured at about a quarter of its CPU).
func TestSlowInflightSweep(t *testing.T) {
	srv := mqtt.New(&mqtt.Options{Logger: slog.New(slog.DiscardHandler)})
	defer srv.Close()
	if err := slowInflightSweep(srv, time.Hour); err != nil {
		t.Fatal(err)
	}
}

// TestInflightExpiryStillSwept: with the sweep moved to its own interval
// (shortened here), a message the subscriber never acknowledges is still
// dropped from its in-flight window once Limits.MessageExpiry has passed.
func TestInflightExpiryStillSwept(t *testing.T) {
	ob := newFakeOutbox(t)
	b, err := New(Config{
		Listeners: Listeners{TCP: TCPListener{Address: "127.0.0.1:0"}},
		Limits:    Limits{MessageExpiry: time.Second},
	}, ob, nil)
	if err != nil {
		t.Fatal(err)
	}
	b.inflightSweep = 20 * time.Millisecond
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })

	sub, _ := dialRaw(t, b.Addr().TCP, "sub", 4, packets.Properties{})
	sub.subscribe(1, packets.Subscription{Filter: "#", Qos: 1})
	pub, _ := dialRaw(t, b.Addr().TCP, "dev", 4, packets.Properties{})
	pub.publish(1, 1, "sensors/a", []byte("m"), packets.Properties{})
	pub.mustRead(packets.Puback)
	sub.mustRead(packets.Publish) // and never acknowledged
	cl, ok := b.srv.Clients.Get("sub")
	if !ok {
		t.Fatal("subscriber not found")
	}
	if n := cl.State.Inflight.Len(); n != 1 {
		t.Fatalf("%d messages in flight to the subscriber, want 1", n)
	}
	waitUntil(t, "the expired in-flight message to be dropped", func() bool { return cl.State.Inflight.Len() == 0 })
}
