package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/tributary-io/tributary/edge/outbox"
	"github.com/tributary-io/tributary/simulations/procs"
	"github.com/tributary-io/tributary/sync/pki"
)

// The edge-ingest scenario (issue 3) measures QoS 1 ingest into the edge
// gateway, durable before each PUBACK, against Mosquitto 2.0 (not durable per
// message) in the same run. Both brokers are child processes: our
// tributary-edge binary, its outbox committing with synchronous=FULL (an
// fsync per group commit), and Debian's mosquitto with persistence on (a
// snapshot every autosave interval, never per message). The cloud address is
// an unused UDP port, so the outbox only buffers: this measures ingest, not
// forwarding.
//
// The load generator is this command again, re-executed as a child process
// (-loadgen), so its CPU is accounted apart from the bench's own: paho
// publishers, each keeping -inflight QoS 1 publishes unacknowledged, and one
// paho subscriber on "#" with QoS 1 that records every message it receives.
// Each shape (publisher count) runs against each broker on a fresh process
// and data directory; the order alternates per round. Figures per run:
//
//   - msgs/s: PUBACKs received during the measured window (after -warmup),
//     per second.
//   - delivered: distinct messages the subscriber received, after the
//     publishers stopped and the brokers drained.
//   - lost: acknowledged messages the subscriber never received, plus, for
//     ours, acknowledged messages missing from the outbox (read back after a
//     clean stop). The contract is 0.
//   - rows per commit: from the edge's /metrics
//     (tributary_edge_outbox_committed_rows_total / _commits_total).
//   - CPU µs per acknowledged message and peak RSS of each broker process.
func init() {
	Register(Scenario{
		Name:  "edge-ingest",
		Brief: "durable QoS 1 ingest into tributary-edge (fsync'd outbox) vs Mosquitto 2.0, same run, paho load generator",
		Flags: edgeIngestFlags,
	})
}

type ingestConfig struct {
	duration, warmup, drain time.Duration
	payload, inflight       int
	shapes                  string
	rounds                  int
	mosquitto               string
	mosqInflight            int
	ackMode                 string
	sessions                bool
	maxBatchRows            int
	queueLimit              int
	keep                    bool
	edgeProfile             string
	loadgen                 string // internal: run as the load generator
}

func edgeIngestFlags(fs *flag.FlagSet) func(context.Context, io.Writer) (map[string]any, error) {
	var c ingestConfig
	fs.DurationVar(&c.duration, "duration", 20*time.Second, "measured window per shape and broker")
	fs.DurationVar(&c.warmup, "warmup", 2*time.Second, "publishing before the measured window starts")
	fs.DurationVar(&c.drain, "drain-timeout", 60*time.Second, "how long to wait for deliveries after publishing stops")
	fs.IntVar(&c.payload, "payload", 200, "payload bytes (at least 32)")
	fs.IntVar(&c.inflight, "inflight", 100, "QoS 1 publishes each publisher keeps unacknowledged")
	fs.StringVar(&c.shapes, "publishers", "50,1", "comma-separated publisher counts, one shape each")
	fs.IntVar(&c.rounds, "rounds", 1, "runs of every shape on every broker; figures are medians")
	fs.StringVar(&c.mosquitto, "mosquitto", "", "mosquitto binary (default: from PATH, else /usr/sbin/mosquitto)")
	fs.IntVar(&c.mosqInflight, "mosquitto-max-inflight", 0, "Mosquitto max_inflight_messages (0: the edge's mqtt max_inflight, 65535)")
	fs.StringVar(&c.ackMode, "ack-mode", "async", "edge mqtt.ack_mode (async or sync)")
	fs.BoolVar(&c.sessions, "sessions", true, "give the edge a sessions file (mqtt.sessions.file), as a gateway runs")
	fs.IntVar(&c.maxBatchRows, "max-batch-rows", 0, "edge outbox.max_batch_rows (0: its default)")
	fs.IntVar(&c.queueLimit, "queue-limit", 0, "edge outbox.queue_limit (0: its default)")
	fs.BoolVar(&c.keep, "keep", false, "keep the working directory (data, configs, logs)")
	fs.StringVar(&c.edgeProfile, "edge-profile", "", "write a CPU profile of the edge process over each measured window to this `file`, with -p<publishers> before its extension (the last round's)")
	fs.StringVar(&c.loadgen, "loadgen", "", "internal: run the load generator with this JSON spec")
	return func(ctx context.Context, progress io.Writer) (map[string]any, error) {
		if c.loadgen != "" {
			return ingestLoadgen(ctx, progress, c.loadgen)
		}
		return runEdgeIngest(ctx, progress, c)
	}
}

// ingestEdgeMaxInflight is the edge's mqtt.limits.max_inflight default (broker
// DefaultMaxInflight), which the Mosquitto peer mirrors.
const ingestEdgeMaxInflight = 65535

// ingestFindMosquitto locates the mosquitto binary and its version line.
func ingestFindMosquitto(path string) (bin, version string, err error) {
	bin = path
	if bin == "" {
		if bin, err = exec.LookPath("mosquitto"); err != nil {
			bin = "/usr/sbin/mosquitto"
		}
	}
	if _, err := os.Stat(bin); err != nil {
		return "", "", fmt.Errorf("mosquitto not found (looked in PATH and /usr/sbin): the edge-ingest peer is "+
			"Debian's Mosquitto 2.0; install it with `sudo apt-get install -y mosquitto`, or pass -mosquitto /path/to/mosquitto: %w", err)
	}
	out, _ := exec.Command(bin, "-h").CombinedOutput() // exits non-zero after printing its usage
	version = strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	if !strings.HasPrefix(version, "mosquitto version 2.") {
		return "", "", fmt.Errorf("%s: want Mosquitto 2.x, it says %q (install Debian's: `sudo apt-get install -y mosquitto`)", bin, version)
	}
	return bin, version, nil
}

// ingestRun is one shape against one broker.
type ingestRun struct {
	lg            ingestLoadResult
	msgsPerS      float64
	deliveredPerS float64
	lost          int64 // acked but not delivered, plus (ours) acked but not in the outbox
	notInOutbox   int64
	cpuUsPerMsg   float64
	rssMiB        float64
	commits, rows float64 // ours only
}

func runEdgeIngest(ctx context.Context, progress io.Writer, c ingestConfig) (map[string]any, error) {
	if c.payload < 32 || c.inflight < 1 || c.rounds < 1 || c.duration <= 0 || c.warmup < 0 {
		return nil, errors.New("edge-ingest: -payload must be at least 32, -inflight and -rounds at least 1, -duration positive")
	}
	if c.ackMode != "async" && c.ackMode != "sync" {
		return nil, fmt.Errorf("edge-ingest: -ack-mode %q: want async or sync", c.ackMode)
	}
	var shapes []int
	for f := range strings.SplitSeq(c.shapes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 999 {
			return nil, fmt.Errorf("edge-ingest: -publishers %q: want counts from 1 to 999", c.shapes)
		}
		shapes = append(shapes, n)
	}
	mosqBin, mosqVersion, err := ingestFindMosquitto(c.mosquitto)
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "tributary-bench-edge-ingest-")
	if err != nil {
		return nil, err
	}
	if c.keep {
		fmt.Fprintf(progress, "edge-ingest: keeping %s\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	fmt.Fprintln(progress, "edge-ingest: building tributary-edge")
	bins, err := procs.Build(ctx, dir, false)
	if err != nil {
		return nil, err
	}
	caDir := filepath.Join(dir, "pki")
	if _, err := pki.EnsureDevPKI(caDir, []string{"127.0.0.1"}); err != nil {
		return nil, err
	}

	runs := map[string][]ingestRun{} // "ours/p50" → one per round
	seq := 0
	for rnd := range c.rounds {
		for _, pubs := range shapes {
			order := []string{"ours", "mosquitto"}
			if rnd%2 == 1 {
				order = []string{"mosquitto", "ours"}
			}
			for _, who := range order {
				seq++
				runDir := filepath.Join(dir, fmt.Sprintf("%02d-%s-p%d", seq, who, pubs))
				var r ingestRun
				if who == "ours" {
					r, err = ingestRunOurs(ctx, progress, c, bins, caDir, runDir, self, pubs)
				} else {
					r, err = ingestRunMosquitto(ctx, progress, c, mosqBin, runDir, self, pubs)
				}
				if err != nil {
					return nil, fmt.Errorf("%s, %d publishers: %w", who, pubs, err)
				}
				fmt.Fprintf(progress, "edge-ingest: round %d %-9s %2d publishers: %8.0f msg/s acked, %8.0f delivered/s, delivered %d of %d acked, lost %d, %.1f µs CPU/msg, peak RSS %.0f MiB",
					rnd+1, who, pubs, r.msgsPerS, r.deliveredPerS, r.lg.Delivered, r.lg.Acked, r.lost, r.cpuUsPerMsg, r.rssMiB)
				if who == "ours" {
					fmt.Fprintf(progress, ", %.0f rows/commit", r.rows/max(r.commits, 1))
				}
				fmt.Fprintln(progress)
				key := fmt.Sprintf("%s/p%d", who, pubs)
				runs[key] = append(runs[key], r)
			}
		}
	}

	res := map[string]any{
		"publishers":        shapes,
		"inflight":          c.inflight,
		"payload_bytes":     c.payload,
		"duration_s":        c.duration.Seconds(),
		"rounds":            c.rounds,
		"ack_mode":          c.ackMode,
		"sessions":          c.sessions,
		"fsync":             true, // outbox.synchronous: full, set in the edge's config
		"mosquitto_version": mosqVersion,
	}
	ratio := 0.0
	var lost, mosqLost int64
	var oursRSS, mosqRSS float64
	for i, pubs := range shapes {
		s := fmt.Sprintf("p%d", pubs)
		ours, mosq := runs["ours/"+s], runs["mosquitto/"+s]
		o := ingestMedian(ours, func(r ingestRun) float64 { return r.msgsPerS })
		m := ingestMedian(mosq, func(r ingestRun) float64 { return r.msgsPerS })
		res["ours_msgs_per_s_"+s] = ingestRound(o)
		res["mosquitto_msgs_per_s_"+s] = ingestRound(m)
		res["ours_delivered_per_s_"+s] = ingestRound(ingestMedian(ours, func(r ingestRun) float64 { return r.deliveredPerS }))
		res["mosquitto_delivered_per_s_"+s] = ingestRound(ingestMedian(mosq, func(r ingestRun) float64 { return r.deliveredPerS }))
		r := 0.0
		if m > 0 {
			r = o / m
		}
		res["ratio_"+s] = float64(int64(r*1000+0.5)) / 1000
		if i == 0 || r < ratio {
			ratio = r
		}
		var acked, delivered, mAcked, mDelivered, commits, rows float64
		var sLost, sMosqLost, notIn int64
		for _, x := range ours {
			acked += float64(x.lg.Acked)
			delivered += float64(x.lg.Delivered)
			commits += x.commits
			rows += x.rows
			sLost += x.lost
			notIn += x.notInOutbox
			oursRSS = max(oursRSS, x.rssMiB)
		}
		for _, x := range mosq {
			mAcked += float64(x.lg.Acked)
			mDelivered += float64(x.lg.Delivered)
			sMosqLost += x.lost
			mosqRSS = max(mosqRSS, x.rssMiB)
		}
		res["ours_acked_"+s] = acked
		res["ours_delivered_"+s] = delivered
		res["mosquitto_acked_"+s] = mAcked
		res["mosquitto_delivered_"+s] = mDelivered
		res["ours_lost_"+s] = sLost
		res["ours_not_in_outbox_"+s] = notIn
		res["mosquitto_lost_"+s] = sMosqLost
		res["ours_commits_"+s] = commits
		res["ours_committed_rows_"+s] = rows
		if commits > 0 {
			res["ours_rows_per_commit_"+s] = ingestRound(rows / commits)
		}
		res["ours_cpu_us_per_msg_"+s] = ingestRound(ingestMedian(ours, func(r ingestRun) float64 { return r.cpuUsPerMsg }))
		res["mosquitto_cpu_us_per_msg_"+s] = ingestRound(ingestMedian(mosq, func(r ingestRun) float64 { return r.cpuUsPerMsg }))
		lost += sLost
		mosqLost += sMosqLost
	}
	res["ratio"] = float64(int64(ratio*1000+0.5)) / 1000
	res["lost"] = lost
	res["mosquitto_lost"] = mosqLost
	res["ours_rss_mib"] = ingestRound(oursRSS)
	res["mosquitto_rss_mib"] = ingestRound(mosqRSS)
	return res, nil
}

func ingestMedian(runs []ingestRun, f func(ingestRun) float64) float64 {
	if len(runs) == 0 {
		return 0
	}
	v := make([]float64, len(runs))
	for i, r := range runs {
		v[i] = f(r)
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// ingestRunOurs runs one shape against a fresh tributary-edge process.
func ingestRunOurs(ctx context.Context, progress io.Writer, c ingestConfig, bins procs.Binaries, caDir, runDir, self string, pubs int) (ingestRun, error) {
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return ingestRun{}, err
	}
	cloudPort, err := procs.FreePort("udp") // nothing listens: the outbox buffers
	if err != nil {
		return ingestRun{}, err
	}
	metricsPort, err := procs.FreePort("tcp")
	if err != nil {
		return ingestRun{}, err
	}
	metricsURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort)
	dataDir := filepath.Join(runDir, "data")
	cfg := fmt.Sprintf("mqtt:\n  ack_mode: %s\n", c.ackMode)
	if c.sessions {
		cfg += fmt.Sprintf("  sessions:\n    file: %q\n", filepath.Join(dataDir, "sessions.db"))
	}
	cfg += "outbox:\n  synchronous: full\n"

	if c.maxBatchRows > 0 {
		cfg += fmt.Sprintf("  max_batch_rows: %d\n", c.maxBatchRows)
	}
	if c.queueLimit > 0 {
		cfg += fmt.Sprintf("  queue_limit: %d\n", c.queueLimit)
	}
	cfgPath := filepath.Join(runDir, "edge.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return ingestRun{}, err
	}
	if c.edgeProfile != "" {
		// gateway.PprofEnv: the edge child inherits it and serves
		// /debug/pprof on its metrics listener.
		if err := os.Setenv("TRIBUTARY_EDGE_PPROF", "1"); err != nil {
			return ingestRun{}, err
		}
	}
	edge, err := procs.StartEdge(ctx, bins, procs.EdgeOptions{
		GatewayID: "bench-gw", DataDir: dataDir,
		CloudAddr: fmt.Sprintf("127.0.0.1:%d", cloudPort), DevCADir: caDir,
		ExtraArgs: []string{"-config", cfgPath, "-metrics-listen", fmt.Sprintf("127.0.0.1:%d", metricsPort)},
	})
	if err != nil {
		return ingestRun{}, err
	}
	stopped := false
	defer func() {
		if !stopped {
			edge.Kill()
		}
	}()
	cpu0 := ingestProcCPU(edge.PID())
	profDone := make(chan error, 1)
	if c.edgeProfile != "" {
		ext := filepath.Ext(c.edgeProfile)
		path := fmt.Sprintf("%s-p%d%s", strings.TrimSuffix(c.edgeProfile, ext), pubs, ext)
		go func() {
			select {
			case <-time.After(c.warmup):
				profDone <- fetchProfile(fmt.Sprintf("http://127.0.0.1:%d", metricsPort), path, c.duration)
			case <-ctx.Done():
				profDone <- ctx.Err()
			}
		}()
	} else {
		profDone <- nil
	}
	lg, err := ingestLoadgenChild(ctx, progress, self, runDir, ingestLoadSpec{
		Addr: edge.MQTTAddr, Publishers: pubs, Inflight: c.inflight, Payload: c.payload,
		Warmup: c.warmup, Duration: c.duration, Drain: c.drain,
	})
	if err != nil {
		return ingestRun{}, fmt.Errorf("%w\nedge log:\n%s", err, edge.Tail(20))
	}
	if err := <-profDone; err != nil {
		fmt.Fprintf(progress, "edge-ingest: edge profile: %v\n", err)
	}
	r := ingestRun{lg: lg}
	r.cpuUsPerMsg = (ingestProcCPU(edge.PID()) - cpu0) * 1e6 / float64(max(lg.Acked, 1))
	r.rssMiB = ingestPeakRSS(edge.PID())
	metrics, err := ingestScrape(metricsURL)
	if err != nil {
		return ingestRun{}, err
	}
	r.commits = metrics["tributary_edge_outbox_commits_total"]
	r.rows = metrics["tributary_edge_outbox_committed_rows_total"]
	stopped = true
	if err := edge.Stop(30 * time.Second); err != nil {
		return ingestRun{}, fmt.Errorf("stop edge: %w\n%s", err, edge.Tail(20))
	}
	r.notInOutbox, err = ingestMissing(filepath.Join(dataDir, "outbox.db"), lg)
	if err != nil {
		return ingestRun{}, err
	}
	r.lost = lg.NotDelivered + r.notInOutbox
	r.msgsPerS = float64(lg.AckedInWindow) / lg.WindowS
	r.deliveredPerS = float64(lg.DeliveredInWindow) / lg.WindowS
	return r, nil
}

// ingestRunMosquitto runs one shape against a fresh mosquitto process.
func ingestRunMosquitto(ctx context.Context, progress io.Writer, c ingestConfig, bin, runDir, self string, pubs int) (ingestRun, error) {
	if err := os.MkdirAll(filepath.Join(runDir, "data"), 0o755); err != nil {
		return ingestRun{}, err
	}
	port, err := procs.FreePort("tcp")
	if err != nil {
		return ingestRun{}, err
	}
	inflight := c.mosqInflight
	if inflight == 0 {
		inflight = ingestEdgeMaxInflight
	}
	// Go (so the edge) sets TCP_NODELAY on every socket; Mosquitto only
	// when told to. Mosquitto drops privileges to "mosquitto" when started as root unless
	// told to stay this user: it must write its snapshot in runDir.
	who := "root"
	if u, err := user.Current(); err == nil {
		who = u.Username
	}
	conf := fmt.Sprintf(`listener %d 127.0.0.1
allow_anonymous true
user %s
persistence true
persistence_location %s/
max_inflight_messages %d
max_queued_messages 10000000
max_queued_bytes 0
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
`, port, who, filepath.Join(runDir, "data"), inflight)
	confPath := filepath.Join(runDir, "mosquitto.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return ingestRun{}, err
	}
	p, err := procs.Start("mosquitto", bin, filepath.Join(runDir, "mosquitto.log"), "-c", confPath)
	if err != nil {
		return ingestRun{}, err
	}
	defer p.Kill()
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			break
		}
		if exited, werr := p.Exited(); exited {
			return ingestRun{}, fmt.Errorf("mosquitto exited: %v\n%s", werr, p.Tail(20))
		}
		if time.Now().After(deadline) {
			return ingestRun{}, fmt.Errorf("mosquitto did not listen on %s\n%s", addr, p.Tail(20))
		}
		select {
		case <-ctx.Done():
			return ingestRun{}, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	cpu0 := ingestProcCPU(p.PID())
	lg, err := ingestLoadgenChild(ctx, progress, self, runDir, ingestLoadSpec{
		Addr: addr, Publishers: pubs, Inflight: c.inflight, Payload: c.payload,
		Warmup: c.warmup, Duration: c.duration, Drain: c.drain,
	})
	if err != nil {
		return ingestRun{}, fmt.Errorf("%w\nmosquitto log:\n%s", err, p.Tail(20))
	}
	r := ingestRun{lg: lg, lost: lg.NotDelivered}
	r.cpuUsPerMsg = (ingestProcCPU(p.PID()) - cpu0) * 1e6 / float64(max(lg.Acked, 1))
	r.rssMiB = ingestPeakRSS(p.PID())
	r.msgsPerS = float64(lg.AckedInWindow) / lg.WindowS
	r.deliveredPerS = float64(lg.DeliveredInWindow) / lg.WindowS
	if err := p.Stop(30 * time.Second); err != nil {
		fmt.Fprintf(progress, "edge-ingest: mosquitto stop: %v\n", err)
	}
	return r, nil
}

// ingestMissing counts acknowledged messages that are not in the outbox.
func ingestMissing(path string, lg ingestLoadResult) (int64, error) {
	ob, err := outbox.Open(path, outbox.Options{})
	if err != nil {
		return 0, fmt.Errorf("open the edge's outbox: %w", err)
	}
	defer ob.Close()
	found := make([]ingestBits, len(lg.AckedRanges))
	var after uint64
	for {
		recs, err := ob.Read(after, 10000, 0)
		if err != nil {
			return 0, fmt.Errorf("read the edge's outbox: %w", err)
		}
		if len(recs) == 0 {
			break
		}
		for _, r := range recs {
			if pub, n, ok := parseIngestPayload(r.Payload); ok && pub < len(found) {
				found[pub].set(n)
			}
		}
		after = recs[len(recs)-1].Seq
	}
	var missing int64
	for pub, ranges := range lg.AckedRanges {
		for _, rg := range ranges {
			for n := rg[0]; n <= rg[1]; n++ {
				if !found[pub].has(n) {
					missing++
				}
			}
		}
	}
	return missing, nil
}

// ingestScrape reads the unlabelled-or-labelled sample values of a Prometheus text
// page, summed per metric name.
func ingestScrape(url string) (map[string]float64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, fmt.Errorf("ingestScrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("ingestScrape %s: %s", url, resp.Status)
	}
	out := map[string]float64{}
	s := bufio.NewScanner(resp.Body)
	for s.Scan() {
		line := s.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 {
			continue
		}
		name := line[:sp]
		if i := strings.IndexByte(name, '{'); i >= 0 {
			name = name[:i]
		}
		v, err := strconv.ParseFloat(line[sp+1:], 64)
		if err != nil {
			continue
		}
		out[strings.TrimSpace(name)] += v
	}
	return out, s.Err()
}

// ingestProcCPU is the user+system CPU seconds a process has used (0 if unknown).
func ingestProcCPU(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command (which may hold spaces) start after ')'.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ is 100 on Linux
}

// ingestPeakRSS is a process's peak resident set (VmHWM) in MiB.
func ingestPeakRSS(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

// ingestLoadSpec tells the load generator child what to do.
type ingestLoadSpec struct {
	Addr                    string
	Publishers, Inflight    int
	Payload                 int
	Warmup, Duration, Drain time.Duration
}

// ingestLoadResult is what the load generator child reports.
type ingestLoadResult struct {
	WindowS           float64 `json:"window_s"`
	AckedInWindow     int64   `json:"acked_in_window"`
	DeliveredInWindow int64   `json:"delivered_in_window"`
	Published         int64   `json:"published"`
	Acked             int64   `json:"acked"`
	Failed            int64   `json:"failed"`
	Delivered         int64   `json:"delivered"` // distinct messages
	Duplicates        int64   `json:"duplicates"`
	NotDelivered      int64   `json:"not_delivered"` // acknowledged, never received
	CPUSeconds        float64 `json:"cpu_s"`
	// AckedRanges[p] lists publisher p's acknowledged message numbers as
	// inclusive ranges.
	AckedRanges [][][2]uint64 `json:"acked_ranges"`
}

// ingestLoadgenChild runs this command as the load generator and returns its
// result (the RESULT line it prints).
func ingestLoadgenChild(ctx context.Context, progress io.Writer, self, runDir string, spec ingestLoadSpec) (ingestLoadResult, error) {
	js, err := json.Marshal(spec)
	if err != nil {
		return ingestLoadResult{}, err
	}
	limit := spec.Warmup + spec.Duration + spec.Drain + 2*time.Minute
	cctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	cmd := exec.CommandContext(cctx, self, "edge-ingest", "-loadgen", string(js))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	logf, err := os.Create(filepath.Join(runDir, "loadgen.log"))
	if err != nil {
		return ingestLoadResult{}, err
	}
	defer logf.Close()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, io.MultiWriter(logf, progress)
	if err := cmd.Run(); err != nil {
		return ingestLoadResult{}, fmt.Errorf("load generator: %w", err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	last := lines[len(lines)-1]
	js2, ok := strings.CutPrefix(last, "RESULT ")
	if !ok {
		return ingestLoadResult{}, fmt.Errorf("load generator printed no RESULT line: %q", last)
	}
	var r ingestLoadResult
	if err := json.Unmarshal([]byte(js2), &r); err != nil {
		return ingestLoadResult{}, fmt.Errorf("load generator result: %w", err)
	}
	if r.WindowS <= 0 {
		return ingestLoadResult{}, errors.New("load generator measured no window")
	}
	return r, nil
}

// ingestPayload is "<publisher:3> <number:10> " then filler to size.
func ingestPayload(pub int, n uint64, size int) []byte {
	b := fmt.Appendf(make([]byte, 0, size), "%03d %010d ", pub, n)
	for len(b) < size {
		b = append(b, 'x')
	}
	return b
}

func parseIngestPayload(p []byte) (pub int, n uint64, ok bool) {
	if len(p) < 15 || p[3] != ' ' || p[14] != ' ' {
		return 0, 0, false
	}
	pu, err1 := strconv.Atoi(string(p[:3]))
	nu, err2 := strconv.ParseUint(string(p[4:14]), 10, 64)
	return pu, nu, err1 == nil && err2 == nil
}

// ingestBits marks message numbers (from 1).
type ingestBits []uint64

func (b *ingestBits) set(n uint64) bool {
	w := int(n / 64)
	if w >= len(*b) {
		*b = append(*b, make([]uint64, w+1-len(*b)+len(*b)/2)...)
	}
	was := (*b)[w]&(1<<(n%64)) != 0
	(*b)[w] |= 1 << (n % 64)
	return was
}

func (b ingestBits) has(n uint64) bool {
	w := int(n / 64)
	return w < len(b) && b[w]&(1<<(n%64)) != 0
}

// ingestLoadgen is the load generator (the child process): paho publishers
// keeping spec.Inflight QoS 1 publishes unacknowledged each, one QoS 1
// subscriber on "#".
func ingestLoadgen(ctx context.Context, progress io.Writer, specJSON string) (map[string]any, error) {
	var spec ingestLoadSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		return nil, fmt.Errorf("loadgen spec: %w", err)
	}
	if spec.Publishers < 1 || spec.Publishers > 999 || spec.Inflight < 1 || spec.Payload < 32 || spec.Duration <= 0 {
		return nil, fmt.Errorf("loadgen spec %+v out of range", spec)
	}
	url := "tcp://" + spec.Addr
	connect := func(id string) (mqtt.Client, error) {
		c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID(id).
			SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).
			SetKeepAlive(60 * time.Second).SetWriteTimeout(30 * time.Second).
			SetOrderMatters(true).SetMessageChannelDepth(1 << 16))
		if tok := c.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
			return nil, fmt.Errorf("connect %s: %v", id, tok.Error())
		}
		return c, nil
	}

	var (
		mu         sync.Mutex
		got        = make([]ingestBits, spec.Publishers)
		delivered  atomic.Int64
		duplicates atomic.Int64
		foreign    atomic.Int64
	)
	sub, err := connect("ingest-sub")
	if err != nil {
		return nil, err
	}
	defer sub.Disconnect(100)
	if tok := sub.Subscribe("#", 1, func(_ mqtt.Client, m mqtt.Message) {
		pub, n, ok := parseIngestPayload(m.Payload())
		if !ok || pub >= spec.Publishers {
			foreign.Add(1)
			return
		}
		mu.Lock()
		dup := got[pub].set(n)
		mu.Unlock()
		if dup {
			duplicates.Add(1)
		} else {
			delivered.Add(1)
		}
	}); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		return nil, fmt.Errorf("subscribe: %v", tok.Error())
	}
	pubs := make([]mqtt.Client, spec.Publishers)
	for i := range pubs {
		if pubs[i], err = connect(fmt.Sprintf("ingest-pub-%03d", i)); err != nil {
			return nil, err
		}
		defer pubs[i].Disconnect(100)
	}

	var acked, failed, published atomic.Int64
	ackedRanges := make([][][2]uint64, spec.Publishers)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, c := range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			type sent struct {
				tok mqtt.Token
				n   uint64
			}
			window := make(chan sent, spec.Inflight-1) // plus the one being waited for
			done := make(chan struct{})
			go func() { // PUBACKs come in publish order: wait in FIFO order
				defer close(done)
				var ranges [][2]uint64
				for s := range window {
					if !s.tok.WaitTimeout(60*time.Second) || s.tok.Error() != nil {
						failed.Add(1)
						continue
					}
					acked.Add(1)
					if k := len(ranges); k > 0 && ranges[k-1][1]+1 == s.n {
						ranges[k-1][1] = s.n
					} else {
						ranges = append(ranges, [2]uint64{s.n, s.n})
					}
				}
				ackedRanges[i] = ranges
			}()
			topic := fmt.Sprintf("ingest/%03d", i)
			for n := uint64(1); ; n++ {
				select {
				case <-stop:
					close(window)
					<-done
					return
				default:
				}
				tok := c.Publish(topic, 1, false, ingestPayload(i, n, spec.Payload))
				published.Add(1)
				window <- sent{tok, n}
			}
		}()
	}

	start := time.Now()
	var a0, d0 int64
	select {
	case <-ctx.Done():
		close(stop)
		wg.Wait()
		return nil, ctx.Err()
	case <-time.After(spec.Warmup):
	}
	a0, d0, t0 := acked.Load(), delivered.Load(), time.Now()
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	end := time.After(spec.Duration)
wait:
	for {
		select {
		case <-ctx.Done():
			close(stop)
			wg.Wait()
			return nil, ctx.Err()
		case <-tick.C:
			fmt.Fprintf(progress, "  loadgen %s %d pubs: t=%4.1fs acked %d delivered %d\n", spec.Addr, spec.Publishers, time.Since(start).Seconds(), acked.Load(), delivered.Load())
		case <-end:
			break wait
		}
	}
	a1, d1, t1 := acked.Load(), delivered.Load(), time.Now()
	close(stop)
	wg.Wait()

	// Wait for the subscriber to receive every acknowledged message, while
	// it makes progress.
	total := acked.Load()
	deadline := time.Now().Add(spec.Drain)
	last, lastChange := delivered.Load(), time.Now()
	for delivered.Load() < total && time.Now().Before(deadline) && time.Since(lastChange) < 10*time.Second {
		time.Sleep(10 * time.Millisecond) // polling interval
		if d := delivered.Load(); d != last {
			last, lastChange = d, time.Now()
		}
	}
	mu.Lock()
	var notDelivered int64
	for p, ranges := range ackedRanges {
		for _, rg := range ranges {
			for n := rg[0]; n <= rg[1]; n++ {
				if !got[p].has(n) {
					notDelivered++
				}
			}
		}
	}
	mu.Unlock()
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	r := ingestLoadResult{
		WindowS:           t1.Sub(t0).Seconds(),
		AckedInWindow:     a1 - a0,
		DeliveredInWindow: d1 - d0,
		Published:         published.Load(),
		Acked:             total,
		Failed:            failed.Load(),
		Delivered:         delivered.Load(),
		Duplicates:        duplicates.Load(),
		NotDelivered:      notDelivered,
		CPUSeconds:        time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds(),
		AckedRanges:       ackedRanges,
	}
	if f := foreign.Load(); f > 0 {
		fmt.Fprintf(progress, "  loadgen: %d messages on # were not the load generator's\n", f)
	}
	b, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	return m, nil
}

func ingestRound(f float64) float64 { return float64(int64(f*10+0.5)) / 10 }
