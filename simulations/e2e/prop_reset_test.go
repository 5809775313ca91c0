package e2e_test

import (
	"strings"
	"testing"
	"time"

	"github.com/tributary-io/tributary/simulations/ledger"
)

// TestCloudRestartResetsConnections kills the cloud with SIGKILL and starts
// it again on the same data and port. Both sides run with a 10-minute idle
// timeout and 2-minute keep-alives, so the gateway's old connection can only
// end early through the QUIC stateless reset the new cloud sends with the
// reset key kept in its data directory: the gateway must open a new session
// and forward what it buffered well before any idle timeout could explain it.
func TestCloudRestartResetsConnections(t *testing.T) {
	r := startRig(t, rigConfig{
		CloudYAML: "sync:\n  idle_timeout: 10m\n  keep_alive: 2m\n",
		EdgeYAML:  "cloud:\n  idle_timeout: 10m\n  keep_alive: 2m\n",
	})
	led, err := ledger.NewWithSubscriptions(nil) // the log is the verdict: no sink
	if err != nil {
		t.Fatal(err)
	}
	pub := newPublisher(t, r.edge.MQTTAddr, 2, led)
	pub.publish(50)
	pub.wait()
	r.waitDrained(60 * time.Second)
	before, err := r.edgeMetric("tributary_edge_link_sessions_total")
	if err != nil {
		t.Fatal(err)
	}

	r.cloud.Kill()
	r.startCloud()
	// The gateway still believes in its connection; what it sends now
	// reaches a process that never heard of it.
	pub.publish(50)
	pub.wait()
	if got := led.Progress().Acked; got != 100 {
		t.Fatalf("%d of 100 publishes acknowledged", got)
	}
	// 60 s is far below the 10-minute idle timeout: only a reset explains
	// a new session within it.
	r.waitDrained(60 * time.Second)
	after, err := r.edgeMetric("tributary_edge_link_sessions_total")
	if err != nil {
		t.Fatal(err)
	}
	if after <= before {
		t.Fatalf("the outbox drained without a new session (%v before, %v after)", before, after)
	}
	if !strings.Contains(r.edge.Log(), "stateless reset") {
		t.Errorf("the gateway's log does not show the stateless reset that ended its old connection:\n%s", r.edge.Tail(20))
	}
	for _, rec := range r.readLog() {
		led.InLogFrom(rec.key, rec.gateway, rec.seq)
	}
	s := led.Summarise(true)
	if !s.OK() || s.InLog != 100 {
		t.Fatalf("log after the restart: %+v", s)
	}
	t.Logf("sessions %v -> %v; %d messages in the log once each", before, after, s.InLog)
}
