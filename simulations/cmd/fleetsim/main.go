// Command fleetsim is Tributary's quickstart and fleet simulator: it starts a
// cloud, gateways, simulated MQTT devices and a CloudEvents sink in one
// process, publishes for a while, and then accounts for every message —
// published, acknowledged by a gateway, in the central log, delivered to the
// sink — and checks that nothing acknowledged was lost or duplicated.
//
// The last line of its output is `SUMMARY {json}`. It exits 1 if a contract
// was broken (an acknowledged message lost, a duplicate in the log, per-device
// order broken), 2 on bad usage.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/tributary-io/tributary/simulations/fleet"
)

func main() {
	os.Exit(run())
}

func run() int {
	fs := flag.NewFlagSet("fleetsim", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `fleetsim: run a Tributary fabric in one process and check every message.

Usage:
  go run ./simulations/cmd/fleetsim [flags]

Starts a cloud, gateways, devices publishing QoS 1 MQTT and a local
CloudEvents sink; shows progress; ends with a SUMMARY line.

Flags:
`)
		fs.PrintDefaults()
	}
	var o fleet.Options
	fs.DurationVar(&o.Duration, "duration", 30*time.Second, "how long devices publish")
	fs.IntVar(&o.Gateways, "gateways", 2, "number of gateways")
	fs.IntVar(&o.Devices, "devices", 50, "number of devices (spread over the gateways)")
	fs.Float64Var(&o.Rate, "rate", 10, "messages per second per device")
	fs.IntVar(&o.PayloadBytes, "payload", 200, "payload bytes per message")
	fs.DurationVar(&o.DrainTimeout, "drain-timeout", 60*time.Second, "how long to wait for delivery after publishing stops")
	fs.StringVar(&o.DataDir, "data-dir", "", "keep every part's data in this directory (default: a temporary one, removed)")
	verbose := fs.Bool("v", false, "show the parts' logs")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this `file`")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if o.Duration <= 0 || o.Gateways < 1 || o.Devices < 1 || o.Rate <= 0 || o.PayloadBytes < 64 {
		fmt.Fprintln(os.Stderr, "fleetsim: -duration, -gateways, -devices and -rate must be positive and -payload at least 64")
		return 2
	}
	o.Progress = os.Stderr
	level := slog.LevelError
	if *verbose {
		level = slog.LevelInfo
	}
	o.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintf(os.Stderr, "fleetsim: %v\n", err)
			return 2
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintf(os.Stderr, "fleetsim: %v\n", err)
			return 2
		}
		defer pprof.StopCPUProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fmt.Fprintf(os.Stderr, "fleetsim: cloud + %d gateways + %d devices at %.4g msg/s each for %v\n", o.Gateways, o.Devices, o.Rate, o.Duration)
	res, err := fleet.Run(ctx, o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fleetsim: %v\n", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "\npublished %d, acked %d, in log %d, delivered %d, lost %d, duplicates %d, redeliveries %d, out of order %d\n",
		res.Published, res.Acked, res.InLog, res.Delivered, res.Lost, res.Duplicates, res.Redeliveries, res.OutOfOrder)
	fmt.Fprintf(os.Stderr, "end-to-end latency p50 %.1f ms, p99 %.1f ms; drained in %.1f s\n", res.P50ms, res.P99ms, res.DrainS)
	b, _ := json.Marshal(res)
	fmt.Printf("SUMMARY %s\n", b)
	if !res.OK() {
		fmt.Fprintln(os.Stderr, "fleetsim: FAILED: a contract was broken (see SUMMARY)")
		return 1
	}
	return 0
}
