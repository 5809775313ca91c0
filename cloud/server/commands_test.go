package server

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
	"github.com/tributary-io/tributary/sync/link"
)

// fakeLink stands in for the sync server at the hub's one seam (sender):
// it records requests and answers with statuses as a gateway would.
type fakeLink struct {
	mu      sync.Mutex
	reqs    []*syncv1.CommandRequest
	err     error
	respond func(req *syncv1.CommandRequest) // run on its own goroutine
}

func (f *fakeLink) send(_ context.Context, _ string, req *syncv1.CommandRequest) error {
	f.mu.Lock()
	f.reqs = append(f.reqs, req)
	err, respond := f.err, f.respond
	f.mu.Unlock()
	if err != nil {
		return err
	}
	if respond != nil {
		go respond(req)
	}
	return nil
}

func newTestHub(t *testing.T, fl *fakeLink, now time.Time) (*commandHub, *httptest.Server) {
	t.Helper()
	h := newCommandHub(nil, slog.New(slog.DiscardHandler))
	h.now = func() time.Time { return now }
	h.sender = fl.send
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/gateways/{gateway}/devices/{device}/commands/{name}", h.handlePost)
	mux.HandleFunc("GET /v1/commands/{request_id}", h.handleGet)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	t.Cleanup(h.close) // runs first: stops the followers of wait=false commands
	return h, srv
}

func postCmd(t *testing.T, srv *httptest.Server, path, contentType, body string) (int, http.Header, map[string]any) {
	t.Helper()
	resp, err := http.Post(srv.URL+path, contentType, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var v map[string]any
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("%s: %d %q", path, resp.StatusCode, raw)
	}
	return resp.StatusCode, resp.Header, v
}

func cmdStatus(gw, id string, st syncv1.CommandState) *syncv1.CommandStatus {
	return &syncv1.CommandStatus{RequestId: id, State: st, Device: "dev-1"}
}

func TestCommandAPIRefusals(t *testing.T) {
	fl := &fakeLink{}
	_, srv := newTestHub(t, fl, time.Now())
	const path = "/v1/gateways/gw-1/devices/dev-1/commands/reboot"
	tests := []struct {
		name, path, ct, body string
		code                 int
		want                 string
	}{
		{"text body", path, "text/plain", `{}`, http.StatusUnsupportedMediaType, "JSON"},
		{"no content type", path, "", `{}`, http.StatusUnsupportedMediaType, "JSON"},
		{"not JSON", path, "application/json", `{"a":`, http.StatusBadRequest, "not JSON"},
		{"timeout too long", path + "?timeout=6m", "application/json", `{}`, http.StatusBadRequest, "timeout"},
		{"timeout zero", path + "?timeout=0s", "application/json", `{}`, http.StatusBadRequest, "timeout"},
		{"expiry too long", path + "?expiry=25h", "application/json", `{}`, http.StatusBadRequest, "expiry"},
		{"bad wait", path + "?wait=maybe", "application/json", `{}`, http.StatusBadRequest, "wait"},
		{"device with +", "/v1/gateways/gw-1/devices/a+b/commands/reboot", "application/json", `{}`, http.StatusBadRequest, "device"},
	}
	for _, tt := range tests {
		code, _, v := postCmd(t, srv, tt.path, tt.ct, tt.body)
		if code != tt.code || !strings.Contains(v["error"].(string), tt.want) {
			t.Errorf("%s: %d %v, want %d mentioning %q", tt.name, code, v, tt.code, tt.want)
		}
	}
	if len(fl.reqs) != 0 {
		t.Fatalf("%d refused requests reached the link", len(fl.reqs))
	}
}

func TestCommandAPIReplied(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	fl := &fakeLink{}
	h, srv := newTestHub(t, fl, now)
	fl.respond = func(req *syncv1.CommandRequest) {
		h.onStatus("gw-1", cmdStatus("gw-1", req.GetRequestId(), syncv1.CommandState_COMMAND_STATE_ACCEPTED))
		st := cmdStatus("gw-1", req.GetRequestId(), syncv1.CommandState_COMMAND_STATE_REPLIED)
		st.ReplyStatus, st.ReplyPayload = 200, []byte(`{"uptime":5}`)
		h.onStatus("gw-1", st)
		// A late DELIVERED changes nothing; a status from another gateway
		// is not this command's.
		h.onStatus("gw-1", cmdStatus("gw-1", req.GetRequestId(), syncv1.CommandState_COMMAND_STATE_DELIVERED))
		h.onStatus("gw-2", cmdStatus("gw-2", req.GetRequestId(), syncv1.CommandState_COMMAND_STATE_EXPIRED))
	}
	code, _, v := postCmd(t, srv, "/v1/gateways/gw-1/devices/dev-1/commands/reboot?timeout=20s&expiry=1h", "application/json", `{"delay":3}`)
	if code != http.StatusOK || v["status"] != "replied" || v["reply_status"] != float64(200) {
		t.Fatalf("POST: %d %v", code, v)
	}
	if p, _ := json.Marshal(v["payload"]); string(p) != `{"uptime":5}` {
		t.Fatalf("payload %s", p)
	}
	req := fl.reqs[0]
	if req.GetDevice() != "dev-1" || req.GetName() != "reboot" || string(req.GetPayload()) != `{"delay":3}` ||
		req.GetExpiresUnixMs() != now.Add(time.Hour).UnixMilli() || req.GetRequestId() != v["request_id"] {
		t.Fatalf("request %v", req)
	}
	resp, err := http.Get(srv.URL + "/v1/commands/" + req.GetRequestId())
	if err != nil {
		t.Fatal(err)
	}
	var g CommandView
	if err := json.NewDecoder(resp.Body).Decode(&g); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if g.Status != "replied" || g.ReplyStatus != 200 || g.Gateway != "gw-1" {
		t.Fatalf("GET %+v", g)
	}
	if resp, _ := http.Get(srv.URL + "/v1/commands/nope"); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("unknown command: %d", resp.StatusCode)
	}
}

func TestCommandAPITimeoutsAndFailures(t *testing.T) {
	fl := &fakeLink{}
	h, srv := newTestHub(t, fl, time.Now())
	fl.respond = func(req *syncv1.CommandRequest) {
		h.onStatus("gw-1", cmdStatus("gw-1", req.GetRequestId(), syncv1.CommandState_COMMAND_STATE_ACCEPTED))
	}
	code, _, v := postCmd(t, srv, "/v1/gateways/gw-1/devices/dev-1/commands/reboot?timeout=50ms&expiry=1m", "application/json", `{}`)
	if code != http.StatusGatewayTimeout || v["status"] != "accepted" || !strings.Contains(v["reason"].(string), "device offline") {
		t.Fatalf("timeout while accepted: %d %v", code, v)
	}

	fl.mu.Lock()
	fl.respond = func(req *syncv1.CommandRequest) {
		st := cmdStatus("gw-1", req.GetRequestId(), syncv1.CommandState_COMMAND_STATE_EXPIRED)
		st.Reason = "device offline until expiry"
		h.onStatus("gw-1", st)
	}
	fl.mu.Unlock()
	code, _, v = postCmd(t, srv, "/v1/gateways/gw-1/devices/dev-1/commands/reboot?timeout=20s", "application/json", `{}`)
	if code != http.StatusGatewayTimeout || v["status"] != "expired" || v["reason"] != "device offline until expiry" {
		t.Fatalf("expired: %d %v", code, v)
	}

	fl.mu.Lock()
	fl.respond = nil
	fl.mu.Unlock()
	code, hdr, v := postCmd(t, srv, "/v1/gateways/gw-1/devices/dev-1/commands/reboot?wait=false", "application/json", `[1,2]`)
	if code != http.StatusAccepted || hdr.Get("Location") != "/v1/commands/"+v["request_id"].(string) || v["status"] != "sent" {
		t.Fatalf("wait=false: %d %v %v", code, hdr, v)
	}

	fl.mu.Lock()
	fl.err = link.ErrGatewayOffline
	fl.mu.Unlock()
	code, _, v = postCmd(t, srv, "/v1/gateways/gw-9/devices/dev-1/commands/reboot", "application/json", `{}`)
	if code != http.StatusServiceUnavailable || v["code"] != "gateway_offline" {
		t.Fatalf("offline: %d %v", code, v)
	}
	if g, ok := h.get(v["request_id"].(string)); !ok || g.Status != "failed" {
		t.Fatalf("offline command: %+v", g)
	}
}

// TestCommandAPIResendsUnaccepted: a request the gateway never answered
// (lost with its session) is sent again while the caller waits, with the
// same request id.
func TestCommandAPIResendsUnaccepted(t *testing.T) {
	fl := &fakeLink{}
	h, srv := newTestHub(t, fl, time.Now())
	h.resend = 20 * time.Millisecond
	var mu sync.Mutex
	calls := 0
	fl.respond = func(req *syncv1.CommandRequest) {
		mu.Lock()
		calls++
		n := calls
		mu.Unlock()
		if n < 2 {
			return // lost
		}
		st := cmdStatus("gw-1", req.GetRequestId(), syncv1.CommandState_COMMAND_STATE_REPLIED)
		st.ReplyStatus = 200
		h.onStatus("gw-1", st)
	}
	code, _, v := postCmd(t, srv, "/v1/gateways/gw-1/devices/dev-1/commands/reboot?timeout=20s", "application/json", `{}`)
	if code != http.StatusOK || v["status"] != "replied" {
		t.Fatalf("POST: %d %v", code, v)
	}
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if len(fl.reqs) < 2 || fl.reqs[0].GetRequestId() != fl.reqs[1].GetRequestId() {
		t.Fatalf("requests sent: %v", fl.reqs)
	}
}
