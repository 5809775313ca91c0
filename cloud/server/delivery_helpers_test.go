package server

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	format "github.com/cloudevents/sdk-go/binding/format/protobuf/v2"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"google.golang.org/protobuf/proto"

	"github.com/tributary-io/tributary/cloud/commitlog"
)

// ceSink is a real HTTP CloudEvents receiver whose answer per event is
// decided by status (200 when nil).
type ceSink struct {
	*httptest.Server
	mu     sync.Mutex
	status func(e *event.Event) int
	got    []*event.Event // accepted (2xx) events, in arrival order
}

func newCESink(t *testing.T, status func(e *event.Event) int) *ceSink {
	t.Helper()
	s := &ceSink{status: status}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e, err := cehttp.NewEventFromHTTPRequest(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		code := http.StatusOK
		if s.status != nil {
			code = s.status(e)
		}
		if code/100 == 2 {
			s.got = append(s.got, e)
		}
		s.mu.Unlock()
		w.WriteHeader(code)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *ceSink) setStatus(f func(e *event.Event) int) {
	s.mu.Lock()
	s.status = f
	s.mu.Unlock()
}

// accepted returns the events answered 2xx so far.
func (s *ceSink) accepted() []*event.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*event.Event(nil), s.got...)
}

// countID counts the 2xx answers to event id.
func (s *ceSink) countID(id string) int {
	n := 0
	for _, e := range s.accepted() {
		if e.ID() == id {
			n++
		}
	}
	return n
}

// testEvent builds event i: source dev-<i%3>, JSON data {"i": i, "t": 20+i}.
func testEvent(i int) *event.Event {
	e := event.New()
	e.SetID(fmt.Sprintf("ev-%d", i))
	e.SetSource(fmt.Sprintf("urn:dev-%d", i%3))
	e.SetType("io.tributary.telemetry")
	e.SetSubject(fmt.Sprintf("plant/dev-%d/temp", i%3))
	_ = e.SetData(event.ApplicationJSON, map[string]any{"i": i, "t": 20 + i})
	return &e
}

// appendEvents appends events to the cloud's log as ingest would.
func appendEvents(t *testing.T, lg commitlog.Log, evs ...*event.Event) {
	t.Helper()
	var recs []commitlog.Record
	for _, e := range evs {
		pe, err := format.ToProto(e)
		if err != nil {
			t.Fatal(err)
		}
		b, err := proto.Marshal(pe)
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, commitlog.Record{Topic: e.Subject(), Value: b})
	}
	if _, err := lg.Append(t.Context(), recs); err != nil {
		t.Fatal(err)
	}
}

// waitUntil polls cond, failing the test after a generous deadline (a hang,
// not a slowness check).
func waitUntil(t *testing.T, what string, cond func() bool) {
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

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
