// Command sensor is a minimal Tributary device: it publishes a temperature
// reading as a CloudEvent every interval to a gateway, through the SDK's
// durable offline buffer, so readings taken while the gateway is away are
// sent when it returns, even across a reboot.
//
//	go run ./device-sdk/examples/sensor -broker tcp://127.0.0.1:1883 -device sensor-1
//
// Stop it with Ctrl-C: it flushes what is buffered (for up to 5 s) and exits;
// anything still unsent stays in -buffer for the next start.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	devicesdk "github.com/tributary-io/tributary/device-sdk"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "sensor:", err)
		os.Exit(1)
	}
}

// run is main without the process: it parses args, publishes until ctx ends
// (or -count readings were buffered), then flushes and closes.
func run(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("sensor", flag.ContinueOnError)
	fs.SetOutput(stderr)
	broker := fs.String("broker", "tcp://127.0.0.1:1883", "the gateway's MQTT URL")
	device := fs.String("device", "sensor-1", "this device's id (MQTT client id)")
	user := fs.String("user", "", "MQTT username (empty: none)")
	pass := fs.String("password", "", "MQTT password")
	topic := fs.String("topic", "", "telemetry topic (empty: telemetry/<device>)")
	bufDir := fs.String("buffer", "", "offline buffer directory (empty: sensor-buffer/<device> under the user cache dir)")
	interval := fs.Duration("interval", time.Second, "time between readings")
	count := fs.Int("count", 0, "stop after this many readings (0: run until interrupted)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *topic == "" {
		*topic = "telemetry/" + *device
	}
	if *bufDir == "" {
		cache, err := os.UserCacheDir()
		if err != nil {
			return err
		}
		*bufDir = filepath.Join(cache, "sensor-buffer", *device)
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	d, err := devicesdk.Open(devicesdk.DeviceConfig{
		Config: devicesdk.Config{
			Broker: *broker, DeviceID: *device, Username: *user, Password: *pass,
			ReconnectInterval: time.Second,
		},
		BufferDir: *bufDir,
		Overflow:  devicesdk.DropOldest, // a sensor prefers fresh readings
		Logger:    log,
	})
	if err != nil {
		return err
	}
	log.Info("sensor started", "broker", *broker, "device", *device, "topic", *topic, "buffer", *bufDir)

	tick := time.NewTicker(*interval)
	defer tick.Stop()
	for n := 0; *count == 0 || n < *count; n++ {
		ev := cloudevents.NewEvent()
		ev.SetType("io.tributary.example.temperature")
		ev.SetTime(time.Now())
		reading := 20 + 5*math.Sin(float64(n)/10)
		if err := ev.SetData(cloudevents.ApplicationJSON, map[string]any{"celsius": reading, "n": n}); err != nil {
			return err
		}
		if err := d.PublishEvent(ctx, *topic, ev); err != nil && !errors.Is(err, context.Canceled) {
			log.Warn("reading not buffered", "n", n, "err", err)
		}
		if *count != 0 && n+1 == *count {
			break
		}
		select {
		case <-ctx.Done():
			return closeDevice(d, log)
		case <-tick.C:
		}
	}
	return closeDevice(d, log)
}

// closeDevice flushes for up to 5 s; whatever is left stays buffered on disk.
func closeDevice(d *devicesdk.Device, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := d.Close(ctx)
	s := d.Stats()
	log.Info("sensor stopped", "acked", s.Acked, "still_buffered", s.Buffered, "dropped", s.Dropped)
	if errors.Is(err, context.DeadlineExceeded) {
		return nil // the rest is sent on the next start
	}
	return err
}
