package dispatch

import (
	"context"
	"fmt"
	"mime"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	format "github.com/cloudevents/sdk-go/binding/format/protobuf/v2"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"google.golang.org/protobuf/proto"

	"github.com/tributary-io/tributary/cloud/commitlog"
)

var baseTime = time.Date(2025, 3, 1, 8, 0, 0, 0, time.UTC)

// makeEvent builds event i of a deterministic stream: devices take turns,
// and each event's data carries its per-device sequence number.
func makeEvent(i, devices int) *event.Event {
	dev := i % devices
	e := event.New()
	e.SetID(fmt.Sprintf("ev-%d", i))
	e.SetSource(fmt.Sprintf("urn:tributary:gw-1/dev-%d", dev))
	e.SetType("io.tributary.telemetry")
	e.SetSubject(fmt.Sprintf("plant/%d/temp", dev))
	e.SetTime(baseTime.Add(time.Duration(i) * time.Millisecond))
	e.SetExtension("partitionkey", fmt.Sprintf("dev-%d", dev))
	e.SetExtension("seq", int32(i/devices))
	e.DataEncoded = []byte(fmt.Sprintf(`{"i":%d,"seq":%d}`, i, i/devices))
	e.SetDataContentType("application/json")
	return &e
}

func encode(t testing.TB, e *event.Event) []byte {
	t.Helper()
	pe, err := format.ToProto(e)
	if err != nil {
		t.Fatal(err)
	}
	b, err := proto.Marshal(pe)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fillLog appends n events from the deterministic stream.
func fillLog(t testing.TB, lg commitlog.Log, n, devices int) {
	t.Helper()
	const batch = 500
	for i := 0; i < n; i += batch {
		var recs []commitlog.Record
		for j := i; j < min(n, i+batch); j++ {
			e := makeEvent(j, devices)
			recs = append(recs, commitlog.Record{Topic: e.Subject(), Value: encode(t, e), Time: baseTime})
		}
		if _, err := lg.Append(context.Background(), recs); err != nil {
			t.Fatal(err)
		}
	}
}

// received is one request a sink saw.
type received struct {
	ev     *event.Event
	method string
	header http.Header
	status int
	// batch is the number of events in the request; isBatch is set if it
	// came as application/cloudevents-batch+json.
	batch   int
	isBatch bool
}

// sink is a real HTTP server that decodes CloudEvents with sdk-go and
// answers with the status its policy returns (200 by default).
type sink struct {
	*httptest.Server
	mu     sync.Mutex
	got    []received
	counts map[string]int // id -> requests answered 2xx
	policy func(e *event.Event, attempt int) (status int, header http.Header)
	tries  map[string]int
	notify chan struct{}
}

func newSink(t testing.TB, policy func(e *event.Event, attempt int) (int, http.Header)) *sink {
	s := &sink{counts: map[string]int{}, tries: map[string]int{}, policy: policy, notify: make(chan struct{}, 1)}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func (s *sink) serve(w http.ResponseWriter, r *http.Request) {
	var evs []*event.Event
	isBatch := false
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt == event.ApplicationCloudEventsBatchJSON {
		isBatch = true
		batch, err := cehttp.NewEventsFromHTTPRequest(r)
		if err != nil || len(batch) == 0 {
			http.Error(w, fmt.Sprintf("not a CloudEvents batch: %v", err), http.StatusBadRequest)
			return
		}
		for i := range batch {
			evs = append(evs, &batch[i])
		}
	} else {
		e, err := cehttp.NewEventFromHTTPRequest(r)
		if err != nil {
			http.Error(w, "not a CloudEvent: "+err.Error(), http.StatusBadRequest)
			return
		}
		evs = append(evs, e)
	}
	// A batch gets the first refusal the policy gives any of its events.
	status, hdr := http.StatusOK, http.Header(nil)
	for _, e := range evs {
		s.mu.Lock()
		s.tries[e.ID()]++
		attempt := s.tries[e.ID()]
		s.mu.Unlock()
		if s.policy != nil {
			if st, h := s.policy(e, attempt); status/100 == 2 {
				status, hdr = st, h
			}
		}
	}
	s.mu.Lock()
	for _, e := range evs {
		s.got = append(s.got, received{ev: e, method: r.Method, header: r.Header.Clone(), status: status, batch: len(evs), isBatch: isBatch})
		if status/100 == 2 {
			s.counts[e.ID()]++
		}
	}
	s.mu.Unlock()
	select {
	case s.notify <- struct{}{}:
	default:
	}
	for k, vs := range hdr {
		w.Header()[k] = vs
	}
	w.WriteHeader(status)
}

func (s *sink) delivered() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.counts)
}

func (s *sink) snapshot() []received {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]received(nil), s.got...)
}

func (s *sink) count(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[id]
}

// waitFor polls cond until it holds, failing the test after a generous
// deadline (a hang, not a slowness check).
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(45 * time.Second)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// started runs d.Run in the background; the returned stop cancels it and
// returns Run's error.
func started(t testing.TB, d *Dispatcher) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- d.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			err = <-errc
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

// fakeWaits replaces Options.After: it records every requested delay and
// fires at once, so retry tests run without sleeping. If clock is non-nil
// it is advanced by each delay.
type fakeWaits struct {
	mu     sync.Mutex
	delays []time.Duration
	clock  *fakeClock
}

func (f *fakeWaits) after(d time.Duration) <-chan time.Time {
	f.mu.Lock()
	f.delays = append(f.delays, d)
	f.mu.Unlock()
	if f.clock != nil {
		f.clock.advance(d)
	}
	c := make(chan time.Time, 1)
	c <- time.Time{}
	return c
}

func (f *fakeWaits) list() []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Duration(nil), f.delays...)
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// deadLetters returns the decoded events of a dead-letter topic.
func deadLetters(t testing.TB, lg commitlog.Log, topic string) []*event.Event {
	t.Helper()
	recs, err := lg.Read(lg.FirstOffset(), 1<<20, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	var out []*event.Event
	for _, r := range recs {
		if r.Topic != topic {
			continue
		}
		var e event.Event
		if err := format.Protobuf.Unmarshal(r.Value, &e); err != nil {
			t.Fatalf("dead letter at %d does not decode: %v", r.Offset, err)
		}
		out = append(out, &e)
	}
	return out
}

func extString(t testing.TB, e *event.Event, name string) string {
	t.Helper()
	v, ok := e.Extensions()[name]
	if !ok {
		t.Fatalf("event %s has no extension %s", e.ID(), name)
	}
	switch v := v.(type) {
	case string:
		return v
	case int32:
		return strconv.Itoa(int(v))
	}
	return fmt.Sprint(v)
}

func mustNew(t testing.TB, lg commitlog.Log, dir string, opts Options) *Dispatcher {
	t.Helper()
	d, err := New(lg, dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	return d
}
