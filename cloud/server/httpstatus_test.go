package server

import (
	"net/http"
	"slices"
	"strings"
	"testing"
)

// TestHTTPStatusConformance checks the status codes and headers the API
// answers with when it refuses a request: 401 with a Bearer challenge
// (RFC 6750 3), 403 with insufficient_scope, 405 with Allow (RFC 9110
// 15.5.6). Ingest's 400/413/415 are in TestHTTPIngestRefusesBadInput.
func TestHTTPStatusConformance(t *testing.T) {
	s := startServer(t, t.TempDir(), testTokens)
	base := "http://" + s.APIAddr().String()
	do := func(method, path, auth string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(`{}`))
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	for _, c := range []struct {
		name, method, path, auth string
		status                   int
		challenge                string // WWW-Authenticate must start with it
	}{
		{"no token", "GET", "/v1/subscriptions", "", 401, "Bearer"},
		{"basic auth", "GET", "/v1/subscriptions", "Basic dTpw", 401, "Bearer"},
		{"empty bearer", "GET", "/v1/events", "Bearer ", 401, "Bearer"},
		{"unknown token", "GET", "/v1/stream", "Bearer not-a-known-token-at-all", 401, `Bearer realm="tributary", error="invalid_token"`},
		{"read token writes", "POST", "/v1/subscriptions", "Bearer " + readTok, 403, `Bearer realm="tributary", error="insufficient_scope", scope="write"`},
		{"read token ingests", "POST", "/v1/events", "Bearer " + readTok, 403, `Bearer realm="tributary", error="insufficient_scope"`},
		{"lower-case scheme", "GET", "/v1/subscriptions", "bearer " + readTok, 200, ""},
	} {
		resp := do(c.method, c.path, c.auth)
		if resp.StatusCode != c.status {
			t.Errorf("%s: status %d, want %d", c.name, resp.StatusCode, c.status)
		}
		if got := resp.Header.Get("WWW-Authenticate"); c.challenge != "" && !strings.HasPrefix(got, c.challenge) {
			t.Errorf("%s: WWW-Authenticate %q, want it to start with %q", c.name, got, c.challenge)
		}
	}
	for _, c := range []struct {
		method, path string
		allow        []string
	}{
		{"PUT", "/v1/events", []string{"GET", "POST"}},
		{"DELETE", "/v1/stream", []string{"GET"}},
		{"PATCH", "/v1/subscriptions/x", []string{"DELETE", "GET", "PUT"}},
		{"GET", "/v1/subscriptions/x/deadletters/redrive", []string{"POST"}},
		{"POST", "/v1/subscriptions/x/deadletters", []string{"GET"}},
	} {
		resp := do(c.method, c.path, "Bearer "+writeTok)
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("%s %s: status %d, want 405", c.method, c.path, resp.StatusCode)
			continue
		}
		var allow []string
		for _, m := range strings.Split(resp.Header.Get("Allow"), ",") {
			allow = append(allow, strings.TrimSpace(m))
		}
		for _, m := range c.allow {
			if !slices.Contains(allow, m) {
				t.Errorf("%s %s: Allow %q lacks %s", c.method, c.path, resp.Header.Get("Allow"), m)
			}
		}
		if slices.Contains(allow, c.method) {
			t.Errorf("%s %s: Allow %q names the refused method", c.method, c.path, resp.Header.Get("Allow"))
		}
	}
}
