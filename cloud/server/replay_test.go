package server

import (
	"net/http"
	"testing"
	"time"

	"github.com/tributary-io/tributary/cloud/dispatch"
)

// TestReplayAPI moves a running subscription back by offset and by time
// through the API; the sink gets the events again with the same ids.
func TestReplayAPI(t *testing.T) {
	sink := newCESink(t, nil)
	s := startServer(t, t.TempDir(), testTokens, dispatch.Subscription{ID: "rp", Sink: sink.URL})
	for i := range 6 {
		appendEvents(t, s.Log(), testEvent(i))
	}
	waitUntil(t, "first pass", func() bool { return len(sink.accepted()) == 6 })
	mid := time.Now() // every record so far was accepted before this
	for i := 6; i < 8; i++ {
		appendEvents(t, s.Log(), testEvent(i))
	}
	waitUntil(t, "later events", func() bool { return len(sink.accepted()) == 8 })

	path := "/v1/subscriptions/rp/replay"
	for _, tc := range []struct {
		token string
		body  any
		want  int
	}{
		{readTok, map[string]any{"from_offset": 0}, http.StatusForbidden},
		{writeTok, nil, http.StatusBadRequest},
		{writeTok, map[string]any{}, http.StatusBadRequest},
		{writeTok, map[string]any{"from_offset": 999}, http.StatusBadRequest},
		{writeTok, map[string]any{"from_time": "yesterday"}, http.StatusBadRequest},
		{writeTok, map[string]any{"from_offset": 1, "from_time": mid}, http.StatusBadRequest},
	} {
		if st, b := call(t, s, "POST", path, tc.token, tc.body); st != tc.want || b["error"] == nil {
			t.Errorf("replay %v: %d %v, want %d with a reason", tc.body, st, b, tc.want)
		}
	}
	if st, _ := call(t, s, "POST", "/v1/subscriptions/nope/replay", writeTok, map[string]any{"from_offset": 0}); st != http.StatusNotFound {
		t.Errorf("unknown subscription: %d", st)
	}

	st, b := call(t, s, "POST", path, writeTok, map[string]any{"from_offset": 4})
	if st != http.StatusOK || b["offset"] != float64(4) {
		t.Fatalf("replay from offset 4: %d %v", st, b)
	}
	waitUntil(t, "replayed from 4", func() bool { return len(sink.accepted()) == 12 })
	st, b = call(t, s, "POST", path, writeTok, map[string]any{"from_time": mid.Format(time.RFC3339Nano)})
	if st != http.StatusOK || b["offset"] != float64(6) {
		t.Fatalf("replay from a time: %d %v", st, b)
	}
	waitUntil(t, "replayed from the time", func() bool { return len(sink.accepted()) == 14 })
	for i, want := range []int{1, 1, 1, 1, 2, 2, 3, 3} {
		if n := sink.countID(testEvent(i).ID()); n != want {
			t.Fatalf("%s delivered %d times, want %d", testEvent(i).ID(), n, want)
		}
	}
}
