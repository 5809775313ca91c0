package gateway

import "github.com/prometheus/client_golang/prometheus"

// commandCollector exposes CommandStats at scrape time.
type commandCollector struct{ g *Gateway }

var (
	commandsDesc = prometheus.NewDesc("tributary_edge_commands_total",
		"Cloud-to-device commands by state reached: accepted, delivered (device PUBACK), replied, expired, rejected.", []string{"state"}, nil)
	commandsPendingDesc = prometheus.NewDesc("tributary_edge_commands_pending",
		"Commands waiting for their device (accepted or delivered, not yet replied or expired).", nil, nil)
	commandsUnknownDesc = prometheus.NewDesc("tributary_edge_command_unknown_replies_total",
		"Replies dropped because no command waited for them (unknown, finished or expired request id).", nil, nil)
)

func (c commandCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- commandsDesc
	ch <- commandsPendingDesc
	ch <- commandsUnknownDesc
}

func (c commandCollector) Collect(ch chan<- prometheus.Metric) {
	if c.g.commands == nil {
		return
	}
	st := c.g.CommandStats()
	for state, n := range map[string]uint64{
		"accepted": st.Accepted, "delivered": st.Delivered, "replied": st.Replied, "expired": st.Expired, "rejected": st.Rejected,
	} {
		ch <- prometheus.MustNewConstMetric(commandsDesc, prometheus.CounterValue, float64(n), state)
	}
	ch <- prometheus.MustNewConstMetric(commandsPendingDesc, prometheus.GaugeValue, float64(st.Pending))
	ch <- prometheus.MustNewConstMetric(commandsUnknownDesc, prometheus.CounterValue, float64(st.UnknownReplies))
}
