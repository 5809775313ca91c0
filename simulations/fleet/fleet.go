// Package fleet runs a whole Tributary fabric in one process — a cloud,
// gateways, simulated MQTT devices and a CloudEvents sink — and accounts for
// every message. It is the quickstart (simulations/cmd/fleetsim) and a test
// of the contracts end to end.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/tributary-io/tributary/cloud/dispatch"
	"github.com/tributary-io/tributary/cloud/server"
	"github.com/tributary-io/tributary/edge/gateway"
	"github.com/tributary-io/tributary/simulations/ledger"
	"github.com/tributary-io/tributary/simulations/sink"
)

// Options describe a run. Zero values take the documented defaults.
type Options struct {
	// Gateways is the number of edge gateways. 0 means 2.
	Gateways int
	// Devices is the total number of devices, spread over the gateways. 0
	// means 50.
	Devices int
	// Rate is messages per second per device. 0 means 10.
	Rate float64
	// PayloadBytes is the size of each message. 0 means 200.
	PayloadBytes int
	// Duration is how long devices publish. 0 means 30 s.
	Duration time.Duration
	// DrainTimeout bounds the wait for every acknowledged message to be
	// delivered after publishing stops. 0 means 60 s.
	DrainTimeout time.Duration
	// Parallelism is the subscription's number of ordered lanes. 0 means 16.
	Parallelism int
	// DataDir holds every part's data. "" means a temporary directory,
	// removed at the end.
	DataDir string
	// Progress receives a line every ProgressEvery (0 means 2 s). nil: none.
	Progress      io.Writer
	ProgressEvery time.Duration
	// Logger receives the parts' logs. nil discards them.
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.Gateways == 0 {
		o.Gateways = 2
	}
	if o.Devices == 0 {
		o.Devices = 50
	}
	if o.Rate == 0 {
		o.Rate = 10
	}
	if o.PayloadBytes == 0 {
		o.PayloadBytes = 200
	}
	if o.Duration == 0 {
		o.Duration = 30 * time.Second
	}
	if o.DrainTimeout == 0 {
		o.DrainTimeout = 60 * time.Second
	}
	if o.Parallelism == 0 {
		o.Parallelism = 16
	}
	if o.ProgressEvery == 0 {
		o.ProgressEvery = 2 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// Result is a run's outcome.
type Result struct {
	ledger.Summary
	Gateways    int     `json:"gateways"`
	Devices     int     `json:"devices"`
	DurationS   float64 `json:"duration_s"`
	DrainS      float64 `json:"drain_s"`
	PublishRate float64 `json:"publish_msgs_per_s"`
}

// Run starts the fabric, publishes for opts.Duration, waits for delivery and
// checks the central log. It returns an error only if the run could not be
// carried out; a run that broke a contract returns a Result whose OK() is
// false.
func Run(ctx context.Context, opts Options) (Result, error) {
	o := opts.withDefaults()
	dir := o.DataDir
	if dir == "" {
		d, err := os.MkdirTemp("", "tributary-fleetsim-")
		if err != nil {
			return Result{}, err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	led := ledger.New()

	snk, err := sink.Start("127.0.0.1:0", func(ev *event.Event, arrived time.Time) {
		p, err := ledger.ParsePayload(ev.Data())
		if err != nil {
			o.Logger.Warn("sink: event with a foreign payload", "id", ev.ID(), "err", err)
			return
		}
		led.Delivered(p, arrived)
	}, nil)
	if err != nil {
		return Result{}, fmt.Errorf("sink: %w", err)
	}
	defer snk.Close()

	cloud, err := server.New(server.Config{
		DataDir: filepath.Join(dir, "cloud"),
		Sync:    server.SyncConfig{Listen: "127.0.0.1:0"},
		API:     server.APIConfig{Listen: "127.0.0.1:0"},
		Subscriptions: []dispatch.Subscription{{
			ID: "fleetsim", Sink: snk.URL(), Parallelism: o.Parallelism,
		}},
	}, o.Logger.With("node", "cloud"))
	if err != nil {
		return Result{}, fmt.Errorf("cloud: %w", err)
	}
	runCtx, stopAll := context.WithCancel(ctx)
	defer stopAll()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := cloud.Run(runCtx); err != nil && !errors.Is(err, context.Canceled) {
			o.Logger.Error("cloud stopped", "err", err)
		}
	}()
	defer func() {
		stopAll()
		wg.Wait()
		cloud.Close()
	}()

	gws := make([]*gateway.Gateway, o.Gateways)
	for i := range gws {
		id := fmt.Sprintf("gw-%d", i+1)
		var cfg gateway.Config
		cfg.GatewayID = id
		cfg.DataDir = filepath.Join(dir, id)
		cfg.MQTT.Listeners.TCP.Address = "127.0.0.1:0"
		cfg.Cloud.Address = cloud.SyncAddr().String()
		cfg.Cloud.DevCADir = cloud.PKIDir()
		g, err := gateway.New(cfg, o.Logger.With("node", id))
		if err != nil {
			return Result{}, fmt.Errorf("gateway %s: %w", id, err)
		}
		gws[i] = g
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := g.Run(runCtx); err != nil {
				o.Logger.Error("gateway link stopped", "gateway", id, "err", err)
			}
		}()
	}
	defer func() {
		stopAll()
		wg.Wait()
		for _, g := range gws {
			if g != nil {
				g.Close()
			}
		}
	}()

	devs := make([]*device, o.Devices)
	for i := range devs {
		d, err := connectDevice(fmt.Sprintf("dev-%04d", i+1), gws[i%len(gws)].MQTTAddr(), led, o.PayloadBytes)
		if err != nil {
			return Result{}, err
		}
		devs[i] = d
	}
	defer func() {
		for _, d := range devs {
			if d != nil {
				d.close()
			}
		}
	}()

	start := time.Now()
	pubCtx, stopPub := context.WithTimeout(ctx, o.Duration)
	defer stopPub()
	var pubWG sync.WaitGroup
	interval := time.Duration(float64(time.Second) / o.Rate)
	for i, d := range devs {
		pubWG.Add(1)
		// Spread the devices' first publishes over one interval.
		offset := time.Duration(int64(interval) * int64(i) / int64(len(devs)))
		go func() {
			defer pubWG.Done()
			d.publishLoop(pubCtx, offset, interval)
		}()
	}
	progress := func(phase string) {
		if o.Progress == nil {
			return
		}
		p := led.Progress()
		var backlog uint64
		for _, g := range gws {
			backlog += g.Stats().Outbox.Records
		}
		fmt.Fprintf(o.Progress, "%-8s t=%5.1fs published=%d acked=%d delivered=%d failed=%d edge_backlog=%d log=%d\n",
			phase, time.Since(start).Seconds(), p.Published, p.Acked, p.Delivered, p.Failed, backlog, cloud.Log().NextOffset())
	}
	tick := time.NewTicker(o.ProgressEvery)
	defer tick.Stop()
	pubDone := make(chan struct{})
	go func() { pubWG.Wait(); close(pubDone) }()
wait:
	for {
		select {
		case <-pubDone:
			break wait
		case <-tick.C:
			progress("publish")
		case <-ctx.Done():
			return Result{}, ctx.Err()
		}
	}
	pubElapsed := time.Since(start)
	// Wait for outstanding PUBACKs, then for delivery of everything acked.
	for _, d := range devs {
		d.waitTokens(10 * time.Second)
	}
	drainStart := time.Now()
	deadline := time.NewTimer(o.DrainTimeout)
	defer deadline.Stop()
	poll := time.NewTicker(50 * time.Millisecond)
	defer poll.Stop()
drain:
	for led.Pending() > 0 {
		select {
		case <-poll.C:
		case <-tick.C:
			progress("drain")
		case <-deadline.C:
			break drain
		case <-ctx.Done():
			return Result{}, ctx.Err()
		}
	}
	drain := time.Since(drainStart)
	progress("done")

	if err := checkLog(cloud, led); err != nil {
		return Result{}, err
	}
	p := led.Progress()
	return Result{
		Summary:     led.Summarise(true),
		Gateways:    o.Gateways,
		Devices:     o.Devices,
		DurationS:   pubElapsed.Seconds(),
		DrainS:      drain.Seconds(),
		PublishRate: float64(p.Published) / pubElapsed.Seconds(),
	}, nil
}

// checkLog reads the whole central log and records every copy of every
// message in the ledger.
func checkLog(cloud *server.Server, led *ledger.Ledger) error {
	l := cloud.Log()
	for from := l.FirstOffset(); from < l.NextOffset(); {
		recs, err := l.Read(from, 4096, 8<<20)
		if err != nil {
			return fmt.Errorf("read central log at %d: %w", from, err)
		}
		if len(recs) == 0 {
			break
		}
		for _, r := range recs {
			if r.Topic != "" && r.Topic[0] == '$' {
				continue // internal topics (dead letters)
			}
			data, err := server.EventData(r.Value)
			if err != nil {
				return fmt.Errorf("central log record %d: %w", r.Offset, err)
			}
			p, err := ledger.ParsePayload(data)
			if err != nil {
				return fmt.Errorf("central log record %d: %w", r.Offset, err)
			}
			led.InLog(ledger.Key{Device: p.Device, N: p.N})
		}
		from = recs[len(recs)-1].Offset + 1
	}
	return nil
}

// device is one simulated MQTT device.
type device struct {
	id      string
	client  mqtt.Client
	led     *ledger.Ledger
	size    int
	n       uint64
	pending sync.WaitGroup
}

func connectDevice(id, addr string, led *ledger.Ledger, size int) (*device, error) {
	opts := mqtt.NewClientOptions().
		AddBroker("tcp://" + addr).
		SetClientID(id).
		SetCleanSession(true).
		SetAutoReconnect(true).
		SetConnectRetry(true).
		SetConnectTimeout(10 * time.Second).
		SetWriteTimeout(10 * time.Second).
		SetOrderMatters(false)
	c := mqtt.NewClient(opts)
	t := c.Connect()
	if !t.WaitTimeout(15*time.Second) || t.Error() != nil {
		return nil, fmt.Errorf("device %s: connect to %s: %v", id, addr, t.Error())
	}
	return &device{id: id, client: c, led: led, size: size}, nil
}

func (d *device) publishLoop(ctx context.Context, offset, interval time.Duration) {
	select {
	case <-time.After(offset):
	case <-ctx.Done():
		return
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		d.publish()
		select {
		case <-tick.C:
		case <-ctx.Done():
			return
		}
	}
}

func (d *device) publish() {
	d.n++
	k := ledger.Key{Device: d.id, N: d.n}
	now := time.Now()
	payload := ledger.MakePayload(d.id, d.n, now, d.size)
	d.led.Published(k, now)
	tok := d.client.Publish("devices/"+d.id+"/telemetry", 1, false, payload)
	d.pending.Add(1)
	go func() {
		defer d.pending.Done()
		if tok.WaitTimeout(30*time.Second) && tok.Error() == nil {
			d.led.Acked(k)
		} else {
			d.led.Failed(k)
		}
	}()
}

func (d *device) waitTokens(limit time.Duration) {
	done := make(chan struct{})
	go func() { d.pending.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(limit):
	}
}

func (d *device) close() { d.client.Disconnect(250) }
