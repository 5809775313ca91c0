package server

import "github.com/prometheus/client_golang/prometheus"

// The streaming endpoint's figures in /metrics.
var (
	descStreamClients = desc("tributary_cloud_stream_clients", "Clients connected to GET /v1/stream.")
	descStreamDropped = desc("tributary_cloud_stream_clients_dropped_total", "Stream clients dropped for not taking events within the write timeout (too slow).")
)

var _ prometheus.Collector = (*streamHandler)(nil)

// Describe implements prometheus.Collector.
func (h *streamHandler) Describe(ch chan<- *prometheus.Desc) {
	ch <- descStreamClients
	ch <- descStreamDropped
}

// Collect implements prometheus.Collector.
func (h *streamHandler) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(descStreamClients, prometheus.GaugeValue, float64(h.active.Load()))
	ch <- prometheus.MustNewConstMetric(descStreamDropped, prometheus.CounterValue, float64(h.dropped.Load()))
}
