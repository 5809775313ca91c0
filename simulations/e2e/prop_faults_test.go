package e2e_test

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/tributary-io/tributary/simulations/ledger"
	"github.com/tributary-io/tributary/sync/faultnet"
)

// Property test of store-and-forward (issue 4, contracts 1-4): under a
// random schedule of faults on the link between a real gateway and a real
// cloud process (loss, duplication, reordering, delay and jitter through a
// faultnet relay, partitions, NAT rebinding, SIGKILL and restart of either
// side, one-way partitions) while real paho devices publish QoS 1, the central log ends up
// holding every message the gateway acknowledged exactly once, and each
// device's messages in the order it published them.
//
// Environment:
//
//	TRIBUTARY_PROP_SEED=<n>[,<n>...]  run exactly these schedules (a failure prints its seed)
//	TRIBUTARY_PROP_SCHEDULES=<k>      run k random schedules (default 3)
//	TRIBUTARY_PROP_SPAN=<duration>    how long faults are applied (default 8s)
func TestStoreAndForwardUnderFaults(t *testing.T) {
	seeds, err := propSeeds()
	if err != nil {
		t.Fatal(err)
	}
	span := 8 * time.Second
	if v := os.Getenv("TRIBUTARY_PROP_SPAN"); v != "" {
		if span, err = time.ParseDuration(v); err != nil || span <= 0 {
			t.Fatalf("TRIBUTARY_PROP_SPAN=%q: want a positive duration", v)
		}
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			runFaultSchedule(t, seed, span)
		})
	}
}

func propSeeds() ([]uint64, error) {
	if v := os.Getenv("TRIBUTARY_PROP_SEED"); v != "" {
		var seeds []uint64
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.ParseUint(strings.TrimSpace(f), 10, 64)
			if err != nil {
				return nil, fmt.Errorf("TRIBUTARY_PROP_SEED=%q: %w", v, err)
			}
			seeds = append(seeds, n)
		}
		return seeds, nil
	}
	k := 3
	if v := os.Getenv("TRIBUTARY_PROP_SCHEDULES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("TRIBUTARY_PROP_SCHEDULES=%q: want a positive count", v)
		}
		k = n
	}
	base := uint64(time.Now().UnixNano())
	seeds := make([]uint64, k)
	for i := range seeds {
		seeds[i] = base + uint64(i)*0x9e3779b97f4a7c15
	}
	return seeds, nil
}

const (
	propDevices      = 4
	propPerDevice    = 100_000 // a bound on each device's messages (it publishes until the schedule ends)
	propInFlight     = 8       // unacknowledged publishes per device
	propPayloadBytes = 1000    // about; incompressible
)

func runFaultSchedule(t *testing.T, seed uint64, span time.Duration) {
	sched := makeSchedule(seed, span)
	t.Logf("seed %d (rerun with TRIBUTARY_PROP_SEED=%d), schedule:\n%s", seed, seed, scheduleString(sched))
	r := startRig(t, rigConfig{
		// Short timeouts so a connection lost in a partition is noticed
		// and replaced within the test's patience; keep-alives well inside.
		CloudYAML: "sync:\n  idle_timeout: 5s\n  keep_alive: 1s\n",
		EdgeYAML:  "cloud:\n  idle_timeout: 5s\n  keep_alive: 1s\n  linger: 2ms\n",
		Relay:     true, RelaySeed: seed,
	})
	led, err := ledger.NewWithSubscriptions(nil)
	if err != nil {
		t.Fatal(err)
	}

	// The devices publish until the schedule ends.
	mqttAddr := r.edge.MQTTAddr // the same across restarts
	stop := make(chan struct{})
	var devs sync.WaitGroup
	for i := range propDevices {
		d := &propDevice{id: fmt.Sprintf("device-%02d", i), addr: mqttAddr, led: led, rnd: rand.New(rand.NewPCG(seed, uint64(i)))}
		devs.Add(1)
		go func() { defer devs.Done(); d.run(stop) }()
		t.Cleanup(d.close)
	}
	// Stop the devices before the processes go, also when the test fails
	// half-way through the schedule.
	stopDevices := sync.OnceFunc(func() { close(stop); devs.Wait() })
	t.Cleanup(stopDevices)

	// Apply the schedule in real time.
	start := time.Now()
	did := map[faultKind]int{} // steps applied, by kind
	for _, f := range sched {
		if wait := time.Until(start.Add(f.At)); wait > 0 {
			<-time.After(wait) // the schedule's pace, not a wait for a condition
		}
		switch f.Kind {
		case faultImpair, faultOneWay:
			r.relay.SetImpairment(f.Up, f.Down)
		case faultClear:
			r.relay.SetImpairment(faultnet.Impairment{}, faultnet.Impairment{})
		case faultPartition:
			r.relay.Blackhole(f.Hold)
		case faultRebind:
			if err := r.relay.Rebind(); err != nil {
				t.Fatalf("rebind: %v", err)
			}
		case faultKillEdge:
			r.edge.Kill()
		case faultStartEdge:
			r.startEdge()
		case faultKillCloud:
			r.cloud.Kill()
		case faultStartCloud:
			r.startCloud()
		}
		did[f.Kind]++
	}
	stopDevices() // every publish is now acknowledged or failed
	r.relay.SetImpairment(faultnet.Impairment{}, faultnet.Impairment{})
	r.relay.Blackhole(0)
	faultsTook := time.Since(start)

	drainStart := time.Now()
	r.waitDrained(90 * time.Second)
	drainTook := time.Since(drainStart)
	sessions, _ := r.edgeMetric("tributary_edge_link_sessions_total")

	recs := r.readLog()
	checkPropLog(t, led, recs)
	p := led.Progress()
	st := r.relay.Stats()
	t.Logf("seed %d: %d edge kills, %d cloud kills, %d partitions, %d one-way partitions, %d impairments, %d rebinds over %v; relay: %d datagrams, %d lost, %d duplicated, %d blackholed; "+
		"devices published %d, gateway acknowledged %d (%d publishes failed); log holds %d records; drained %v after the faults stopped; gateway sessions since its last start: %v",
		seed, did[faultKillEdge], did[faultKillCloud], did[faultPartition], did[faultOneWay], did[faultImpair], did[faultRebind], faultsTook.Truncate(time.Millisecond),
		st.Received, st.Dropped, st.Duplicated, st.Blackholed,
		p.Published, p.Acked, p.Failed, len(recs), drainTook.Truncate(time.Millisecond), sessions)
	if p.Acked == 0 {
		t.Fatal("no publish was acknowledged: the schedule tested nothing")
	}
}

// checkPropLog checks the central log against what the devices were told:
// every acknowledged message present, none twice (devices here never
// resend, so two copies can only be a duplicate), no outbox record twice,
// per-device order kept, nothing foreign.
func checkPropLog(t *testing.T, led *ledger.Ledger, recs []logRecord) {
	t.Helper()
	type origin struct {
		gw  string
		seq uint64
	}
	seenKey := map[ledger.Key]uint64{}
	seenOrigin := map[origin]uint64{}
	lastN := map[string]uint64{}
	var problems []string
	report := func(format string, args ...any) {
		if len(problems) < 20 {
			problems = append(problems, fmt.Sprintf(format, args...))
		}
	}
	for _, rec := range recs {
		led.InLogFrom(rec.key, rec.gateway, rec.seq)
		if off, ok := seenKey[rec.key]; ok {
			report("%s #%d at offsets %d and %d", rec.key.Device, rec.key.N, off, rec.offset)
		}
		seenKey[rec.key] = rec.offset
		o := origin{rec.gateway, rec.seq}
		if rec.gateway == "" || rec.seq == 0 {
			report("offset %d has no origin (gateway %q, seq %d)", rec.offset, rec.gateway, rec.seq)
		} else if off, ok := seenOrigin[o]; ok {
			report("outbox record %s/%d at offsets %d and %d", o.gw, o.seq, off, rec.offset)
		}
		seenOrigin[o] = rec.offset
		if last := lastN[rec.key.Device]; rec.key.N <= last {
			report("%s #%d at offset %d after #%d", rec.key.Device, rec.key.N, rec.offset, last)
		} else {
			lastN[rec.key.Device] = rec.key.N
		}
	}
	s := led.Summarise(true)
	t.Logf("ledger: %+v", s)
	if s.Lost > 0 {
		t.Errorf("%d acknowledged messages are not in the log", s.Lost)
	}
	if s.Unknown > 0 {
		t.Errorf("%d log records are not messages the devices published", s.Unknown)
	}
	if s.Duplicates > 0 || s.DeviceResends > 0 {
		t.Errorf("the log holds %d duplicate outbox records and %d further copies of a device message", s.Duplicates, s.DeviceResends)
	}
	for _, p := range problems {
		t.Error(p)
	}
}

// propDevice publishes QoS 1 messages 1, 2, 3... over one paho client at a
// time, at most propInFlight unacknowledged, reconnecting with a new clean
// session whenever the gateway goes away. A publish that fails is not
// resent: it is recorded as failed and the device moves on, so the log
// never legitimately holds a message twice.
type propDevice struct {
	id   string
	addr string
	led  *ledger.Ledger

	rnd *rand.Rand // the payloads' padding; used by run's goroutine only

	mu sync.Mutex
	c  mqtt.Client
}

// payload is a ledger payload of about propPayloadBytes whose padding is
// random hex, so batches do not compress to a few datagrams and the
// relay's faults hit many packets.
func (d *propDevice) payload(n uint64, sent time.Time) []byte {
	pad := make([]byte, propPayloadBytes/2)
	for i := range pad {
		pad[i] = byte(d.rnd.Uint32())
	}
	b, _ := json.Marshal(ledger.Payload{Device: d.id, N: n, Sent: sent.UnixNano(), Pad: hex.EncodeToString(pad)})
	return b
}

func (d *propDevice) run(stop <-chan struct{}) {
	sem := make(chan struct{}, propInFlight)
	var pending sync.WaitGroup
	defer pending.Wait()
	pace := time.NewTicker(10 * time.Millisecond)
	defer pace.Stop()
	for n := uint64(1); n <= propPerDevice; {
		select {
		case <-stop:
			return
		case <-pace.C: // the publish rate, about 100 messages a second
		}
		c := d.client()
		if c == nil {
			continue // the gateway is down; try again at the next tick
		}
		select {
		case sem <- struct{}{}:
		case <-stop:
			return
		}
		k := ledger.Key{Device: d.id, N: n}
		now := time.Now()
		d.led.Published(k, now)
		tok := c.Publish("devices/"+d.id+"/telemetry", 1, false, d.payload(n, now))
		n++
		pending.Add(1)
		go func() {
			defer pending.Done()
			defer func() { <-sem }()
			if tok.WaitTimeout(30*time.Second) && tok.Error() == nil {
				d.led.Acked(k)
			} else {
				d.led.Failed(k)
			}
		}()
	}
}

// client returns a connected client, connecting a new one if needed, or
// nil if the gateway does not answer.
func (d *propDevice) client() mqtt.Client {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.c != nil && d.c.IsConnectionOpen() {
		return d.c
	}
	if d.c != nil {
		d.c.Disconnect(0)
	}
	opts := mqtt.NewClientOptions().AddBroker("tcp://" + d.addr).SetClientID(d.id).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(2 * time.Second).SetWriteTimeout(5 * time.Second)
	c := mqtt.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(3*time.Second) || tok.Error() != nil {
		c.Disconnect(0)
		d.c = nil
		return nil
	}
	d.c = c
	return c
}

func (d *propDevice) close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.c != nil {
		d.c.Disconnect(0)
		d.c = nil
	}
}
