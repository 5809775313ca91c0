// Command sensor is a minimal Tributary device. It
//
//   - publishes a temperature reading as a CloudEvent every -interval, through
//     the SDK's durable offline buffer, so readings taken while the gateway
//     is away are sent when it returns, even across a reboot;
//   - reports its state (firmware version, boot time, reboots, uptime) as
//     reported properties, which the cloud keeps per device;
//   - answers the "reboot" command: it replies 202, flushes and closes its
//     buffer, opens it again and reports its new boot. Any other command is
//     answered 404 by the SDK.
//
// Run it against a gateway (the quickstart's "Running edge and cloud as
// separate processes" starts one on 127.0.0.1:1883):
//
//	go run ./device-sdk/examples/sensor -broker tcp://127.0.0.1:1883 -device sensor-1
//
// then read its state and reboot it through the cloud's API:
//
//	TOKEN=$(cat data/cloud/api-token)
//	curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8080/v1/gateways/gw-1/devices/sensor-1/state
//	curl -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
//	    -d '{"reason":"curl"}' 'http://127.0.0.1:8080/v1/gateways/gw-1/devices/sensor-1/commands/reboot?timeout=10s'
//
// The command call answers once the device replied:
// {"status":"replied","reply_status":202,"payload":{"rebooting":true,...},...}.
// With a TLS gateway, pass -broker ssl://host:8883 and -cacert (and -cert
// and -key for a client certificate); -user and -password send credentials.
//
// Stop it with Ctrl-C: it flushes what is buffered (for up to 5 s) and exits;
// anything still unsent stays in -buffer for the next start.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
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
	broker := fs.String("broker", "tcp://127.0.0.1:1883", "the gateway's MQTT URL (tcp://, ssl://, ws://)")
	device := fs.String("device", "sensor-1", "this device's id (MQTT client id)")
	user := fs.String("user", "", "MQTT username (empty: none)")
	pass := fs.String("password", "", "MQTT password")
	caFile := fs.String("cacert", "", "PEM file of the CA that signed the gateway's TLS certificate (empty: system roots)")
	certFile := fs.String("cert", "", "PEM client certificate for the TLS listener (with -key)")
	keyFile := fs.String("key", "", "PEM private key of -cert")
	topic := fs.String("topic", "", "telemetry topic (empty: telemetry/<device>)")
	bufDir := fs.String("buffer", "", "offline buffer directory (empty: sensor-buffer/<device> under the user cache dir)")
	interval := fs.Duration("interval", time.Second, "time between readings")
	stateInterval := fs.Duration("state-interval", 30*time.Second, "time between uptime reports")
	firmware := fs.String("firmware", "1.0.0", "firmware version reported in the device state")
	count := fs.Int("count", 0, "stop after this many readings (0: run until interrupted)")
	verbose := fs.Bool("v", false, "log every reading once it is buffered (durable), with its event id")
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
	tlsConf, err := tlsConfig(*caFile, *certFile, *keyFile)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))

	// The reboot command only asks; the loop below does the reboot, after
	// the handler returned (Close waits for running handlers).
	reboot := make(chan string, 1)
	handlers := map[string]devicesdk.CommandHandler{
		"reboot": func(_ context.Context, cmd devicesdk.Command) (int, any, error) {
			select {
			case reboot <- cmd.RequestID:
				return 202, map[string]any{"rebooting": true, "firmware": *firmware}, nil
			default:
				return 409, map[string]string{"error": "already rebooting"}, nil
			}
		},
	}
	cfg := devicesdk.DeviceConfig{
		Config: devicesdk.Config{
			Broker: *broker, DeviceID: *device, Username: *user, Password: *pass, TLS: tlsConf,
			ReconnectInterval: time.Second,
			Commands:          handlers, // installed before connecting: commands queued while away find them
		},
		BufferDir: *bufDir,
		Overflow:  devicesdk.DropOldest, // a sensor prefers fresh readings
		Logger:    log,
	}
	reboots := 0
	boot := func() (*devicesdk.Device, time.Time, error) {
		d, err := devicesdk.Open(cfg)
		if err != nil {
			return nil, time.Time{}, err
		}
		now := time.Now()
		state := map[string]any{"firmware": *firmware, "booted_at": now.UTC().Format(time.RFC3339), "reboots": reboots, "uptime_s": 0}
		if err := d.ReportState(ctx, state); err != nil && !errors.Is(err, context.Canceled) {
			log.Warn("state not buffered", "err", err)
		}
		return d, now, nil
	}
	d, bootedAt, err := boot()
	if err != nil {
		return err
	}
	log.Info("sensor started", "broker", *broker, "device", *device, "topic", *topic, "buffer", *bufDir)

	n := 0
	run := time.Now().UnixNano() // event ids are unique across runs
	publish := func() {
		ev := cloudevents.NewEvent()
		ev.SetID(fmt.Sprintf("%s-%d-%d", *device, run, n))
		ev.SetType("io.tributary.example.temperature")
		ev.SetTime(time.Now())
		reading := 20 + 5*math.Sin(float64(n)/10)
		if err := ev.SetData(cloudevents.ApplicationJSON, map[string]any{"celsius": reading, "n": n}); err != nil {
			log.Warn("reading not encoded", "n", n, "err", err)
		} else if err := d.PublishEvent(ctx, *topic, ev); err != nil {
			if !errors.Is(err, context.Canceled) {
				log.Warn("reading not buffered", "n", n, "err", err)
			}
		} else if *verbose {
			log.Info("reading buffered", "n", n, "id", ev.ID())
		}
		n++
	}
	tick := time.NewTicker(*interval)
	defer tick.Stop()
	stateTick := time.NewTicker(*stateInterval)
	defer stateTick.Stop()
	publish()
	for *count == 0 || n < *count {
		select {
		case <-ctx.Done():
			return closeDevice(d, log)
		case <-tick.C:
			publish()
		case <-stateTick.C:
			up := int(time.Since(bootedAt).Seconds())
			if err := d.ReportState(ctx, map[string]any{"uptime_s": up}); err != nil && !errors.Is(err, context.Canceled) {
				log.Warn("state not buffered", "err", err)
			}
		case id := <-reboot:
			log.Info("rebooting", "request_id", id)
			if err := closeDevice(d, log); err != nil {
				return err
			}
			reboots++
			if d, bootedAt, err = boot(); err != nil {
				return err
			}
		}
	}
	return closeDevice(d, log)
}

// tlsConfig builds the TLS settings from the flags; nil when none is set.
func tlsConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	if caFile == "" && certFile == "" && keyFile == "" {
		return nil, nil
	}
	conf := &tls.Config{}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, err
		}
		conf.RootCAs = x509.NewCertPool()
		if !conf.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("-cacert %s: no PEM certificate", caFile)
		}
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("-cert and -key go together")
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, err
		}
		conf.Certificates = []tls.Certificate{cert}
	}
	return conf, nil
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
