package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/tributary-io/tributary/cloud/commitlog"
	"github.com/tributary-io/tributary/cloud/ingest"
	"github.com/tributary-io/tributary/edge/gateway"
	"github.com/tributary-io/tributary/edge/outbox"
	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
	"github.com/tributary-io/tributary/sync/link"
	"github.com/tributary-io/tributary/sync/pki"
)

// The log-append scenario measures the central log's append path, two ways.
//
// (a) Through the network, beside NATS JetStream. Each system runs as two
// child processes of this command (it re-executes itself): a server and a
// producer, so that neither side's garbage collector or scheduler helps the
// other, as with any real deployment, and both systems are treated alike.
//
//   - Tributary: the server is the cloud's ingest path and nothing else:
//     sync/link.Server (QUIC, mTLS) with cloud/ingest.Sink over a FileLog,
//     which fsyncs every group before the link acknowledges it. The
//     tributary-cloud binary would add the dispatcher, the HTTP API and its
//     configuration without changing the append path, and JetStream runs
//     without consumers either. The producer runs one sync/link.Client per
//     connection (one gateway each, its own certificate), with the client's
//     default configuration, draining an in-memory Source of records built
//     before the clock starts exactly as a gateway builds them
//     (gateway.ToRecord: a CloudEvent carrying the payload).
//   - JetStream: nats-server embedded in the server process, file storage,
//     one stream; the producer publishes with nats.go's asynchronous
//     JetStream publish, at most -nats-window acks pending per connection,
//     over plain TCP (no TLS, which favours it). JetStream runs twice: with
//     its default sync interval (it does not fsync per message, so its ack
//     is not a durability promise) and with sync_interval: always (fsync
//     per message batch, like for like). The ratio is against the default,
//     the faster of the two, as the issue asks; ratio_vs_sync_always is
//     against the durable configuration.
//
// Both producers send the same -records payloads of -payload bytes (JSON
// telemetry) over -connections connections, as fast as their windows
// allow. The clock runs from the moment every connection is up to the last
// acknowledgement. After each run the server checks what it stored: every
// record exactly once (ours: every gateway's seqs, in order; JetStream: the
// stream's message count). -rounds runs alternate the systems and the
// figures are medians.
//
// (b) The log alone, in this process: -rate appends per second of one
// record each, from -goroutines goroutines each on its own schedule, for
// -duration, with blocking Append. Latency runs from the Append call to its
// return (durable). The same latencies measured from each append's
// scheduled time (which also catches a late start) are reported as
// sched_*. Then the log's maximum: -goroutines goroutines each keeping a
// window of single-record AppendAsync calls in flight, for -max-duration.
// Both runs start on a new log and measure after -warmup, by when the log
// runs on preallocated segments as a server's long-lived log does. Before
// them, -disk-probe measures the disk alone: one 4 KiB overwrite and
// fdatasync at a time (disk_fsync_*), the floor under any durable
// acknowledgement on that disk at that moment; on a disk shared with other
// workloads its tail, not the log, sets the latency percentiles.
func init() {
	Register(Scenario{
		Name:  "log-append",
		Brief: "central log appends through QUIC ingest vs NATS JetStream (separate processes), and in-process latency at a fixed rate",
		Flags: logAppendFlags,
	})
}

type logAppendConfig struct {
	// (a)
	records, payload, devices, connections int
	natsWindow, rounds, syncAlwaysRecords  int
	compressAbove                          int
	noNetwork, noSyncAlways                bool
	runTimeout                             time.Duration
	// (b)
	rate                          float64
	duration, maxDuration, warmup time.Duration
	goroutines, asyncWindow       int
	noInProcess                   bool
	diskProbe                     time.Duration
	cpuProfile, dir               string
	profileDir, trace             string
	keep                          bool
}

func logAppendFlags(fs *flag.FlagSet) func(context.Context, io.Writer) (map[string]any, error) {
	var c logAppendConfig
	fs.IntVar(&c.records, "records", 500_000, "(a) records each system receives per round, all connections together")
	fs.IntVar(&c.payload, "payload", 200, "record payload bytes (JSON telemetry, at least 64)")
	fs.IntVar(&c.devices, "devices", 100, "(a) devices the records come from: topics (ours), subjects (JetStream)")
	fs.IntVar(&c.connections, "connections", 1, "(a) producer connections for each system (gateways, for ours)")
	fs.IntVar(&c.natsWindow, "nats-window", 256, "(a) JetStream async publishes pending per connection")
	fs.IntVar(&c.rounds, "rounds", 3, "(a) rounds; each runs every system once, figures are medians")
	fs.IntVar(&c.compressAbove, "compress-above", 0, "(a) link client CompressAbove (0: the client's default; negative: never)")
	fs.BoolVar(&c.noNetwork, "no-network", false, "skip (a)")
	fs.BoolVar(&c.noSyncAlways, "no-sync-always", false, "(a) skip JetStream with sync_interval: always")
	fs.IntVar(&c.syncAlwaysRecords, "sync-always-records", 20_000, "(a) records for JetStream with sync_interval: always, which fsyncs each message (a rate is a rate)")
	fs.DurationVar(&c.runTimeout, "run-timeout", 5*time.Minute, "(a) give up on one system's run after this long")
	fs.Float64Var(&c.rate, "rate", 20_000, "(b) offered appends per second")
	fs.DurationVar(&c.duration, "duration", 15*time.Second, "(b) how long to offer -rate and measure")
	fs.DurationVar(&c.warmup, "warmup", 3*time.Second, "(b) how long to offer -rate before measuring (a new log moves into preallocated segments)")
	fs.DurationVar(&c.maxDuration, "max-duration", 5*time.Second, "(b) how long to measure the maximum")
	fs.IntVar(&c.goroutines, "goroutines", 200, "(b) appending goroutines")
	fs.IntVar(&c.asyncWindow, "async-window", 16, "(b) AppendAsync calls in flight per goroutine when measuring the maximum")
	fs.BoolVar(&c.noInProcess, "no-inprocess", false, "skip (b)")
	fs.DurationVar(&c.diskProbe, "disk-probe", 5*time.Second, "(b) first measure the disk alone (serial 4 KiB overwrite + fdatasync) for this long; 0 skips it")
	fs.StringVar(&c.cpuProfile, "cpuprofile", "", "(b) write CPU profiles of the fixed-rate and maximum-rate runs to this file name with -rate and -max before its extension")
	fs.StringVar(&c.trace, "trace", "", "(b) write an execution trace of the fixed-rate run to this file")
	fs.StringVar(&c.profileDir, "profile-dir", "", "(a) write a CPU profile of every child process (system-role-round.pprof) to this directory")
	fs.StringVar(&c.dir, "dir", "", "working directory (default: a new temporary directory)")
	fs.BoolVar(&c.keep, "keep", false, "keep the working directory")
	return func(ctx context.Context, progress io.Writer) (map[string]any, error) {
		if spec := os.Getenv(laChildEnv); spec != "" {
			return runLogAppendChild(ctx, progress, spec)
		}
		return runLogAppend(ctx, progress, c)
	}
}

func runLogAppend(ctx context.Context, progress io.Writer, c logAppendConfig) (map[string]any, error) {
	if c.records < 1 || c.payload < 64 || c.devices < 1 || c.connections < 1 || c.natsWindow < 1 || c.rounds < 1 ||
		c.rate <= 0 || c.duration <= 0 || c.maxDuration <= 0 || c.goroutines < 1 || c.asyncWindow < 1 {
		return nil, errors.New("log-append: counts, -rate and durations must be positive, -payload at least 64")
	}
	if c.records < c.connections {
		return nil, errors.New("log-append: -records below -connections")
	}
	dir := c.dir
	if dir == "" {
		d, err := os.MkdirTemp("", "tributary-bench-log-append-")
		if err != nil {
			return nil, err
		}
		dir = d
	} else if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, err
	}
	if !c.keep {
		defer os.RemoveAll(dir)
	}
	res := map[string]any{"payload_bytes": c.payload}
	if !c.noNetwork {
		if err := laNetwork(ctx, progress, c, dir, res); err != nil {
			return nil, err
		}
	}
	if !c.noInProcess {
		if err := laInProcess(ctx, progress, c, dir, res); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// ---- (a) through the network ----

// The systems of (a).
const (
	laOurs         = "tributary"
	laJetStream    = "jetstream"
	laJetStreamDur = "jetstream-sync-always"
)

// laChildEnv carries a child's laSpec (JSON); its presence makes the
// process a child.
const laChildEnv = "TRIBUTARY_BENCH_LOG_APPEND_CHILD"

// laSpec tells a child process what to be.
type laSpec struct {
	Role        string // "server" or "producer"
	System      string // laOurs, laJetStream, laJetStreamDur
	Dir         string // server: data directory; both: PKI files under Dir/../pki
	PKI         string
	Addr        string // producer: where the server listens
	Records     int    // all connections together
	Payload     int
	Devices     int
	Connections int
	NATSWindow  int
	Compress    int
	Timeout     time.Duration
	Profile     string // write a CPU profile of the child here
}

func laNetwork(ctx context.Context, progress io.Writer, c logAppendConfig, dir string, res map[string]any) error {
	pkiDir := filepath.Join(dir, "pki")
	if err := laWritePKI(pkiDir, c.connections); err != nil {
		return err
	}
	systems := []string{laOurs, laJetStream}
	if !c.noSyncAlways {
		systems = append(systems, laJetStreamDur)
	}
	rates := map[string][]float64{}
	cpu := map[string][]float64{}
	srvCPU, prodCPU := map[string][]float64{}, map[string][]float64{}
	var serverStats map[string]any
	for round := range c.rounds {
		order := slices.Clone(systems)
		if round%2 == 1 {
			slices.Reverse(order) // neither system always runs on a warmer page cache
		}
		for _, sys := range order {
			records := c.records
			if sys == laJetStreamDur {
				records = max(min(records, c.syncAlwaysRecords), c.connections)
			}
			spec := laSpec{
				System: sys, Dir: filepath.Join(dir, fmt.Sprintf("%s-%d", sys, round)), PKI: pkiDir,
				Records: records, Payload: c.payload, Devices: c.devices, Connections: c.connections,
				NATSWindow: c.natsWindow, Compress: c.compressAbove, Timeout: c.runTimeout,
			}
			if c.profileDir != "" {
				spec.Profile = filepath.Join(c.profileDir, fmt.Sprintf("%s-%%s-%d.pprof", sys, round+1))
			}
			fmt.Fprintf(progress, "log-append: round %d: %s, %d records over %d connection(s)\n", round+1, sys, records, c.connections)
			prod, srv, err := laRunPair(ctx, progress, spec)
			if err != nil {
				return fmt.Errorf("%s, round %d: %w", sys, round+1, err)
			}
			rate := laNum(prod, "msgs_per_s")
			rates[sys] = append(rates[sys], rate)
			perMsg := func(key string, m map[string]any) float64 { return laNum(m, key) * 1e6 / float64(records) }
			srvCPU[sys] = append(srvCPU[sys], perMsg("cpu_s", srv))
			prodCPU[sys] = append(prodCPU[sys], perMsg("cpu_s", prod))
			cpu[sys] = append(cpu[sys], perMsg("cpu_s", srv)+perMsg("cpu_s", prod))
			fmt.Fprintf(progress, "log-append: round %d: %s %.0f msg/s (CPU per message: server %.2f µs, producer %.2f µs)\n",
				round+1, sys, rate, perMsg("cpu_s", srv), perMsg("cpu_s", prod))
			if sys == laOurs {
				serverStats = srv
			}
			_ = os.RemoveAll(spec.Dir)
		}
	}
	ours, js := median(rates[laOurs]), median(rates[laJetStream])
	res["connections"] = c.connections
	res["records_per_round"] = c.records
	res["rounds"] = c.rounds
	res["ours_msgs_per_s"] = roundTo(ours, 0)
	res["jetstream_msgs_per_s"] = roundTo(js, 0)
	res["ratio"] = roundTo(ours/js, 2)
	res["ratio_against"] = "jetstream default sync_interval (no fsync per message; ours fsyncs every group before acking)"
	res["ours_runs"] = laRound(rates[laOurs], 0)
	res["jetstream_runs"] = laRound(rates[laJetStream], 0)
	for sys, key := range map[string]string{laOurs: "ours", laJetStream: "jetstream", laJetStreamDur: "jetstream_sync_always"} {
		if len(cpu[sys]) > 0 {
			res[key+"_cpu_us_per_msg"] = roundTo(median(cpu[sys]), 2)
			res[key+"_server_cpu_us_per_msg"] = roundTo(median(srvCPU[sys]), 2)
			res[key+"_producer_cpu_us_per_msg"] = roundTo(median(prodCPU[sys]), 2)
		}
	}
	if !c.noSyncAlways {
		jsd := median(rates[laJetStreamDur])
		res["jetstream_sync_always_msgs_per_s"] = roundTo(jsd, 0)
		res["jetstream_sync_always_runs"] = laRound(rates[laJetStreamDur], 0)
		res["ratio_vs_sync_always"] = roundTo(ours/jsd, 2)
	}
	res["jetstream_version"] = natsserver.VERSION
	res["jetstream_transport"] = "tcp, no tls"
	res["ours_transport"] = "quic, mtls"
	for _, k := range []string{"log_record_bytes", "groups", "records_per_group", "fsync_p50_ms", "fsync_p99_ms", "batches", "compression_ratio"} {
		if v, ok := serverStats[k]; ok {
			res["ours_"+k] = v
		}
	}
	return nil
}

// laRunPair runs one system's server and producer processes and returns
// their results.
func laRunPair(ctx context.Context, progress io.Writer, spec laSpec) (prod, srv map[string]any, err error) {
	spec.Role = "server"
	server, err := laStart(ctx, progress, spec)
	if err != nil {
		return nil, nil, err
	}
	defer server.kill()
	addr, err := server.waitReady(60 * time.Second)
	if err != nil {
		return nil, nil, fmt.Errorf("server: %w", err)
	}
	spec.Role, spec.Addr = "producer", addr
	producer, err := laStart(ctx, progress, spec)
	if err != nil {
		return nil, nil, err
	}
	defer producer.kill()
	prod, err = producer.result(spec.Timeout + time.Minute)
	if err != nil {
		return nil, nil, fmt.Errorf("producer: %w", err)
	}
	srv, err = server.result(5 * time.Minute) // the server verifies what it stored
	if err != nil {
		return nil, nil, fmt.Errorf("server: %w", err)
	}
	if bad := laNum(srv, "lost") + laNum(srv, "duplicates") + laNum(srv, "out_of_order"); bad > 0 {
		return nil, nil, fmt.Errorf("server check failed: %v", srv)
	}
	if got := laNum(srv, "stored"); got != float64(spec.Records) {
		return nil, nil, fmt.Errorf("server stored %.0f records, want %d: %v", got, spec.Records, srv)
	}
	return prod, srv, nil
}

// laProc is a child process of the scenario.
type laProc struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	ready  chan string
	res    chan map[string]any
	exited chan error
}

func laStart(ctx context.Context, progress io.Writer, spec laSpec) (*laProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, exe, "log-append")
	cmd.Env = append(os.Environ(), laChildEnv+"="+string(b))
	cmd.Stderr = progress
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s %s: %w", spec.System, spec.Role, err)
	}
	p := &laProc{cmd: cmd, stdin: stdin, ready: make(chan string, 1), res: make(chan map[string]any, 1), exited: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			line := sc.Text()
			if addr, ok := strings.CutPrefix(line, "READY "); ok {
				p.ready <- addr
			} else if js, ok := strings.CutPrefix(line, "RESULT "); ok {
				var m map[string]any
				if json.Unmarshal([]byte(js), &m) == nil {
					p.res <- m
				}
			}
		}
		p.exited <- cmd.Wait()
	}()
	return p, nil
}

func (p *laProc) waitReady(timeout time.Duration) (string, error) {
	select {
	case addr := <-p.ready:
		return addr, nil
	case err := <-p.exited:
		return "", fmt.Errorf("exited before it was ready: %v", err)
	case <-time.After(timeout):
		return "", fmt.Errorf("not ready after %v", timeout)
	}
}

// result closes the child's stdin (which stops a server) and waits for
// its RESULT line and its exit.
func (p *laProc) result(timeout time.Duration) (map[string]any, error) {
	_ = p.stdin.Close()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case err := <-p.exited:
		select {
		case m := <-p.res:
			if err != nil {
				return nil, fmt.Errorf("%v after its result", err)
			}
			return m, nil
		default:
			return nil, fmt.Errorf("exited without a result: %v", err)
		}
	case <-t.C:
		return nil, fmt.Errorf("no result after %v", timeout)
	}
}

func (p *laProc) kill() {
	if p.cmd.ProcessState == nil {
		_ = p.cmd.Process.Kill()
	}
}

// laWritePKI writes a CA, a server certificate for 127.0.0.1 and one
// gateway certificate per connection, for the child processes.
func laWritePKI(dir string, gateways int) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	ca, err := pki.NewCA("log-append bench CA", 24*time.Hour)
	if err != nil {
		return err
	}
	if err := pki.SaveCert(ca.Cert, filepath.Join(dir, "ca.pem")); err != nil {
		return err
	}
	srv, err := pki.IssueServer(ca, []string{"127.0.0.1"})
	if err != nil {
		return err
	}
	if err := pki.SaveKeyPair(srv, filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key")); err != nil {
		return err
	}
	for i := range gateways {
		gw, err := pki.IssueGateway(ca, laGateway(i))
		if err != nil {
			return err
		}
		if err := pki.SaveKeyPair(gw, filepath.Join(dir, laGateway(i)+".pem"), filepath.Join(dir, laGateway(i)+".key")); err != nil {
			return err
		}
	}
	return nil
}

func laGateway(i int) string { return fmt.Sprintf("gw-%03d", i) }

// laPayloads returns n telemetry payloads for connection conn, the same
// for both systems.
func laPayloads(conn, n, size, devices int) (payloads [][]byte, device []int) {
	rng := rand.New(rand.NewPCG(uint64(conn), 42))
	payloads, device = make([][]byte, n), make([]int, n)
	for i := range n {
		device[i] = rng.IntN(devices)
		payloads[i] = telemetry(rng, i, device[i], size)
	}
	return payloads, device
}

// laPerConn splits the records over the connections.
func laPerConn(total, conns, i int) int {
	n := total / conns
	if i < total%conns {
		n++
	}
	return n
}

func runLogAppendChild(ctx context.Context, progress io.Writer, specJSON string) (map[string]any, error) {
	var spec laSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		return nil, fmt.Errorf("log-append child: %w", err)
	}
	if spec.Profile != "" {
		f, err := os.Create(fmt.Sprintf(spec.Profile, spec.Role))
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return nil, err
		}
		defer pprof.StopCPUProfile()
	}
	var res map[string]any
	var err error
	switch {
	case spec.Role == "server" && spec.System == laOurs:
		res, err = laOurServer(ctx, spec)
	case spec.Role == "server":
		res, err = laNATSServer(ctx, spec)
	case spec.System == laOurs:
		res, err = laOurProducer(ctx, progress, spec)
	default:
		res, err = laNATSProducer(ctx, spec)
	}
	if err != nil {
		return nil, err
	}
	return res, nil
}

// laWaitStdin blocks until the parent closes our stdin (or dies) or ctx
// ends.
func laWaitStdin(ctx context.Context) {
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

func laOurServer(ctx context.Context, spec laSpec) (map[string]any, error) {
	ca, err := pki.LoadCert(filepath.Join(spec.PKI, "ca.pem"))
	if err != nil {
		return nil, err
	}
	kp, err := pki.LoadKeyPair(filepath.Join(spec.PKI, "server.pem"), filepath.Join(spec.PKI, "server.key"))
	if err != nil {
		return nil, err
	}
	tlsConf, err := pki.ServerTLS(ca, kp, link.ALPN)
	if err != nil {
		return nil, err
	}
	clog, err := commitlog.Open(spec.Dir, commitlog.Options{})
	if err != nil {
		return nil, err
	}
	defer clog.Close()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := link.NewServer(link.ServerConfig{TLS: tlsConf}, &ingest.Sink{Log: clog})
	srvErr := make(chan error, 1)
	go func() { srvErr <- srv.Serve(context.Background(), pc) }()
	fmt.Printf("READY %s\n", pc.LocalAddr())
	cpu0 := processCPU()
	laWaitStdin(ctx)
	cpu := processCPU() - cpu0
	_ = srv.Close()
	if err := <-srvErr; err != nil {
		return nil, err
	}
	res := map[string]any{"cpu_s": cpu.Seconds()}
	ss := srv.Stats()
	res["batches"] = ss.Batches
	if ss.Records > 0 {
		res["wire_bytes_per_record"] = roundTo(float64(ss.Bytes)/float64(ss.Records), 1)
	}
	next := clog.NextOffset()
	if next > 0 {
		res["log_record_bytes"] = roundTo(float64(clog.Size())/float64(next), 1)
	}
	laLogStats(clog, res)
	// Check the log: every gateway's seqs 1..n exactly once, in order.
	want := map[string]uint64{}
	for i := range spec.Connections {
		want[laGateway(i)] = uint64(laPerConn(spec.Records, spec.Connections, i))
	}
	last := map[string]uint64{}
	var stored, lost, dups, disorder uint64
	for from := clog.FirstOffset(); from < next; {
		recs, err := clog.Read(from, 10_000, 32<<20)
		if err != nil {
			return nil, fmt.Errorf("read the log at %d: %w", from, err)
		}
		if len(recs) == 0 {
			break
		}
		for _, r := range recs {
			from = r.Offset + 1
			stored++
			switch prev := last[r.Producer]; {
			case r.ProducerSeq == prev+1:
			case r.ProducerSeq <= prev:
				dups++
			default:
				disorder++
			}
			last[r.Producer] = max(last[r.Producer], r.ProducerSeq)
		}
	}
	for gw, n := range want {
		if last[gw] < n {
			lost += n - last[gw]
		}
	}
	res["stored"], res["lost"], res["duplicates"], res["out_of_order"] = stored, lost, dups, disorder
	return res, nil
}

// laLogStats adds the log's group-commit counters to res.
func laLogStats(clog *commitlog.FileLog, res map[string]any) {
	st := clog.Stats()
	res["groups"] = st.Groups
	if st.Groups > 0 {
		res["records_per_group"] = roundTo(float64(st.Appended)/float64(st.Groups), 1)
	}
	// Where an append's time goes: waiting for the group before it
	// (queue), then its group's write and fsync. Quantiles are estimated
	// from the log's histogram buckets.
	for name, h := range map[string]commitlog.Histogram{"queue": st.QueueSeconds, "write": st.WriteSeconds, "fsync": st.FsyncSeconds} {
		for _, q := range []struct {
			key string
			q   float64
		}{{"p50", 0.5}, {"p99", 0.99}, {"p99_6", 0.996}} {
			if p := h.Quantile(q.q); p >= 0 {
				res[name+"_"+q.key+"_ms"] = roundTo(p*1e3, 3)
			}
		}
	}
	if p := st.GroupRecords.Quantile(0.5); p >= 0 {
		res["group_records_p50"] = roundTo(p, 1)
	}
}

// laSource is a gateway outbox in memory: records seq 1..n, built before
// the clock starts, released by start.
type laSource struct {
	recs  []*syncv1.Record // recs[i].Seq == i+1
	sizes []int            // proto.Size of each record
	start chan struct{}
	acked atomic.Uint64
	done  chan struct{}
	once  sync.Once
}

var _ link.Source = (*laSource)(nil)

func (s *laSource) Read(after uint64, maxRecords, maxBytes int) ([]*syncv1.Record, error) {
	select {
	case <-s.start:
	default:
		return nil, nil
	}
	if after >= uint64(len(s.recs)) {
		return nil, nil
	}
	end, size := int(after), 0
	for end < len(s.recs) && end-int(after) < maxRecords && (end == int(after) || size+s.sizes[end] <= maxBytes) {
		size += s.sizes[end]
		end++
	}
	return s.recs[after:end], nil
}

func (s *laSource) Wait(ctx context.Context, after uint64) error {
	if after < uint64(len(s.recs)) {
		select {
		case <-s.start:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	<-ctx.Done()
	return ctx.Err()
}

func (s *laSource) Ack(upTo uint64) error {
	s.acked.Store(upTo)
	if upTo >= uint64(len(s.recs)) {
		s.once.Do(func() { close(s.done) })
	}
	return nil
}

func laOurProducer(ctx context.Context, progress io.Writer, spec laSpec) (map[string]any, error) {
	ca, err := pki.LoadCert(filepath.Join(spec.PKI, "ca.pem"))
	if err != nil {
		return nil, err
	}
	start := make(chan struct{})
	sources := make([]*laSource, spec.Connections)
	clients := make([]*link.Client, spec.Connections)
	up := make(chan struct{}, spec.Connections)
	received := time.Now()
	for i := range spec.Connections {
		gw := laGateway(i)
		kp, err := pki.LoadKeyPair(filepath.Join(spec.PKI, gw+".pem"), filepath.Join(spec.PKI, gw+".key"))
		if err != nil {
			return nil, err
		}
		tlsConf, err := pki.ClientTLS(ca, kp, "127.0.0.1", link.ALPN)
		if err != nil {
			return nil, err
		}
		n := laPerConn(spec.Records, spec.Connections, i)
		payloads, devices := laPayloads(i, n, spec.Payload, spec.Devices)
		src := &laSource{recs: make([]*syncv1.Record, n), sizes: make([]int, n), start: start, done: make(chan struct{})}
		for k := range n {
			id := "d-" + strconv.Itoa(devices[k])
			src.recs[k] = gateway.ToRecord(gw, &outbox.Record{Seq: uint64(k + 1), Message: outbox.Message{
				ClientID: id, Topic: "devices/" + id + "/telemetry", Payload: payloads[k], QoS: 1,
				Received: received.Add(time.Duration(k) * time.Microsecond),
			}})
			src.sizes[k] = proto.Size(src.recs[k])
		}
		sources[i] = src
		var once sync.Once
		clients[i] = link.NewClient(link.ClientConfig{
			Addr: spec.Addr, TLS: tlsConf, GatewayID: gw, CompressAbove: spec.Compress,
			OnState: func(s link.State, _ error) {
				if s == link.Connected {
					once.Do(func() { up <- struct{}{} })
				}
			},
		}, src)
	}
	runtime.GC() // the records built above are garbage the run should not pay for... the rest is live
	cctx, cancel := context.WithTimeout(ctx, spec.Timeout)
	defer cancel()
	var wg sync.WaitGroup
	runErrs := make(chan error, spec.Connections)
	for _, c := range clients {
		wg.Go(func() {
			if err := c.Run(cctx); err != nil {
				runErrs <- err
			}
		})
	}
	defer func() { cancel(); wg.Wait() }()
	for range spec.Connections {
		select {
		case <-up:
		case <-cctx.Done():
			return nil, fmt.Errorf("connecting: %w", cctx.Err())
		case err := <-runErrs:
			return nil, err
		}
	}
	t0, cpu0 := time.Now(), processCPU()
	close(start)
	for i, src := range sources {
		select {
		case <-src.done:
		case err := <-runErrs:
			return nil, err
		case <-cctx.Done():
			return nil, fmt.Errorf("gateway %s acked %d of %d: %w (%+v)", laGateway(i), src.acked.Load(), len(src.recs), cctx.Err(), clients[i].Stats())
		}
	}
	elapsed, cpu := time.Since(t0), processCPU()-cpu0
	res := map[string]any{"msgs_per_s": float64(spec.Records) / elapsed.Seconds(), "seconds": elapsed.Seconds(), "cpu_s": cpu.Seconds()}
	var sessions, reconnects, wire, raw uint64
	for _, c := range clients {
		st := c.Stats()
		sessions += st.Sessions
		reconnects += st.Reconnects
		wire += st.BytesSent
		raw += st.RawBytes
	}
	res["sessions"], res["reconnects"] = sessions, reconnects
	if wire > 0 {
		res["compression_ratio"] = roundTo(float64(raw)/float64(wire), 2)
	}
	if reconnects > 0 {
		fmt.Fprintf(progress, "log-append: producer: %d reconnects during the run\n", reconnects)
	}
	return res, nil
}

const laStream = "BENCH"

func laNATSServer(ctx context.Context, spec laSpec) (map[string]any, error) {
	opts := &natsserver.Options{
		Host:       "127.0.0.1",
		Port:       -1,
		JetStream:  true,
		StoreDir:   spec.Dir,
		NoLog:      true,
		NoSigs:     true,
		SyncAlways: spec.System == laJetStreamDur,
	}
	ns, err := natsserver.NewServer(opts)
	if err != nil {
		return nil, err
	}
	ns.Start()
	defer ns.Shutdown()
	if !ns.ReadyForConnections(30 * time.Second) {
		return nil, errors.New("nats-server not ready")
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	js, err := nc.JetStream()
	if err != nil {
		return nil, err
	}
	if _, err := js.AddStream(&nats.StreamConfig{Name: laStream, Subjects: []string{"devices.>"}, Storage: nats.FileStorage}); err != nil {
		return nil, err
	}
	fmt.Printf("READY %s\n", ns.ClientURL())
	cpu0 := processCPU()
	laWaitStdin(ctx)
	cpu := processCPU() - cpu0
	info, err := js.StreamInfo(laStream)
	if err != nil {
		return nil, err
	}
	return map[string]any{"stored": info.State.Msgs, "stream_bytes": info.State.Bytes, "sync_always": opts.SyncAlways, "cpu_s": cpu.Seconds()}, nil
}

func laNATSProducer(ctx context.Context, spec laSpec) (map[string]any, error) {
	type conn struct {
		nc       *nats.Conn
		js       nats.JetStreamContext
		subjects []string
		payloads [][]byte
		failed   atomic.Int64
	}
	conns := make([]*conn, spec.Connections)
	for i := range conns {
		c := &conn{}
		nc, err := nats.Connect(spec.Addr, nats.Name(fmt.Sprint("bench-", i)))
		if err != nil {
			return nil, err
		}
		defer nc.Close()
		c.nc = nc
		c.js, err = nc.JetStream(nats.PublishAsyncMaxPending(spec.NATSWindow),
			nats.PublishAsyncErrHandler(func(nats.JetStream, *nats.Msg, error) { c.failed.Add(1) }))
		if err != nil {
			return nil, err
		}
		n := laPerConn(spec.Records, spec.Connections, i)
		var devices []int
		c.payloads, devices = laPayloads(i, n, spec.Payload, spec.Devices)
		c.subjects = make([]string, n)
		for k, d := range devices {
			c.subjects[k] = "devices.d-" + strconv.Itoa(d) + ".telemetry"
		}
		conns[i] = c
	}
	runtime.GC()
	cctx, cancel := context.WithTimeout(ctx, spec.Timeout)
	defer cancel()
	t0, cpu0 := time.Now(), processCPU()
	errs := make(chan error, len(conns))
	var stalls atomic.Int64
	for _, c := range conns {
		go func() {
			for k := range c.payloads {
				for {
					_, err := c.js.PublishAsync(c.subjects[k], c.payloads[k])
					if err == nil {
						break
					}
					if !errors.Is(err, nats.ErrTooManyStalledMsgs) {
						errs <- err
						return
					}
					stalls.Add(1) // the window stayed full for 200 ms: try again
				}
				if k%4096 == 0 && cctx.Err() != nil {
					errs <- cctx.Err()
					return
				}
			}
			select {
			case <-c.js.PublishAsyncComplete():
				errs <- nil
			case <-cctx.Done():
				errs <- cctx.Err()
			}
		}()
	}
	for range conns {
		if err := <-errs; err != nil {
			return nil, err
		}
	}
	elapsed, cpu := time.Since(t0), processCPU()-cpu0
	var failed int64
	for _, c := range conns {
		failed += c.failed.Load()
	}
	if failed > 0 {
		return nil, fmt.Errorf("%d publishes failed", failed)
	}
	return map[string]any{"msgs_per_s": float64(spec.Records) / elapsed.Seconds(), "seconds": elapsed.Seconds(), "stalls": stalls.Load(), "cpu_s": cpu.Seconds()}, nil
}

// ---- (b) in process ----

func laInProcess(ctx context.Context, progress io.Writer, c logAppendConfig, dir string, res map[string]any) error {
	value := telemetry(rand.New(rand.NewPCG(1, 2)), 0, 0, c.payload)
	if c.diskProbe > 0 {
		fmt.Fprintf(progress, "log-append: the disk alone: one 4 KiB overwrite and fdatasync at a time, for %v\n", c.diskProbe)
		lat, err := laDiskProbe(ctx, filepath.Join(dir, "disk-probe"), c.diskProbe)
		if err != nil {
			return err
		}
		q := func(p float64) float64 { return laQuantileMs(lat, p) }
		res["disk_fsync_p50_ms"], res["disk_fsync_p99_ms"], res["disk_fsync_p99_6_ms"], res["disk_fsync_max_ms"] = q(0.5), q(0.99), q(0.996), q(1)
		fmt.Fprintf(progress, "log-append: the disk alone: fdatasync p50 %.3f ms, p99 %.3f, p99.6 %.3f, max %.3f (%d samples)\n", q(0.5), q(0.99), q(0.996), q(1), len(lat))
	}
	{
		clog, err := commitlog.Open(filepath.Join(dir, "inprocess-latency"), commitlog.Options{})
		if err != nil {
			return err
		}
		fmt.Fprintf(progress, "log-append: in process: %.0f appends/s from %d goroutines for %v after %v of warm-up\n", c.rate, c.goroutines, c.duration, c.warmup)
		if c.trace != "" {
			f, err := os.Create(c.trace)
			if err != nil {
				return err
			}
			defer f.Close()
			if err := trace.Start(f); err != nil {
				return err
			}
		}
		stopProfile, err := laProfile(c.cpuProfile, "-rate")
		if err != nil {
			return err
		}
		cpu0 := processCPU()
		lat, sched, achieved, err := laFixedRate(ctx, clog, value, c.rate, c.warmup, c.duration, c.goroutines)
		cpu := processCPU() - cpu0
		stopProfile()
		if c.trace != "" {
			trace.Stop()
		}
		stats := map[string]any{}
		laLogStats(clog, stats)
		clog.Close()
		if err != nil {
			return err
		}
		q := laQuantileMs
		res["offered_rate"] = c.rate
		res["warmup_s"] = c.warmup.Seconds()
		res["latency_run_cpu_us_per_append"] = roundTo(cpu.Seconds()*1e6/(c.rate*(c.warmup+c.duration).Seconds()), 2)
		res["achieved_rate"] = roundTo(achieved, 0)
		res["latency_samples"] = len(lat)
		res["p50_ms"], res["p99_ms"], res["p99_6_ms"], res["p99_996_ms"] = q(lat, 0.5), q(lat, 0.99), q(lat, 0.996), q(lat, 0.99996)
		res["max_ms"] = q(lat, 1)
		res["sched_p50_ms"], res["sched_p99_ms"], res["sched_p99_6_ms"], res["sched_p99_996_ms"] = q(sched, 0.5), q(sched, 0.99), q(sched, 0.996), q(sched, 0.99996)
		for k, v := range stats {
			res["latency_run_"+k] = v
		}
		fmt.Fprintf(progress, "log-append: in process: p50 %.3f ms, p99 %.3f, p99.6 %.3f, p99.996 %.3f, max %.3f (%v)\n",
			res["p50_ms"], res["p99_ms"], res["p99_6_ms"], res["p99_996_ms"], res["max_ms"], stats)
	}
	clog, err := commitlog.Open(filepath.Join(dir, "inprocess-max"), commitlog.Options{})
	if err != nil {
		return err
	}
	defer clog.Close()
	fmt.Fprintf(progress, "log-append: in process: maximum, %d goroutines × %d single-record AppendAsync in flight, for %v\n", c.goroutines, c.asyncWindow, c.maxDuration)
	stopProfile, err := laProfile(c.cpuProfile, "-max")
	if err != nil {
		return err
	}
	rate, err := laMaxRate(ctx, clog, value, c.warmup, c.maxDuration, c.goroutines, c.asyncWindow)
	stopProfile()
	if err != nil {
		return err
	}
	res["inprocess_msgs_per_s"] = roundTo(rate, 0)
	stats := map[string]any{}
	laLogStats(clog, stats)
	for k, v := range stats {
		res["inprocess_"+k] = v
	}
	fmt.Fprintf(progress, "log-append: in process: maximum %.0f appends/s (%v)\n", rate, stats)
	return nil
}

// laFixedRate offers rate single-record blocking Appends per second from
// g goroutines for warmup+d. Goroutine w makes its k-th append at start +
// (k·g + w)/rate, or at once if it is late. It returns the sorted
// latencies, from the call and from the scheduled time, of the appends
// scheduled after the warm-up, and the rate achieved for them.
func laFixedRate(ctx context.Context, clog commitlog.Log, value []byte, rate float64, warmup, d time.Duration, g int) (lat, sched []time.Duration, achieved float64, err error) {
	total := int(rate * (warmup + d).Seconds())
	measured := int(rate * warmup.Seconds()) // the first measured append
	lats := make([][]time.Duration, g)
	scheds := make([][]time.Duration, g)
	var firstErr atomic.Pointer[error]
	start := time.Now().Add(10 * time.Millisecond)
	var wg sync.WaitGroup
	for w := range g {
		wg.Go(func() {
			producer := fmt.Sprint("p", w)
			topic := fmt.Sprint("devices/d-", w%100, "/telemetry")
			t := time.NewTimer(time.Hour)
			defer t.Stop()
			recs := []commitlog.Record{{Topic: topic, Producer: producer, Value: value}}
			for k := 0; ; k++ {
				i := k*g + w
				if i >= total || ctx.Err() != nil || firstErr.Load() != nil {
					return
				}
				due := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
				if wait := time.Until(due); wait > 0 {
					t.Reset(wait)
					<-t.C
				}
				recs[0].ProducerSeq = uint64(k + 1)
				t0 := time.Now()
				if _, err := clog.Append(ctx, recs); err != nil {
					firstErr.CompareAndSwap(nil, &err)
					return
				}
				if i >= measured {
					now := time.Now()
					lats[w] = append(lats[w], now.Sub(t0))
					scheds[w] = append(scheds[w], now.Sub(due))
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start.Add(warmup))
	if p := firstErr.Load(); p != nil {
		return nil, nil, 0, *p
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, 0, err
	}
	lat, sched = slices.Concat(lats...), slices.Concat(scheds...)
	slices.Sort(lat)
	slices.Sort(sched)
	if len(lat) == 0 {
		return nil, nil, 0, errors.New("no appends")
	}
	return lat, sched, float64(len(lat)) / elapsed.Seconds(), nil
}

// laMaxRate runs g goroutines, each keeping window single-record
// AppendAsync calls in flight, for warmup+d, and returns appends
// acknowledged per second after the warm-up.
func laMaxRate(ctx context.Context, clog commitlog.Log, value []byte, warmup, d time.Duration, g, window int) (float64, error) {
	var acked atomic.Int64
	var firstErr atomic.Pointer[error]
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range g {
		wg.Go(func() {
			producer := fmt.Sprint("max-", w)
			topic := fmt.Sprint("devices/d-", w%100, "/telemetry")
			sem := make(chan struct{}, window)
			var inflight sync.WaitGroup
			defer inflight.Wait()
			for seq := uint64(1); ; seq++ {
				select {
				case sem <- struct{}{}:
				case <-stop:
					return
				}
				inflight.Add(1)
				clog.AppendAsync([]commitlog.Record{{Topic: topic, Producer: producer, ProducerSeq: seq, Value: value}}, func(_ commitlog.AppendResult, err error) {
					if err != nil {
						firstErr.CompareAndSwap(nil, &err)
					} else {
						acked.Add(1)
					}
					<-sem
					inflight.Done()
				})
			}
		})
	}
	t := time.NewTimer(warmup)
	select {
	case <-t.C:
	case <-ctx.Done():
	}
	n0, t0 := acked.Load(), time.Now()
	t.Reset(d)
	select {
	case <-t.C:
	case <-ctx.Done():
	}
	n := acked.Load() - n0
	elapsed := time.Since(t0)
	close(stop)
	wg.Wait()
	if p := firstErr.Load(); p != nil {
		return 0, *p
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	return float64(n) / elapsed.Seconds(), nil
}

// ---- helpers ----

// laQuantileMs is the p-quantile of sorted latencies, in milliseconds.
func laQuantileMs(lat []time.Duration, p float64) float64 {
	return roundTo(float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Nanoseconds())/1e6, 3)
}

// laDiskProbe measures the disk under the log: it overwrites 4 KiB of a
// zero-filled file and fdatasyncs it, one at a time, for d, and returns
// the sorted fdatasync latencies. No log can acknowledge durably faster
// than this on the same disk at the same moment.
func laDiskProbe(ctx context.Context, path string, d time.Duration) ([]time.Duration, error) {
	const size = 64 << 20
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	defer os.Remove(path)
	defer f.Close()
	zero := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(zero)) {
		if _, err := f.WriteAt(zero, off); err != nil {
			return nil, err
		}
	}
	if err := f.Sync(); err != nil {
		return nil, err
	}
	page := make([]byte, 4096)
	var lat []time.Duration
	for off, end := int64(0), time.Now().Add(d); time.Now().Before(end) && ctx.Err() == nil; off = (off + 4096) % size {
		page[0]++
		if _, err := f.WriteAt(page, off); err != nil {
			return nil, err
		}
		t0 := time.Now()
		if err := syscall.Fdatasync(int(f.Fd())); err != nil {
			return nil, err
		}
		lat = append(lat, time.Since(t0))
	}
	if len(lat) == 0 {
		return nil, errors.New("disk probe: no samples")
	}
	slices.Sort(lat)
	return lat, ctx.Err()
}

// laProfile starts a CPU profile into name with suffix before its
// extension, if name is set, and returns its stop function.
func laProfile(name, suffix string) (stop func(), err error) {
	if name == "" {
		return func() {}, nil
	}
	ext := filepath.Ext(name)
	f, err := os.Create(strings.TrimSuffix(name, ext) + suffix + ext)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func laRound(v []float64, places int) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = roundTo(x, places)
	}
	return out
}

// laNum reads a number from a child's RESULT.
func laNum(m map[string]any, key string) float64 {
	f, _ := m[key].(float64)
	return f
}
