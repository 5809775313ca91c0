package dispatch

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/tributary-io/tributary/cloud/commitlog"
	"github.com/tributary-io/tributary/cloud/filter"
)

// TestDeliverAll pushes 1,500 events through an in-memory log to a real HTTP
// sink in each content mode and checks every event arrives once with the
// log's attributes and data.
func TestDeliverAll(t *testing.T) {
	const n, devices = 1500, 50
	for _, mode := range []string{ModeBinary, ModeStructured} {
		t.Run(mode, func(t *testing.T) {
			lg := commitlog.NewMemory(nil)
			fillLog(t, lg, n, devices)
			s := newSink(t, nil)
			dir := t.TempDir()
			d := mustNew(t, lg, dir, Options{})
			sub := Subscription{ID: "all-" + mode, Sink: s.URL, Parallelism: 4, ProtocolSettings: HTTPSettings{Mode: mode, Headers: map[string]string{"Authorization": "Bearer t0k"}}}
			if err := d.Add(sub); err != nil {
				t.Fatal(err)
			}
			stop := started(t, d)
			waitFor(t, "all events delivered", func() bool { return s.delivered() == n })
			waitFor(t, "cursor at the end", func() bool { st, _ := d.Stats(sub.ID); return st.LowWater == n })
			if err := stop(); err != nil {
				t.Fatalf("Run: %v", err)
			}

			got := s.snapshot()
			if len(got) != n {
				t.Fatalf("sink saw %d requests, want %d (no failures, so no redelivery)", len(got), n)
			}
			for _, r := range got {
				var i int
				if _, err := fmt.Sscanf(r.ev.ID(), "ev-%d", &i); err != nil {
					t.Fatalf("unexpected id %q", r.ev.ID())
				}
				want := makeEvent(i, devices)
				checkSameEvent(t, want, r.ev)
				if got := r.header.Get("Authorization"); got != "Bearer t0k" {
					t.Fatalf("extra header: got %q", got)
				}
				ct := r.header.Get("Content-Type")
				switch mode {
				case ModeBinary:
					if r.header.Get("Ce-Id") != want.ID() || ct != "application/json" {
						t.Fatalf("binary mode: ce-id %q content-type %q", r.header.Get("Ce-Id"), ct)
					}
				case ModeStructured:
					if !strings.HasPrefix(ct, "application/cloudevents+json") || r.header.Get("Ce-Id") != "" {
						t.Fatalf("structured mode: content-type %q, ce-id %q", ct, r.header.Get("Ce-Id"))
					}
				}
			}
			st, err := d.Stats(sub.ID)
			if err != nil {
				t.Fatal(err)
			}
			if st.Delivered != n || st.Retries != 0 || st.DeadLettered != 0 || st.Cursor != n || st.InFlight != 0 {
				t.Fatalf("stats after run: %+v", st)
			}
			// The cursor is on disk.
			cs, ok, err := newCursorFile(dir, sub.ID).load()
			if err != nil || !ok || cs.Offset != n {
				t.Fatalf("cursor file: %+v ok=%v err=%v", cs, ok, err)
			}
		})
	}
}

func checkSameEvent(t testing.TB, want, got *event.Event) {
	t.Helper()
	if got.ID() != want.ID() || got.Source() != want.Source() || got.Type() != want.Type() ||
		got.Subject() != want.Subject() || !got.Time().Equal(want.Time()) ||
		got.DataContentType() != want.DataContentType() || got.SpecVersion() != want.SpecVersion() ||
		string(got.Data()) != string(want.Data()) {
		t.Fatalf("event differs:\n got %v\nwant %v", got, want)
	}
	for _, ext := range []string{"partitionkey", "seq"} {
		if extString(t, got, ext) != extString(t, want, ext) {
			t.Fatalf("extension %s: got %v want %v", ext, got.Extensions()[ext], want.Extensions()[ext])
		}
	}
}

// TestPerPartitionOrder checks that with 4 ordered lanes each device's events
// reach the sink in sequence, even when deliveries fail and are retried.
func TestPerPartitionOrder(t *testing.T) {
	const n, devices = 1500, 37
	lg := commitlog.NewMemory(nil)
	fillLog(t, lg, n, devices)
	var mu sync.Mutex
	lastSeq := map[string]int{}
	var violations []string
	s := newSink(t, func(e *event.Event, attempt int) (int, http.Header) {
		var seq int
		fmt.Sscanf(extString(t, e, "seq"), "%d", &seq)
		// Every 11th event fails twice before it is accepted.
		var i int
		fmt.Sscanf(e.ID(), "ev-%d", &i)
		if i%11 == 0 && attempt <= 2 {
			return http.StatusServiceUnavailable, nil
		}
		key := extString(t, e, "partitionkey")
		mu.Lock()
		defer mu.Unlock()
		if last, ok := lastSeq[key]; ok && seq != last+1 {
			violations = append(violations, fmt.Sprintf("%s: seq %d after %d", key, seq, last))
		} else if !ok && seq != 0 {
			violations = append(violations, fmt.Sprintf("%s: first seq %d", key, seq))
		}
		lastSeq[key] = seq
		return http.StatusOK, nil
	})
	waits := &fakeWaits{}
	d := mustNew(t, lg, t.TempDir(), Options{After: waits.after})
	if err := d.Add(Subscription{ID: "ordered", Sink: s.URL, Parallelism: 4}); err != nil {
		t.Fatal(err)
	}
	stop := started(t, d)
	waitFor(t, "all delivered", func() bool { return s.delivered() == n })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(violations) > 0 {
		t.Fatalf("%d order violations, first: %v", len(violations), violations[:min(5, len(violations))])
	}
	if len(lastSeq) != devices {
		t.Fatalf("saw %d partitions, want %d", len(lastSeq), devices)
	}
	st, _ := d.Stats("ordered")
	if want := uint64(2 * ((n + 10) / 11)); st.Retries != want {
		t.Fatalf("retries = %d, want %d", st.Retries, want)
	}
}

// TestUnorderedDeliversAll runs the unordered worker pool.
func TestUnorderedDeliversAll(t *testing.T) {
	const n = 1000
	lg := commitlog.NewMemory(nil)
	fillLog(t, lg, n, 5)
	s := newSink(t, nil)
	d := mustNew(t, lg, t.TempDir(), Options{})
	unordered := false
	if err := d.Add(Subscription{ID: "u", Sink: s.URL, Parallelism: 8, Ordered: &unordered}); err != nil {
		t.Fatal(err)
	}
	stop := started(t, d)
	waitFor(t, "all delivered", func() bool { return s.delivered() == n })
	waitFor(t, "cursor at end", func() bool { st, _ := d.Stats("u"); return st.LowWater == n })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestRetryAfter: a sink answering 503 with Retry-After, then 200, gets the
// event once more after the requested delay, and it is delivered once.
func TestRetryAfter(t *testing.T) {
	clock := &fakeClock{t: baseTime}
	cases := []struct {
		name       string
		retryAfter func() string
		want       time.Duration
	}{
		{"seconds", func() string { return "7" }, 7 * time.Second},
		{"http-date", func() string { return clock.now().Add(90 * time.Second).Format(http.TimeFormat) }, 90 * time.Second},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			lg := commitlog.NewMemory(nil)
			fillLog(t, lg, 10, 2)
			s := newSink(t, func(e *event.Event, attempt int) (int, http.Header) {
				if e.ID() == "ev-4" && attempt <= 2 {
					return http.StatusServiceUnavailable, http.Header{"Retry-After": {c.retryAfter()}}
				}
				return http.StatusOK, nil
			})
			waits := &fakeWaits{}
			d := mustNew(t, lg, t.TempDir(), Options{After: waits.after, Now: clock.now})
			if err := d.Add(Subscription{ID: "ra", Sink: s.URL}); err != nil {
				t.Fatal(err)
			}
			stop := started(t, d)
			waitFor(t, "all delivered", func() bool { return s.delivered() == 10 })
			waitFor(t, "cursor at end", func() bool { st, _ := d.Stats("ra"); return st.LowWater == 10 })
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			if got := waits.list(); len(got) != 2 || got[0] != c.want || got[1] != c.want {
				t.Fatalf("retry delays = %v, want two of %v", got, c.want)
			}
			if s.count("ev-4") != 1 {
				t.Fatalf("ev-4 accepted %d times", s.count("ev-4"))
			}
			st, _ := d.Stats("ra")
			if st.Retries != 2 || st.DeadLettered != 0 || st.Delivered != 10 {
				t.Fatalf("stats %+v", st)
			}
			if !strings.Contains(st.LastError, "HTTP 503") {
				t.Fatalf("last error %q", st.LastError)
			}
		})
	}
}

// TestNonRetriableDeadLettered: a 400 dead-letters the event at once into
// the log, and the cursor moves past it.
func TestNonRetriableDeadLettered(t *testing.T) {
	lg := commitlog.NewMemory(nil)
	fillLog(t, lg, 20, 3)
	s := newSink(t, func(e *event.Event, attempt int) (int, http.Header) {
		if e.ID() == "ev-7" {
			return http.StatusBadRequest, nil
		}
		return http.StatusAccepted, nil
	})
	waits := &fakeWaits{}
	d := mustNew(t, lg, t.TempDir(), Options{After: waits.after})
	if err := d.Add(Subscription{ID: "dl", Sink: s.URL, Parallelism: 2}); err != nil {
		t.Fatal(err)
	}
	stop := started(t, d)
	// 20 events plus the dead letter appended to the same log.
	waitFor(t, "cursor past everything", func() bool { st, _ := d.Stats("dl"); return st.LowWater == 21 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if len(waits.list()) != 0 {
		t.Fatalf("a 400 was retried: waits %v", waits.list())
	}
	dls := deadLetters(t, lg, "$deadletter/dl")
	if len(dls) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dls))
	}
	dl := dls[0]
	checkSameEvent(t, makeEvent(7, 3), dl)
	for ext, want := range map[string]string{ExtDLSubscription: "dl", ExtDLOffset: "7", ExtDLAttempts: "1", ExtDLStatus: "400"} {
		if got := extString(t, dl, ext); got != want {
			t.Errorf("%s = %q, want %q", ext, got, want)
		}
	}
	if r := extString(t, dl, ExtDLReason); !strings.Contains(r, "non-retriable") || !strings.Contains(r, "400") {
		t.Errorf("reason %q", r)
	}
	st, _ := d.Stats("dl")
	if st.DeadLettered != 1 || st.Delivered != 19 {
		t.Fatalf("stats %+v", st)
	}
	// The dead letter itself ($ topic) was not delivered: 20 distinct ids seen.
	if got := len(s.snapshot()); got != 20 {
		t.Fatalf("sink saw %d requests, want 20", got)
	}
}

// TestAttemptsExhausted: a sink that keeps failing gets MaxAttempts tries,
// spaced by growing backoff ceilings, then the event is dead-lettered.
func TestAttemptsExhausted(t *testing.T) {
	lg := commitlog.NewMemory(nil)
	fillLog(t, lg, 5, 1)
	s := newSink(t, func(e *event.Event, attempt int) (int, http.Header) {
		if e.ID() == "ev-2" {
			return http.StatusInternalServerError, nil
		}
		return http.StatusOK, nil
	})
	waits := &fakeWaits{}
	d := mustNew(t, lg, t.TempDir(), Options{After: waits.after})
	sub := Subscription{ID: "ex", Sink: s.URL, Retry: RetryPolicy{MaxAttempts: 4, MinBackoff: Duration(time.Second), MaxBackoff: Duration(3 * time.Second)}}
	if err := d.Add(sub); err != nil {
		t.Fatal(err)
	}
	stop := started(t, d)
	waitFor(t, "cursor at end", func() bool { st, _ := d.Stats("ex"); return st.LowWater == 6 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	ceilings := []time.Duration{time.Second, 2 * time.Second, 3 * time.Second}
	got := waits.list()
	if len(got) != len(ceilings) {
		t.Fatalf("waits %v, want %d", got, len(ceilings))
	}
	for i, w := range got {
		if w < 0 || w > ceilings[i] {
			t.Fatalf("wait %d = %v, outside [0, %v]", i, w, ceilings[i])
		}
	}
	s.mu.Lock()
	tries := s.tries["ev-2"]
	s.mu.Unlock()
	if tries != 4 {
		t.Fatalf("ev-2 tried %d times, want 4", tries)
	}
	dls := deadLetters(t, lg, "$deadletter/ex")
	if len(dls) != 1 || extString(t, dls[0], ExtDLAttempts) != "4" || extString(t, dls[0], ExtDLStatus) != "500" {
		t.Fatalf("dead letters %v", dls)
	}
	// Events after it were delivered in order after it was given up.
	if s.count("ev-3") != 1 || s.count("ev-4") != 1 {
		t.Fatal("events after the dead letter not delivered")
	}
}

// TestMaxAgeWithFakeClock: with a clock that advances by each wait, an event
// is retried until its max age and then dead-lettered, without sleeping.
func TestMaxAgeWithFakeClock(t *testing.T) {
	lg := commitlog.NewMemory(nil)
	fillLog(t, lg, 1, 1)
	s := newSink(t, func(*event.Event, int) (int, http.Header) { return http.StatusBadGateway, nil })
	clock := &fakeClock{t: baseTime}
	waits := &fakeWaits{clock: clock}
	d := mustNew(t, lg, t.TempDir(), Options{After: waits.after, Now: clock.now})
	sub := Subscription{ID: "age", Sink: s.URL, Retry: RetryPolicy{MaxAttempts: 1000, MinBackoff: Duration(10 * time.Second), MaxBackoff: Duration(20 * time.Second), MaxAge: Duration(time.Minute)}}
	if err := d.Add(sub); err != nil {
		t.Fatal(err)
	}
	stop := started(t, d)
	waitFor(t, "dead-lettered", func() bool { st, _ := d.Stats("age"); return st.DeadLettered == 1 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	var total time.Duration
	for _, w := range waits.list() {
		total += w
	}
	if total != time.Minute {
		t.Fatalf("waited %v in total (%v), want exactly the max age (last retry at the deadline)", total, waits.list())
	}
	dls := deadLetters(t, lg, "$deadletter/age")
	if len(dls) != 1 || !strings.Contains(extString(t, dls[0], ExtDLReason), "max age") {
		t.Fatalf("dead letters %v", dls)
	}
}

// TestHangingSinkDoesNotHoldOthers: one subscription's sink never answers;
// another subscription on the same log still delivers everything.
func TestHangingSinkDoesNotHoldOthers(t *testing.T) {
	const n = 1000
	lg := commitlog.NewMemory(nil)
	fillLog(t, lg, n, 10)
	release := make(chan struct{})
	var hung sync.Once
	hanging := make(chan struct{})
	dead := newSink(t, func(*event.Event, int) (int, http.Header) {
		hung.Do(func() { close(hanging) })
		<-release
		return http.StatusOK, nil
	})
	// Registered after newSink, so it runs before the server's Close.
	t.Cleanup(func() { close(release) })
	healthy := newSink(t, nil)
	d := mustNew(t, lg, t.TempDir(), Options{})
	if err := d.Add(Subscription{ID: "dead", Sink: dead.URL, Parallelism: 2, ProtocolSettings: HTTPSettings{Timeout: Duration(10 * time.Minute)}}); err != nil {
		t.Fatal(err)
	}
	if err := d.Add(Subscription{ID: "healthy", Sink: healthy.URL, Parallelism: 2}); err != nil {
		t.Fatal(err)
	}
	stop := started(t, d)
	<-hanging
	waitFor(t, "healthy subscription complete", func() bool { st, _ := d.Stats("healthy"); return st.LowWater == n })
	st, _ := d.Stats("dead")
	if st.Delivered != 0 || st.InFlight == 0 || st.LowWater != 0 {
		t.Fatalf("dead subscription stats %+v", st)
	}
	if healthy.delivered() != n {
		t.Fatalf("healthy sink got %d", healthy.delivered())
	}
	// Stopping cancels the hung requests; Run returns.
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestFiltersAndInternalTopics: filters select events, "$" records are never
// delivered, and everything else still moves the cursor.
func TestFiltersAndInternalTopics(t *testing.T) {
	lg := commitlog.NewMemory(nil)
	fillLog(t, lg, 100, 4)
	// An internal record that would match the filter by content.
	if _, err := lg.Append(t.Context(), []commitlog.Record{{Topic: "$deadletter/other", Value: encode(t, makeEvent(1, 4))}}); err != nil {
		t.Fatal(err)
	}
	s := newSink(t, nil)
	d := mustNew(t, lg, t.TempDir(), Options{})
	sub := Subscription{ID: "f", Sink: s.URL, Filters: []filter.Filter{{Prefix: map[string]string{"subject": "plant/1/"}}, {SQL: "seq < 20"}}}
	if err := d.Add(sub); err != nil {
		t.Fatal(err)
	}
	stop := started(t, d)
	waitFor(t, "cursor at end", func() bool { st, _ := d.Stats("f"); return st.LowWater == 101 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	got := s.snapshot()
	if len(got) != 20 {
		t.Fatalf("delivered %d events, want 20", len(got))
	}
	for _, r := range got {
		if !strings.HasPrefix(r.ev.Subject(), "plant/1/") {
			t.Fatalf("filtered event delivered: %v", r.ev)
		}
	}
	st, _ := d.Stats("f")
	if st.Filtered != 80 {
		t.Fatalf("filtered = %d, want 80", st.Filtered)
	}
}

// TestUndecodableRecord: a record that is not a protobuf CloudEvent is
// dead-lettered, wrapped, with its bytes kept.
func TestUndecodableRecord(t *testing.T) {
	lg := commitlog.NewMemory(nil)
	garbage := []byte("\xff\xfe not protobuf")
	if _, err := lg.Append(t.Context(), []commitlog.Record{{Topic: "plant/1/temp", Value: garbage}}); err != nil {
		t.Fatal(err)
	}
	fillLog(t, lg, 3, 1)
	s := newSink(t, nil)
	d := mustNew(t, lg, t.TempDir(), Options{})
	if err := d.Add(Subscription{ID: "u", Sink: s.URL}); err != nil {
		t.Fatal(err)
	}
	stop := started(t, d)
	waitFor(t, "cursor at end", func() bool { st, _ := d.Stats("u"); return st.LowWater == 5 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	dls := deadLetters(t, lg, "$deadletter/u")
	if len(dls) != 1 || dls[0].Type() != TypeUndecodable || string(dls[0].Data()) != string(garbage) {
		t.Fatalf("dead letters %v", dls)
	}
	if extString(t, dls[0], ExtDLOffset) != "0" || s.delivered() != 3 {
		t.Fatalf("offset %s, delivered %d", extString(t, dls[0], ExtDLOffset), s.delivered())
	}
}

// TestLogClosedStopsRun: a log that fails makes Run return its error.
func TestLogClosedStopsRun(t *testing.T) {
	lg := commitlog.NewMemory(nil)
	fillLog(t, lg, 3, 1)
	s := newSink(t, nil)
	d := mustNew(t, lg, t.TempDir(), Options{})
	if err := d.Add(Subscription{ID: "c", Sink: s.URL}); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- d.Run(t.Context()) }()
	waitFor(t, "delivered", func() bool { return s.delivered() == 3 })
	lg.Close()
	err := <-errc
	if !errors.Is(err, commitlog.ErrClosed) {
		t.Fatalf("Run = %v, want ErrClosed", err)
	}
	if err := d.Add(Subscription{ID: "late", Sink: s.URL}); !errors.Is(err, ErrStopped) {
		t.Fatalf("Add after Run = %v", err)
	}
}

// TestRedirectNotFollowed: a 3xx is not followed (a redirected POST would be
// replayed as a bodiless GET) and dead-letters the event.
func TestRedirectNotFollowed(t *testing.T) {
	lg := commitlog.NewMemory(nil)
	fillLog(t, lg, 1, 1)
	target := newSink(t, nil)
	s := newSink(t, func(*event.Event, int) (int, http.Header) {
		return http.StatusFound, http.Header{"Location": {target.URL}}
	})
	d := mustNew(t, lg, t.TempDir(), Options{})
	if err := d.Add(Subscription{ID: "rd", Sink: s.URL}); err != nil {
		t.Fatal(err)
	}
	stop := started(t, d)
	waitFor(t, "dead-lettered", func() bool { st, _ := d.Stats("rd"); return st.DeadLettered == 1 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if len(target.snapshot()) != 0 {
		t.Fatal("redirect was followed")
	}
	if dls := deadLetters(t, lg, "$deadletter/rd"); len(dls) != 1 || extString(t, dls[0], ExtDLStatus) != "302" {
		t.Fatalf("dead letters %v", dls)
	}
}

// TestUnreachableSink: connection errors are retried, then dead-lettered
// with status 0 and the transport error as the reason.
func TestUnreachableSink(t *testing.T) {
	lg := commitlog.NewMemory(nil)
	fillLog(t, lg, 2, 1)
	gone := newSink(t, nil)
	url := gone.URL
	gone.Close()
	waits := &fakeWaits{}
	d := mustNew(t, lg, t.TempDir(), Options{After: waits.after})
	if err := d.Add(Subscription{ID: "gone", Sink: url, Retry: RetryPolicy{MaxAttempts: 3}}); err != nil {
		t.Fatal(err)
	}
	stop := started(t, d)
	waitFor(t, "dead-lettered", func() bool { st, _ := d.Stats("gone"); return st.DeadLettered == 2 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if n := len(waits.list()); n != 4 {
		t.Fatalf("%d retries, want 2 per event", n)
	}
	dls := deadLetters(t, lg, "$deadletter/gone")
	if len(dls) != 2 || extString(t, dls[0], ExtDLStatus) != "0" || !strings.Contains(extString(t, dls[0], ExtDLReason), "refused") {
		t.Fatalf("dead letters %v", dls)
	}
}

// TestAttemptTimeout: a sink slower than the subscription's timeout is
// abandoned and retried; PUT is used when configured.
func TestAttemptTimeout(t *testing.T) {
	lg := commitlog.NewMemory(nil)
	fillLog(t, lg, 1, 1)
	release := make(chan struct{})
	s := newSink(t, func(_ *event.Event, attempt int) (int, http.Header) {
		if attempt == 1 {
			<-release // never answers the first attempt
		}
		return http.StatusOK, nil
	})
	// Registered after newSink, so it runs before the server's Close.
	t.Cleanup(func() { close(release) })
	waits := &fakeWaits{}
	d := mustNew(t, lg, t.TempDir(), Options{After: waits.after})
	sub := Subscription{ID: "to", Sink: s.URL, ProtocolSettings: HTTPSettings{Method: "PUT", Timeout: Duration(100 * time.Millisecond)}}
	if err := d.Add(sub); err != nil {
		t.Fatal(err)
	}
	stop := started(t, d)
	// Wait on the dispatcher's count: the sink counts before its answer arrives.
	waitFor(t, "delivered on the second attempt", func() bool { st, _ := d.Stats("to"); return st.Delivered == 1 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	st, _ := d.Stats("to")
	if st.Retries != 1 || st.Delivered != 1 || !strings.Contains(st.LastError, "no answer within 100ms") {
		t.Fatalf("stats %+v", st)
	}
	for _, r := range s.snapshot() {
		if r.method != http.MethodPut {
			t.Fatalf("method %s", r.method)
		}
	}
}

// TestStuckPartitionDoesNotStallOtherLanes: one device's events keep
// failing and its lane waits to retry; the other lanes of the same
// subscription deliver everything else (within MaxPending).
func TestStuckPartitionDoesNotStallOtherLanes(t *testing.T) {
	const n, devices, lanes = 2000, 8, 4
	lg := commitlog.NewMemory(nil)
	fillLog(t, lg, n, devices)
	s := newSink(t, func(e *event.Event, _ int) (int, http.Header) {
		if extString(t, e, "partitionkey") == "dev-0" {
			return http.StatusServiceUnavailable, nil
		}
		return http.StatusOK, nil
	})
	stuck := laneOf("dev-0", lanes)
	want := 0
	for i := range n {
		if laneOf(laneKey(makeEvent(i, devices)), lanes) != stuck {
			want++
		}
	}
	if want == 0 || want == n {
		t.Fatalf("bad test setup: %d of %d events outside the stuck lane", want, n)
	}
	// Retry waits never end: the stuck lane holds its first event for good.
	never := func(time.Duration) <-chan time.Time { return nil }
	d := mustNew(t, lg, t.TempDir(), Options{After: never})
	if err := d.Add(Subscription{ID: "stuck", Sink: s.URL, Parallelism: lanes}); err != nil {
		t.Fatal(err)
	}
	stop := started(t, d)
	waitFor(t, "every event outside the stuck lane", func() bool {
		st, _ := d.Stats("stuck")
		return s.delivered() == want && st.Delivered == uint64(want)
	})
	st, _ := d.Stats("stuck")
	if st.LowWater != 0 || st.InFlight != 1 || st.Delivered != uint64(want) {
		t.Fatalf("stats %+v: the cursor must wait at offset 0 (dev-0's first event)", st)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}
