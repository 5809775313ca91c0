package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"encoding/json"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/tributary-io/tributary/cloud/server"
	devicesdk "github.com/tributary-io/tributary/device-sdk"
	"github.com/tributary-io/tributary/edge/gateway"
	"github.com/tributary-io/tributary/sync/link"
)

// The command-rtt scenario measures cloud-to-device command round trips:
// -devices devices (the device SDK, each with a "ping" handler) on one
// gateway; callers POST /v1/gateways/{gw}/devices/{device}/commands/ping
// to the cloud's HTTP API with the bearer token and wait for the reply
// (the default timeout=30s), -concurrency calls at a time, round-robin over
// the devices. The RTT of a command is the HTTP call's duration: API →
// QUIC link → gateway (command committed with synchronous=FULL) → MQTT
// publish → device handler → reply → gateway → link → API answer.
//
// The cloud and the gateway run in this process (as the fleet simulator's
// in-process mode does): with two cores shared by everything, child
// processes would not isolate them, and one -cpuprofile then covers the
// whole path. A failed command is any answer but 200 with status
// "replied" and the device's echo.
func init() {
	Register(Scenario{
		Name:  "command-rtt",
		Brief: "cloud API → link → gateway → SDK devices and back: command round-trip times",
		Flags: commandRTTFlags,
	})
}

type commandRTTConfig struct {
	devices, commands, concurrency, warmup int
	cpuProfile, dir                        string
}

func commandRTTFlags(fs *flag.FlagSet) func(context.Context, io.Writer) (map[string]any, error) {
	var c commandRTTConfig
	fs.IntVar(&c.devices, "devices", 100, "devices (device SDK clients) on the gateway")
	fs.IntVar(&c.commands, "commands", 2000, "commands measured")
	fs.IntVar(&c.concurrency, "concurrency", 10, "commands in flight at a time")
	fs.IntVar(&c.warmup, "warmup", 200, "commands sent before measuring (not counted)")
	fs.StringVar(&c.cpuProfile, "cpuprofile", "", "write a CPU profile of the measured run to this file")
	fs.StringVar(&c.dir, "dir", "", "directory for the cloud's and gateway's data (default: a new temporary directory)")
	return func(ctx context.Context, progress io.Writer) (map[string]any, error) {
		return runCommandRTT(ctx, progress, c)
	}
}

func runCommandRTT(ctx context.Context, progress io.Writer, c commandRTTConfig) (map[string]any, error) {
	if c.devices < 1 || c.commands < 1 || c.concurrency < 1 || c.warmup < 0 {
		return nil, errors.New("command-rtt: -devices, -commands and -concurrency must be positive")
	}
	dir := c.dir
	if dir == "" {
		d, err := os.MkdirTemp("", "tributary-bench-command-rtt-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	res := map[string]any{"loadavg_before": loadAverage(), "devices": c.devices, "concurrency": c.concurrency}
	logger := slog.New(slog.DiscardHandler)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()

	var ccfg server.Config
	ccfg.DataDir = filepath.Join(dir, "cloud")
	ccfg.Sync.Listen = "127.0.0.1:0"
	ccfg.API.Listen = "127.0.0.1:0"
	cloud, err := server.New(ccfg, logger)
	if err != nil {
		return nil, fmt.Errorf("cloud: %w", err)
	}
	defer cloud.Close()
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = cloud.Run(ctx)
	}()
	token, err := server.ReadDevToken(ccfg.DataDir)
	if err != nil {
		return nil, err
	}

	var gcfg gateway.Config
	gcfg.GatewayID = "gw-bench"
	gcfg.DataDir = filepath.Join(dir, "gw")
	gcfg.MQTT.Listeners.TCP.Address = "127.0.0.1:0"
	gcfg.Cloud.Address = cloud.SyncAddr().String()
	gcfg.Cloud.DevCADir = cloud.PKIDir()
	gw, err := gateway.New(gcfg, logger)
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	defer gw.Close()
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = gw.Run(ctx)
	}()

	fmt.Fprintf(progress, "command-rtt: connecting %d devices\n", c.devices)
	devices := make([]*devicesdk.Client, c.devices)
	for i := range devices {
		id := fmt.Sprintf("dev-%03d", i)
		d, err := devicesdk.Connect(ctx, devicesdk.Config{
			Broker:   "tcp://" + gw.MQTTAddr(),
			DeviceID: id,
			Commands: map[string]devicesdk.CommandHandler{
				"ping": func(_ context.Context, cmd devicesdk.Command) (int, any, error) {
					return 200, map[string]any{"device": id, "echo": json.RawMessage(cmd.Payload)}, nil
				},
			},
		})
		if err != nil {
			return nil, fmt.Errorf("device %s: %w", id, err)
		}
		devices[i] = d
	}
	defer func() {
		for _, d := range devices {
			d.Close(0)
		}
	}()
	deadline := time.Now().Add(time.Minute)
	for gw.Stats().Link.State != link.Connected {
		if time.Now().After(deadline) {
			return nil, errors.New("the gateway did not connect to the cloud within a minute")
		}
		time.Sleep(10 * time.Millisecond) // polling interval
	}

	base := "http://" + cloud.APIAddr().String() + "/v1/gateways/gw-bench/devices/"
	httpc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: c.concurrency * 2}}
	call := func(n int) (time.Duration, error) {
		dev := fmt.Sprintf("dev-%03d", n%c.devices)
		body := fmt.Sprintf(`{"n":%d}`, n)
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+dev+"/commands/ping?timeout=30s", strings.NewReader(body))
		if err != nil {
			return 0, err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		start := time.Now()
		resp, err := httpc.Do(req)
		if err != nil {
			return 0, err
		}
		raw, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		rtt := time.Since(start)
		if err != nil {
			return rtt, err
		}
		var v struct {
			Status      string `json:"status"`
			ReplyStatus int    `json:"reply_status"`
			Payload     struct {
				Device string          `json:"device"`
				Echo   json.RawMessage `json:"echo"`
			} `json:"payload"`
		}
		if resp.StatusCode != http.StatusOK || json.Unmarshal(raw, &v) != nil || v.Status != "replied" || v.ReplyStatus != 200 ||
			v.Payload.Device != dev || string(v.Payload.Echo) != body {
			return rtt, fmt.Errorf("%s: %d %s", dev, resp.StatusCode, raw)
		}
		return rtt, nil
	}
	run := func(total int) ([]time.Duration, int, error) {
		var next atomic.Int64
		var mu sync.Mutex
		rtts := make([]time.Duration, 0, total)
		failed := 0
		var firstErr error
		var workers sync.WaitGroup
		for range c.concurrency {
			workers.Add(1)
			go func() {
				defer workers.Done()
				for {
					n := int(next.Add(1)) - 1
					if n >= total || ctx.Err() != nil {
						return
					}
					rtt, err := call(n)
					mu.Lock()
					if err != nil {
						failed++
						if firstErr == nil {
							firstErr = err
						}
					} else {
						rtts = append(rtts, rtt)
					}
					mu.Unlock()
				}
			}()
		}
		workers.Wait()
		return rtts, failed, firstErr
	}

	if c.warmup > 0 {
		fmt.Fprintf(progress, "command-rtt: %d warm-up commands\n", c.warmup)
		if _, failed, err := run(c.warmup); failed > 0 {
			fmt.Fprintf(progress, "command-rtt: %d warm-up commands failed, first: %v\n", failed, err)
		}
	}
	if c.cpuProfile != "" {
		f, err := os.Create(c.cpuProfile)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return nil, err
		}
		defer pprof.StopCPUProfile()
	}
	fmt.Fprintf(progress, "command-rtt: measuring %d commands, %d at a time\n", c.commands, c.concurrency)
	start := time.Now()
	rtts, failed, firstErr := run(c.commands)
	elapsed := time.Since(start)
	if firstErr != nil {
		fmt.Fprintf(progress, "command-rtt: %d failed, first: %v\n", failed, firstErr)
	}
	sort.Slice(rtts, func(i, j int) bool { return rtts[i] < rtts[j] })
	pct := func(p float64) float64 {
		if len(rtts) == 0 {
			return 0
		}
		i := min(int(p*float64(len(rtts))), len(rtts)-1)
		return float64(rtts[i].Microseconds()) / 1000
	}
	res["commands"] = c.commands
	res["failed"] = failed
	res["p50_ms"] = pct(0.50)
	res["p90_ms"] = pct(0.90)
	res["p99_ms"] = pct(0.99)
	res["max_ms"] = pct(1)
	res["commands_per_s"] = float64(len(rtts)) / elapsed.Seconds()
	res["gateway_commands"] = gw.CommandStats()

	// The floor beside it: the same number of MQTT round trips through the
	// same broker (a paho client publishes QoS 1, a second answers QoS 1),
	// as many at a time: the device-side hops alone, under the same load.
	fmt.Fprintf(progress, "command-rtt: MQTT ping-pong floor, %d round trips\n", c.commands)
	floor, ffailed, err := mqttPingPong(ctx, gw.MQTTAddr(), c.commands, c.concurrency)
	if err != nil {
		return nil, fmt.Errorf("mqtt floor: %w", err)
	}
	sort.Slice(floor, func(i, j int) bool { return floor[i] < floor[j] })
	fpct := func(p float64) float64 {
		if len(floor) == 0 {
			return 0
		}
		return float64(floor[min(int(p*float64(len(floor))), len(floor)-1)].Microseconds()) / 1000
	}
	res["mqtt_rtt_p50_ms"] = fpct(0.50)
	res["mqtt_rtt_p99_ms"] = fpct(0.99)
	res["mqtt_failed"] = ffailed
	res["loadavg_after"] = loadAverage()
	fmt.Fprintf(progress, "command-rtt: p50 %.1f ms, p99 %.1f ms, %d failed, %.0f commands/s\n",
		res["p50_ms"], res["p99_ms"], failed, res["commands_per_s"])
	return res, nil
}

// mqttPingPong measures n MQTT round trips through the broker at addr,
// conc at a time: QoS 1 publish to bench/ping/<i>, answered by a second
// client with a QoS 1 publish to bench/pong/<i>.
func mqttPingPong(ctx context.Context, addr string, n, conc int) ([]time.Duration, int, error) {
	connect := func(id string) (mqtt.Client, error) {
		c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).
			SetCleanSession(true).SetAutoReconnect(false).SetOrderMatters(false))
		if tok := c.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
			return nil, fmt.Errorf("connect %s: %v", id, tok.Error())
		}
		return c, nil
	}
	echo, err := connect("bench-echo")
	if err != nil {
		return nil, 0, err
	}
	defer echo.Disconnect(0)
	caller, err := connect("bench-caller")
	if err != nil {
		return nil, 0, err
	}
	defer caller.Disconnect(0)
	var waiting sync.Map // suffix → chan struct{}
	sub := func(c mqtt.Client, filter string, h mqtt.MessageHandler) error {
		tok := c.Subscribe(filter, 1, h)
		if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
			return fmt.Errorf("subscribe %s: %v", filter, tok.Error())
		}
		return nil
	}
	if err := sub(echo, "bench/ping/#", func(c mqtt.Client, m mqtt.Message) {
		c.Publish("bench/pong/"+strings.TrimPrefix(m.Topic(), "bench/ping/"), 1, false, m.Payload())
	}); err != nil {
		return nil, 0, err
	}
	if err := sub(caller, "bench/pong/#", func(_ mqtt.Client, m mqtt.Message) {
		if ch, ok := waiting.LoadAndDelete(strings.TrimPrefix(m.Topic(), "bench/pong/")); ok {
			ch.(chan struct{}) <- struct{}{}
		}
	}); err != nil {
		return nil, 0, err
	}
	var next atomic.Int64
	var mu sync.Mutex
	var rtts []time.Duration
	failed := 0
	var wg sync.WaitGroup
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				key := strconv.Itoa(i)
				ch := make(chan struct{}, 1)
				waiting.Store(key, ch)
				start := time.Now()
				caller.Publish("bench/ping/"+key, 1, false, `{"n":`+key+`}`)
				t := time.NewTimer(30 * time.Second)
				select {
				case <-ch:
					mu.Lock()
					rtts = append(rtts, time.Since(start))
					mu.Unlock()
				case <-t.C:
					waiting.Delete(key)
					mu.Lock()
					failed++
					mu.Unlock()
				}
				t.Stop()
			}
		}()
	}
	wg.Wait()
	return rtts, failed, nil
}
