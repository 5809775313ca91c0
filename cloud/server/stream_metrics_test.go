package server

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestStreamMetricsServed: /metrics carries the stream endpoint's figures.
func TestStreamMetricsServed(t *testing.T) {
	s := startServer(t, t.TempDir(), testTokens)
	resp, err := http.Get("http://" + s.APIAddr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, want := range []string{"tributary_cloud_stream_clients 0", "tributary_cloud_stream_clients_dropped_total 0"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
