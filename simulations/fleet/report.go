package fleet

import (
	"encoding/json"
	"io"
	"math"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/tributary-io/tributary/simulations/ledger"
	"github.com/tributary-io/tributary/sync/faultnet"
)

// Result is a run's outcome; its JSON is the SUMMARY line.
type Result struct {
	ledger.Summary
	// Scenario and Mode say what ran and how.
	Scenario string `json:"scenario"`
	Mode     string `json:"mode"`
	Gateways int    `json:"gateways"`
	Devices  int    `json:"devices"`
	// DurationS is how long devices created messages.
	DurationS float64 `json:"duration_s"`
	// DrainS is how long the backlog took to drain: from the end of the
	// last fault (without faults: the end of publishing) until every
	// message created before that moment was settled — delivered to every
	// subscription expecting it, dead-lettered, or explained by a gateway's
	// drop counters. If that never happened (Drained false), the time until
	// the simulator gave up.
	DrainS  float64 `json:"drain_s"`
	Drained bool    `json:"drained"`
	// Settled says every message created was settled before the drain
	// timeout.
	Settled     bool    `json:"settled"`
	PublishRate float64 `json:"publish_msgs_per_s"`
	// RefusedPublishes counts publishes the gateways refused (a full disk or
	// quota; the devices retried them).
	RefusedPublishes int `json:"refused_publishes"`
	// Faults is the number of faults on the timeline.
	Faults int `json:"faults"`
}

// Report is everything a run measured: the summary, the faults as they
// happened, per-gateway figures and the time series. WriteJSON and WriteHTML
// render it.
type Report struct {
	Result      Result    `json:"summary"`
	Description string    `json:"description,omitempty"`
	Started     time.Time `json:"started"`
	// PublishEndS, DrainFromS, DrainedAtS and EndS are seconds from the
	// start of publishing: when devices stopped creating messages, what
	// drain_s counts from, when the backlog had drained (-1: never) and
	// when the run ended.
	PublishEndS float64         `json:"publish_end_s"`
	DrainFromS  float64         `json:"drain_from_s"`
	DrainedAtS  float64         `json:"drained_at_s"`
	EndS        float64         `json:"end_s"`
	Faults      []FaultRecord   `json:"faults"`
	Gateways    []GatewayReport `json:"gateways"`
	Sinks       []SinkReport    `json:"sinks"`
	// DevicePublishErrors counts the devices' failed publish attempts by
	// error (each was retried).
	DevicePublishErrors map[string]int `json:"device_publish_errors,omitempty"`
	// Notes qualify the figures (how kills were done, what was not
	// counted).
	Notes []string `json:"notes,omitempty"`
	// Scenario is the scenario that ran, defaults applied, as YAML.
	Scenario string       `json:"scenario_yaml"`
	Series   SeriesReport `json:"series"`
}

// GatewayReport is one gateway's figures.
type GatewayReport struct {
	ledger.GatewaySummary
	MaxBacklog uint64 `json:"max_backlog"`
	// Refused counts publishes refused to devices; DiskFailures outbox rows
	// whose commit failed; QuotaRejected messages refused under the quota.
	Refused       uint64 `json:"refused"`
	DiskFailures  uint64 `json:"disk_failures"`
	QuotaRejected uint64 `json:"quota_rejected"`
	// PolicyDrops counts records the outbox deleted before the cloud had
	// them (drop-oldest, TTL); DropsKnown is false when the gateway could
	// not report them.
	PolicyDrops uint64 `json:"policy_drops"`
	DropsKnown  bool   `json:"drops_known"`
	Restarts    int    `json:"restarts"`
	// Uplink counts the datagrams through the gateway's fault relay, both
	// ways: what a link fault did to it.
	Uplink faultnet.Stats `json:"uplink"`
}

// SinkReport is one sink's counters.
type SinkReport struct {
	Name string `json:"name"`
	// Received counts accepted events; Rejected requests answered with an
	// error (told to fail, or not a CloudEvent); Held requests held by a
	// hang.
	Received int64 `json:"received"`
	Rejected int64 `json:"rejected"`
	Held     int64 `json:"held"`
}

// report assembles the Report of a finished run.
func (r *runner) report(res Result, started, pubEnd, mark, drainedAt, end time.Time) *Report {
	rel := func(t time.Time) float64 {
		if t.IsZero() {
			return -1
		}
		return round3(t.Sub(started).Seconds())
	}
	rep := &Report{
		Result: res, Description: r.sc.Description, Started: started,
		PublishEndS: rel(pubEnd), DrainFromS: rel(mark), DrainedAtS: rel(drainedAt), EndS: rel(end),
		Notes: r.notes, DevicePublishErrors: r.devErrs.snapshot(),
	}
	if p, ok := r.logProblem.Load().(string); ok && p != "" {
		rep.Notes = append(rep.Notes, "reading the central log while running: "+p)
	}
	r.mu.Lock()
	rep.Faults = append([]FaultRecord(nil), r.faults...)
	byGW := map[string]ledger.GatewaySummary{}
	for _, g := range res.PerGateway {
		byGW[g.Gateway] = g
	}
	for i, id := range r.gwIDs {
		s := r.last[i]
		g := GatewayReport{
			GatewaySummary: byGW[id], MaxBacklog: r.maxBacklog[i],
			Refused: s.Refused, DiskFailures: s.DiskFailures, QuotaRejected: s.QuotaRejected,
			DropsKnown: s.DropsKnown, Restarts: s.Restarts,
		}
		g.Gateway = id
		g.Uplink = r.relays[i].Stats()
		for _, d := range s.Drops {
			g.PolicyDrops += d.quota + d.expired
		}
		rep.Gateways = append(rep.Gateways, g)
	}
	r.mu.Unlock()
	for _, sk := range r.sc.Sinks {
		s := r.sinks[sk.Name]
		rep.Sinks = append(rep.Sinks, SinkReport{Name: sk.Name, Received: s.received.Load(), Rejected: s.rejected.Load(), Held: s.held.Load()})
	}
	if b, err := yaml.Marshal(r.sc); err == nil {
		rep.Scenario = string(b)
	}
	n := int(math.Ceil(end.Sub(started).Seconds() / step.Seconds()))
	rep.Series = r.ser.report(max(n, 1), r.gwIDs)
	return rep
}

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

// WriteJSON writes the report as indented JSON.
func (rep *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}
