package fleet

import (
	"bytes"
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
)

// post sends a binary-mode CloudEvent to url and returns the status (0 if
// no answer came within wait).
func post(t *testing.T, url, id string, wait time.Duration) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader([]byte(`{"d":"dev","n":1}`)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("ce-specversion", "1.0")
	req.Header.Set("ce-id", id)
	req.Header.Set("ce-source", "/test")
	req.Header.Set("ce-type", "t")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestSinkServerFaults runs the fault-injecting sink on a real socket:
// routing by subscription path, failing with a status, hanging (held
// requests are never processed), and recovering.
func TestSinkServerFaults(t *testing.T) {
	var mu sync.Mutex
	got := map[int][]string{}
	s, err := startSink("s", map[string]int{"a": 0, "b": 1}, func(sub int, ev *event.Event, _ time.Time) {
		mu.Lock()
		got[sub] = append(got[sub], ev.ID())
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if st := post(t, s.URL("a"), "1", 10*time.Second); st != http.StatusOK {
		t.Fatalf("status %d", st)
	}
	if st := post(t, s.URL("b"), "2", 10*time.Second); st != http.StatusOK {
		t.Fatalf("status %d", st)
	}
	if st := post(t, s.URL("nobody"), "3", 10*time.Second); st != http.StatusNotFound {
		t.Fatalf("unknown path: status %d", st)
	}
	s.FailWith(http.StatusBadGateway)
	if st := post(t, s.URL("a"), "4", 10*time.Second); st != http.StatusBadGateway {
		t.Fatalf("failing: status %d", st)
	}
	s.FailWith(0)

	s.Hang()
	// A sender that gives up gets nothing.
	if st := post(t, s.URL("a"), "5", 100*time.Millisecond); st != 0 {
		t.Fatalf("hung sink answered %d", st)
	}
	// A sender still waiting when the hang ends gets 503, unprocessed.
	answered := make(chan int)
	go func() { answered <- post(t, s.URL("a"), "6", 30*time.Second) }()
	deadline := time.Now().Add(10 * time.Second)
	for s.held.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the second request was never held (held %d)", s.held.Load())
		}
		time.Sleep(time.Millisecond)
	}
	s.Unhang()
	if st := <-answered; st != http.StatusServiceUnavailable {
		t.Fatalf("held request answered %d after the hang, want 503", st)
	}
	if st := post(t, s.URL("a"), "7", 10*time.Second); st != http.StatusOK {
		t.Fatalf("after the hang: status %d", st)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got[0]) != 2 || got[0][0] != "1" || got[0][1] != "7" || len(got[1]) != 1 || got[1][0] != "2" {
		t.Fatalf("deliveries %v: want a=[1 7] b=[2]", got)
	}
	if s.received.Load() != 3 || s.held.Load() != 2 {
		t.Fatalf("received %d held %d", s.received.Load(), s.held.Load())
	}
}
