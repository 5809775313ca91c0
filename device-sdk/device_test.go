package devicesdk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"
)

// gate is a TCP proxy in front of a broker that the test can take down
// (refusing new connections and cutting live ones) and bring back up: the
// gateway going away and returning, without giving up the port.
type gate struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	up     bool
	conns  []net.Conn
}

func newGate(t *testing.T, target string, up bool) *gate {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &gate{ln: ln, target: strings.TrimPrefix(target, "tcp://"), up: up}
	go g.serve()
	t.Cleanup(func() { ln.Close(); g.set(false) })
	return g
}

func (g *gate) addr() string { return "tcp://" + g.ln.Addr().String() }

func (g *gate) serve() {
	for {
		c, err := g.ln.Accept()
		if err != nil {
			return
		}
		g.mu.Lock()
		up := g.up
		g.mu.Unlock()
		if !up {
			c.Close()
			continue
		}
		g.mu.Lock()
		target := g.target
		g.mu.Unlock()
		b, err := net.Dial("tcp", target)
		if err != nil {
			c.Close()
			continue
		}
		g.mu.Lock()
		g.conns = append(g.conns, c, b)
		g.mu.Unlock()
		go func() { io.Copy(b, c); b.Close(); c.Close() }()
		go func() { io.Copy(c, b); b.Close(); c.Close() }()
	}
}

// retarget points the gate at another broker (new connections only).
func (g *gate) retarget(target string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.target = strings.TrimPrefix(target, "tcp://")
}

// set opens or closes the gate; closing cuts every proxied connection.
func (g *gate) set(up bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.up = up
	if !up {
		for _, c := range g.conns {
			c.Close()
		}
		g.conns = nil
	}
}

func (r *recorder) snapshot() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.msgs...)
}

func testDeviceConfig(t *testing.T, broker, dir string) DeviceConfig {
	return DeviceConfig{
		Config: Config{
			Broker: broker, DeviceID: "dev-" + strings.ReplaceAll(t.Name(), "/", "-"),
			ConnectTimeout: time.Second, ReconnectInterval: 50 * time.Millisecond,
		},
		BufferDir: dir, RetryInterval: 50 * time.Millisecond,
	}
}

// checkOnceInOrder checks that got holds want, in order, with duplicates
// allowed only as re-sends (a message seen again), and returns how many
// duplicates there were.
func checkInOrder(t *testing.T, got, want []string) (dups int) {
	t.Helper()
	seen := map[string]bool{}
	var firsts []string
	for _, m := range got {
		if seen[m] {
			dups++
			continue
		}
		seen[m] = true
		firsts = append(firsts, m)
	}
	if len(firsts) != len(want) {
		t.Fatalf("broker has %d distinct messages, want %d", len(firsts), len(want))
	}
	for i := range want {
		if firsts[i] != want[i] {
			t.Fatalf("message %d is %q, want %q (out of order or lost)", i, firsts[i], want[i])
		}
	}
	return dups
}

func TestDeviceBuffersOfflineThenDelivers(t *testing.T) {
	addr, rec := startBroker(t)
	g := newGate(t, addr, false) // gateway unreachable at first
	d, err := Open(testDeviceConfig(t, g.addr(), t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := range 50 {
		p := fmt.Sprintf("m%03d", i)
		if err := d.Enqueue("sensors/t", []byte(p)); err != nil {
			t.Fatal(err)
		}
		want = append(want, "sensors/t="+p)
	}
	if s := d.Stats(); s.Buffered != 50 || s.Acked != 0 {
		t.Fatalf("offline stats %+v", s)
	}
	if n := len(rec.snapshot()); n != 0 {
		t.Fatalf("broker saw %d messages through a closed gate", n)
	}
	g.set(true)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.Close(ctx); err != nil { // Close flushes
		t.Fatal(err)
	}
	if dups := checkInOrder(t, rec.snapshot(), want); dups != 0 {
		t.Fatalf("%d duplicates without any crash or cut", dups)
	}
	if s := d.Stats(); s.Buffered != 0 || s.Acked != 50 {
		t.Fatalf("stats after close %+v", s)
	}
}

func TestDeviceResendsAfterConnectionLoss(t *testing.T) {
	addr, rec := startBroker(t)
	g := newGate(t, addr, true)
	d, err := Open(testDeviceConfig(t, g.addr(), t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var want []string
	for round := range 4 {
		for i := range 40 {
			p := fmt.Sprintf("r%d-%03d", round, i)
			if err := d.Enqueue("sensors/t", []byte(p)); err != nil {
				t.Fatal(err)
			}
			want = append(want, "sensors/t="+p)
			if i == 20 {
				g.set(false) // cut mid-stream, with messages in flight
			}
		}
		g.set(true)
		if err := d.Flush(ctx); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
	}
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	dups := checkInOrder(t, rec.snapshot(), want)
	t.Logf("%d messages, %d duplicates after 4 cuts", len(want), dups)
	if dups > 4*2 {
		t.Fatalf("%d duplicates, more than two per cut with one message in flight", dups)
	}
}

// With a window of in-flight messages order may bend around a reconnect,
// but nothing is lost.
func TestDeviceWindowLosesNothing(t *testing.T) {
	addr, rec := startBroker(t)
	g := newGate(t, addr, false)
	cfg := testDeviceConfig(t, g.addr(), t.TempDir())
	cfg.MaxInflight = 8
	d, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	want := map[string]bool{}
	for i := range 200 {
		p := fmt.Sprintf("w%03d", i)
		if err := d.Enqueue("sensors/t", []byte(p)); err != nil {
			t.Fatal(err)
		}
		want["sensors/t="+p] = true
		switch i {
		case 30, 120:
			g.set(true)
		case 60, 150:
			g.set(false)
		}
	}
	g.set(true)
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, m := range rec.snapshot() {
		got[m]++
	}
	for m := range want {
		if got[m] == 0 {
			t.Fatalf("%s lost", m)
		}
	}
	if len(got) != len(want) {
		t.Fatalf("broker has %d distinct messages, want %d", len(got), len(want))
	}
}

func TestDeviceCloseKeepsUnsentOnDisk(t *testing.T) {
	dir := t.TempDir()
	cfg := testDeviceConfig(t, "tcp://127.0.0.1:1", dir) // nothing listens
	d, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := d.Enqueue("t", []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := d.Close(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Close with nothing flushed = %v, want context.Canceled", err)
	}
	if err := d.Enqueue("t", []byte("late")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Enqueue after Close = %v", err)
	}
	b := mustOpen(t, dir, 1<<20, RejectNew)
	defer b.close()
	if n := len(contents(b)); n != 5 {
		t.Fatalf("%d messages on disk after Close, want 5", n)
	}
}

func TestPublishEventStructuredJSON(t *testing.T) {
	addr, rec := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	ev := cloudevents.NewEvent()
	ev.SetType("io.tributary.telemetry")
	if err := ev.SetData(cloudevents.ApplicationJSON, map[string]float64{"temp": 21.5}); err != nil {
		t.Fatal(err)
	}
	c, err := Connect(ctx, Config{Broker: addr, DeviceID: "ev-client"})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.PublishEvent(ctx, "sensors/ev", ev); err != nil {
		t.Fatal(err)
	}
	c.Close(time.Second)
	d, err := Open(testDeviceConfig(t, addr, t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.PublishEvent(ctx, "sensors/ev", ev); err != nil {
		t.Fatal(err)
	}
	bad := cloudevents.NewEvent() // no type: invalid
	if err := d.PublishEvent(ctx, "sensors/ev", bad); !errors.Is(err, ErrConfig) {
		t.Fatalf("invalid event: %v", err)
	}
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	msgs := rec.snapshot()
	if len(msgs) != 2 {
		t.Fatalf("broker saw %d messages, want 2", len(msgs))
	}
	for i, m := range msgs {
		payload := strings.TrimPrefix(m, "sensors/ev=")
		var got event.Event
		if err := json.Unmarshal([]byte(payload), &got); err != nil {
			t.Fatalf("message %d is not a structured CloudEvent: %v: %s", i, err, payload)
		}
		var data map[string]float64
		if err := got.DataAs(&data); err != nil || data["temp"] != 21.5 {
			t.Fatalf("message %d data %v (%v)", i, data, err)
		}
		wantSrc := []string{"/devices/ev-client", "/devices/" + testDeviceConfig(t, "", "").DeviceID}[i]
		if got.Type() != "io.tributary.telemetry" || got.ID() == "" || got.Source() != wantSrc || got.SpecVersion() != "1.0" {
			t.Fatalf("message %d attributes: %s", i, got.String())
		}
	}
}

func TestDeviceConfigRejected(t *testing.T) {
	ok := DeviceConfig{Config: Config{Broker: "tcp://127.0.0.1:1", DeviceID: "d"}, BufferDir: t.TempDir()}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for name, mut := range map[string]func(*DeviceConfig){
		"no broker":      func(c *DeviceConfig) { c.Broker = "" },
		"no device":      func(c *DeviceConfig) { c.DeviceID = "" },
		"no buffer dir":  func(c *DeviceConfig) { c.BufferDir = "" },
		"negative bytes": func(c *DeviceConfig) { c.MaxBufferBytes = -1 },
		"negative keep":  func(c *DeviceConfig) { c.KeepAlive = -1 },
		"bad policy":     func(c *DeviceConfig) { c.Overflow = 7 },
	} {
		cfg := ok
		mut(&cfg)
		if _, err := Open(cfg); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: Open = %v, want ErrConfig", name, err)
		}
	}
}
