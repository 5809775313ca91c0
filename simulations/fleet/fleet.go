// Package fleet runs a whole Tributary fabric — a cloud, gateways, simulated
// MQTT devices and CloudEvents sinks — through a scenario with a fault
// timeline, and accounts for every message (simulations/ledger). It is the
// quickstart and the fleet simulator (simulations/cmd/fleetsim), and a test
// of the contracts end to end.
//
// A scenario (simulations/scenarios: a YAML file, decoded and validated
// there) names the
// fleet, what its devices publish, who subscribes, and faults on a timeline:
// a gateway's uplink cut or made lossy (each gateway dials the cloud through
// its own sync/faultnet relay), a gateway or the cloud killed and restarted,
// a gateway's disk filled, a sink failing or hanging. RunScenario runs it in
// this process or with edge and cloud as child processes, and returns a
// Report: the verdict (every message delivered once, dropped by a policy
// with its reason, or lost), per-gateway figures, the faults as they
// happened and time series, which WriteHTML renders as a self-contained page.
//
// Run is the quickstart: a scenario without faults built from a few flags.
package fleet

import (
	"context"
	"io"
	"log/slog"
	"time"

	"github.com/tributary-io/tributary/simulations/scenarios"
)

// Options describe a quickstart run. Zero values take the documented
// defaults.
type Options struct {
	// Gateways is the number of edge gateways. 0 means 2.
	Gateways int
	// Devices is the total number of devices, spread over the gateways. 0
	// means 50.
	Devices int
	// Rate is messages per second per device. 0 means 10.
	Rate float64
	// PayloadBytes is the size of each message. 0 means 200.
	PayloadBytes int
	// Duration is how long devices publish. 0 means 30 s.
	Duration time.Duration
	// DrainTimeout bounds the wait for every message to be delivered after
	// publishing stops. 0 means 60 s.
	DrainTimeout time.Duration
	// Parallelism is the subscription's number of ordered lanes. 0 means 16.
	Parallelism int
	// DataDir holds every part's data. "" means a temporary directory,
	// removed at the end.
	DataDir string
	// Progress receives a line every ProgressEvery (0 means 2 s). nil: none.
	Progress      io.Writer
	ProgressEvery time.Duration
	// Logger receives the parts' logs. nil discards them.
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.Gateways == 0 {
		o.Gateways = 2
	}
	if o.Devices == 0 {
		o.Devices = 50
	}
	if o.Rate == 0 {
		o.Rate = 10
	}
	if o.PayloadBytes == 0 {
		o.PayloadBytes = 200
	}
	if o.Duration == 0 {
		o.Duration = 30 * time.Second
	}
	if o.DrainTimeout == 0 {
		o.DrainTimeout = 60 * time.Second
	}
	if o.Parallelism == 0 {
		o.Parallelism = 16
	}
	return o
}

// Scenario returns the quickstart's scenario: o's fleet publishing one
// telemetry stream to one ordered subscription, without faults.
func (o Options) Scenario() scenarios.Scenario {
	o = o.withDefaults()
	return scenarios.Scenario{
		Name:          "quickstart",
		Description:   "The quickstart: devices publish telemetry to their gateways, one subscription delivers it; no faults.",
		Duration:      scenarios.Duration(o.Duration),
		DrainTimeout:  scenarios.Duration(o.DrainTimeout),
		Gateways:      scenarios.Gateways{Count: o.Gateways, DevicesPerGateway: (o.Devices + o.Gateways - 1) / o.Gateways},
		Streams:       []scenarios.Stream{{Rate: o.Rate, PayloadBytes: o.PayloadBytes}},
		Subscriptions: []scenarios.Subscription{{ID: "fleetsim", Parallelism: o.Parallelism}},
		TotalDevices:  o.Devices,
	}
}

// Run starts the fabric in this process, publishes for opts.Duration, waits
// for delivery and checks the central log. It returns an error only if the
// run could not be carried out; a run that broke a contract returns a
// Result whose OK() is false.
func Run(ctx context.Context, opts Options) (Result, error) {
	rep, err := RunQuickstart(ctx, opts)
	if err != nil {
		return Result{}, err
	}
	return rep.Result, nil
}

// RunQuickstart is Run returning the whole Report.
func RunQuickstart(ctx context.Context, opts Options) (*Report, error) {
	return RunScenario(ctx, opts.Scenario(), RunOptions{
		DataDir: opts.DataDir, Progress: opts.Progress, ProgressEvery: opts.ProgressEvery,
		Logger: opts.Logger, quickstart: true,
	})
}
