package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/tributary-io/tributary/cloud/dispatch"
	"github.com/tributary-io/tributary/cloud/filter"
	"github.com/tributary-io/tributary/cloud/server"
	"github.com/tributary-io/tributary/edge/broker"
	"github.com/tributary-io/tributary/edge/gateway"
	"github.com/tributary-io/tributary/simulations/ledger"
	"github.com/tributary-io/tributary/simulations/procs"
	"github.com/tributary-io/tributary/simulations/scenarios"
	"github.com/tributary-io/tributary/sync/faultnet"
)

// RunOptions tune how a scenario runs. The zero value is usable.
type RunOptions struct {
	// Processes runs the cloud and the gateways as child processes
	// whatever the scenario's Mode says. false: the scenario's Mode.
	Processes bool
	// Binaries are prebuilt tributary-edge and tributary-cloud for the
	// processes mode. Zero value: built with the go command into the data
	// directory (the module's source must be at hand).
	Binaries procs.Binaries
	// DataDir holds every part's data. "" means a temporary directory,
	// removed at the end.
	DataDir string
	// Progress receives a line every ProgressEvery (0 means 2 s) and a few
	// lines about setting up. nil: none.
	Progress      io.Writer
	ProgressEvery time.Duration
	// Logger receives the parts' logs. nil discards them.
	Logger *slog.Logger

	// quickstart prints the quickstart's progress lines (without the
	// scenario's extra fields) and skips the setup lines.
	quickstart bool
}

// step is the resolution of the report's time series.
const step = time.Second

// runner is one scenario run. Its fields are set up before publishing
// starts and read-only afterwards, except those under mu and the atomics.
type runner struct {
	sc  scenarios.Scenario // defaults applied
	o   RunOptions
	log *slog.Logger
	dir string

	led     *ledger.Ledger
	ser     *series
	subIdx  map[string]int
	gwIDs   []string
	gwIndex map[string]int
	gwDirs  []string
	sinks   map[string]*sinkServer
	cloud   cloudNode
	edges   []edgeNode
	relays  []*faultnet.Relay
	mounts  []string
	devices []*device
	devErrs tally
	notes   []string

	baseCtx    context.Context // the nodes' lifetime
	cancelBase context.CancelFunc
	runCtx     context.Context // cancelled by fail
	cancelRun  context.CancelCauseFunc

	mu         sync.Mutex
	faults     []FaultRecord
	active     map[int]bool
	last       []edgeStats // latest sample per gateway
	maxBacklog []uint64

	logNext    atomic.Uint64 // next central-log offset to read
	logProblem atomic.Value  // string: the last log-reading problem
	tailMu     sync.Mutex    // one log reader at a time
}

// RunScenario runs sc and accounts for every message. It returns an error
// only if the run could not be carried out (bad scenario, a part failed to
// start, a restart failed, ctx ended); a run that broke a contract returns a
// Report whose Result.OK() is false.
func RunScenario(ctx context.Context, sc scenarios.Scenario, opts RunOptions) (*Report, error) {
	if err := sc.Validate(); err != nil {
		return nil, err
	}
	d := sc.WithDefaults()
	if opts.Processes {
		d.Mode = scenarios.Processes
	}
	for i, s := range d.Subscriptions {
		// The cloud's own check, beyond what the scenario model knows.
		ds := subscriptionConfig(s, "http://127.0.0.1:1/")
		if err := ds.Validate(); err != nil {
			return nil, fmt.Errorf("%w: subscriptions[%d]: %w", scenarios.ErrScenario, i, err)
		}
	}
	if opts.ProgressEvery == 0 {
		opts.ProgressEvery = 2 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	r := &runner{sc: d, o: opts, log: opts.Logger, active: map[int]bool{}}
	r.baseCtx, r.cancelBase = context.WithCancel(context.Background())
	r.runCtx, r.cancelRun = context.WithCancelCause(ctx)
	defer r.cancelRun(nil)
	defer r.teardown()
	if err := r.setup(); err != nil {
		return nil, err
	}
	return r.run()
}

// say prints a setup line (not in quickstart mode).
func (r *runner) say(format string, args ...any) {
	if r.o.Progress != nil && !r.o.quickstart {
		fmt.Fprintf(r.o.Progress, "fleetsim: "+format+"\n", args...)
	}
}

// fail ends the run with err.
func (r *runner) fail(err error) { r.cancelRun(err) }

func (r *runner) setup() error {
	ctx := r.runCtx
	sc := r.sc
	if r.o.DataDir != "" {
		r.dir = r.o.DataDir
		if err := os.MkdirAll(r.dir, 0o755); err != nil {
			return err
		}
	} else {
		d, err := os.MkdirTemp("", "tributary-fleetsim-")
		if err != nil {
			return err
		}
		r.dir = d
	}
	nDev := sc.Devices()
	perConn := uint64(2) // device socket and the broker's, in one process
	if sc.Mode == scenarios.Processes {
		perConn = 1
	}
	need := uint64(nDev)*perConn + uint64(sc.Gateways.Count)*24 + 512
	if _, err := ensureFiles(need); err != nil {
		return fmt.Errorf("%d devices need about %d open files: %w (raise `ulimit -n`, run as root, or use -processes, which halves the need)",
			nDev, need, err)
	}

	subs := make([]ledger.Subscription, len(sc.Subscriptions))
	r.subIdx = map[string]int{}
	for i, s := range sc.Subscriptions {
		subs[i] = ledger.Subscription{ID: s.ID, Ordered: s.IsOrdered()}
		r.subIdx[s.ID] = i
	}
	led, err := ledger.NewWithSubscriptions(subs)
	if err != nil {
		return err
	}
	r.led = led
	r.gwIDs = sc.GatewayIDs()
	r.gwIndex = map[string]int{}
	for i, id := range r.gwIDs {
		r.gwIndex[id] = i
	}
	r.ser = newSeries(time.Now(), step, len(r.gwIDs))
	r.last = make([]edgeStats, len(r.gwIDs))
	r.maxBacklog = make([]uint64, len(r.gwIDs))
	for i, f := range sc.Faults {
		r.faults = append(r.faults, FaultRecord{
			Index: i, Kind: f.Kind, Targets: scenarios.MatchTargets(f, r.gwIDs),
			PlannedAtS: f.At.D().Seconds(), PlannedEndS: f.End().Seconds(), StartS: -1, EndS: -1,
		})
	}

	// Sinks.
	r.sinks = map[string]*sinkServer{}
	for _, sk := range sc.Sinks {
		routes := map[string]int{}
		for i, s := range sc.Subscriptions {
			if s.Sink == sk.Name {
				routes[s.ID] = i
			}
		}
		srv, err := startSink(sk.Name, routes, r.delivered)
		if err != nil {
			return fmt.Errorf("sink %s: %w", sk.Name, err)
		}
		r.sinks[sk.Name] = srv
	}

	// Cloud.
	cloudCfg := server.Config{
		DataDir: filepath.Join(r.dir, "cloud"),
		Sync:    server.SyncConfig{Listen: "127.0.0.1:0"},
		API:     server.APIConfig{Listen: "127.0.0.1:0"},
	}
	for _, s := range sc.Subscriptions {
		cloudCfg.Subscriptions = append(cloudCfg.Subscriptions, subscriptionConfig(s, r.sinks[s.Sink].URL(s.ID)))
	}
	bins := r.o.Binaries
	if sc.Mode == scenarios.Processes {
		if bins.Edge == "" || bins.Cloud == "" {
			r.say("building tributary-edge and tributary-cloud")
			bdir := filepath.Join(r.dir, "bin")
			if err := os.MkdirAll(bdir, 0o755); err != nil {
				return err
			}
			if bins, err = procs.Build(ctx, bdir, false); err != nil {
				return fmt.Errorf("build the binaries for child processes (run from within the repository, or give prebuilt ones): %w", err)
			}
		}
		pc, err := newProcCloud(bins, cloudCfg.DataDir, filepath.Join(r.dir, "cloud.yaml"), server.Config{Subscriptions: cloudCfg.Subscriptions})
		if err != nil {
			return err
		}
		r.cloud = pc
		r.notes = append(r.notes, "cloud and gateways ran as child processes; kill faults were SIGKILL")
		if sc.Gateways.Count > 0 {
			r.notes = append(r.notes, "the edge's /metrics do not export its outbox drop counters: a message a gateway dropped by policy would count as lost")
		}
	} else {
		r.cloud = newInprocCloud(r.baseCtx, cloudCfg, r.log.With("node", "cloud"))
		for _, f := range sc.Faults {
			if f.Kind == scenarios.Kill {
				r.notes = append(r.notes, "in-process kill faults close the part abruptly but cannot crash it (buffers are flushed); run with -processes for SIGKILL")
				break
			}
		}
	}
	r.say("starting the cloud (%s)", sc.Mode)
	if err := r.cloud.Start(ctx); err != nil {
		return fmt.Errorf("cloud: %w", err)
	}

	// Gateways, each behind its own fault relay.
	rules := forwardingRules(sc.Streams)
	r.edges = make([]edgeNode, len(r.gwIDs))
	r.relays = make([]*faultnet.Relay, len(r.gwIDs))
	r.gwDirs = make([]string, len(r.gwIDs))
	r.say("starting %d gateways", len(r.gwIDs))
	for i, id := range r.gwIDs {
		dir := filepath.Join(r.dir, id)
		r.gwDirs[i] = dir
		if sc.Gateways.DiskMB > 0 {
			if err := mountDisk(dir, sc.Gateways.DiskMB); err != nil {
				return err
			}
			r.mounts = append(r.mounts, dir)
		}
		relay, err := faultnet.New(faultnet.Config{
			Target: r.cloud.SyncAddr(), Seed: sc.Seed + uint64(i), Logger: r.log.With("relay", id),
		})
		if err != nil {
			return fmt.Errorf("relay for %s: %w", id, err)
		}
		r.relays[i] = relay
		var cfg gateway.Config
		cfg.GatewayID = id
		cfg.DataDir = dir
		cfg.Outbox.Synchronous = sc.Gateways.Synchronous
		cfg.MQTT.Listeners.TCP.Address = "127.0.0.1:0"
		cfg.MQTT.AckMode = broker.AckMode(sc.Gateways.AckMode)
		cfg.MQTT.Forwarding = rules
		cfg.MQTT.Limits.MaxClientWritesPending = sc.Gateways.MaxClientWritesPending
		if per := nDev/len(r.gwIDs) + 1; per > 4000 {
			cfg.MQTT.Limits.MaxConnections = per + 64
		}
		cfg.Cloud.Address = relay.Addr().String()
		cfg.Cloud.DevCADir = r.cloud.PKIDir()
		if sc.Mode == scenarios.Processes {
			cfg.MQTT.Listeners.TCP.Address = "" // from -mqtt-listen
			r.edges[i], err = newProcEdge(bins, id, dir, filepath.Join(r.dir, id+".yaml"), relay.Addr().String(), r.cloud.PKIDir(), cfg)
			if err != nil {
				return err
			}
		} else {
			r.edges[i] = newInprocEdge(r.baseCtx, id, cfg, r.log.With("node", id))
		}
	}
	if err := parallel(ctx, len(r.edges), 8, func(i int) error {
		if err := r.edges[i].Start(ctx); err != nil {
			return fmt.Errorf("gateway %s: %w", r.gwIDs[i], err)
		}
		return nil
	}); err != nil {
		return err
	}

	// Devices.
	r.devices = r.makeDevices()
	r.say("connecting %d devices (one MQTT connection each)", len(r.devices))
	var connected atomic.Int64
	done := make(chan struct{})
	defer close(done)
	if len(r.devices) >= 1000 {
		go func() {
			tick := time.NewTicker(r.o.ProgressEvery)
			defer tick.Stop()
			for {
				select {
				case <-done:
					return
				case <-tick.C:
					r.say("%d of %d devices connected", connected.Load(), len(r.devices))
				}
			}
		}()
	}
	return parallel(ctx, len(r.devices), 64, func(i int) error {
		err := r.devices[i].connect(ctx)
		connected.Add(1)
		return err
	})
}

// subscriptionConfig is the cloud's configuration of s, pushing to url.
func subscriptionConfig(s scenarios.Subscription, url string) dispatch.Subscription {
	ds := dispatch.Subscription{
		ID: s.ID, Sink: url, Parallelism: s.Parallelism, Ordered: s.Ordered,
		Retry: dispatch.RetryPolicy{
			MaxAttempts: s.Retry.MaxAttempts, MinBackoff: dispatch.Duration(s.Retry.MinBackoff),
			MaxBackoff: dispatch.Duration(s.Retry.MaxBackoff), MaxAge: dispatch.Duration(s.Retry.MaxAge),
		},
	}
	ds.ProtocolSettings.Timeout = dispatch.Duration(s.Timeout)
	if s.SubjectPrefix != "" {
		ds.Filters = append(ds.Filters, filter.Filter{Prefix: map[string]string{"subject": s.SubjectPrefix}})
	}
	if s.SubjectSuffix != "" {
		ds.Filters = append(ds.Filters, filter.Filter{Suffix: map[string]string{"subject": s.SubjectSuffix}})
	}
	return ds
}

// forwardingRules gives each stream's topics their priority and type; none
// are needed (every topic is forwarded with priority 0) when no stream sets
// either.
func forwardingRules(streams []scenarios.Stream) []broker.Rule {
	var rules []broker.Rule
	needed := false
	for _, st := range streams {
		rules = append(rules, broker.Rule{Filter: scenarios.TopicFilter(st.Topic), Type: st.Type, Priority: uint8(st.Priority)})
		needed = needed || st.Priority != 0 || st.Type != ""
	}
	if !needed {
		return nil
	}
	return rules
}

// makeDevices lays the devices out: each scenario gateway gets
// DevicesPerGateway devices in a block, or (the quickstart's -devices) the
// devices are spread round-robin. Streams with a share below 1 go to an
// evenly spread subset. Each stream's first message is spread over one
// interval across the devices.
func (r *runner) makeDevices() []*device {
	sc := r.sc
	n := sc.Devices()
	width := max(4, len(fmt.Sprint(n)))
	devs := make([]*device, n)
	for i := range devs {
		g := i % len(r.gwIDs)
		if sc.TotalDevices == 0 {
			g = i / sc.Gateways.DevicesPerGateway
		}
		d := &device{
			id: fmt.Sprintf("dev-%0*d", width, i+1), gateway: r.gwIDs[g], addr: r.edges[g].MQTTAddr(),
			led: r.led, ser: r.ser, errs: &r.devErrs,
		}
		for _, st := range sc.Streams {
			// A share s of the devices, evenly spread: device i takes the
			// stream when floor((i+1)s) > floor(is).
			if st.Share < 1 && math.Floor(float64(i+1)*st.Share) == math.Floor(float64(i)*st.Share) {
				continue
			}
			topic := scenarios.TopicFor(st.Topic, d.id, d.gateway)
			var subs uint8
			for j, s := range sc.Subscriptions {
				if s.Matches(topic) {
					subs |= 1 << j
				}
			}
			interval := time.Duration(float64(time.Second) / st.Rate)
			d.streams = append(d.streams, devStream{
				topic: topic, size: st.PayloadBytes, interval: interval,
				// Spread first messages over one interval by the golden
				// ratio: any block of devices (one gateway's) is spread
				// evenly too, so no gateway sends in bursts.
				offset: time.Duration(float64(interval) * math.Mod(float64(i)*0.6180339887498949, 1)),
				meta:   ledger.Meta{Gateway: d.gateway, Priority: uint8(st.Priority), Subs: subs},
			})
		}
		devs[i] = d
	}
	return devs
}

// parallel runs fn(0..n-1) on up to width goroutines and returns the first
// error.
func parallel(ctx context.Context, n, width int, fn func(int) error) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for range min(width, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := fn(i); err != nil {
					once.Do(func() { first = err })
					next.Store(int64(n))
					return
				}
			}
		}()
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}

// delivered is every sink's callback.
func (r *runner) delivered(sub int, ev *event.Event, arrived time.Time) {
	p, err := ledger.ParsePayload(ev.Data())
	if err != nil {
		r.log.Warn("sink: event with a foreign payload", "id", ev.ID(), "err", err)
		r.led.Unknown()
		return
	}
	if first, lat := r.led.DeliveredTo(sub, p, arrived); first {
		r.ser.Delivered(arrived, lat)
	}
}

// tail reads the central log from where it stopped to its end (as far as
// one pass gets), feeding the ledger. It returns the first problem.
func (r *runner) tail() error {
	r.tailMu.Lock()
	defer r.tailMu.Unlock()
	from := r.logNext.Load()
	for {
		next, err := r.cloud.ReadLog(from, 5000, r.logged)
		r.logNext.Store(next)
		if err != nil {
			return err
		}
		if next == from {
			return nil
		}
		from = next
	}
}

// logged feeds one log record to the ledger.
func (r *runner) logged(rec logRecord) {
	if strings.HasPrefix(rec.Topic, "$") {
		if rec.DLSubscription == "" {
			return // another internal record
		}
		p, err := ledger.ParsePayload(rec.Data)
		sub, ok := r.subIdx[rec.DLSubscription]
		if err != nil || !ok {
			r.led.Unknown()
			return
		}
		r.led.DeadLettered(ledger.Key{Device: p.Device, N: p.N}, sub, rec.DLReason)
		return
	}
	p, err := ledger.ParsePayload(rec.Data)
	if err != nil {
		r.log.Warn("central log: a record with a foreign payload", "offset", rec.Offset, "err", err)
		r.led.Unknown()
		return
	}
	r.led.InLogFrom(ledger.Key{Device: p.Device, N: p.N}, rec.Producer, rec.Seq)
	r.ser.InLog(rec.Time)
}

// tailToEnd reads the central log to its end, retrying for up to limit
// while the cloud cannot be read.
func (r *runner) tailToEnd(limit time.Duration) error {
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	retry := time.NewTicker(100 * time.Millisecond)
	defer retry.Stop()
	for {
		err := r.tail()
		if err == nil && r.logNext.Load() >= r.cloud.NextOffset() {
			return nil
		}
		select {
		case <-deadline.C:
			return fmt.Errorf("reading the central log to its end: %v", err)
		case <-retry.C:
		}
	}
}

// sample reads every gateway's counters into the series.
func (r *runner) sample(now time.Time) {
	backlog := make([]int64, len(r.edges))
	// Child processes are scraped over HTTP: a few at a time, so a large
	// fleet is sampled within its step.
	_ = parallel(context.Background(), len(r.edges), 8, func(i int) error {
		st, err := r.edges[i].Stats()
		r.mu.Lock()
		if err == nil || st.Up {
			r.last[i] = st
		}
		r.maxBacklog[i] = max(r.maxBacklog[i], st.Backlog)
		r.mu.Unlock()
		backlog[i] = -1
		if st.Up {
			backlog[i] = int64(st.Backlog)
		}
		return nil
	})
	var queued int64
	for _, d := range r.devices {
		queued += d.queued.Load()
	}
	r.ser.Sample(now, backlog, queued)
}

// progress prints one progress line.
func (r *runner) progress(phase string, start time.Time) {
	if r.o.Progress == nil {
		return
	}
	p := r.led.Progress()
	var backlog uint64
	r.mu.Lock()
	for _, s := range r.last {
		backlog += s.Backlog
	}
	var act []string
	for i := range r.active {
		act = append(act, r.faults[i].Label())
	}
	r.mu.Unlock()
	line := fmt.Sprintf("%-8s t=%5.1fs published=%d acked=%d delivered=%d failed=%d edge_backlog=%d log=%d",
		phase, time.Since(start).Seconds(), p.Published, p.Acked, p.Delivered, p.Failed, backlog, r.cloud.NextOffset())
	if !r.o.quickstart {
		var queued int64
		for _, d := range r.devices {
			queued += d.queued.Load()
		}
		sort.Strings(act)
		faults := "-"
		if len(act) > 0 {
			faults = strings.Join(act, "; ")
		}
		line += fmt.Sprintf(" queued=%d faults=[%s]", queued, faults)
	}
	fmt.Fprintln(r.o.Progress, line)
}

// edgeDrops returns the gateways' drop counters for the ledger and their
// total.
func (r *runner) edgeDrops() ([]ledger.EdgeDrops, uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []ledger.EdgeDrops
	var total uint64
	for i, s := range r.last {
		for c, d := range s.Drops {
			out = append(out, ledger.EdgeDrops{Gateway: r.gwIDs[i], Priority: c, QuotaDropped: d.quota, Expired: d.expired})
			total += d.quota + d.expired
		}
	}
	return out, total
}

func (r *runner) run() (*Report, error) {
	sc := r.sc
	ctx := r.runCtx
	started := time.Now()
	// The series and the devices' schedules count from here.
	r.ser.t0 = started
	if !r.o.quickstart {
		r.say("publishing for %v (%d devices, %d gateways, %d faults on the timeline)", sc.Duration, len(r.devices), len(r.gwIDs), len(sc.Faults))
	}
	devCtx, stopDevices := context.WithCancel(r.baseCtx)
	defer stopDevices()
	stopCreating := make(chan struct{})
	var devWG sync.WaitGroup
	for _, d := range r.devices {
		devWG.Add(1)
		go func() {
			defer devWG.Done()
			d.run(devCtx, started, started.Add(sc.Duration.D()), stopCreating)
		}()
	}
	devicesDone := make(chan struct{})
	go func() { devWG.Wait(); close(devicesDone) }()

	// Background: sampling, log tailing, the fault timeline.
	bgCtx, stopBG := context.WithCancel(ctx)
	var bg sync.WaitGroup
	defer func() { stopBG(); bg.Wait() }()
	bg.Add(3)
	// Gateways in child processes are scraped over HTTP; a large fleet of
	// them is sampled less often, so scraping does not eat the machine.
	every := step
	if sc.Mode == scenarios.Processes && len(r.edges) > 30 {
		every = 3 * step
	}
	go func() {
		defer bg.Done()
		next := started.Add(every)
		for {
			t := time.NewTimer(time.Until(next))
			select {
			case <-bgCtx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			r.sample(next)
			next = next.Add(every)
		}
	}()
	go func() {
		defer bg.Done()
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-bgCtx.Done():
				return
			case <-tick.C:
			}
			if err := r.tail(); err != nil && !errors.Is(err, errDown) {
				r.logProblem.Store(err.Error())
			}
		}
	}()
	timelineDone := make(chan struct{})
	go func() {
		defer bg.Done()
		defer close(timelineDone)
		r.runTimeline(bgCtx, started)
	}()

	tick := time.NewTicker(r.o.ProgressEvery)
	defer tick.Stop()
	poll := time.NewTicker(100 * time.Millisecond)
	defer poll.Stop()
	pubTimer := time.NewTimer(sc.Duration.D())
	defer pubTimer.Stop()

	// Drain: from the end of the last fault (or, without faults, of
	// publishing) until every message created before it is settled.
	var (
		pubEnd     time.Time
		mark       time.Time // what drain_s counts from; zero until known
		drainedAt  time.Time
		deadline   <-chan time.Time
		timeline   = timelineDone
		lastFault  time.Time
		phase      = "publish"
		settledAll bool
	)
	if len(sc.Faults) == 0 {
		timeline = nil
	}
	checkDrain := func(now time.Time) {
		if mark.IsZero() || !drainedAt.IsZero() {
			return
		}
		_, tol := r.edgeDrops()
		if uint64(r.led.PendingBefore(mark)) <= tol {
			drainedAt = now
		}
	}
	startDeadline := func() {
		if deadline == nil && !pubEnd.IsZero() && timeline == nil {
			deadline = time.After(sc.DrainTimeout.D())
		}
	}
loop:
	for {
		select {
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		case <-pubTimer.C:
			pubEnd = time.Now()
			close(stopCreating)
			phase = "drain"
			if len(sc.Faults) == 0 {
				mark = pubEnd
			}
			startDeadline()
		case <-timeline:
			timeline = nil
			r.mu.Lock()
			for _, f := range r.faults {
				if f.EndS >= 0 {
					lastFault = maxTime(lastFault, started.Add(time.Duration(f.EndS*float64(time.Second))))
				}
			}
			r.mu.Unlock()
			mark = lastFault
			if mark.IsZero() {
				mark = time.Now() // no fault ended as planned
			}
			startDeadline()
		case <-tick.C:
			r.progress(phase, started)
		case now := <-poll.C:
			checkDrain(now)
			if !pubEnd.IsZero() && timeline == nil && !drainedAt.IsZero() {
				_, tol := r.edgeDrops()
				if uint64(r.led.PendingBefore(now.Add(time.Hour))) <= tol {
					settledAll = true
					break loop
				}
			}
		case <-deadline:
			break loop
		}
	}
	end := time.Now()
	stopDevices()
	<-devicesDone
	stopBG()
	bg.Wait()
	r.sample(end)
	// The rest of the log: everything appended until now. The cloud may
	// still be restarting; give it a while.
	if err := r.tailToEnd(30 * time.Second); err != nil {
		return nil, err
	}
	r.progress("done", started)

	drops, _ := r.edgeDrops()
	sum := r.led.Account(ledger.AccountOptions{CheckedLog: true, EdgeDrops: drops})
	pubElapsed := pubEnd.Sub(started)
	res := Result{
		Summary: sum, Scenario: sc.Name, Mode: string(sc.Mode),
		Gateways: len(r.gwIDs), Devices: len(r.devices),
		DurationS: pubElapsed.Seconds(), PublishRate: float64(sum.Published) / pubElapsed.Seconds(),
		Faults: len(sc.Faults), Drained: !drainedAt.IsZero(), Settled: settledAll,
	}
	switch {
	case !drainedAt.IsZero():
		res.DrainS = drainedAt.Sub(mark).Seconds()
	case !mark.IsZero():
		res.DrainS = end.Sub(mark).Seconds()
	}
	r.mu.Lock()
	for _, s := range r.last {
		res.RefusedPublishes += int(s.Refused)
	}
	r.mu.Unlock()
	if !settledAll {
		r.notes = append(r.notes, fmt.Sprintf("the drain timeout (%v) ran out before every message was settled: %d acknowledged messages were not delivered everywhere by then and count as lost (%d of the %d acknowledged are in the central log: for those, delivery was late at least); %d messages were never acknowledged",
			sc.DrainTimeout, sum.Lost, sum.InLog, sum.Acked, sum.Failed))
	}
	return r.report(res, started, pubEnd, mark, drainedAt, end), nil
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// teardown stops everything setup started, in reverse order.
func (r *runner) teardown() {
	_ = parallel(context.Background(), len(r.devices), 64, func(i int) error {
		if d := r.devices[i]; d != nil {
			d.close()
		}
		return nil
	})
	var wg sync.WaitGroup
	for _, e := range r.edges {
		if e != nil {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := e.Close(); err != nil {
					r.log.Warn("gateway close", "gateway", e.ID(), "err", err)
				}
			}()
		}
	}
	wg.Wait()
	for _, rl := range r.relays {
		if rl != nil {
			rl.Close()
		}
	}
	if r.cloud != nil {
		if err := r.cloud.Close(); err != nil {
			r.log.Warn("cloud close", "err", err)
		}
	}
	r.cancelBase()
	for _, s := range r.sinks {
		s.Close()
	}
	for _, m := range r.mounts {
		if err := unmountDisk(m); err != nil {
			r.log.Error("unmount", "err", err)
		}
	}
	if r.o.DataDir == "" && r.dir != "" {
		os.RemoveAll(r.dir)
	}
}
