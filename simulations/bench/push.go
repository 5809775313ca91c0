package bench

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudevents/sdk-go/binding/format/protobuf/v2/pb"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tributary-io/tributary/cloud/commitlog"
	"github.com/tributary-io/tributary/cloud/dispatch"
	"github.com/tributary-io/tributary/cloud/filter"
)

func init() {
	Register(Scenario{
		Name:  "push",
		Brief: "push delivery from the central log to a local HTTP sink: one ordered subscription with 16 lanes, then 100 subscriptions with mixed filters",
		Flags: pushFlags,
	})
}

func pushFlags(fs *flag.FlagSet) func(context.Context, io.Writer) (map[string]any, error) {
	dur := fs.Duration("duration", 10*time.Second, "how long each phase appends")
	devices := fs.Int("devices", 1000, "distinct subjects (devices); order is checked per subject")
	backlog := fs.Int("backlog", 4096, "the appender keeps at most this many events appended but not delivered (so the rate is what the sink keeps up with)")
	fixedRate := fs.Float64("fixed-rate", 2000, "events/s appended in the fixed-rate phases, which measure latency without a backlog (ordered, binary and batch mode); 0 skips them")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of each phase to this `file` name with the phase (-ordered, -ordered-batch, -fanout, -fanout-batch, -ordered-fixed-rate, -ordered-batch-fixed-rate) before its extension")
	return func(ctx context.Context, progress io.Writer) (map[string]any, error) {
		dir, err := os.MkdirTemp("", "tributary-bench-push-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		res := map[string]any{"loadavg_before": loadAverage()}
		// The sink alone, driven by a plain HTTP client: the ceiling the
		// delivery phases cannot pass on this machine.
		for _, batch := range []bool{false, true} {
			alone, err := runSinkAlone(ctx, 3*time.Second, *devices, batch)
			if err != nil {
				return nil, fmt.Errorf("sink alone: %w", err)
			}
			mode, key := "binary mode", "sink_alone"
			if batch {
				mode, key = fmt.Sprintf("batches of %d", dispatch.DefaultBatchSize), "sink_alone_batch"
			}
			fmt.Fprintf(progress, "push: sink alone (16 keep-alive connections, %s): %.0f events/s, %.1f µs CPU per event (client and sink)\n", mode, alone.rate, alone.cpuPerEvent)
			res[key+"_events_per_s"] = roundTo(alone.rate, 0)
			res[key+"_cpu_us_per_event"] = roundTo(alone.cpuPerEvent, 1)
		}
		var lost, ooo, dups int
		// Binary mode is the HTTP binding's default (one event per
		// request): the headline figures. Batch mode is the opt-in
		// (application/cloudevents-batch+json, up to 100 events a request).
		phases := []struct {
			name, mode string
			subs       int
			suffix     string
			rate       float64
		}{
			{"ordered", "", 1, "", 0},
			{"ordered-batch", dispatch.ModeBatch, 1, "_batch", 0},
			{"fanout", "", 100, "", 0},
			{"fanout-batch", dispatch.ModeBatch, 100, "_batch", 0},
		}
		if *fixedRate > 0 {
			phases = append(phases, struct {
				name, mode string
				subs       int
				suffix     string
				rate       float64
			}{"ordered-fixed-rate", "", 1, "_fixed_rate", *fixedRate}, struct {
				name, mode string
				subs       int
				suffix     string
				rate       float64
			}{"ordered-batch-fixed-rate", dispatch.ModeBatch, 1, "_batch_fixed_rate", *fixedRate})
			res["fixed_rate"] = *fixedRate
		}
		for _, ph := range phases {
			r, err := runPush(ctx, progress, filepath.Join(dir, ph.name), *dur, *devices, *backlog, ph.rate, ph.subs, ph.mode, profileName(*cpuProfile, ph.name))
			if err != nil {
				return nil, fmt.Errorf("%s: %w", ph.name, err)
			}
			kind := "ordered"
			if ph.subs > 1 {
				kind = "fanout"
				res["appended_per_s_fanout"+ph.suffix] = roundTo(r.appendRate, 0)
				res["delivered_fanout"+ph.suffix] = r.delivered
				res["p99_ms_fanout"+ph.suffix] = r.p99
			} else {
				res["p99_ms"+ph.suffix] = r.p99
				res["p50_ms"+ph.suffix] = r.p50
				res["delivered_ordered"+ph.suffix] = r.delivered
			}
			res["events_per_s_"+kind+ph.suffix] = roundTo(r.rate, 0)
			res["cpu_us_per_event_"+kind+ph.suffix] = roundTo(r.cpuPerEvent, 1)
			lost += r.lost
			ooo += r.outOfOrder
			dups += r.redeliveries
		}
		res["lost"], res["out_of_order"], res["redeliveries"] = lost, ooo, dups
		res["subscriptions_fanout"] = 100
		res["lanes_ordered"] = 16
		res["batch_size"] = dispatch.DefaultBatchSize
		res["loadavg_after"] = loadAverage()
		return res, nil
	}
}

type pushResult struct {
	rate, appendRate, p50, p99, cpuPerEvent   float64
	delivered, lost, outOfOrder, redeliveries int
}

// pushSink receives every subscription's events (the URL path names the
// subscription) and checks order per subject within each.
type pushSink struct {
	mu        sync.Mutex
	seen      map[string]map[string]bool   // sub -> event id
	last      map[string]map[string]uint64 // sub -> subject -> last n
	lat       []time.Duration
	ooo, dups int
	delivered atomic.Int64
}

func (p *pushSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var evs []*event.Event
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt == event.ApplicationCloudEventsBatchJSON {
		batch, err := cehttp.NewEventsFromHTTPRequest(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		for i := range batch {
			evs = append(evs, &batch[i])
		}
	} else {
		ev, err := cehttp.NewEventFromHTTPRequest(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		evs = append(evs, ev)
	}
	now := time.Now()
	sub := strings.Trim(r.URL.Path, "/")
	p.mu.Lock()
	if p.seen[sub] == nil {
		p.seen[sub], p.last[sub] = map[string]bool{}, map[string]uint64{}
	}
	for _, ev := range evs {
		n, _ := strconv.ParseUint(fmt.Sprint(ev.Extensions()["n"]), 10, 64)
		if p.seen[sub][ev.ID()] {
			p.dups++
			continue
		}
		p.seen[sub][ev.ID()] = true
		if last, ok := p.last[sub][ev.Subject()]; ok && n < last {
			p.ooo++
		}
		p.last[sub][ev.Subject()] = n
		p.lat = append(p.lat, now.Sub(ev.Time()))
		p.delivered.Add(1)
	}
	p.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

// profileName inserts -phase before name's extension ("" stays "").
func profileName(name, phase string) string {
	if name == "" {
		return ""
	}
	ext := filepath.Ext(name)
	return strings.TrimSuffix(name, ext) + "-" + phase + ext
}

// runPush runs one phase. With rate > 0 the appender appends that many
// events per second; otherwise as fast as delivery keeps up, with at most
// backlog deliveries outstanding.
func runPush(ctx context.Context, progress io.Writer, dir string, dur time.Duration, devices, backlog int, rate float64, subs int, mode, profile string) (pushResult, error) {
	if profile != "" {
		f, err := os.Create(profile)
		if err != nil {
			return pushResult{}, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return pushResult{}, err
		}
		defer pprof.StopCPUProfile()
	}
	log, err := commitlog.Open(filepath.Join(dir, "log"), commitlog.Options{})
	if err != nil {
		return pushResult{}, err
	}
	defer log.Close()
	ps := &pushSink{seen: map[string]map[string]bool{}, last: map[string]map[string]uint64{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return pushResult{}, err
	}
	srv := &http.Server{Handler: ps, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	base := "http://" + ln.Addr().String() + "/"

	d, err := dispatch.New(log, filepath.Join(dir, "cursors"), dispatch.Options{})
	if err != nil {
		return pushResult{}, err
	}
	// The subscriptions and, for each, which subjects it takes.
	type subSpec struct {
		id      string
		matches func(device int) bool
	}
	var specs []subSpec
	if subs == 1 {
		specs = append(specs, subSpec{"ordered", func(int) bool { return true }})
		if err := d.Add(dispatch.Subscription{ID: "ordered", Sink: base + "ordered", Parallelism: 16, ProtocolSettings: dispatch.HTTPSettings{Mode: mode}}); err != nil {
			return pushResult{}, err
		}
	} else {
		for i := range subs {
			id := fmt.Sprintf("s%03d", i)
			sub := dispatch.Subscription{ID: id, Sink: base + id, Parallelism: 4, ProtocolSettings: dispatch.HTTPSettings{Mode: mode}}
			var match func(int) bool
			switch i % 4 {
			case 0: // everything
				match = func(int) bool { return true }
			case 1: // prefix on subject: devices/1...
				sub.Filters = []filter.Filter{{Prefix: map[string]string{"subject": "devices/1"}}}
				match = func(dev int) bool { return strings.HasPrefix(fmt.Sprintf("devices/%d", dev), "devices/1") }
			case 2: // exact type of one class of events
				sub.Filters = []filter.Filter{{Exact: map[string]string{"type": "io.bench.even"}}}
				match = func(dev int) bool { return dev%2 == 0 }
			case 3: // CESQL
				sub.Filters = []filter.Filter{{SQL: "type = 'io.bench.odd' AND subject LIKE 'devices/%'"}}
				match = func(dev int) bool { return dev%2 == 1 }
			}
			specs = append(specs, subSpec{id, match})
			if err := d.Add(sub); err != nil {
				return pushResult{}, err
			}
		}
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	runDone := make(chan error, 1)
	go func() { runDone <- d.Run(runCtx) }()

	// Append as fast as delivery keeps up: at most backlog expected
	// deliveries outstanding.
	expectedPer := func(dev int) int {
		n := 0
		for _, s := range specs {
			if s.matches(dev) {
				n++
			}
		}
		return n
	}
	perDev := make([]int, devices)
	for i := range perDev {
		perDev[i] = expectedPer(i)
	}
	var expected int64
	counters := make([]uint64, devices)
	cpu0 := processCPU()
	start := time.Now()
	deadline := start.Add(dur)
	appended := 0
	next := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if ctx.Err() != nil {
			return pushResult{}, ctx.Err()
		}
		per := 64
		if rate > 0 {
			per = 16
			if wait := time.Until(start.Add(time.Duration(float64(appended) / rate * float64(time.Second)))); wait > 0 {
				time.Sleep(wait) // the fixed rate
			}
		} else if expected-ps.delivered.Load() > int64(backlog) {
			time.Sleep(200 * time.Microsecond) // pacing the producer to the sink
			continue
		}
		batch := make([]commitlog.Record, 0, per)
		for range per {
			dev := appended % devices
			counters[dev]++
			typ := "io.bench.even"
			if dev%2 == 1 {
				typ = "io.bench.odd"
			}
			subject := fmt.Sprintf("devices/%d", dev)
			ce := &pb.CloudEvent{Id: fmt.Sprintf("e-%d", appended), Source: "/bench", SpecVersion: "1.0", Type: typ,
				Attributes: map[string]*pb.CloudEventAttributeValue{
					"subject":         {Attr: &pb.CloudEventAttributeValue_CeString{CeString: subject}},
					"time":            {Attr: &pb.CloudEventAttributeValue_CeTimestamp{CeTimestamp: timestamppb.Now()}},
					"partitionkey":    {Attr: &pb.CloudEventAttributeValue_CeString{CeString: subject}},
					"n":               {Attr: &pb.CloudEventAttributeValue_CeString{CeString: strconv.FormatUint(counters[dev], 10)}},
					"datacontenttype": {Attr: &pb.CloudEventAttributeValue_CeString{CeString: "application/json"}},
				},
				Data: &pb.CloudEvent_BinaryData{BinaryData: []byte(`{"reading":` + strconv.Itoa(appended%1000) + `,"pad":"` + strings.Repeat("x", 150) + `"}`)},
			}
			b, err := proto.Marshal(ce)
			if err != nil {
				return pushResult{}, err
			}
			batch = append(batch, commitlog.Record{Topic: subject, Value: b})
			expected += int64(perDev[dev])
			appended++
		}
		if _, err := log.Append(ctx, batch); err != nil {
			return pushResult{}, err
		}
		if time.Now().After(next) {
			fmt.Fprintf(progress, "push(%d subs%s): t=%4.1fs appended=%d delivered=%d\n", subs, map[string]string{"": "", dispatch.ModeBatch: ", batch"}[mode], time.Since(start).Seconds(), appended, ps.delivered.Load())
			next = next.Add(2 * time.Second)
		}
	}
	appendElapsed := time.Since(start)
	// Drain.
	drainLimit := time.Now().Add(60 * time.Second)
	for ps.delivered.Load() < expected && time.Now().Before(drainLimit) {
		time.Sleep(10 * time.Millisecond)
	}
	elapsed := time.Since(start)
	cpu := processCPU() - cpu0
	stop()
	if err := <-runDone; err != nil && !errors.Is(err, context.Canceled) {
		return pushResult{}, err
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	delivered := int(ps.delivered.Load())
	lat := slices.Clone(ps.lat)
	slices.Sort(lat)
	q := func(f float64) float64 {
		if len(lat) == 0 {
			return 0
		}
		return float64(lat[min(len(lat)-1, int(f*float64(len(lat))))].Microseconds()) / 1000
	}
	res := pushResult{
		rate:         float64(delivered) / elapsed.Seconds(),
		appendRate:   float64(appended) / appendElapsed.Seconds(),
		p50:          q(0.50),
		p99:          q(0.99),
		delivered:    delivered,
		lost:         int(expected) - delivered,
		outOfOrder:   ps.ooo,
		redeliveries: ps.dups,
	}
	if delivered > 0 {
		res.cpuPerEvent = float64(cpu.Microseconds()) / float64(delivered)
	}
	fmt.Fprintf(progress, "push(%d subs%s): appended %d, delivered %d of %d expected in %.1fs: %.0f events/s, p99 %.1f ms, %.1f µs CPU per event (whole process: appender, log, dispatcher, sink)\n",
		subs, map[string]string{"": "", dispatch.ModeBatch: ", batch"}[mode], appended, delivered, expected, elapsed.Seconds(), res.rate, res.p99, res.cpuPerEvent)

	return res, nil
}

type sinkAloneResult struct{ rate, cpuPerEvent float64 }

// runSinkAlone drives a pushSink with 16 keep-alive connections posting
// binary-mode events (what the dispatcher sends by default) for dur.
func runSinkAlone(ctx context.Context, dur time.Duration, devices int, batch bool) (sinkAloneResult, error) {
	ps := &pushSink{seen: map[string]map[string]bool{}, last: map[string]map[string]uint64{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return sinkAloneResult{}, err
	}
	srv := &http.Server{Handler: ps, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	tr := &http.Transport{MaxIdleConnsPerHost: 16}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	url := "http://" + ln.Addr().String() + "/alone"
	body := []byte(`{"reading":1,"pad":"` + strings.Repeat("x", 150) + `"}`)
	runCtx, cancel := context.WithTimeout(ctx, dur)
	defer cancel()
	cpu0, start := processCPU(), time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; runCtx.Err() == nil; i++ {
				var req *http.Request
				if batch {
					// A batch of structured events, as the dispatcher sends
					// them in batch mode.
					var b bytes.Buffer
					b.WriteByte('[')
					for j := range dispatch.DefaultBatchSize {
						if j > 0 {
							b.WriteByte(',')
						}
						fmt.Fprintf(&b, `{"specversion":"1.0","id":"a-%d-%d-%d","source":"/bench","type":"io.bench.even","subject":"devices/%d","time":%q,"n":"%d","datacontenttype":"application/json","data":%s}`,
							w, i, j, (w+16*j)%devices, time.Now().UTC().Format(time.RFC3339Nano), i, body)
					}
					b.WriteByte(']')
					req, _ = http.NewRequestWithContext(runCtx, http.MethodPost, url, &b)
					req.Header.Set("Content-Type", event.ApplicationCloudEventsBatchJSON)
				} else {
					req, _ = http.NewRequestWithContext(runCtx, http.MethodPost, url, bytes.NewReader(body))
					dev := (w + 16*i) % devices
					req.Header.Set("Content-Type", "application/json")
					req.Header.Set("ce-specversion", "1.0")
					req.Header.Set("ce-id", fmt.Sprintf("a-%d-%d", w, i))
					req.Header.Set("ce-source", "/bench")
					req.Header.Set("ce-type", "io.bench.even")
					req.Header.Set("ce-subject", fmt.Sprintf("devices/%d", dev))
					req.Header.Set("ce-time", time.Now().UTC().Format(time.RFC3339Nano))
					req.Header.Set("ce-n", strconv.Itoa(i))
				}
				resp, err := client.Do(req)
				if err != nil {
					if runCtx.Err() == nil {
						errs <- err
					}
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					errs <- fmt.Errorf("sink answered %s", resp.Status)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed, cpu := time.Since(start), processCPU()-cpu0
	select {
	case err := <-errs:
		return sinkAloneResult{}, err
	default:
	}
	n := ps.delivered.Load()
	if n == 0 {
		return sinkAloneResult{}, errors.New("the sink received nothing")
	}
	return sinkAloneResult{rate: float64(n) / elapsed.Seconds(), cpuPerEvent: float64(cpu.Microseconds()) / float64(n)}, nil
}
