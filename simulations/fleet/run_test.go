package fleet

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tributary-io/tributary/simulations/procs"
	"github.com/tributary-io/tributary/simulations/scenarios"
)

// These tests run short versions of the shipped scenarios on the real
// fabric: a cloud, gateways with SQLite outboxes, QUIC through fault
// relays, paho devices and HTTP sinks, all on loopback. They assert what
// each scenario rehearses, not only that nothing was lost: that the fault
// really happened (a backlog built up, publishes were refused, events were
// dead-lettered), so a fault that silently did nothing fails the test.

// shorten loads a shipped scenario and scales it down for a test.
func shorten(t *testing.T, name string, edit func(*scenarios.Scenario)) scenarios.Scenario {
	t.Helper()
	s, err := scenarios.Load(name)
	if err != nil {
		t.Fatal(err)
	}
	s.DrainTimeout = scenarios.Duration(60 * time.Second)
	edit(&s)
	if err := s.Validate(); err != nil {
		t.Fatalf("shortened %s: %v", name, err)
	}
	return s
}

func runScenario(t *testing.T, s scenarios.Scenario, o RunOptions) *Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	o.DataDir = t.TempDir()
	rep, err := RunScenario(ctx, s, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %+v", s.Name, rep.Result)
	for _, f := range rep.Faults {
		t.Logf("fault %s: %.1f–%.1f s %s %s", f.Label(), f.StartS, f.EndS, f.Detail, f.Error)
	}
	var html bytes.Buffer
	if err := rep.WriteHTML(&html); err != nil {
		t.Fatal(err)
	}
	return rep
}

// verdict requires the contracts kept and every message settled.
func verdict(t *testing.T, rep *Report) {
	t.Helper()
	r := rep.Result
	if !r.OK() || r.Lost != 0 || r.Duplicates != 0 || r.Acked == 0 || r.InLog != r.Acked || !r.Settled || !r.Drained {
		t.Fatalf("contract broken or not settled: %+v", r)
	}
	for _, f := range rep.Faults {
		if f.StartS < 0 || f.EndS < 0 || f.Error != "" {
			t.Fatalf("fault not applied as planned: %+v", f)
		}
	}
}

func gatewayReport(t *testing.T, rep *Report, id string) GatewayReport {
	t.Helper()
	for _, g := range rep.Gateways {
		if g.Gateway == id {
			return g
		}
	}
	t.Fatalf("no gateway %s in the report", id)
	return GatewayReport{}
}

// TestQuickstartShortRun runs the quickstart's whole fabric in process for a
// few seconds and requires every acknowledged message delivered once into
// the log.
func TestQuickstartShortRun(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	res, err := Run(ctx, Options{Gateways: 2, Devices: 10, Rate: 20, Duration: 3 * time.Second, DataDir: t.TempDir(), Progress: &progress, ProgressEvery: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	if !res.OK() || res.Acked == 0 || res.Delivered != res.Acked || res.InLog != res.Acked || res.Devices != 10 {
		t.Fatalf("quickstart broke a contract: %+v", res.Summary)
	}
	// The quickstart's progress lines keep their documented shape.
	shape := regexp.MustCompile(`^(publish |drain   |done    ) t= *[0-9.]+s published=\d+ acked=\d+ delivered=\d+ failed=\d+ edge_backlog=\d+ log=\d+$`)
	lines := strings.Split(strings.TrimSpace(progress.String()), "\n")
	for _, line := range lines {
		if !shape.MatchString(line) {
			t.Fatalf("progress line %q", line)
		}
	}
	if len(lines) < 2 || !strings.HasPrefix(lines[len(lines)-1], "done ") {
		t.Fatalf("progress:\n%s", progress.String())
	}
}

// TestOutageAndDrain cuts a gateway's uplink: its backlog must build up
// while the other's stays small, then drain, with every message delivered
// once and in order.
func TestOutageAndDrain(t *testing.T) {
	t.Parallel()
	s := shorten(t, "outage-and-drain", func(s *scenarios.Scenario) {
		s.Duration = scenarios.Duration(7 * time.Second)
		s.Gateways.Count, s.Gateways.DevicesPerGateway = 2, 4
		s.Streams[0].Rate = 20
		s.Faults[0].At, s.Faults[0].For = scenarios.Duration(time.Second), scenarios.Duration(3*time.Second)
	})
	rep := runScenario(t, s, RunOptions{})
	verdict(t, rep)
	cut, clean := gatewayReport(t, rep, "gw-1"), gatewayReport(t, rep, "gw-2")
	if cut.Uplink.Blackholed == 0 || clean.Uplink.Blackholed != 0 || clean.Uplink.Dropped != 0 {
		t.Fatalf("uplinks: cut %+v, clean %+v", cut.Uplink, clean.Uplink)
	}
	// 4 devices × 20 msg/s × 3 s = 240 messages wait on gw-1 (fewer reach
	// its outbox on a starved machine: they wait in the devices).
	if cut.MaxBacklog < 20 || cut.MaxBacklog <= clean.MaxBacklog {
		t.Fatalf("backlog of the cut gateway %d, of the clean one %d: the outage did not hold messages back", cut.MaxBacklog, clean.MaxBacklog)
	}
	if rep.DrainFromS < 3.9 || rep.DrainedAtS < rep.DrainFromS || rep.Result.DrainS < 0 {
		t.Fatalf("drain measured from %.1f s to %.1f s (%v s)", rep.DrainFromS, rep.DrainedAtS, rep.Result.DrainS)
	}
}

// TestSinkDown fails then hangs a sink: the patient subscription delivers
// everything, the strict one dead-letters (counted as dropped, with its
// reason, not lost), the healthy sink's subscription gets everything.
func TestSinkDown(t *testing.T) {
	t.Parallel()
	s := shorten(t, "sink-down", func(s *scenarios.Scenario) {
		s.Duration = scenarios.Duration(7 * time.Second)
		s.Gateways.Count, s.Gateways.DevicesPerGateway = 2, 3
		s.Streams[0].Rate = 10
		// The sink fails long after publishing stops, so that events reach
		// it while it fails however slowly this machine moves them (the
		// strict subscription gives up within 10 s), and hangs for part of
		// that time (a hang takes precedence over the failure).
		s.Faults[0].At, s.Faults[0].For = scenarios.Duration(time.Second), scenarios.Duration(20*time.Second)
		s.Faults[1].At, s.Faults[1].For = scenarios.Duration(4*time.Second), scenarios.Duration(3*time.Second)
	})
	rep := runScenario(t, s, RunOptions{})
	verdict(t, rep)
	r := rep.Result
	if r.Dropped == 0 || r.Drops["dead-letter"] == 0 || len(r.DeadLetterReasons) == 0 {
		t.Fatalf("the strict subscription dead-lettered nothing: %+v", r)
	}
	subs := map[string]int{}
	for _, sub := range r.Subscriptions {
		subs[sub.ID+".delivered"] = sub.Delivered
		subs[sub.ID+".expected"] = sub.Expected
		subs[sub.ID+".dl"] = sub.DeadLettered
	}
	if subs["patient.delivered"] != r.Acked || subs["audit.delivered"] != r.Acked || subs["patient.dl"] != 0 ||
		subs["strict.delivered"]+subs["strict.dl"] != r.Acked || subs["strict.dl"] == 0 {
		t.Fatalf("per subscription: %v (acked %d)", subs, r.Acked)
	}
	for _, sk := range rep.Sinks {
		if sk.Name == "consumer" && (sk.Rejected == 0 || sk.Held == 0) {
			t.Fatalf("the consumer sink neither failed nor hung: %+v", sk)
		}
	}
}

// TestKillInProcess closes a gateway and the cloud abruptly and restarts
// them on the same data and ports, in process, while the other gateway's
// uplink is lossy.
func TestKillInProcess(t *testing.T) {
	t.Parallel()
	s := shorten(t, "outage-and-drain", func(s *scenarios.Scenario) {
		s.Name = "kill-in-process"
		s.Duration = scenarios.Duration(7 * time.Second)
		s.Gateways.Count, s.Gateways.DevicesPerGateway = 2, 3
		s.Streams[0].Rate = 10
		s.Faults = []scenarios.Fault{
			{Kind: scenarios.Kill, Targets: []string{"gw-2"}, At: scenarios.Duration(time.Second), For: scenarios.Duration(time.Second)},
			{Kind: scenarios.Kill, Targets: []string{scenarios.CloudTarget}, At: scenarios.Duration(3 * time.Second), For: scenarios.Duration(time.Second)},
			{Kind: scenarios.Lossy, Targets: []string{"gw-1"}, At: scenarios.Duration(time.Second), For: scenarios.Duration(4 * time.Second),
				Loss: 0.2, Delay: scenarios.Duration(20 * time.Millisecond), Jitter: scenarios.Duration(10 * time.Millisecond), Duplicate: 0.05},
		}
	})
	rep := runScenario(t, s, RunOptions{})
	verdict(t, rep)
	if g := gatewayReport(t, rep, "gw-2"); g.Restarts != 1 {
		t.Fatalf("gw-2 restarted %d times", g.Restarts)
	}
	if g := gatewayReport(t, rep, "gw-1"); g.Uplink.Dropped == 0 || g.Uplink.Duplicated == 0 {
		t.Fatalf("gw-1's lossy uplink lost and duplicated nothing: %+v", g.Uplink)
	}
}

// TestDiskFull fills a gateway's own tmpfs while its link is down: the
// gateway must refuse publishes (and acknowledge nothing it did not store);
// the devices resend once space returns. Mounting needs root.
func TestDiskFull(t *testing.T) {
	t.Parallel()
	probe := filepath.Join(t.TempDir(), "probe")
	if err := mountDisk(probe, 8); err != nil {
		t.Skipf("cannot mount a tmpfs (%v): needs root or CAP_SYS_ADMIN on Linux", err)
	}
	if err := unmountDisk(probe); err != nil {
		t.Fatal(err)
	}
	s := shorten(t, "disk-full", func(s *scenarios.Scenario) {
		s.Duration = scenarios.Duration(10 * time.Second)
		s.Gateways.Count, s.Gateways.DevicesPerGateway, s.Gateways.DiskMB = 2, 3, 16
		// Large messages grow the outbox's WAL fast: it can reuse its file
		// for a while after the disk fills (SQLite restarts a checkpointed
		// WAL from its start), so the fill must outlast that.
		s.Streams[0].Rate, s.Streams[0].PayloadBytes = 20, 8000
		s.Faults[0].At, s.Faults[0].For = scenarios.Duration(time.Second), scenarios.Duration(8*time.Second)
		s.Faults[1].At, s.Faults[1].For = scenarios.Duration(2*time.Second), scenarios.Duration(6*time.Second)
	})
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rep, err := RunScenario(ctx, s, RunOptions{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", rep.Result)
	verdict(t, rep)
	g := gatewayReport(t, rep, "gw-1")
	if g.Refused == 0 || g.DiskFailures == 0 || rep.Result.RefusedPublishes == 0 || !strings.Contains(rep.Faults[1].Detail, "ballast") {
		t.Fatalf("the full disk refused nothing: %+v, fault %+v", g, rep.Faults[1])
	}
	mounts, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mounts), dir) {
		t.Fatalf("a gateway's tmpfs is still mounted under %s", dir)
	}
}

// TestProcessesKillAndLinkDown runs edge and cloud as child processes:
// SIGKILLs a gateway mid-stream and cuts another's uplink.
func TestProcessesKillAndLinkDown(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs tributary-edge and tributary-cloud")
	}
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bins, err := procs.Build(ctx, t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	s := shorten(t, "outage-and-drain", func(s *scenarios.Scenario) {
		s.Name = "processes"
		s.Mode = scenarios.Processes
		s.Duration = scenarios.Duration(7 * time.Second)
		s.Gateways.Count, s.Gateways.DevicesPerGateway = 2, 3
		s.Streams[0].Rate = 10
		s.Faults = []scenarios.Fault{
			{Kind: scenarios.Kill, Targets: []string{"gw-1"}, At: scenarios.Duration(time.Second), For: scenarios.Duration(time.Second)},
			{Kind: scenarios.LinkDown, Targets: []string{"gw-2"}, At: scenarios.Duration(2 * time.Second), For: scenarios.Duration(2 * time.Second)},
		}
	})
	rep := runScenario(t, s, RunOptions{Binaries: bins})
	verdict(t, rep)
	if g := gatewayReport(t, rep, "gw-1"); g.Restarts != 1 || !strings.Contains(rep.Faults[0].Detail, "SIGKILL") {
		t.Fatalf("gw-1: %+v, fault %+v", g, rep.Faults[0])
	}
	if g := gatewayReport(t, rep, "gw-2"); g.Uplink.Blackholed == 0 || g.MaxBacklog == 0 {
		t.Fatalf("gw-2's outage held nothing back: %+v", g)
	}
	if _, err := os.Stat(bins.Edge); err != nil {
		t.Fatal(err)
	}
}
