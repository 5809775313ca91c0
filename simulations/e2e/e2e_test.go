// Package e2e_test runs tributary-edge and tributary-cloud as real processes
// on loopback, publishes with real paho MQTT clients, receives CloudEvents at
// a real HTTP sink, kills processes with SIGKILL, and counts every message.
package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/tributary-io/tributary/cloud/server"
	"github.com/tributary-io/tributary/simulations/ledger"
	"github.com/tributary-io/tributary/simulations/procs"
	"github.com/tributary-io/tributary/simulations/sink"
)

var bins procs.Binaries

func TestMain(m *testing.M) {
	if os.Getenv("TRIBUTARY_E2E_SKIP") != "" {
		fmt.Println("e2e: skipped (TRIBUTARY_E2E_SKIP set)")
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "tributary-e2e-bin-")
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	bins, err = procs.Build(ctx, dir, false)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: build:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// fabric is one cloud, one gateway and a sink, as processes.
type fabric struct {
	t     *testing.T
	dir   string
	led   *ledger.Ledger
	sink  *sink.Sink
	cloud *procs.Cloud
	edge  *procs.Edge
	mu    sync.Mutex
	seen  map[string]*event.Event // by CloudEvent id, first delivery
}

func startFabric(t *testing.T) *fabric {
	t.Helper()
	f := &fabric{t: t, dir: t.TempDir(), led: ledger.New(), seen: map[string]*event.Event{}}
	var err error
	f.sink, err = sink.Start("127.0.0.1:0", func(ev *event.Event, arrived time.Time) {
		p, err := ledger.ParsePayload(ev.Data())
		if err != nil {
			t.Errorf("sink got an event with a foreign payload: %v", err)
			return
		}
		f.led.Delivered(p, arrived)
		f.mu.Lock()
		if _, ok := f.seen[ev.ID()]; !ok {
			f.seen[ev.ID()] = ev
		}
		f.mu.Unlock()
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.sink.Close() })
	f.startCloud(procs.CloudOptions{DataDir: filepath.Join(f.dir, "cloud"), SinkURL: f.sink.URL()})
	f.startEdge(procs.EdgeOptions{DataDir: filepath.Join(f.dir, "gw-1")})
	return f
}

func (f *fabric) startCloud(o procs.CloudOptions) {
	f.t.Helper()
	c, err := procs.StartCloud(context.Background(), bins, o)
	if err != nil {
		f.t.Fatal(err)
	}
	f.cloud = c
	f.t.Cleanup(func() {
		if exited, _ := c.Exited(); !exited {
			c.Kill()
		}
		if f.t.Failed() {
			f.t.Logf("cloud log tail:\n%s", c.Tail(40))
		}
	})
}

func (f *fabric) startEdge(o procs.EdgeOptions) {
	f.t.Helper()
	o.GatewayID = "gw-1"
	o.CloudAddr = f.cloud.SyncAddr
	o.DevCADir = filepath.Join(f.cloud.DataDir, "pki")
	e, err := procs.StartEdge(context.Background(), bins, o)
	if err != nil {
		f.t.Fatal(err)
	}
	f.edge = e
	f.t.Cleanup(func() {
		if exited, _ := e.Exited(); !exited {
			e.Kill()
		}
		if f.t.Failed() {
			f.t.Logf("edge log tail:\n%s", e.Tail(40))
		}
	})
}

// publisher is a set of paho clients publishing QoS 1 to the edge.
type publisher struct {
	clients []mqtt.Client
	ids     []string
	next    []uint64
	led     *ledger.Ledger
	pending sync.WaitGroup
}

func newPublisher(t *testing.T, addr string, n int, led *ledger.Ledger) *publisher {
	t.Helper()
	p := &publisher{led: led}
	for i := range n {
		id := fmt.Sprintf("device-%02d", i)
		opts := mqtt.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).
			SetCleanSession(true).SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).
			SetWriteTimeout(5 * time.Second)
		c := mqtt.NewClient(opts)
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("connect %s: %v", id, tok.Error())
		}
		p.clients = append(p.clients, c)
		p.ids = append(p.ids, id)
		p.next = append(p.next, 0)
	}
	t.Cleanup(func() {
		for _, c := range p.clients {
			c.Disconnect(0)
		}
	})
	return p
}

// publish sends count messages round-robin over the clients without waiting
// for their acks; acks are recorded in the ledger as they arrive.
func (p *publisher) publish(count int) {
	for i := range count {
		c := i % len(p.clients)
		p.next[c]++
		k := ledger.Key{Device: p.ids[c], N: p.next[c]}
		now := time.Now()
		p.led.Published(k, now)
		tok := p.clients[c].Publish("devices/"+p.ids[c]+"/telemetry", 1, false, ledger.MakePayload(k.Device, k.N, now, 200))
		p.pending.Add(1)
		go func() {
			defer p.pending.Done()
			if tok.WaitTimeout(20*time.Second) && tok.Error() == nil {
				p.led.Acked(k)
			} else {
				p.led.Failed(k)
			}
		}()
	}
}

func (p *publisher) wait() { p.pending.Wait() }

// waitDelivered waits until every acknowledged message reached the sink.
func (f *fabric) waitDelivered(limit time.Duration) {
	f.t.Helper()
	deadline := time.Now().Add(limit)
	for f.led.Pending() > 0 {
		if time.Now().After(deadline) {
			f.t.Fatalf("%d acknowledged messages not delivered within %v (progress %+v)", f.led.Pending(), limit, f.led.Progress())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkLog reads the whole central log through the API and records every
// copy of every message in the ledger.
func (f *fabric) checkLog() {
	f.t.Helper()
	from := uint64(0)
	for {
		resp, err := f.cloud.Get(fmt.Sprintf("/v1/events?from=%d&limit=1000", from))
		if err != nil {
			f.t.Fatal(err)
		}
		var page server.EventsPage
		err = json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if err != nil {
			f.t.Fatal(err)
		}
		for _, e := range page.Events {
			if strings.HasPrefix(e.Topic, "$") {
				continue
			}
			var ev event.Event
			if err := json.Unmarshal(e.Event, &ev); err != nil {
				f.t.Fatalf("log offset %d: %v", e.Offset, err)
			}
			p, err := ledger.ParsePayload(ev.Data())
			if err != nil {
				f.t.Fatalf("log offset %d: %v", e.Offset, err)
			}
			f.led.InLog(ledger.Key{Device: p.Device, N: p.N})
		}
		if len(page.Events) == 0 || page.Next >= page.End {
			return
		}
		from = page.Next
	}
}

func (f *fabric) verdict() ledger.Summary {
	f.t.Helper()
	f.checkLog()
	s := f.led.Summarise(true)
	f.t.Logf("summary: %+v", s)
	if !s.OK() {
		f.t.Errorf("contract broken: lost=%d duplicates-in-log=%d out-of-order=%d unknown=%d", s.Lost, s.Duplicates, s.OutOfOrder, s.Unknown)
	}
	return s
}

func TestEndToEndProcesses(t *testing.T) {
	f := startFabric(t)
	pub := newPublisher(t, f.edge.MQTTAddr, 4, f.led)
	pub.publish(1000)
	pub.wait()
	f.waitDelivered(60 * time.Second)
	s := f.verdict()
	if s.Acked != 1000 || s.Delivered != 1000 || s.InLog != 1000 {
		t.Fatalf("want 1000 acked, delivered and in the log; got %+v", s)
	}
	// Every event carries the attributes the contract names.
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.seen) != 1000 {
		t.Fatalf("sink saw %d distinct event ids, want 1000", len(f.seen))
	}
	for id, ev := range f.seen {
		p, _ := ledger.ParsePayload(ev.Data())
		if !strings.HasPrefix(id, "gw-1-") {
			t.Errorf("event id %q does not name the gateway", id)
		}
		if want := "/gateways/gw-1/devices/" + p.Device; ev.Source() != want {
			t.Errorf("event %s: source %q, want %q", id, ev.Source(), want)
		}
		if want := "devices/" + p.Device + "/telemetry"; ev.Subject() != want {
			t.Errorf("event %s: subject %q, want %q", id, ev.Subject(), want)
		}
		if ev.Type() != "io.tributary.telemetry" {
			t.Errorf("event %s: type %q", id, ev.Type())
		}
		if ev.Time().IsZero() {
			t.Errorf("event %s: no time", id)
		}
		if ev.DataContentType() != "application/json" {
			t.Errorf("event %s: datacontenttype %q", id, ev.DataContentType())
		}
		if len(ev.Data()) < 190 {
			t.Errorf("event %s: payload of %d bytes, want the 200 published", id, len(ev.Data()))
		}
	}
}

func decodeJSON(t *testing.T, resp *http.Response, v any) {
	t.Helper()
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: status %s", resp.Request.URL, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}
