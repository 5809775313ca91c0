package sink

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
)

// TestSinkModes posts a binary event, a structured one and a batch, then a
// batch holding an invalid event (refused whole), and a failing spell.
func TestSinkModes(t *testing.T) {
	var mu sync.Mutex
	var ids []string
	s, err := Start("127.0.0.1:0", func(ev *event.Event, _ time.Time) {
		mu.Lock()
		ids = append(ids, ev.ID())
		mu.Unlock()
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	post := func(ct string, hdr map[string]string, body string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, s.URL(), strings.NewReader(body))
		req.Header.Set("Content-Type", ct)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	ok := []struct {
		ct   string
		hdr  map[string]string
		body string
	}{
		{"application/json", map[string]string{"Ce-Specversion": "1.0", "Ce-Id": "b", "Ce-Source": "/s", "Ce-Type": "t"}, `{}`},
		{"application/cloudevents+json", nil, `{"specversion":"1.0","id":"s","source":"/s","type":"t"}`},
		{event.ApplicationCloudEventsBatchJSON, nil, `[{"specversion":"1.0","id":"x1","source":"/s","type":"t"},{"specversion":"1.0","id":"x2","source":"/s","type":"t"}]`},
	}
	for _, c := range ok {
		if st := post(c.ct, c.hdr, c.body); st != 200 {
			t.Fatalf("%s: %d", c.ct, st)
		}
	}
	if st := post(event.ApplicationCloudEventsBatchJSON, nil, `[]`); st != 200 {
		t.Fatalf("empty batch: %d, want 200", st)
	}
	for _, bad := range []string{`[{"specversion":"1.0","id":"y1","source":"/s","type":"t"},{"specversion":"1.0","id":"","source":"/s","type":"t"}]`, `{`} {
		if st := post(event.ApplicationCloudEventsBatchJSON, nil, bad); st != 400 {
			t.Fatalf("bad batch %s: %d, want 400", bad, st)
		}
	}
	s.FailWith(503)
	if st := post(ok[2].ct, nil, ok[2].body); st != 503 {
		t.Fatalf("failing: %d", st)
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(ids, ",") != "b,s,x1,x2" || s.Received() != 4 || s.Rejected() != 3 {
		t.Fatalf("ids %v, received %d, rejected %d", ids, s.Received(), s.Rejected())
	}
}
