package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/tributary-io/tributary/cloud/dispatch"
	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
	"github.com/tributary-io/tributary/sync/link"
	"github.com/tributary-io/tributary/sync/pki"
	"github.com/tributary-io/tributary/sync/wire"
)

// startServer runs a real cloud on loopback with the given tokens; stop
// (also run at cleanup) shuts it down.
func startServer(t *testing.T, dir string, tokens []TokenConfig, subs ...dispatch.Subscription) *Server {
	s, _ := startStoppable(t, dir, tokens, subs...)
	return s
}

func startStoppable(t *testing.T, dir string, tokens []TokenConfig, subs ...dispatch.Subscription) (*Server, func()) {
	t.Helper()
	s, err := New(Config{
		DataDir:       dir,
		Sync:          SyncConfig{Listen: "127.0.0.1:0"},
		API:           APIConfig{Listen: "127.0.0.1:0", Tokens: tokens},
		Subscriptions: subs,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("Run: %v", err)
			}
			if err := s.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return s, stop
}

func call(t *testing.T, s *Server, method, path, token string, body any) (int, map[string]any) {
	t.Helper()
	var rd *bytes.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	req, _ := http.NewRequest(method, "http://"+s.APIAddr().String()+path, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	var raw json.RawMessage
	if json.NewDecoder(resp.Body).Decode(&raw) == nil {
		_ = json.Unmarshal(raw, &out)
	}
	return resp.StatusCode, out
}

const (
	readTok  = "reader-0123456789abcdef"
	writeTok = "writer-0123456789abcdef"
)

var testTokens = []TokenConfig{
	{Name: "reader", Token: readTok, Scopes: []string{ScopeRead}},
	{Name: "writer", Token: writeTok, Scopes: []string{ScopeWrite}},
}

func TestAPIRequiresTokenWithScope(t *testing.T) {
	s := startServer(t, t.TempDir(), testTokens)
	sub := map[string]any{"id": "a", "sink": "http://127.0.0.1:1/"}
	for _, tc := range []struct {
		method, path, token string
		body                any
		want                int
	}{
		{"GET", "/healthz", "", nil, 200},
		{"GET", "/v1/events", "", nil, 401},
		{"GET", "/v1/events", "not-a-token-at-all", nil, 401},
		{"GET", "/v1/events", readTok, nil, 200},
		{"GET", "/v1/subscriptions", readTok, nil, 200},
		{"POST", "/v1/subscriptions", readTok, sub, 403},
		{"POST", "/v1/subscriptions", writeTok, sub, 201},
		{"DELETE", "/v1/subscriptions/a", readTok, nil, 403},
	} {
		got, body := call(t, s, tc.method, tc.path, tc.token, tc.body)
		if got != tc.want {
			t.Errorf("%s %s with %q: status %d, want %d (%v)", tc.method, tc.path, tc.token, got, tc.want, body)
		}
		if got >= 400 && body["error"] == nil {
			t.Errorf("%s %s: error response without a reason", tc.method, tc.path)
		}
	}
}

func TestSubscriptionsCRUDSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	fromConfig := dispatch.Subscription{ID: "cfg", Sink: "http://127.0.0.1:1/"}
	s, stop := startStoppable(t, dir, testTokens, fromConfig)
	sub := map[string]any{"id": "mine", "sink": "http://127.0.0.1:2/", "parallelism": 4,
		"filters": []any{map[string]any{"prefix": map[string]any{"type": "io.tributary."}}}}
	if st, b := call(t, s, "POST", "/v1/subscriptions", writeTok, sub); st != 201 {
		t.Fatalf("create: %d %v", st, b)
	}
	if st, _ := call(t, s, "POST", "/v1/subscriptions", writeTok, sub); st != 409 {
		t.Fatalf("create twice: %d, want 409", st)
	}
	for _, bad := range []map[string]any{
		{"id": "x"}, // no sink
		{"id": "y", "sink": "http://h/", "parallelism": -1},
		{"id": "z", "sink": "http://h/", "filters": []any{map[string]any{"sql": "type = "}}},
		{"id": "w", "sink": "http://h/", "colour": "blue"}, // unknown field
	} {
		st, b := call(t, s, "POST", "/v1/subscriptions", writeTok, bad)
		if st != 400 || !strings.Contains(b["error"].(string), "") || b["error"] == "" {
			t.Errorf("create %v: %d %v, want 400 with a reason", bad, st, b)
		}
	}
	if st, _ := call(t, s, "PUT", "/v1/subscriptions/cfg", writeTok, map[string]any{"sink": "http://h/"}); st != 409 {
		t.Errorf("updating a config subscription: %d, want 409", st)
	}
	if st, b := call(t, s, "PUT", "/v1/subscriptions/mine", writeTok, map[string]any{"sink": "http://127.0.0.1:3/"}); st != 200 {
		t.Fatalf("update: %d %v", st, b)
	}
	st, b := call(t, s, "GET", "/v1/subscriptions/mine", readTok, nil)
	if st != 200 || b["sink"] != "http://127.0.0.1:3/" || b["source"] != "api" {
		t.Fatalf("get after update: %d %v", st, b)
	}

	// A new server on the same directory has the API-made subscription.
	stop()
	s2 := startServer(t, dir, testTokens, fromConfig)
	st, b = call(t, s2, "GET", "/v1/subscriptions/mine", readTok, nil)
	if st != 200 || b["sink"] != "http://127.0.0.1:3/" {
		t.Fatalf("after restart: %d %v", st, b)
	}
	if st, _ := call(t, s2, "DELETE", "/v1/subscriptions/mine", writeTok, nil); st != 204 {
		t.Fatalf("delete: %d", st)
	}
	if st, _ := call(t, s2, "GET", "/v1/subscriptions/mine", readTok, nil); st != 404 {
		t.Fatalf("get after delete: %d", st)
	}
}

func TestDevTokenGeneratedOnce(t *testing.T) {
	dir := t.TempDir()
	tok, created, err := ensureDevToken(dir)
	if err != nil || !created || len(tok) < 32 {
		t.Fatalf("first: %q %v %v", tok, created, err)
	}
	again, created, err := ensureDevToken(dir)
	if err != nil || created || again != tok {
		t.Fatalf("second: %q %v %v", again, created, err)
	}
	if got, _ := ReadDevToken(dir); got != tok {
		t.Fatalf("ReadDevToken %q", got)
	}
}

func TestMetricsExposeTheParts(t *testing.T) {
	s := startServer(t, t.TempDir(), testTokens, dispatch.Subscription{ID: "m", Sink: "http://127.0.0.1:1/"})
	resp, err := http.Get("http://" + s.APIAddr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	for _, want := range []string{
		"tributary_cloud_log_next_offset 0",
		"tributary_cloud_sync_sessions 0",
		`tributary_cloud_sync_total{kind="records"} 0`,
		`tributary_cloud_subscription_events_total{outcome="delivered",subscription="m"} 0`,
		`tributary_cloud_subscription_lag{subscription="m"} 0`,
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// TestRevokedGatewayRefused: a gateway whose certificate is listed in
// <data_dir>/revoked-gateways.txt is refused at the sync handshake, without
// a restart of the cloud, while other gateways' certificates from the same
// CA, and a new certificate for the same gateway id, still get a Welcome.
func TestRevokedGatewayRefused(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, dir, nil)
	mint := func(id string) string {
		out := filepath.Join(t.TempDir(), id)
		if _, err := AddGateway(s.PKIDir(), id, out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	// hello dials with the gateway files in out, sends a Hello and returns
	// the error if no Welcome comes back.
	hello := func(out string) error {
		kp, err := pki.LoadKeyPair(filepath.Join(out, "gateway.crt"), filepath.Join(out, "gateway.key"))
		if err != nil {
			t.Fatal(err)
		}
		ca, err := pki.LoadCert(filepath.Join(out, "ca.crt"))
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := pki.ClientTLS(ca, kp, "127.0.0.1", link.ALPN)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := quic.DialAddr(ctx, s.SyncAddr().String(), cfg, nil)
		if err != nil {
			return err
		}
		defer conn.CloseWithError(0, "")
		str, err := conn.OpenStreamSync(ctx)
		if err != nil {
			return err
		}
		if err := wire.WriteFrame(str, &syncv1.Frame{Body: &syncv1.Frame_Hello{Hello: &syncv1.Hello{ProtocolVersion: syncv1.Version_VERSION_1}}}); err != nil {
			return err
		}
		f, err := wire.ReadFrame(str, 1<<20)
		if err != nil {
			return err
		}
		if f.GetWelcome() == nil {
			return fmt.Errorf("answered %v", f)
		}
		return nil
	}
	ok, bad := mint("gw-ok"), mint("gw-bad")
	if err := hello(bad); err != nil {
		t.Fatalf("before the revocation: %v", err)
	}
	badCert, err := pki.LoadCert(filepath.Join(bad, "gateway.crt"))
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.Revoke(filepath.Join(dir, RevokedFile), badCert, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := hello(bad); err == nil {
		t.Fatal("a revoked gateway got a Welcome")
	}
	if err := hello(ok); err != nil {
		t.Fatalf("another gateway refused after a revocation: %v", err)
	}
	if err := hello(mint("gw-bad")); err != nil {
		t.Fatalf("gw-bad re-provisioned with a new certificate refused: %v", err)
	}
}
