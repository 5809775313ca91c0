package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/tributary-io/tributary/cloud/server"
	"github.com/tributary-io/tributary/edge/gateway"
	"github.com/tributary-io/tributary/sync/link"
)

// inprocCloud runs cloud/server in this process. A kill cancels it and
// closes it without waiting for anything else: what Go can do to a part of
// its own process. It is not a crash (open files are closed, the log's
// buffers flushed); run with processes for SIGKILL.
type inprocCloud struct {
	cfg  server.Config // ports fixed after the first start
	log  *slog.Logger
	base context.Context

	mu     sync.Mutex
	srv    *server.Server
	cancel context.CancelFunc
	done   chan struct{}
	next   uint64 // the log's end when last seen
	pkiDir string
}

var _ cloudNode = (*inprocCloud)(nil)

func newInprocCloud(base context.Context, cfg server.Config, log *slog.Logger) *inprocCloud {
	return &inprocCloud{cfg: cfg, log: log, base: base}
}

func (c *inprocCloud) Start(context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.srv != nil {
		return errors.New("cloud already running")
	}
	srv, err := server.New(c.cfg, c.log)
	if err != nil {
		return err
	}
	// Restarts bind the same ports: gateways' relays and the API reader
	// keep their addresses.
	c.cfg.Sync.Listen = srv.SyncAddr().String()
	c.cfg.API.Listen = srv.APIAddr().String()
	c.pkiDir = srv.PKIDir()
	ctx, cancel := context.WithCancel(c.base)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
			c.log.Error("cloud stopped", "err", err)
		}
	}()
	c.srv, c.cancel, c.done = srv, cancel, done
	return nil
}

func (c *inprocCloud) stop() error {
	// Detach the server under the lock (a log read in progress finishes
	// first), then stop it without holding the lock, so NextOffset and
	// ReadLog answer (errDown) while it closes.
	c.mu.Lock()
	srv, cancel, done := c.srv, c.cancel, c.done
	if srv == nil {
		c.mu.Unlock()
		return nil
	}
	c.next = srv.Log().NextOffset()
	c.srv = nil
	c.mu.Unlock()
	cancel()
	<-done
	return srv.Close()
}

func (c *inprocCloud) Kill() error  { return c.stop() }
func (c *inprocCloud) Close() error { return c.stop() }

func (c *inprocCloud) SyncAddr() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cfg.Sync.Listen
}

func (c *inprocCloud) PKIDir() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pkiDir
}

func (c *inprocCloud) NextOffset() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.srv != nil {
		c.next = c.srv.Log().NextOffset()
	}
	return c.next
}

func (c *inprocCloud) ReadLog(from uint64, max int, fn func(logRecord)) (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.srv == nil {
		return from, errDown
	}
	recs, err := c.srv.Log().Read(from, max, 8<<20)
	if err != nil {
		return from, fmt.Errorf("read central log at %d: %w", from, err)
	}
	for _, r := range recs {
		lr := logRecord{Offset: r.Offset, Time: r.Time, Topic: r.Topic, Producer: r.Producer, Seq: r.ProducerSeq}
		if err := decodeLogValue(&lr, r.Value); err != nil {
			return from, err
		}
		fn(lr)
		from = r.Offset + 1
	}
	return from, nil
}

// inprocEdge runs edge/gateway in this process. A kill cancels its link and
// closes it (the broker disconnects every device; the outbox commits what is
// queued): not a crash, see inprocCloud.
type inprocEdge struct {
	id   string
	cfg  gateway.Config // MQTT address fixed after the first start
	log  *slog.Logger
	base context.Context

	mu      sync.Mutex
	g       *gateway.Gateway
	cancel  context.CancelFunc
	done    chan struct{}
	carried edgeStats // counters of past incarnations
	starts  int
}

var _ edgeNode = (*inprocEdge)(nil)

func newInprocEdge(base context.Context, id string, cfg gateway.Config, log *slog.Logger) *inprocEdge {
	return &inprocEdge{id: id, cfg: cfg, log: log, base: base}
}

func (e *inprocEdge) ID() string { return e.id }

func (e *inprocEdge) MQTTAddr() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cfg.MQTT.Listeners.TCP.Address
}

func (e *inprocEdge) Start(context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.g != nil {
		return errors.New("gateway already running")
	}
	g, err := gateway.New(e.cfg, e.log)
	if err != nil {
		return err
	}
	e.cfg.MQTT.Listeners.TCP.Address = g.MQTTAddr()
	ctx, cancel := context.WithCancel(e.base)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := g.Run(ctx); err != nil {
			e.log.Error("gateway link stopped", "err", err)
		}
	}()
	e.g, e.cancel, e.done = g, cancel, done
	e.starts++
	return nil
}

// currentStats reads one incarnation's counters.
func currentStats(g *gateway.Gateway) edgeStats {
	st := g.Stats()
	s := edgeStats{
		Up: true, Backlog: st.Outbox.Records, Connected: st.Link.State == link.Connected,
		// A full disk shows as commits that failed (ENOSPC) or, before
		// that, as refusals by the outbox's free-space reserve.
		Refused: st.Broker.Rejected, DiskFailures: st.Outbox.FailedRows + st.Outbox.RejectedDiskFull,
		QuotaRejected: st.Outbox.Rejected - st.Outbox.RejectedDiskFull,
		DropsKnown:    true,
	}
	for _, c := range st.Outbox.Classes {
		if c.DroppedOldest > 0 || c.Expired > 0 || c.DroppedDiskFull > 0 {
			if s.Drops == nil {
				s.Drops = map[uint8]classDrops{}
			}
			s.Drops[c.Priority] = classDrops{quota: c.DroppedOldest + c.DroppedDiskFull, expired: c.Expired}
		}
	}
	return s
}

func (e *inprocEdge) Stats() (edgeStats, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := edgeStats{DropsKnown: true}
	if e.g != nil {
		s = currentStats(e.g)
	}
	s.add(e.carried)
	s.Restarts = max(e.starts-1, 0)
	return s, nil
}

func (e *inprocEdge) stop() error {
	// As inprocCloud.stop: close outside the lock so Stats keeps answering.
	e.mu.Lock()
	g, cancel, done := e.g, e.cancel, e.done
	e.g = nil
	e.mu.Unlock()
	if g == nil {
		return nil
	}
	cancel()
	<-done
	err := g.Close()
	// Read the counters after Close: it commits what was queued.
	e.mu.Lock()
	e.carried.add(currentStats(g))
	e.mu.Unlock()
	return err
}

func (e *inprocEdge) Kill() error  { return e.stop() }
func (e *inprocEdge) Close() error { return e.stop() }
