package gateway

import "github.com/prometheus/client_golang/prometheus"

// commandCollector exposes CommandStats at scrape time, labelled with the
// gateway like every other edge series.
type commandCollector struct {
	g                       *Gateway
	total, pending, unknown *prometheus.Desc
}

func newCommandCollector(g *Gateway) commandCollector {
	labels := prometheus.Labels{"gateway": g.id}
	return commandCollector{
		g: g,
		total: prometheus.NewDesc("tributary_edge_commands_total",
			"Cloud-to-device commands by state reached: accepted, delivered (device PUBACK), replied, expired, rejected.", []string{"state"}, labels),
		pending: prometheus.NewDesc("tributary_edge_commands_pending",
			"Commands waiting for their device (accepted or delivered, not yet replied or expired).", nil, labels),
		unknown: prometheus.NewDesc("tributary_edge_command_unknown_replies_total",
			"Replies dropped because no command waited for them (unknown, finished or expired request id).", nil, labels),
	}
}

func (c commandCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.total
	ch <- c.pending
	ch <- c.unknown
}

func (c commandCollector) Collect(ch chan<- prometheus.Metric) {
	if c.g.commands == nil {
		return
	}
	st := c.g.CommandStats()
	for state, n := range map[string]uint64{
		"accepted": st.Accepted, "delivered": st.Delivered, "replied": st.Replied, "expired": st.Expired, "rejected": st.Rejected,
	} {
		ch <- prometheus.MustNewConstMetric(c.total, prometheus.CounterValue, float64(n), state)
	}
	ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(st.Pending))
	ch <- prometheus.MustNewConstMetric(c.unknown, prometheus.CounterValue, float64(st.UnknownReplies))
}
