package gateway

import (
	"context"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tributary-io/tributary/edge/outbox"
)

// Reasons in tributary_edge_mqtt_dropped_total: publishes the broker refused
// or dropped before they reached the outbox.
const (
	// DropReasonRateLimited counts MQTT 5 publishes over
	// mqtt.limits.publish_rate (PUBACK 0x96, or a dropped QoS 0 message).
	DropReasonRateLimited = "rate_limited"
)

// backlogAgeTimeout bounds the outbox read a scrape makes for the backlog
// age; a scrape that cannot read it in time leaves the series out.
const backlogAgeTimeout = 2 * time.Second

func (c *collector) describeMore(labels prometheus.Labels) {
	c.backlogAge = prometheus.NewDesc("tributary_edge_outbox_backlog_age_seconds",
		"Age of the oldest record the cloud has not acknowledged (now minus its receive time); 0 when the outbox is empty.", nil, labels)
	c.commitLatency = prometheus.NewDesc("tributary_edge_outbox_commit_duration_seconds",
		"Duration of successful outbox group commits, from BEGIN to the end of COMMIT including its fsync.", nil, labels)
	c.mqttDropped = prometheus.NewDesc("tributary_edge_mqtt_dropped_total",
		"Publishes the broker refused or dropped before the outbox, by reason.", []string{"reason"}, labels)
}

func (c *collector) collectMore(ch chan<- prometheus.Metric, s Stats) {
	ob := c.g.outbox
	ctx, cancel := context.WithTimeout(context.Background(), backlogAgeTimeout)
	oldest, ok, err := ob.OldestReceived(ctx)
	cancel()
	switch {
	case err != nil:
		c.g.log.Debug("metrics: backlog age not read", "err", err)
	case !ok:
		ch <- prometheus.MustNewConstMetric(c.backlogAge, prometheus.GaugeValue, 0)
	default:
		ch <- prometheus.MustNewConstMetric(c.backlogAge, prometheus.GaugeValue, max(time.Since(oldest).Seconds(), 0))
	}

	l := ob.CommitLatency()
	buckets := make(map[float64]uint64, len(outbox.CommitLatencyBounds))
	var cum uint64
	for i, le := range outbox.CommitLatencyBounds {
		cum += l.Counts[i]
		buckets[le] = cum
	}
	ch <- prometheus.MustNewConstHistogram(c.commitLatency, l.Count, l.Sum.Seconds(), buckets)

	ch <- prometheus.MustNewConstMetric(c.mqttDropped, prometheus.CounterValue, float64(s.Broker.RateLimited), DropReasonRateLimited)
}

// PprofEnv, set to "1" in the gateway's environment, also serves Go's
// /debug/pprof/ handlers on metrics_listen: for profiling a gateway under
// load (the edge-ingest benchmark's -edge-profile). Unset (the default):
// not served, since a profile reveals internals and costs CPU.
const PprofEnv = "TRIBUTARY_EDGE_PPROF"

func servePprof(mux *http.ServeMux) {
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
}
