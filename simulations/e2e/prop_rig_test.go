package e2e_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/tributary-io/tributary/cloud/server"
	"github.com/tributary-io/tributary/simulations/ledger"
	"github.com/tributary-io/tributary/simulations/procs"
	"github.com/tributary-io/tributary/sync/faultnet"
)

// rig is one cloud and one gateway as processes, the gateway optionally
// dialling the cloud through a faultnet relay run in the test process. Both
// can be killed and restarted on the same data and ports.
type rig struct {
	t         *testing.T
	dir       string
	gateway   string
	cloud     *procs.Cloud
	cloudOpts procs.CloudOptions
	edge      *procs.Edge
	edgeOpts  procs.EdgeOptions
	relay     *faultnet.Relay // nil: the gateway dials the cloud directly
	metrics   string          // the gateway's /metrics URL
}

// rigConfig says how a rig runs.
type rigConfig struct {
	// CloudYAML and EdgeYAML, if set, are written to config files passed
	// with -config (flags set the addresses and directories).
	CloudYAML, EdgeYAML string
	// Relay puts a faultnet relay between gateway and cloud, seeded with
	// RelaySeed.
	Relay     bool
	RelaySeed uint64
}

func startRig(t *testing.T, rc rigConfig) *rig {
	t.Helper()
	r := &rig{t: t, dir: t.TempDir(), gateway: "gw-1"}
	var cloudArgs, edgeArgs []string
	if rc.CloudYAML != "" {
		p := filepath.Join(r.dir, "cloud.yaml")
		if err := os.WriteFile(p, []byte(rc.CloudYAML), 0o644); err != nil {
			t.Fatal(err)
		}
		cloudArgs = []string{"-config", p}
	}
	if rc.EdgeYAML != "" {
		p := filepath.Join(r.dir, "edge.yaml")
		if err := os.WriteFile(p, []byte(rc.EdgeYAML), 0o644); err != nil {
			t.Fatal(err)
		}
		edgeArgs = []string{"-config", p}
	}
	r.cloudOpts = procs.CloudOptions{DataDir: filepath.Join(r.dir, "cloud"), ExtraArgs: cloudArgs}
	r.startCloud()
	// Fix the ports the restarts reuse.
	r.cloudOpts = r.cloud.Options("")
	r.cloudOpts.ExtraArgs = cloudArgs

	cloudAddr := r.cloud.SyncAddr
	if rc.Relay {
		relay, err := faultnet.New(faultnet.Config{Target: r.cloud.SyncAddr, Seed: rc.RelaySeed})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { relay.Close() })
		r.relay = relay
		cloudAddr = relay.Addr().String()
	}
	mp, err := procs.FreePort("tcp")
	if err != nil {
		t.Fatal(err)
	}
	metrics := "127.0.0.1:" + strconv.Itoa(mp)
	r.metrics = "http://" + metrics + "/metrics"
	r.edgeOpts = procs.EdgeOptions{
		GatewayID: r.gateway, DataDir: filepath.Join(r.dir, r.gateway), CloudAddr: cloudAddr,
		DevCADir:  filepath.Join(r.cloud.DataDir, "pki"),
		ExtraArgs: append([]string{"-metrics-listen", metrics}, edgeArgs...),
	}
	r.startEdge()
	r.edgeOpts = r.edge.Options(r.edgeOpts)
	return r
}

func (r *rig) startCloud() {
	r.t.Helper()
	c, err := procs.StartCloud(context.Background(), bins, r.cloudOpts)
	if err != nil {
		r.t.Fatal(err)
	}
	r.cloud = c
	r.t.Cleanup(func() {
		if exited, _ := c.Exited(); !exited {
			c.Kill()
		}
		if r.t.Failed() {
			r.t.Logf("cloud (pid %d) log tail:\n%s", c.PID(), c.Tail(30))
		}
	})
}

func (r *rig) startEdge() {
	r.t.Helper()
	e, err := procs.StartEdge(context.Background(), bins, r.edgeOpts)
	if err != nil {
		r.t.Fatal(err)
	}
	r.edge = e
	r.t.Cleanup(func() {
		if exited, _ := e.Exited(); !exited {
			e.Kill()
		}
		if r.t.Failed() {
			r.t.Logf("edge (pid %d) log tail:\n%s", e.PID(), e.Tail(30))
		}
	})
}

// edgeMetric scrapes one unlabelled-or-gateway-labelled metric of the
// gateway; an error means it could not be read (the gateway may be down).
func (r *rig) edgeMetric(name string) (float64, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(r.metrics)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	s := bufio.NewScanner(resp.Body)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		line := s.Text()
		if strings.HasPrefix(line, name+"{") || strings.HasPrefix(line, name+" ") {
			f := strings.Fields(line)
			return strconv.ParseFloat(f[len(f)-1], 64)
		}
	}
	return 0, fmt.Errorf("metric %s not found", name)
}

// waitDrained polls until the gateway's outbox is empty, within limit.
func (r *rig) waitDrained(limit time.Duration) {
	r.t.Helper()
	var last float64 = -1
	var lastErr error
	deadline := time.Now().Add(limit)
	for {
		n, err := r.edgeMetric("tributary_edge_outbox_records")
		if err == nil && n == 0 {
			return
		}
		last, lastErr = n, err
		if time.Now().After(deadline) {
			r.t.Fatalf("the outbox did not drain within %v: %v records left (err %v)", limit, last, lastErr)
		}
		time.Sleep(50 * time.Millisecond) // polling interval
	}
}

// logRecord is one simulation message found in the central log.
type logRecord struct {
	offset  uint64
	gateway string
	seq     uint64
	key     ledger.Key
}

// readLog returns every simulation record of the central log in log order.
// Records that are not simulation messages fail the test.
func (r *rig) readLog() []logRecord {
	r.t.Helper()
	var out []logRecord
	err := r.cloud.ReadLog(func(e server.LogEntry) error {
		if strings.HasPrefix(e.Topic, "$") {
			return nil
		}
		var ev event.Event
		if err := json.Unmarshal(e.Event, &ev); err != nil {
			return fmt.Errorf("log offset %d: %w", e.Offset, err)
		}
		p, err := ledger.ParsePayload(ev.Data())
		if err != nil {
			return fmt.Errorf("log offset %d: %w", e.Offset, err)
		}
		out = append(out, logRecord{offset: e.Offset, gateway: e.Gateway, seq: e.GatewaySeq, key: ledger.Key{Device: p.Device, N: p.N}})
		return nil
	})
	if err != nil {
		r.t.Fatalf("read the central log: %v", err)
	}
	return out
}
