package bench

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/tributary-io/tributary/cloud/server"
	"github.com/tributary-io/tributary/simulations/ledger"
	"github.com/tributary-io/tributary/simulations/procs"
	"github.com/tributary-io/tributary/simulations/sink"
)

func init() {
	Register(Scenario{
		Name:  "e2e",
		Brief: "fixed offered load of QoS 1 MQTT through tributary-edge and tributary-cloud processes to an HTTP sink",
		Flags: e2eFlags,
	})
}

func e2eFlags(fs *flag.FlagSet) func(context.Context, io.Writer) (map[string]any, error) {
	rate := fs.Float64("rate", 5000, "offered load in messages per second (all publishers together)")
	dur := fs.Duration("duration", 20*time.Second, "how long to publish")
	pubs := fs.Int("publishers", 50, "MQTT publisher connections")
	size := fs.Int("payload", 200, "payload bytes")
	drain := fs.Duration("drain-timeout", 60*time.Second, "how long to wait for delivery after publishing stops")
	profile := fs.String("cloud-profile", "", "write a CPU profile of the cloud process, taken while publishing, to this `file`")
	return func(ctx context.Context, progress io.Writer) (map[string]any, error) {
		return runE2E(ctx, progress, *rate, *dur, *pubs, *size, *drain, *profile)
	}
}

func runE2E(ctx context.Context, progress io.Writer, rate float64, dur time.Duration, pubs, size int, drainLimit time.Duration, profile string) (map[string]any, error) {
	if rate <= 0 || pubs < 1 || size < 64 || dur <= 0 {
		return nil, fmt.Errorf("e2e: -rate, -duration and -publishers must be positive, -payload at least 64")
	}
	dir, err := os.MkdirTemp("", "tributary-bench-e2e-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	fmt.Fprintln(progress, "e2e: building tributary-edge and tributary-cloud")
	bins, err := procs.Build(ctx, dir, false)
	if err != nil {
		return nil, err
	}
	led := ledger.New()
	snk, err := sink.Start("127.0.0.1:0", func(ev *event.Event, arrived time.Time) {
		if p, err := ledger.ParsePayload(ev.Data()); err == nil {
			led.Delivered(p, arrived)
		}
	}, nil)
	if err != nil {
		return nil, err
	}
	defer snk.Close()
	copts := procs.CloudOptions{DataDir: filepath.Join(dir, "cloud"), SinkURL: snk.URL()}
	if profile != "" {
		copts.ExtraArgs = []string{"-pprof"}
	}
	cloud, err := procs.StartCloud(ctx, bins, copts)
	if err != nil {
		return nil, err
	}
	defer cloud.Stop(10 * time.Second)
	edge, err := procs.StartEdge(ctx, bins, procs.EdgeOptions{
		GatewayID: "gw-1", DataDir: filepath.Join(dir, "gw-1"),
		CloudAddr: cloud.SyncAddr, DevCADir: filepath.Join(cloud.DataDir, "pki"),
	})
	if err != nil {
		return nil, err
	}
	defer edge.Stop(10 * time.Second)

	clients := make([]mqtt.Client, pubs)
	for i := range clients {
		opts := mqtt.NewClientOptions().AddBroker("tcp://" + edge.MQTTAddr).SetClientID(fmt.Sprintf("bench-%03d", i)).
			SetCleanSession(true).SetAutoReconnect(false).SetWriteTimeout(10 * time.Second)
		c := mqtt.NewClient(opts)
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			return nil, fmt.Errorf("connect publisher %d: %v", i, tok.Error())
		}
		defer c.Disconnect(100)
		clients[i] = c
	}
	fmt.Fprintf(progress, "e2e: offering %.0f msg/s of %d-byte QoS 1 payloads over %d connections for %v\n", rate, size, pubs, dur)

	loadBefore := loadAverage()
	var pending sync.WaitGroup
	profDone := make(chan error, 1)
	if profile != "" {
		go func() { profDone <- fetchProfile(cloud.APIURL, profile, dur-time.Second) }()
	} else {
		profDone <- nil
	}
	start := time.Now()
	pubCtx, stop := context.WithTimeout(ctx, dur)
	defer stop()
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("bench-%03d", i)
			perPub := rate / float64(pubs)
			tick := time.NewTicker(5 * time.Millisecond)
			defer tick.Stop()
			var sent uint64
			for {
				select {
				case <-pubCtx.Done():
					return
				case <-tick.C:
				}
				// Catch up to the schedule: the offered load does not
				// depend on how fast acks come back.
				due := uint64(perPub * time.Since(start).Seconds())
				for ; sent < due; sent++ {
					n := sent + 1
					now := time.Now()
					k := ledger.Key{Device: id, N: n}
					led.Published(k, now)
					tok := c.Publish("bench/"+id, 1, false, ledger.MakePayload(id, n, now, size))
					pending.Add(1)
					go func() {
						defer pending.Done()
						if tok.WaitTimeout(30*time.Second) && tok.Error() == nil {
							led.Acked(k)
						} else {
							led.Failed(k)
						}
					}()
				}
			}
		}()
	}
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	pubDone := make(chan struct{})
	go func() { wg.Wait(); close(pubDone) }()
	report := func(phase string) {
		p := led.Progress()
		fmt.Fprintf(progress, "e2e: %-7s t=%5.1fs published=%d acked=%d delivered=%d failed=%d\n", phase, time.Since(start).Seconds(), p.Published, p.Acked, p.Delivered, p.Failed)
	}
loop:
	for {
		select {
		case <-pubDone:
			break loop
		case <-tick.C:
			report("publish")
		}
	}
	pubElapsed := time.Since(start)
	if err := <-profDone; err != nil {
		fmt.Fprintf(progress, "e2e: cloud profile: %v\n", err)
	}
	pending.Wait()
	deadline := time.Now().Add(drainLimit)
	for led.Pending() > 0 && time.Now().Before(deadline) {
		select {
		case <-tick.C:
			report("drain")
		case <-time.After(20 * time.Millisecond):
		}
	}
	total := time.Since(start)
	report("done")
	if err := cloud.ReadLog(func(e server.LogEntry) error {
		var ev event.Event
		if err := json.Unmarshal(e.Event, &ev); err != nil {
			return fmt.Errorf("log offset %d: %w", e.Offset, err)
		}
		p, err := ledger.ParsePayload(ev.Data())
		if err != nil {
			return fmt.Errorf("log offset %d: %w", e.Offset, err)
		}
		led.InLog(ledger.Key{Device: p.Device, N: p.N})
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read the central log: %w", err)
	}
	s := led.Summarise(true)
	return map[string]any{
		"offered_rate":     rate,
		"publishers":       pubs,
		"payload_bytes":    size,
		"duration_s":       round(pubElapsed.Seconds()),
		"published":        s.Published,
		"acked":            s.Acked,
		"failed_publishes": s.Failed,
		"delivered":        s.Delivered,
		"in_log":           s.InLog,
		"msgs_per_s":       round(float64(s.Delivered) / total.Seconds()),
		"ack_rate":         round(float64(s.Acked) / pubElapsed.Seconds()),
		"p50_ms":           s.P50ms,
		"p99_ms":           s.P99ms,
		"max_ms":           s.MaxMs,
		"lost":             s.Lost,
		"duplicates":       s.Duplicates,
		"redeliveries":     s.Redeliveries,
		"out_of_order":     s.OutOfOrder,
		// The machine's 1-minute load average before and after the run: a
		// figure taken on a busy machine says so.
		"loadavg_before": loadBefore,
		"loadavg_after":  loadAverage(),
	}, nil
}

func round(f float64) float64 { return float64(int64(f*10+0.5)) / 10 }

// fetchProfile saves a CPU profile of the cloud process taken over d.
func fetchProfile(apiURL, path string, d time.Duration) error {
	secs := max(1, int(d.Seconds()))
	resp, err := http.Get(fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", apiURL, secs))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET profile: %s", resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
