package gateway

import (
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tributary-io/tributary/sync/pki"
)

// TestCommandMetrics: a gateway's /metrics carries the command counters.
func TestCommandMetrics(t *testing.T) {
	dir := t.TempDir()
	if _, err := pki.EnsureDevPKI(filepath.Join(dir, "ca"), []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	var cfg Config
	cfg.GatewayID = "gw-m"
	cfg.DataDir = filepath.Join(dir, "gw")
	cfg.MQTT.Listeners.TCP.Address = "127.0.0.1:0"
	cfg.Cloud.Address = unusedUDP(t)
	cfg.Cloud.DevCADir = filepath.Join(dir, "ca")
	cfg.MetricsListen = "127.0.0.1:0"
	g, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	g.commands.Accept(request("m1", "a/b", 60e9)) // rejected: not a topic level
	waitFor(t, "the rejection counted", func() bool { return g.CommandStats().Rejected == 1 })
	resp, err := http.Get("http://" + g.metrics.ln.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`tributary_edge_commands_total{gateway="gw-m",state="rejected"} 1`, `tributary_edge_commands_pending{gateway="gw-m"} 0`, `tributary_edge_command_unknown_replies_total{gateway="gw-m"} 0`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// Every edge series names its gateway: scrapers of many gateways (and
	// the fleet simulator, which refuses a port answering for another
	// gateway) rely on it.
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, "tributary_edge_") && !strings.Contains(line, `gateway="gw-m"`) {
			t.Errorf("series without the gateway label: %s", line)
		}
	}
}
