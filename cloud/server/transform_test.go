package server

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// TestSubscriptionSettingsThroughAPI: transformation, delay, rate-limit and
// sink settings are validated at create time with the field (and position)
// in the 400, and a valid transformation reshapes what the sink gets.
func TestSubscriptionSettingsThroughAPI(t *testing.T) {
	sink := newCESink(t, nil)
	s := startServer(t, t.TempDir(), testTokens)
	for _, tc := range []struct {
		body map[string]any
		want []string // substrings of the error
	}{
		{map[string]any{"transform": map[string]any{"data": `{"t": data.t`}}, []string{"transform.data", "line 1:"}},
		{map[string]any{"transform": map[string]any{"data": `evnt.id`}}, []string{"transform.data", "undeclared reference to 'evnt'"}},
		{map[string]any{"transform": map[string]any{"attributes": map[string]any{"id": `"x"`}}}, []string{"transform.attributes.id"}},
		{map[string]any{"transform": map[string]any{"jq": "."}}, []string{"jq"}},
		{map[string]any{"rate_limit": -5}, []string{"rate_limit"}},
		{map[string]any{"delay": "-1s"}, []string{"delay"}},
		{map[string]any{"max_delay": 5}, []string{"duration must be a string"}},
		{map[string]any{"sink": "ftp://127.0.0.1/x"}, []string{"sink", "scheme"}},
		{map[string]any{"sink": "nats://127.0.0.1:4222/a.*"}, []string{"sink", "wildcards"}},
		{map[string]any{"sink": "nats://127.0.0.1:4222"}, []string{"sink", "subject"}},
	} {
		tc.body["id"] = "bad"
		if tc.body["sink"] == nil {
			tc.body["sink"] = sink.URL
		}
		st, b := call(t, s, "POST", "/v1/subscriptions", writeTok, tc.body)
		msg, _ := b["error"].(string)
		for _, w := range tc.want {
			if st != http.StatusBadRequest || !strings.Contains(msg, w) {
				t.Errorf("create %v: %d %q, want 400 mentioning %q", tc.body, st, msg, w)
			}
		}
	}

	st, b := call(t, s, "POST", "/v1/subscriptions", writeTok, map[string]any{
		"id": "shaped", "sink": sink.URL, "rate_limit": 1000, "delay": "0s",
		"transform": map[string]any{
			"data":       `{"celsius": data.t, "device": event.source}`,
			"attributes": map[string]any{"type": `"com.acme.reading"`},
		},
	})
	if st != http.StatusCreated {
		t.Fatalf("create: %d %v", st, b)
	}
	for i := range 3 {
		appendEvents(t, s.Log(), testEvent(i))
	}
	waitUntil(t, "three events", func() bool { return len(sink.accepted()) == 3 })
	for i, e := range sink.accepted() {
		var got map[string]any
		if err := json.Unmarshal(e.Data(), &got); err != nil {
			t.Fatal(err)
		}
		if e.Type() != "com.acme.reading" || got["celsius"] != float64(20+i) || got["device"] != testEvent(i).Source() || e.ID() != testEvent(i).ID() {
			t.Fatalf("event %d: %v data %v", i, e, got)
		}
	}
}
