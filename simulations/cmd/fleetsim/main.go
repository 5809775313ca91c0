// Command fleetsim is Tributary's quickstart and fleet simulator: it starts a
// cloud, gateways, simulated MQTT devices and CloudEvents sinks, publishes
// for a while, and then accounts for every message — published, acknowledged
// by a gateway, in the central log, delivered to each subscription (or
// dropped by a configured policy, with its reason) — and checks that nothing
// acknowledged was lost or duplicated and that per-device order held.
//
// Without -scenario it runs the quickstart in one process, shaped by the
// -gateways, -devices, -rate and -payload flags. With -scenario it runs a
// shipped scenario (see -list) or a YAML file, with its fault timeline, and
// writes a self-contained HTML report and a JSON summary.
//
// The last line of its output is `SUMMARY {json}`. It exits 1 if a contract
// was broken (an acknowledged message lost, a duplicate in the log,
// per-device order broken) or the run could not be carried out, 2 on bad
// usage.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/tributary-io/tributary/simulations/fleet"
	"github.com/tributary-io/tributary/simulations/scenarios"
)

func main() {
	os.Exit(run())
}

func run() int {
	fs := flag.NewFlagSet("fleetsim", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `fleetsim: run a Tributary fabric and check every message.

Usage:
  go run ./simulations/cmd/fleetsim [flags]                  the quickstart
  go run ./simulations/cmd/fleetsim -scenario <name|file>    a fleet scenario
  go run ./simulations/cmd/fleetsim -list                    the shipped scenarios

The quickstart starts a cloud, gateways, devices publishing QoS 1 MQTT and a
local CloudEvents sink in one process; shows progress; ends with a SUMMARY
line. A scenario adds a fault timeline and writes an HTML report and a JSON
summary (-report, -json).

Shipped scenarios: %s

Flags:
`, strings.Join(scenarios.Names(), ", "))
		fs.PrintDefaults()
	}
	var o fleet.Options
	fs.DurationVar(&o.Duration, "duration", 30*time.Second, "how long devices publish (with -scenario: overrides the scenario's duration)")
	fs.IntVar(&o.Gateways, "gateways", 2, "number of gateways (quickstart)")
	fs.IntVar(&o.Devices, "devices", 50, "number of devices, spread over the gateways (quickstart)")
	fs.Float64Var(&o.Rate, "rate", 10, "messages per second per device (quickstart)")
	fs.IntVar(&o.PayloadBytes, "payload", 200, "payload bytes per message (quickstart)")
	fs.DurationVar(&o.DrainTimeout, "drain-timeout", 60*time.Second, "how long to wait for delivery after publishing stops (with -scenario: overrides the scenario's)")
	fs.StringVar(&o.DataDir, "data-dir", "", "keep every part's data in this directory (default: a temporary one, removed)")
	scenario := fs.String("scenario", "", "run this shipped `scenario` or YAML file")
	list := fs.Bool("list", false, "list the shipped scenarios and exit")
	processes := fs.Bool("processes", false, "run edge and cloud as child processes (kill faults are SIGKILL), whatever the scenario says")
	binDir := fs.String("bin-dir", "", "`directory` holding prebuilt tributary-edge and tributary-cloud for child processes (default: build them with the go command, from within the repository)")
	reportPath := fs.String("report", "", "write the HTML report to this `file` (default with -scenario: fleetsim-<scenario>.html)")
	jsonPath := fs.String("json", "", "write the JSON summary to this `file` (default with -scenario: fleetsim-<scenario>.json)")
	verbose := fs.Bool("v", false, "show the parts' logs")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this `file`")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "fleetsim: unexpected argument %q (see -h)\n", fs.Arg(0))
		return 2
	}
	if *list {
		for _, n := range scenarios.Names() {
			s, err := scenarios.Load(n)
			if err != nil {
				fmt.Fprintf(os.Stderr, "fleetsim: %v\n", err)
				return 1
			}
			fmt.Printf("%-18s %s\n", n, s.Description)
		}
		return 0
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	var sc scenarios.Scenario
	quickstart := *scenario == ""
	if quickstart {
		if o.Duration <= 0 || o.Gateways < 1 || o.Devices < 1 || o.Rate <= 0 || o.PayloadBytes < 64 {
			fmt.Fprintln(os.Stderr, "fleetsim: -duration, -gateways, -devices and -rate must be positive and -payload at least 64")
			return 2
		}
		if *processes {
			fmt.Fprintln(os.Stderr, "fleetsim: -processes needs -scenario (the quickstart runs in one process)")
			return 2
		}
	} else {
		for _, f := range []string{"gateways", "devices", "rate", "payload"} {
			if set[f] {
				fmt.Fprintf(os.Stderr, "fleetsim: -%s shapes the quickstart; with -scenario, edit the scenario file instead\n", f)
				return 2
			}
		}
		var err error
		if sc, err = scenarios.Load(*scenario); err != nil {
			fmt.Fprintf(os.Stderr, "fleetsim: %v\n", err)
			return 2
		}
		if set["duration"] {
			sc.Duration = scenarios.Duration(o.Duration)
		}
		if set["drain-timeout"] {
			sc.DrainTimeout = scenarios.Duration(o.DrainTimeout)
		}
		if err := sc.Validate(); err != nil {
			fmt.Fprintf(os.Stderr, "fleetsim: scenario %s: %v\n", *scenario, err)
			return 2
		}
		if *reportPath == "" {
			*reportPath = "fleetsim-" + sc.Name + ".html"
		}
		if *jsonPath == "" {
			*jsonPath = "fleetsim-" + sc.Name + ".json"
		}
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

	var rep *fleet.Report
	var err error
	if quickstart {
		fmt.Fprintf(os.Stderr, "fleetsim: cloud + %d gateways + %d devices at %.4g msg/s each for %v\n", o.Gateways, o.Devices, o.Rate, o.Duration)
		rep, err = fleet.RunQuickstart(ctx, o)
	} else {
		fmt.Fprintf(os.Stderr, "fleetsim: scenario %s: %s\n", sc.Name, sc.Description)
		ro := fleet.RunOptions{Processes: *processes, DataDir: o.DataDir, Progress: os.Stderr, Logger: o.Logger}
		if *binDir != "" {
			ro.Binaries.Edge = filepath.Join(*binDir, "tributary-edge")
			ro.Binaries.Cloud = filepath.Join(*binDir, "tributary-cloud")
		}
		rep, err = fleet.RunScenario(ctx, sc, ro)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "fleetsim: %v\n", err)
		return 1
	}
	res := rep.Result
	fmt.Fprintf(os.Stderr, "\npublished %d, acked %d, in log %d, delivered %d, lost %d, duplicates %d, redeliveries %d, out of order %d\n",
		res.Published, res.Acked, res.InLog, res.Delivered, res.Lost, res.Duplicates, res.Redeliveries, res.OutOfOrder)
	if !quickstart {
		fmt.Fprintf(os.Stderr, "dropped by policy %d %v, device resends %d, publishes refused by gateways %d, never acknowledged %d\n",
			res.Dropped, res.Drops, res.DeviceResends, res.RefusedPublishes, res.Failed)
	}
	drained := fmt.Sprintf("drained in %.1f s", res.DrainS)
	if !res.Drained {
		drained = fmt.Sprintf("did NOT drain (gave up after %.1f s)", res.DrainS)
	}
	fmt.Fprintf(os.Stderr, "end-to-end latency p50 %.1f ms, p99 %.1f ms; %s\n", res.P50ms, res.P99ms, drained)
	for _, w := range []struct {
		path  string
		write func(*bytes.Buffer) error
	}{
		{*reportPath, func(b *bytes.Buffer) error { return rep.WriteHTML(b) }},
		{*jsonPath, func(b *bytes.Buffer) error { return rep.WriteJSON(b) }},
	} {
		if w.path == "" {
			continue
		}
		var b bytes.Buffer
		if err := w.write(&b); err == nil {
			err = os.WriteFile(w.path, b.Bytes(), 0o644)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "fleetsim: %s: %v\n", w.path, err)
			return 1
		}
		if abs, err := filepath.Abs(w.path); err == nil {
			fmt.Fprintf(os.Stderr, "wrote %s\n", abs)
		}
	}
	b, _ := json.Marshal(res)
	fmt.Printf("SUMMARY %s\n", b)
	if !res.OK() {
		fmt.Fprintln(os.Stderr, "fleetsim: FAILED: a contract was broken (see SUMMARY)")
		return 1
	}
	return 0
}
