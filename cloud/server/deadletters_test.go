package server

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/tributary-io/tributary/cloud/dispatch"
)

// TestDeadLettersAPIAndRedrive: a sink answers 400 to two events; they are
// dead letters at once, listed through the API with their reason; after the
// sink is fixed, a redrive through the API delivers them with the same ids.
func TestDeadLettersAPIAndRedrive(t *testing.T) {
	refuse := func(e *event.Event) int {
		if e.ID() == "ev-2" || e.ID() == "ev-7" {
			return http.StatusBadRequest
		}
		return http.StatusOK
	}
	sink := newCESink(t, refuse)
	s := startServer(t, t.TempDir(), testTokens, dispatch.Subscription{ID: "hook", Sink: sink.URL, Parallelism: 2})
	for i := range 10 {
		appendEvents(t, s.Log(), testEvent(i))
	}
	waitUntil(t, "two dead letters", func() bool {
		st, _ := s.Dispatcher().Stats("hook")
		return st.DeadLettered == 2 && st.Delivered == 8
	})

	path := "/v1/subscriptions/hook/deadletters"
	if st, _ := call(t, s, "GET", path, "", nil); st != http.StatusUnauthorized {
		t.Fatalf("list without a token: %d", st)
	}
	st, page := call(t, s, "GET", path+"?limit=10", readTok, nil)
	if st != http.StatusOK {
		t.Fatalf("list: %d %v", st, page)
	}
	list, _ := page["dead_letters"].([]any)
	if len(list) != 2 || page["topic"] != "$deadletter/hook" {
		t.Fatalf("list: %v", page)
	}
	ids := map[string]bool{}
	for _, x := range list {
		e := x.(map[string]any)
		ev := e["event"].(map[string]any)
		ids[ev["id"].(string)] = true
		if e["status"] != float64(400) || e["attempts"] != float64(1) || !strings.Contains(e["reason"].(string), "400") {
			t.Fatalf("entry %v", e)
		}
		if ev["dlreason"] != nil || ev["data"] == nil {
			t.Fatalf("listed event %v: want the logged event with its data and no dl attributes", ev)
		}
	}
	if !ids["ev-2"] || !ids["ev-7"] {
		t.Fatalf("listed %v", ids)
	}
	for _, q := range []string{"?limit=0", "?limit=5000", "?from=-3", "?from=x"} {
		if st, b := call(t, s, "GET", path+q, readTok, nil); st != http.StatusBadRequest || b["error"] == nil {
			t.Errorf("list%s: %d %v, want 400 with a reason", q, st, b)
		}
	}
	if st, _ := call(t, s, "GET", "/v1/subscriptions/nope/deadletters", readTok, nil); st != http.StatusNotFound {
		t.Errorf("unknown subscription: %d", st)
	}

	redrive := path + "/redrive"
	for _, tc := range []struct {
		token string
		body  any
		want  int
	}{
		{readTok, map[string]any{"all": true}, http.StatusForbidden},
		{writeTok, nil, http.StatusBadRequest},
		{writeTok, map[string]any{}, http.StatusBadRequest},
		{writeTok, map[string]any{"everything": true}, http.StatusBadRequest},
		{writeTok, map[string]any{"offsets": []int{0}}, http.StatusBadRequest}, // not a dead letter
		{writeTok, map[string]any{"all": true, "from": 1}, http.StatusBadRequest},
	} {
		if st, b := call(t, s, "POST", redrive, tc.token, tc.body); st != tc.want || b["error"] == nil {
			t.Errorf("redrive %v: %d %v, want %d with a reason", tc.body, st, b, tc.want)
		}
	}

	sink.setStatus(nil)
	st, res := call(t, s, "POST", redrive, writeTok, map[string]any{"all": true})
	if st != http.StatusAccepted || res["queued"] != float64(2) {
		t.Fatalf("redrive: %d %v", st, res)
	}
	waitUntil(t, "redriven", func() bool { return sink.countID("ev-2") == 1 && sink.countID("ev-7") == 1 })
	waitUntil(t, "redrive finished", func() bool { st, _ := s.Dispatcher().Stats("hook"); return !st.RedriveActive })
	_, page = call(t, s, "GET", path, readTok, nil)
	for _, x := range page["dead_letters"].([]any) {
		if e := x.(map[string]any); e["redrive"] != "done" {
			t.Fatalf("after the redrive: %v", e)
		}
	}
	st, res = call(t, s, "POST", redrive, writeTok, map[string]any{"all": true})
	if st != http.StatusAccepted || res["queued"] != float64(0) || res["already_redriven"] != float64(2) {
		t.Fatalf("second redrive: %d %v", st, res)
	}
	if n := len(sink.accepted()); n != 10 {
		t.Fatalf("the sink accepted %d events, want 10 (8 + 2 redriven): %v", n, fmt.Sprint(sink.accepted()))
	}
}
