package fleet

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/tributary-io/tributary/cloud/server"
	"github.com/tributary-io/tributary/edge/gateway"
	"github.com/tributary-io/tributary/simulations/procs"
)

// httpc is the simulator's client for the children's HTTP endpoints.
var httpc = &http.Client{Timeout: 10 * time.Second}

// writeYAML writes v as a YAML configuration file.
func writeYAML(path string, v any) error {
	b, err := yaml.Marshal(v)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// procCloud runs tributary-cloud as a child process; a kill is SIGKILL.
type procCloud struct {
	bins    procs.Binaries
	opts    procs.CloudOptions // ports fixed after the first start
	cfgPath string

	mu   sync.Mutex
	c    *procs.Cloud
	next uint64
}

var _ cloudNode = (*procCloud)(nil)

// newProcCloud prepares a cloud child with cfg (its subscriptions) written
// to cfgPath; data dir and ports come from flags.
func newProcCloud(bins procs.Binaries, dataDir, cfgPath string, cfg server.Config) (*procCloud, error) {
	if err := writeYAML(cfgPath, cfg); err != nil {
		return nil, fmt.Errorf("cloud config: %w", err)
	}
	return &procCloud{bins: bins, cfgPath: cfgPath, opts: procs.CloudOptions{DataDir: dataDir}}, nil
}

func (c *procCloud) Start(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.c != nil {
		return errors.New("cloud already running")
	}
	o := c.opts
	o.ExtraArgs = []string{"-config", c.cfgPath}
	pc, err := procs.StartCloud(ctx, c.bins, o)
	if err != nil {
		return err
	}
	c.c = pc
	c.opts = pc.Options("")
	return nil
}

func (c *procCloud) Kill() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.c == nil {
		return nil
	}
	c.c.Kill()
	c.c = nil
	return nil
}

func (c *procCloud) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.c == nil {
		return nil
	}
	err := c.c.Stop(15 * time.Second)
	c.c = nil
	return err
}

func (c *procCloud) SyncAddr() string {
	return "127.0.0.1:" + strconv.Itoa(c.opts.SyncPort)
}

func (c *procCloud) PKIDir() string { return filepath.Join(c.opts.DataDir, "pki") }

func (c *procCloud) NextOffset() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.next
}

// apiEvent is the part of an event's structured JSON the simulator reads.
type apiEvent struct {
	Data           json.RawMessage `json:"data"`
	DataBase64     string          `json:"data_base64"`
	DLSubscription string          `json:"dlsubscription"`
	DLReason       string          `json:"dlreason"`
}

func (c *procCloud) ReadLog(from uint64, max int, fn func(logRecord)) (uint64, error) {
	c.mu.Lock()
	pc := c.c
	c.mu.Unlock()
	if pc == nil {
		return from, errDown
	}
	resp, err := pc.Get(fmt.Sprintf("/v1/events?from=%d&limit=%d", from, min(max, 10000)))
	if err != nil {
		return from, fmt.Errorf("%w: %w", errDown, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return from, fmt.Errorf("GET /v1/events?from=%d: %s", from, resp.Status)
	}
	var page server.EventsPage
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil {
		return from, fmt.Errorf("GET /v1/events: %w", err)
	}
	c.mu.Lock()
	c.next = page.End
	c.mu.Unlock()
	for _, e := range page.Events {
		r := logRecord{Offset: e.Offset, Time: e.Time, Topic: e.Topic, Producer: e.Gateway, Seq: e.GatewaySeq}
		if e.DecodeError != "" {
			return from, fmt.Errorf("log record %d: %s", e.Offset, e.DecodeError)
		}
		var ev apiEvent
		if err := json.Unmarshal(e.Event, &ev); err != nil {
			return from, fmt.Errorf("log record %d: %w", e.Offset, err)
		}
		r.Data = ev.Data
		if ev.DataBase64 != "" {
			if r.Data, err = base64.StdEncoding.DecodeString(ev.DataBase64); err != nil {
				return from, fmt.Errorf("log record %d: data_base64: %w", e.Offset, err)
			}
		}
		r.DLSubscription, r.DLReason = ev.DLSubscription, ev.DLReason
		fn(r)
		from = e.Offset + 1
	}
	return from, nil
}

// procEdge runs tributary-edge as a child process; a kill is SIGKILL. Its
// counters come from its /metrics endpoint, which does not export the
// outbox's drop counters (DropsKnown is false).
type procEdge struct {
	id      string
	bins    procs.Binaries
	opts    procs.EdgeOptions
	metrics string // host:port, the same across restarts

	mu      sync.Mutex
	e       *procs.Edge
	last    edgeStats // the running incarnation's last scrape
	carried edgeStats
	starts  int
}

var _ edgeNode = (*procEdge)(nil)

func newProcEdge(bins procs.Binaries, id, dataDir, cfgPath, cloudAddr, devCADir string, cfg gateway.Config) (*procEdge, error) {
	if err := writeYAML(cfgPath, cfg); err != nil {
		return nil, fmt.Errorf("gateway %s config: %w", id, err)
	}
	port, err := procs.FreePort("tcp")
	if err != nil {
		return nil, err
	}
	metrics := "127.0.0.1:" + strconv.Itoa(port)
	// ExtraArgs ends with the metrics address (Start may replace it).
	return &procEdge{
		id: id, bins: bins, metrics: metrics,
		opts: procs.EdgeOptions{
			GatewayID: id, DataDir: dataDir, CloudAddr: cloudAddr, DevCADir: devCADir,
			ExtraArgs: []string{"-config", cfgPath, "-metrics-listen", metrics},
		},
	}, nil
}

func (e *procEdge) ID() string { return e.id }

func (e *procEdge) MQTTAddr() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return "127.0.0.1:" + strconv.Itoa(e.opts.MQTTPort)
}

func (e *procEdge) Start(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.e != nil {
		return errors.New("gateway already running")
	}
	pe, err := e.startOnce(ctx)
	// Ports are picked free and then released before the child binds
	// them; with many gateways starting at once another may take one
	// first. On a first start, pick again (restarts must keep theirs).
	for try := 0; err != nil && e.starts == 0 && try < 3 && strings.Contains(err.Error(), "address already in use"); try++ {
		port, perr := procs.FreePort("tcp")
		if perr != nil {
			return perr
		}
		e.metrics = "127.0.0.1:" + strconv.Itoa(port)
		e.opts.ExtraArgs[len(e.opts.ExtraArgs)-1] = e.metrics
		e.opts.MQTTPort = 0
		pe, err = e.startOnce(ctx)
	}
	if err != nil {
		return err
	}
	e.e = pe
	e.opts = pe.Options(e.opts)
	e.last = edgeStats{}
	e.starts++
	return nil
}

// startOnce starts the child and waits until its metrics answer:
// procs.StartEdge returns once the MQTT port accepts, but the gateway opens
// its metrics listener after that and exits if it cannot.
func (e *procEdge) startOnce(ctx context.Context) (*procs.Edge, error) {
	pe, err := procs.StartEdge(ctx, e.bins, e.opts)
	if err != nil {
		return nil, err
	}
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if exited, werr := pe.Exited(); exited {
			return nil, fmt.Errorf("edge %s exited after starting: %v\n%s", e.id, werr, pe.Tail(5))
		}
		if _, err := e.scrape(); err == nil {
			return pe, nil
		}
		select {
		case <-ctx.Done():
			pe.Kill()
			return nil, ctx.Err()
		case <-deadline.C:
			pe.Kill()
			return nil, fmt.Errorf("edge %s: metrics at %s did not answer within 30 s\n%s", e.id, e.metrics, pe.Tail(5))
		case <-tick.C:
		}
	}
}

// scrape reads the running child's counters. Call with e.mu held (or
// before the child is published in e.e).
func (e *procEdge) scrape() (edgeStats, error) {
	resp, err := httpc.Get("http://" + e.metrics + "/metrics")
	if err != nil {
		return edgeStats{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return edgeStats{}, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	s := edgeStats{Up: true}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "tributary_edge_") {
			continue
		}
		name, rest, _ := strings.Cut(line, "{")
		if !strings.Contains(rest, `gateway="`+e.id+`"`) {
			// Another process holds this port (see startOnce).
			return edgeStats{}, fmt.Errorf("metrics at %s are not %s's: %q", e.metrics, e.id, line)
		}
		if i := strings.LastIndexByte(rest, ' '); i >= 0 {
			rest = rest[i+1:]
		}
		v, err := strconv.ParseFloat(rest, 64)
		if err != nil {
			continue
		}
		switch name {
		case "tributary_edge_outbox_records":
			s.Backlog = uint64(v)
		case "tributary_edge_link_connected":
			s.Connected = v == 1
		case "tributary_edge_mqtt_rejected_total":
			s.Refused = uint64(v)
		case "tributary_edge_outbox_failed_rows_total":
			s.DiskFailures = uint64(v)
		}
	}
	return s, sc.Err()
}

func (e *procEdge) Stats() (edgeStats, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var s edgeStats
	var err error
	if e.e != nil {
		var cur edgeStats
		if cur, err = e.scrape(); err == nil {
			e.last = cur
		}
		s = e.last
		s.Up = true
	}
	s.add(e.carried)
	s.Restarts = max(e.starts-1, 0)
	return s, err
}

func (e *procEdge) Kill() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.e == nil {
		return nil
	}
	// The counters since the last scrape die with the process: read them
	// first.
	if cur, err := e.scrape(); err == nil {
		e.last = cur
	}
	e.e.Kill()
	e.carried.add(e.last)
	e.e = nil
	return nil
}

func (e *procEdge) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.e == nil {
		return nil
	}
	if cur, err := e.scrape(); err == nil {
		e.last = cur
	}
	err := e.e.Stop(15 * time.Second)
	e.carried.add(e.last)
	e.e = nil
	return err
}
