package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudevents/sdk-go/binding/format/protobuf/v2/pb"
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
	return func(ctx context.Context, progress io.Writer) (map[string]any, error) {
		dir, err := os.MkdirTemp("", "tributary-bench-push-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		loadBefore := loadAverage()
		ordered, err := runPush(ctx, progress, filepath.Join(dir, "ordered"), *dur, *devices, *backlog, 1)
		if err != nil {
			return nil, fmt.Errorf("ordered: %w", err)
		}
		fanout, err := runPush(ctx, progress, filepath.Join(dir, "fanout"), *dur, *devices, *backlog, 100)
		if err != nil {
			return nil, fmt.Errorf("fan-out: %w", err)
		}
		return map[string]any{
			"events_per_s_ordered":  ordered.rate,
			"events_per_s_fanout":   fanout.rate,
			"appended_per_s_fanout": fanout.appendRate,
			"p99_ms":                ordered.p99,
			"p50_ms":                ordered.p50,
			"p99_ms_fanout":         fanout.p99,
			"lost":                  ordered.lost + fanout.lost,
			"out_of_order":          ordered.outOfOrder + fanout.outOfOrder,
			"redeliveries":          ordered.redeliveries + fanout.redeliveries,
			"delivered_ordered":     ordered.delivered,
			"delivered_fanout":      fanout.delivered,
			"subscriptions_fanout":  100,
			"lanes_ordered":         16,
			"loadavg_before":        loadBefore,
			"loadavg_after":         loadAverage(),
		}, nil
	}
}

type pushResult struct {
	rate, appendRate, p50, p99                float64
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
	ev, err := cehttp.NewEventFromHTTPRequest(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	now := time.Now()
	sub := strings.Trim(r.URL.Path, "/")
	n, _ := strconv.ParseUint(ev.Extensions()["n"].(string), 10, 64)
	p.mu.Lock()
	if p.seen[sub] == nil {
		p.seen[sub], p.last[sub] = map[string]bool{}, map[string]uint64{}
	}
	if p.seen[sub][ev.ID()] {
		p.dups++
	} else {
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

func runPush(ctx context.Context, progress io.Writer, dir string, dur time.Duration, devices, backlog, subs int) (pushResult, error) {
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
		if err := d.Add(dispatch.Subscription{ID: "ordered", Sink: base + "ordered", Parallelism: 16}); err != nil {
			return pushResult{}, err
		}
	} else {
		for i := range subs {
			id := fmt.Sprintf("s%03d", i)
			sub := dispatch.Subscription{ID: id, Sink: base + id, Parallelism: 4}
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
	start := time.Now()
	deadline := start.Add(dur)
	appended := 0
	next := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if ctx.Err() != nil {
			return pushResult{}, ctx.Err()
		}
		if expected-ps.delivered.Load() > int64(backlog) {
			time.Sleep(200 * time.Microsecond) // pacing the producer to the sink
			continue
		}
		batch := make([]commitlog.Record, 0, 64)
		for range 64 {
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
			fmt.Fprintf(progress, "push(%d subs): t=%4.1fs appended=%d delivered=%d\n", subs, time.Since(start).Seconds(), appended, ps.delivered.Load())
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
	fmt.Fprintf(progress, "push(%d subs): appended %d, delivered %d of %d expected in %.1fs: %.0f events/s, p99 %.1f ms\n",
		subs, appended, delivered, expected, elapsed.Seconds(), res.rate, res.p99)

	return res, nil
}
