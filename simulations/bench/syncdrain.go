package bench

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cloudevents/sdk-go/binding/format/protobuf/v2/pb"
	"github.com/quic-go/quic-go"
	"google.golang.org/protobuf/proto"

	"github.com/tributary-io/tributary/cloud/commitlog"
	"github.com/tributary-io/tributary/cloud/ingest"
	"github.com/tributary-io/tributary/edge/gateway"
	"github.com/tributary-io/tributary/edge/outbox"
	"github.com/tributary-io/tributary/sync/link"
	"github.com/tributary-io/tributary/sync/pki"
)

// The sync-drain scenario measures how fast one gateway's backlog reaches the
// cloud: a real SQLite outbox (synchronous=FULL) pre-filled with -records
// messages is drained over real QUIC with mTLS on loopback into a real
// commit log that fsyncs before it acknowledges, until the last record is
// acknowledged and deleted from the outbox. The log is then read back in full
// and checked against the outbox: every seq exactly once, in order, with the
// payload that was committed.
//
// Both sides run in this process. A child process would isolate the two
// garbage collectors, but on a 2-core machine the processes would share the
// same cores anyway, and in one process a single -cpuprofile shows where the
// whole drain spends its CPU, and the log can be verified directly.
//
// Beside it, the same run measures raw quic-go throughput on one stream
// (64 KiB writes, the same mTLS configuration): the ceiling for the link.
func init() {
	Register(Scenario{
		Name:  "sync-drain",
		Brief: "drain a pre-filled SQLite outbox over QUIC into a durable commit log; raw quic-go beside it",
		Flags: syncDrainFlags,
	})
}

type syncDrainConfig struct {
	records, payload, devices int
	fillRows, fillQueue       int
	rawBytes                  int64
	window, batchRecords      int
	batchBytes                int
	timeout                   time.Duration
	cpuProfile, trace, dir    string
	keep                      bool
}

func syncDrainFlags(fs *flag.FlagSet) func(context.Context, io.Writer) (map[string]any, error) {
	var c syncDrainConfig
	fs.IntVar(&c.records, "records", 1_000_000, "records pre-filled into the outbox")
	fs.IntVar(&c.payload, "payload", 200, "payload bytes per record (JSON telemetry, at least 64)")
	fs.IntVar(&c.devices, "devices", 100, "distinct devices (MQTT client ids and topics) the records come from")
	fs.IntVar(&c.fillRows, "fill-group-rows", 10000, "outbox MaxBatchRows while filling (rows per group commit)")
	fs.IntVar(&c.fillQueue, "fill-queue", 50000, "outbox QueueLimit while filling (appends in flight)")
	fs.Int64Var(&c.rawBytes, "raw-bytes", 1<<30, "bytes sent for the raw quic-go measurement (0 skips it)")
	fs.IntVar(&c.window, "window", 0, "link window in batches (0: the client's default)")
	fs.IntVar(&c.batchRecords, "batch-records", 0, "records per batch (0: the client's default)")
	fs.IntVar(&c.batchBytes, "batch-bytes", 0, "payload bytes per batch (0: the client's default)")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Minute, "give up on the drain after this long")
	fs.StringVar(&c.cpuProfile, "cpuprofile", "", "write a CPU profile of the drain (only) to this file")
	fs.StringVar(&c.trace, "trace", "", "write an execution trace of the drain (only) to this file")
	fs.StringVar(&c.dir, "dir", "", "directory for the outbox and the log (default: a new temporary directory)")
	fs.BoolVar(&c.keep, "keep", false, "keep the directory afterwards")
	return func(ctx context.Context, progress io.Writer) (map[string]any, error) {
		return runSyncDrain(ctx, progress, c)
	}
}

const benchGateway = "gw-bench"

func runSyncDrain(ctx context.Context, progress io.Writer, c syncDrainConfig) (map[string]any, error) {
	if c.records < 1 || c.payload < 64 || c.devices < 1 || c.fillRows < 0 || c.fillQueue < 0 || c.rawBytes < 0 {
		return nil, errors.New("sync-drain: -records and -devices must be positive, -payload at least 64")
	}
	dir := c.dir
	if dir == "" {
		d, err := os.MkdirTemp("", "tributary-bench-sync-drain-")
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
	serverTLS, clientTLS, err := benchTLS()
	if err != nil {
		return nil, err
	}
	res := map[string]any{"records": c.records, "payload_bytes": c.payload}

	if c.rawBytes > 0 {
		fmt.Fprintf(progress, "sync-drain: raw quic-go, one stream, %d MiB in 64 KiB writes\n", c.rawBytes>>20)
		mbps, err := rawQUIC(ctx, serverTLS, clientTLS, c.rawBytes)
		if err != nil {
			return nil, fmt.Errorf("raw quic: %w", err)
		}
		res["raw_quic_mb_per_s"] = roundTo(mbps, 1)
		fmt.Fprintf(progress, "sync-drain: raw quic-go %.1f MB/s\n", mbps)
	}

	ob, err := outbox.Open(filepath.Join(dir, "outbox.db"), outbox.Options{
		Synchronous:  "full",
		MaxBatchRows: c.fillRows,
		QueueLimit:   c.fillQueue,
	})
	if err != nil {
		return nil, err
	}
	defer ob.Close()

	fmt.Fprintf(progress, "sync-drain: filling the outbox with %d records of %d bytes\n", c.records, c.payload)
	fillStart, fillCPU := time.Now(), processCPU()
	sums, err := fillOutbox(ctx, ob, c)
	if err != nil {
		return nil, err
	}
	fill := time.Since(fillStart)
	res["fill_cpu_us_per_msg"] = roundTo((processCPU()-fillCPU).Seconds()*1e6/float64(c.records), 2)
	st := ob.Stats()
	res["fill_s"] = roundTo(fill.Seconds(), 3)
	res["fill_msgs_per_s"] = roundTo(float64(c.records)/fill.Seconds(), 0)
	res["fill_rows_per_commit"] = roundTo(st.RowsPerCommit(), 1)
	fmt.Fprintf(progress, "sync-drain: filled in %v (%.0f msg/s, %.0f rows per commit)\n",
		fill.Round(time.Millisecond), float64(c.records)/fill.Seconds(), st.RowsPerCommit())
	lastSeq := st.LastSeq

	clog, err := commitlog.Open(filepath.Join(dir, "log"), commitlog.Options{})
	if err != nil {
		return nil, err
	}
	defer clog.Close()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := link.NewServer(link.ServerConfig{TLS: serverTLS}, &ingest.Sink{Log: clog})
	srvErr := make(chan error, 1)
	go func() { srvErr <- srv.Serve(context.Background(), pc) }()
	defer func() {
		srv.Close()
		<-srvErr
	}()

	client := link.NewClient(link.ClientConfig{
		Addr:            pc.LocalAddr().String(),
		TLS:             clientTLS,
		GatewayID:       benchGateway,
		Window:          c.window,
		MaxBatchRecords: c.batchRecords,
		MaxBatchBytes:   c.batchBytes,
	}, gateway.NewSource(ob, benchGateway))

	if c.cpuProfile != "" {
		f, err := os.Create(c.cpuProfile)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return nil, err
		}
	}
	if c.trace != "" {
		f, err := os.Create(c.trace)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if err := trace.Start(f); err != nil {
			return nil, err
		}
	}
	res["load_avg_1m_before"] = loadAverage()
	var gcBefore runtime.MemStats
	runtime.ReadMemStats(&gcBefore)
	fmt.Fprintln(progress, "sync-drain: draining")
	cctx, cancel := context.WithCancel(ctx)
	runErr := make(chan error, 1)
	drainCPU := processCPU()
	drainRunq, runqOK := runQueueWait()
	drainStart := time.Now()
	go func() { runErr <- client.Run(cctx) }()
	drain, err := waitDrained(ctx, progress, client, ob, lastSeq, drainStart, c.timeout)
	drainCPU = processCPU() - drainCPU
	if after, ok := runQueueWait(); ok && runqOK {
		drainRunq = after - drainRunq
	} else {
		runqOK = false
	}
	if c.cpuProfile != "" {
		pprof.StopCPUProfile()
	}
	if c.trace != "" {
		trace.Stop()
	}
	cancel()
	if rerr := <-runErr; rerr != nil && err == nil {
		err = rerr
	}
	if err != nil {
		return nil, err
	}
	var gcAfter runtime.MemStats
	runtime.ReadMemStats(&gcAfter)

	cs, ss := client.Stats(), srv.Stats()
	secs := drain.Seconds()
	res["drain_s"] = roundTo(secs, 3)
	res["msgs_per_s"] = roundTo(float64(c.records)/secs, 0)
	res["payload_mb_per_s"] = roundTo(float64(c.records)*float64(c.payload)/secs/1e6, 2)
	// CPU per message counts both sides (this process runs both): on a
	// shared, loaded machine it is steadier than the rate, and on N cores
	// it bounds the rate at N/cpu_us_per_msg million messages per second.
	res["load_avg_1m_after"] = loadAverage()
	res["drain_cpu_s"] = roundTo(drainCPU.Seconds(), 3)
	res["cpu_us_per_msg"] = roundTo(drainCPU.Seconds()*1e6/float64(c.records), 2)
	res["cores_busy"] = roundTo(drainCPU.Seconds()/secs, 2)
	if runqOK {
		// Threads of this process ready to run but waiting for a core
		// (the kernel's run_delay). On a shared machine cores_busy well
		// under the core count with a large wait means the drain was
		// short of CPU, not waiting on itself: cores_waited is the
		// average number of its threads kept off a core.
		res["runq_wait_s"] = roundTo(drainRunq.Seconds(), 3)
		res["cores_waited"] = roundTo(drainRunq.Seconds()/secs, 2)
	}
	res["batches"] = cs.BatchesSent
	res["wire_bytes"] = cs.BytesSent
	res["wire_mb_per_s"] = roundTo(float64(cs.BytesSent)/secs/1e6, 2)
	if cs.BytesSent > 0 {
		res["compression_ratio"] = roundTo(float64(cs.RawBytes)/float64(cs.BytesSent), 2)
	}
	res["sessions"] = cs.Sessions
	res["records_sent"] = cs.RecordsSent
	res["server_records"] = ss.Records
	res["gc_cycles"] = gcAfter.NumGC - gcBefore.NumGC
	if raw, ok := res["raw_quic_mb_per_s"].(float64); ok && raw > 0 {
		res["wire_vs_raw_quic"] = roundTo(float64(cs.BytesSent)/secs/1e6/raw, 3)
	}
	fmt.Fprintf(progress, "sync-drain: drained in %v: %.0f msg/s, %d batches, %d wire bytes (compression %.2f)\n",
		drain.Round(time.Millisecond), float64(c.records)/secs, cs.BatchesSent, cs.BytesSent, float64(cs.RawBytes)/float64(max(cs.BytesSent, 1)))

	fmt.Fprintln(progress, "sync-drain: verifying the log")
	v, err := verifyLog(clog, benchGateway, sums)
	if err != nil {
		return nil, err
	}
	res["lost"], res["duplicates"], res["out_of_order"], res["mismatched"] = v.lost, v.duplicates, v.outOfOrder, v.mismatched
	res["log_records"] = v.total
	if v.lost+v.duplicates+v.outOfOrder+v.mismatched > 0 {
		fmt.Fprintf(progress, "sync-drain: LOG CHECK FAILED: %+v\n", v)
	}
	return res, nil
}

// benchTLS mints a throwaway CA, a server certificate for 127.0.0.1 and a
// gateway certificate, as tributary-cloud's PKI does.
func benchTLS() (server, client *tls.Config, err error) {
	ca, err := pki.NewCA("bench CA", time.Hour)
	if err != nil {
		return nil, nil, err
	}
	srv, err := pki.IssueServer(ca, []string{"127.0.0.1"})
	if err != nil {
		return nil, nil, err
	}
	gw, err := pki.IssueGateway(ca, benchGateway)
	if err != nil {
		return nil, nil, err
	}
	if server, err = pki.ServerTLS(ca.Cert, srv, link.ALPN); err != nil {
		return nil, nil, err
	}
	if client, err = pki.ClientTLS(ca.Cert, gw, "127.0.0.1", link.ALPN); err != nil {
		return nil, nil, err
	}
	return server, client, nil
}

// telemetry returns a JSON payload of exactly size bytes for message n of
// device dev: a dozen sensor readings with random digits (so it compresses
// like real telemetry, not like padding) and a filler field to reach size.
func telemetry(rng *rand.Rand, n, dev, size int) []byte {
	b := make([]byte, 0, size)
	b = append(b, `{"dev":"d-`...)
	b = strconv.AppendInt(b, int64(dev), 10)
	b = append(b, `","n":`...)
	b = strconv.AppendInt(b, int64(n), 10)
	b = append(b, `,"ts":`...)
	b = strconv.AppendInt(b, 1_700_000_000_000+int64(n)*10, 10)
	for i, k := range []string{"temp", "hum", "pres", "volt", "amp", "rpm", "vib", "co2"} {
		b = append(b, `,"`...)
		b = append(b, k...)
		b = append(b, `":`...)
		b = strconv.AppendFloat(b, float64(i*10)+rng.Float64()*100, 'f', 3, 64)
	}
	b = append(b, `,"x":"`...)
	for len(b) < size-2 {
		b = append(b, "0123456789abcdef"[rng.IntN(16)])
	}
	b = append(b, `"}`...)
	if len(b) > size { // size too small for the readings: cut, still valid bytes
		b = b[:size]
	}
	return b
}

// fillOutbox appends c.records messages from several goroutines (payload
// generation runs in parallel; the outbox groups the queued appends into
// large commits) and returns the CRC-32 of each payload, indexed by the seq
// the outbox gave it.
func fillOutbox(ctx context.Context, ob *outbox.Outbox, c syncDrainConfig) ([]uint32, error) {
	sums := make([]uint32, c.records+1)
	var (
		wg       sync.WaitGroup
		firstErr atomic.Pointer[error]
		badSeq   atomic.Uint64
	)
	workers := max(runtime.GOMAXPROCS(0), 2)
	received := time.Now()
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for n := w; n < c.records; n += workers {
				if ctx.Err() != nil {
					return
				}
				dev := n % c.devices
				payload := telemetry(rng, n, dev, c.payload)
				sum := crc32.ChecksumIEEE(payload)
				id := "d-" + strconv.Itoa(dev)
				wg.Add(1)
				ob.Append(outbox.Message{
					ClientID: id,
					Topic:    "devices/" + id + "/telemetry",
					Payload:  payload,
					QoS:      1,
					Received: received.Add(time.Duration(n) * time.Microsecond),
				}, func(seq uint64, err error) {
					defer wg.Done()
					switch {
					case err != nil:
						firstErr.CompareAndSwap(nil, &err)
					case seq == 0 || seq >= uint64(len(sums)):
						badSeq.Store(seq)
					default:
						sums[seq] = sum // callbacks run on the outbox's writer goroutine, one at a time
					}
				})
			}
		})
	}
	wg.Wait()
	if p := firstErr.Load(); p != nil {
		return nil, fmt.Errorf("fill: %w", *p)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if s := badSeq.Load(); s != 0 {
		return nil, fmt.Errorf("fill: outbox assigned seq %d to a fresh outbox of %d records", s, c.records)
	}
	return sums, nil
}

// waitDrained polls until the client has the cloud's ack for lastSeq and
// the outbox holds nothing, and returns the time since start.
func waitDrained(ctx context.Context, progress io.Writer, c *link.Client, ob *outbox.Outbox, lastSeq uint64, start time.Time, timeout time.Duration) (time.Duration, error) {
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	report := start.Add(time.Second)
	deadline := start.Add(timeout)
	for {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case now := <-tick.C:
			cs := c.Stats()
			if cs.AckedSeq >= lastSeq && ob.Stats().Records == 0 {
				return time.Since(start), nil
			}
			if now.After(report) {
				report = report.Add(time.Second)
				fmt.Fprintf(progress, "sync-drain: %v acked %d of %d (%s)\n", now.Sub(start).Round(time.Second), cs.AckedSeq, lastSeq, cs.State)
			}
			if now.After(deadline) {
				return 0, fmt.Errorf("sync-drain: not drained after %v: client %+v, outbox holds %d", timeout, cs, ob.Stats().Records)
			}
		}
	}
}

type logCheck struct {
	total, lost, duplicates, outOfOrder, mismatched int
}

// verifyLog reads the whole log and compares it with the outbox's records:
// lost counts seqs missing from the log, duplicates extra copies,
// outOfOrder records whose seq is not above the previous one's, and
// mismatched records whose event id or payload is not what was committed.
func verifyLog(clog commitlog.Log, gw string, sums []uint32) (logCheck, error) {
	var v logCheck
	seen := make([]uint8, len(sums))
	var prev uint64
	var ev pb.CloudEvent
	for from := clog.FirstOffset(); from < clog.NextOffset(); {
		recs, err := clog.Read(from, 10000, 16<<20)
		if err != nil {
			return v, fmt.Errorf("read log at %d: %w", from, err)
		}
		if len(recs) == 0 {
			break
		}
		for _, r := range recs {
			from = r.Offset + 1
			v.total++
			seq := r.ProducerSeq
			if r.Producer != gw || seq == 0 || seq >= uint64(len(sums)) {
				v.mismatched++
				continue
			}
			if seen[seq] > 0 {
				v.duplicates++
			}
			seen[seq] = min(seen[seq]+1, 255)
			if seq <= prev {
				v.outOfOrder++
			}
			prev = seq
			if err := proto.Unmarshal(r.Value, &ev); err != nil || ev.GetId() != gateway.EventID(gw, seq) ||
				crc32.ChecksumIEEE(ev.GetBinaryData()) != sums[seq] {
				v.mismatched++
			}
		}
	}
	for seq := 1; seq < len(sums); seq++ {
		if seen[seq] == 0 {
			v.lost++
		}
	}
	return v, nil
}

// rawQUIC sends total bytes over one quic-go stream in 64 KiB writes on
// loopback, with the link's TLS configurations, and returns MB/s (10^6
// bytes) from the first write to the receiver reading the end of the stream.
func rawQUIC(ctx context.Context, serverTLS, clientTLS *tls.Config, total int64) (float64, error) {
	sconf := serverTLS.Clone()
	sconf.NextProtos = []string{"tributary-bench-raw"}
	cconf := clientTLS.Clone()
	cconf.NextProtos = []string{"tributary-bench-raw"}
	ln, err := quic.ListenAddr("127.0.0.1:0", sconf, &quic.Config{})
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	type result struct {
		n   int64
		end time.Time
		err error
	}
	done := make(chan result, 1)
	go func() {
		conn, err := ln.Accept(ctx)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer conn.CloseWithError(0, "")
		str, err := conn.AcceptStream(ctx)
		if err != nil {
			done <- result{err: err}
			return
		}
		n, err := io.Copy(io.Discard, str)
		done <- result{n: n, end: time.Now(), err: err}
	}()
	conn, err := quic.DialAddr(ctx, ln.Addr().String(), cconf, &quic.Config{})
	if err != nil {
		return 0, err
	}
	defer conn.CloseWithError(0, "")
	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return 0, err
	}
	buf := make([]byte, 64<<10)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	start := time.Now()
	for sent := int64(0); sent < total; {
		n := int64(len(buf))
		if total-sent < n {
			n = total - sent
		}
		if _, err := str.Write(buf[:n]); err != nil {
			return 0, err
		}
		sent += n
	}
	if err := str.Close(); err != nil {
		return 0, err
	}
	r := <-done
	if r.err != nil {
		return 0, r.err
	}
	if r.n != total {
		return 0, fmt.Errorf("received %d of %d bytes", r.n, total)
	}
	return float64(total) / r.end.Sub(start).Seconds() / 1e6, nil
}

// loadAverage is the machine's 1-minute load average (Linux), or -1: the
// rate means little when other work shares the cores, and this says how
// much did.
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	var v float64
	if _, err := fmt.Sscan(string(b), &v); err != nil {
		return -1
	}
	return v
}

// runQueueWait sums, over this process's threads, the time they spent
// runnable but waiting for a CPU (the second field of each thread's
// /proc schedstat: the scheduler's run_delay). Threads that exited in
// between are not counted (the Go runtime rarely ends threads). false when
// the kernel does not provide it.
func runQueueWait() (time.Duration, bool) {
	paths, err := filepath.Glob("/proc/self/task/*/schedstat")
	if err != nil || len(paths) == 0 {
		return 0, false
	}
	var total time.Duration
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // the thread ended since the Glob
		}
		var onCPU, waited, slices int64
		if _, err := fmt.Sscan(string(b), &onCPU, &waited, &slices); err != nil {
			return 0, false
		}
		total += time.Duration(waited)
	}
	return total, true
}

// processCPU is the user and system CPU time this process used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func roundTo(v float64, places int) float64 {
	p := 1.0
	for range places {
		p *= 10
	}
	return float64(int64(v*p+0.5)) / p
}
