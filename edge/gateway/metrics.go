package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tributary-io/tributary/edge/outbox"
	"github.com/tributary-io/tributary/sync/link"
)

// metricsServer serves /metrics (Prometheus) and /healthz.
type metricsServer struct {
	srv *http.Server
	ln  net.Listener
}

// collector exposes Gateway.Stats as Prometheus metrics, read at scrape
// time so the hot paths keep plain atomic counters.
type collector struct {
	g        *Gateway
	descs    map[string]*prometheus.Desc
	rejected *prometheus.Desc // by priority
	dropped  *prometheus.Desc // by priority and reason
	// backlogAge, commitLatency and mqttDropped are read from the outbox
	// and the broker beside Stats (metrics_backlog.go).
	backlogAge, commitLatency, mqttDropped *prometheus.Desc
}

var metricDefs = []struct {
	name, help string
	counter    bool
	get        func(Stats) float64
}{
	{"tributary_edge_mqtt_clients", "MQTT clients connected now.", false, func(s Stats) float64 { return float64(s.Broker.Clients) }},
	{"tributary_edge_mqtt_received_total", "Publishes received from devices.", true, func(s Stats) float64 { return float64(s.Broker.Received) }},
	{"tributary_edge_mqtt_forwarded_total", "Publishes handed to the outbox.", true, func(s Stats) float64 { return float64(s.Broker.Forwarded) }},
	{"tributary_edge_mqtt_committed_total", "Forwarded publishes committed to the outbox.", true, func(s Stats) float64 { return float64(s.Broker.Committed) }},
	{"tributary_edge_mqtt_commit_errors_total", "Forwarded publishes the outbox failed to commit.", true, func(s Stats) float64 { return float64(s.Broker.CommitErrors) }},
	{"tributary_edge_mqtt_rejected_total", "Publishes refused to their client.", true, func(s Stats) float64 { return float64(s.Broker.Rejected) }},
	{"tributary_edge_mqtt_throttled_total", "MQTT 3.1.1 publishes held back (connection not read) for exceeding mqtt.limits.publish_rate.", true, func(s Stats) float64 { return float64(s.Broker.Throttled) }},
	{"tributary_edge_mqtt_local_dropped_total", "Messages mochi dropped on the way to local subscribers.", true, func(s Stats) float64 { return float64(s.Broker.LocalDropped) }},
	{"tributary_edge_outbox_records", "Records held in the outbox (not yet acknowledged by the cloud).", false, func(s Stats) float64 { return float64(s.Outbox.Records) }},
	{"tributary_edge_outbox_payload_bytes", "Payload bytes held in the outbox.", false, func(s Stats) float64 { return float64(s.Outbox.PayloadBytes) }},
	{"tributary_edge_outbox_quota_used_bytes", "Bytes held as the quota counts them.", false, func(s Stats) float64 { return float64(s.Outbox.Bytes) }},
	{"tributary_edge_outbox_last_seq", "Highest outbox sequence committed.", false, func(s Stats) float64 { return float64(s.Outbox.LastSeq) }},
	{"tributary_edge_outbox_acked_seq", "Highest outbox sequence the cloud acknowledged.", false, func(s Stats) float64 { return float64(s.Outbox.AckedSeq) }},
	{"tributary_edge_outbox_commits_total", "Group commits.", true, func(s Stats) float64 { return float64(s.Outbox.CommittedGroups) }},
	{"tributary_edge_outbox_committed_rows_total", "Rows committed by group commits.", true, func(s Stats) float64 { return float64(s.Outbox.CommittedRows) }},
	{"tributary_edge_outbox_failed_rows_total", "Rows whose commit failed.", true, func(s Stats) float64 { return float64(s.Outbox.FailedRows) }},
	{"tributary_edge_outbox_wal_bytes", "Size of the outbox's SQLite WAL file after the last write transaction.", false, func(s Stats) float64 { return float64(s.Outbox.WALBytes) }},
	{"tributary_edge_outbox_checkpoints_total", "WAL checkpoints run (background and restart).", true, func(s Stats) float64 { return float64(s.Outbox.Checkpoints) }},
	{"tributary_edge_outbox_checkpoint_errors_total", "WAL checkpoints that failed.", true, func(s Stats) float64 { return float64(s.Outbox.CheckpointErrors) }},
	{"tributary_edge_outbox_wal_restarts_total", "Restart checkpoints run because the WAL grew past its size limit (64 MiB; commits pause while one runs).", true, func(s Stats) float64 { return float64(s.Outbox.WALRestarts) }},
	{"tributary_edge_outbox_wal_restarts_incomplete_total", "Restart checkpoints a reader kept from completing.", true, func(s Stats) float64 { return float64(s.Outbox.WALRestartsIncomplete) }},
	{"tributary_edge_outbox_wal_restart_seconds_total", "Time commits were paused by restart checkpoints.", true, func(s Stats) float64 { return s.Outbox.WALRestartTime.Seconds() }},
	{"tributary_edge_link_records_sent_total", "Records sent to the cloud (resends count again).", true, func(s Stats) float64 { return float64(s.Link.RecordsSent) }},
	{"tributary_edge_link_bytes_sent_total", "Frame bytes sent to the cloud.", true, func(s Stats) float64 { return float64(s.Link.BytesSent) }},
	{"tributary_edge_link_batches_acked_total", "Batches the cloud acknowledged as durable.", true, func(s Stats) float64 { return float64(s.Link.BatchesAcked) }},
	{"tributary_edge_link_acked_seq", "Highest outbox sequence the cloud acknowledged.", false, func(s Stats) float64 { return float64(s.Link.AckedSeq) }},
	{"tributary_edge_link_sessions_total", "Sessions opened with the cloud.", true, func(s Stats) float64 { return float64(s.Link.Sessions) }},
	{"tributary_edge_link_reconnects_total", "Failed sessions or dial attempts that were retried.", true, func(s Stats) float64 { return float64(s.Link.Reconnects) }},
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
	ch <- c.rejected
	ch <- c.dropped
	ch <- c.backlogAge
	ch <- c.commitLatency
	ch <- c.mqttDropped
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.g.Stats()
	for _, m := range metricDefs {
		t := prometheus.GaugeValue
		if m.counter {
			t = prometheus.CounterValue
		}
		ch <- prometheus.MustNewConstMetric(c.descs[m.name], t, m.get(s))
	}
	ch <- prometheus.MustNewConstMetric(c.descs["tributary_edge_link_connected"], prometheus.GaugeValue, b2f(s.Link.State == link.Connected))
	for _, cl := range s.Outbox.Classes {
		p := strconv.Itoa(int(cl.Priority))
		ch <- prometheus.MustNewConstMetric(c.rejected, prometheus.CounterValue, float64(cl.Rejected), p)
		ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(cl.DroppedOldest), p, outbox.DropReasonQuota)
		ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(cl.DroppedDiskFull), p, outbox.DropReasonDiskFull)
		ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(cl.Expired), p, outbox.DropReasonExpired)
	}
	c.collectMore(ch, s)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func startMetrics(addr string, g *Gateway) (*metricsServer, error) {
	labels := prometheus.Labels{"gateway": g.id}
	c := &collector{g: g, descs: map[string]*prometheus.Desc{}}
	for _, m := range metricDefs {
		c.descs[m.name] = prometheus.NewDesc(m.name, m.help, nil, labels)
	}
	c.descs["tributary_edge_link_connected"] = prometheus.NewDesc("tributary_edge_link_connected", "1 while the link to the cloud is up.", nil, labels)
	c.rejected = prometheus.NewDesc("tributary_edge_outbox_rejected_total", "Publishes refused because the outbox quota was full (reject-new).", []string{"priority"}, labels)
	c.dropped = prometheus.NewDesc("tributary_edge_outbox_dropped_total", "Records deleted before the cloud took them, by configured policy.", []string{"priority", "reason"}, labels)
	c.describeMore(labels)
	reg := prometheus.NewRegistry()
	reg.MustRegister(c, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(newCommandCollector(g)) // commands_metrics.go
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	if os.Getenv(PprofEnv) == "1" {
		servePprof(mux)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics_listen: %w", err)
	}
	m := &metricsServer{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}, ln: ln}
	go func() {
		if err := m.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			g.log.Error("metrics server", "err", err)
		}
	}()
	return m, nil
}

func (m *metricsServer) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return m.srv.Shutdown(ctx)
}
