package server

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tributary-io/tributary/cloud/commitlog"
	"github.com/tributary-io/tributary/cloud/dispatch"
)

// sseEvent is one Server-Sent Event as a client parses it.
type sseEvent struct {
	id, event, data string
}

// sseClient reads a stream response frame by frame.
type sseClient struct {
	resp *http.Response
	rd   *bufio.Reader
}

func openStream(t *testing.T, base, query, token string, header http.Header) (*sseClient, int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", base+"/v1/stream"+query, nil)
	for k, vs := range header {
		req.Header[k] = vs
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return nil, resp.StatusCode, string(b)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	c := &sseClient{resp: resp, rd: bufio.NewReader(resp.Body)}
	t.Cleanup(c.close)
	return c, resp.StatusCode, ""
}

func (c *sseClient) close() { c.resp.Body.Close() }

// next returns the next event (comments are skipped).
func (c *sseClient) next(t *testing.T) sseEvent {
	t.Helper()
	var ev sseEvent
	for {
		line, err := c.rd.ReadString('\n')
		if err != nil {
			t.Fatalf("stream ended: %v", err)
		}
		line = strings.TrimSuffix(line, "\n")
		switch {
		case line == "":
			if ev.data != "" || ev.event != "" {
				return ev
			}
		case strings.HasPrefix(line, ":"), strings.HasPrefix(line, "retry:"):
		case strings.HasPrefix(line, "id: "):
			ev.id = line[len("id: "):]
		case strings.HasPrefix(line, "event: "):
			ev.event = line[len("event: "):]
		case strings.HasPrefix(line, "data: "):
			ev.data += line[len("data: "):]
		default:
			t.Fatalf("unexpected line %q", line)
		}
	}
}

// nextCE returns the next event's offset and CloudEvent.
func (c *sseClient) nextCE(t *testing.T) (uint64, *event.Event) {
	t.Helper()
	ev := c.next(t)
	if ev.event != "" {
		t.Fatalf("got a %q event, want a CloudEvent", ev.event)
	}
	off, err := strconv.ParseUint(ev.id, 10, 64)
	if err != nil {
		t.Fatalf("id %q", ev.id)
	}
	var e event.Event
	if err := json.Unmarshal([]byte(ev.data), &e); err != nil {
		t.Fatalf("data %q: %v", ev.data, err)
	}
	return off, &e
}

// TestStreamSSE reads the log through the streaming endpoint: from an
// offset, live appends, resume with Last-Event-ID, from a time, filters,
// and the errors.
func TestStreamSSE(t *testing.T) {
	s := startServer(t, t.TempDir(), testTokens)
	base := "http://" + s.APIAddr().String()
	for i := range 6 {
		appendEvents(t, s.Log(), testEvent(i))
	}

	c, _, _ := openStream(t, base, "?from=2", readTok, nil)
	for i := 2; i < 6; i++ {
		off, e := c.nextCE(t)
		if off != uint64(i) || e.ID() != testEvent(i).ID() || string(e.Data()) != string(testEvent(i).Data()) {
			t.Fatalf("event at %d: %v", off, e)
		}
	}
	appendEvents(t, s.Log(), testEvent(6))
	if off, e := c.nextCE(t); off != 6 || e.ID() != "ev-6" {
		t.Fatalf("live event: %d %v", off, e)
	}
	c.close()

	// A reconnect resumes after Last-Event-ID, whatever from says.
	c, _, _ = openStream(t, base, "?from=0", readTok, http.Header{"Last-Event-ID": {"4"}})
	if off, _ := c.nextCE(t); off != 5 {
		t.Fatalf("resumed at %d, want 5", off)
	}
	c.close()

	// Filters: a JSON expression and CESQL together.
	q := "?from=0&filter=" + url.QueryEscape(`{"prefix":{"subject":"plant/dev-1"}}`) + "&sql=" + url.QueryEscape("id <> 'ev-1'")
	c, _, _ = openStream(t, base, q, readTok, nil)
	if off, e := c.nextCE(t); off != 4 || e.ID() != "ev-4" {
		t.Fatalf("filtered: %d %v, want ev-4 at 4", off, e)
	}
	c.close()

	// From a time: everything appended after it.
	mid := time.Now()
	appendEvents(t, s.Log(), testEvent(7))
	c, _, _ = openStream(t, base, "?from_time="+url.QueryEscape(mid.Format(time.RFC3339Nano)), readTok, nil)
	if off, e := c.nextCE(t); off != 7 || e.ID() != "ev-7" {
		t.Fatalf("from a time: %d %v", off, e)
	}
	c.close()

	// Without a position: new events only.
	c, _, _ = openStream(t, base, "", readTok, nil)
	appendEvents(t, s.Log(), testEvent(8))
	if off, _ := c.nextCE(t); off != 8 {
		t.Fatalf("tail from the end got offset %d", off)
	}
	c.close()

	for _, tc := range []struct {
		query, token string
		header       http.Header
		want         int
		reason       string
	}{
		{"?from=0", "", nil, http.StatusUnauthorized, "bearer"},
		{"?from=99", readTok, nil, http.StatusBadRequest, "beyond the end"},
		{"?from=x", readTok, nil, http.StatusBadRequest, "from"},
		{"?from=1&from_time=2025-01-01T00:00:00Z", readTok, nil, http.StatusBadRequest, "not both"},
		{"?from_time=noon", readTok, nil, http.StatusBadRequest, "RFC 3339"},
		{"?sql=" + url.QueryEscape("type ="), readTok, nil, http.StatusBadRequest, "filters[0].sql"},
		{"?filter=" + url.QueryEscape(`{"regex":{"type":"x"}}`), readTok, nil, http.StatusBadRequest, "regex"},
		{"", readTok, http.Header{"Last-Event-ID": {"abc"}}, http.StatusBadRequest, "Last-Event-ID"},
	} {
		_, st, body := openStream(t, base, tc.query, tc.token, tc.header)
		if st != tc.want || !strings.Contains(body, tc.reason) {
			t.Errorf("stream%s: %d %s, want %d mentioning %q", tc.query, st, body, tc.want, tc.reason)
		}
	}
}

// TestStreamEndsWhenServerStops: an open stream does not hold the shutdown.
func TestStreamEndsWhenServerStops(t *testing.T) {
	s, stop := startStoppable(t, t.TempDir(), testTokens)
	c, _, _ := openStream(t, "http://"+s.APIAddr().String(), "", readTok, nil)
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	if _, err := io.Copy(io.Discard, c.rd); err != nil {
		t.Fatalf("stream after stop: %v", err)
	}
	<-stopped
}

// TestSlowStreamClientDropped: a client that stops reading is dropped once a
// write has waited the write timeout (3 s here), while a client reading
// beside it gets every event.
func TestSlowStreamClientDropped(t *testing.T) {
	lg, err := commitlog.Open(t.TempDir(), commitlog.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lg.Close() })
	d, err := dispatch.New(lg, t.TempDir(), dispatch.Options{})
	if err != nil {
		t.Fatal(err)
	}
	h := &streamHandler{d: d, lg: lg, log: discardLogger(), writeTimeout: 3 * time.Second, heartbeat: time.Hour, maxClients: 8}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)

	// About 10 MB of events: more than the socket buffers of a stalled
	// client can hold.
	const n = 2500
	pad := strings.Repeat("x", 4000)
	for i := 0; i < n; i += 100 {
		var evs []*event.Event
		for j := i; j < i+100; j++ {
			e := testEvent(j)
			_ = e.SetData(event.ApplicationJSON, map[string]any{"i": j, "pad": pad})
			evs = append(evs, e)
		}
		appendEvents(t, lg, evs...)
	}

	// The slow client: a raw connection with a tiny receive buffer that
	// sends its request and never reads.
	dialer := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		if err != nil {
			return err
		}
		return serr
	}}
	slow, err := dialer.DialContext(context.Background(), "tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	fmt.Fprintf(slow, "GET /v1/stream?from=0 HTTP/1.1\r\nHost: x\r\n\r\n")

	// The reading client checks ids cheaply and decodes every 100th event
	// in full, so that it keeps well inside the write timeout under -race.
	fast, _, _ := openStream(t, srv.URL, "?from=0", "", nil)
	for i := range n {
		if i%100 == 0 {
			if off, e := fast.nextCE(t); off != uint64(i) || e.ID() != testEvent(i).ID() {
				t.Fatalf("fast client: %d %v at %d", off, e.ID(), i)
			}
			continue
		}
		ev := fast.next(t)
		if ev.id != strconv.Itoa(i) || !strings.HasPrefix(ev.data, "{") {
			t.Fatalf("fast client: id %q at %d", ev.id, i)
		}
	}
	waitUntil(t, "the slow client dropped", func() bool { return h.dropped.Load() == 1 })
	waitUntil(t, "its handler gone", func() bool { return h.active.Load() == 1 })
	// What /metrics reports.
	reg := prometheus.NewRegistry()
	reg.MustRegister(h)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			got[mf.GetName()] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	if got["tributary_cloud_stream_clients_dropped_total"] != 1 || got["tributary_cloud_stream_clients"] != 1 {
		t.Fatalf("stream metrics: %v, want 1 dropped and 1 connected", got)
	}
}
