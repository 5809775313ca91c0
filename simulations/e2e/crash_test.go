package e2e_test

import (
	"bufio"
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tributary-io/tributary/simulations/procs"
	"github.com/tributary-io/tributary/sync/pki"
)

// waitUntil polls cond every 10 ms until it holds or limit passes.
func waitUntil(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestEdgeKilledDuringPublish kills the gateway with SIGKILL while 5,000
// messages are being published and restarts it on the same data directory:
// every message it acknowledged before dying reaches the sink, and the
// central log holds each exactly once.
func TestEdgeKilledDuringPublish(t *testing.T) {
	f := startFabric(t)
	pub := newPublisher(t, f.edge.MQTTAddr, 8, f.led)
	done := make(chan struct{})
	go func() { defer close(done); pub.publish(5000) }()
	waitUntil(t, 60*time.Second, "1,000 acks", func() bool { return f.led.Progress().Acked >= 1000 })
	f.edge.Kill()
	<-done
	pub.wait()
	acked := f.led.Progress().Acked
	t.Logf("edge killed: %d of 5000 acknowledged before the kill", acked)
	if acked >= 5000 {
		t.Fatalf("every message was acknowledged before the kill: the test did not crash mid-stream")
	}
	f.startEdge(f.edge.Options(procs.EdgeOptions{}))
	f.waitDelivered(90 * time.Second)
	f.verdict()
}

// TestCloudKilledDuringPublish kills the cloud with SIGKILL mid-stream and
// restarts it on the same data directory and ports while the gateway keeps
// accepting and buffering.
func TestCloudKilledDuringPublish(t *testing.T) {
	f := startFabric(t)
	pub := newPublisher(t, f.edge.MQTTAddr, 8, f.led)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 10 {
			pub.publish(500)
			time.Sleep(50 * time.Millisecond) // pacing the load, not waiting for a condition
		}
	}()
	waitUntil(t, 60*time.Second, "1,000 deliveries", func() bool { return f.led.Progress().Delivered >= 1000 })
	opts := f.cloud.Options(f.sink.URL())
	f.cloud.Kill()
	<-done
	pub.wait()
	if got := f.led.Progress(); got.Acked != 5000 {
		t.Fatalf("the gateway must keep acknowledging while the cloud is down: %+v", got)
	}
	f.startCloud(opts)
	f.waitDelivered(90 * time.Second)
	f.verdict()
}

// TestCloudRestartWhileEdgeBuffers stops the cloud, publishes while it is
// down (the gateway buffers and acknowledges), starts it again: nothing lost,
// nothing duplicated in the log.
func TestCloudRestartWhileEdgeBuffers(t *testing.T) {
	f := startFabric(t)
	pub := newPublisher(t, f.edge.MQTTAddr, 4, f.led)
	pub.publish(500)
	pub.wait()
	f.waitDelivered(60 * time.Second)
	opts := f.cloud.Options(f.sink.URL())
	if err := f.cloud.Stop(10 * time.Second); err != nil {
		t.Fatalf("cloud stop: %v\n%s", err, f.cloud.Tail(20))
	}
	pub.publish(2000)
	pub.wait()
	if got := f.led.Progress(); got.Acked != 2500 {
		t.Fatalf("the gateway must acknowledge while the cloud is down: %+v", got)
	}
	f.startCloud(opts)
	f.waitDelivered(90 * time.Second)
	s := f.verdict()
	if s.InLog != 2500 {
		t.Fatalf("log holds %d distinct messages, want 2500", s.InLog)
	}
}

// TestUntrustedGatewayRefused starts a gateway whose certificate comes from
// another CA: the cloud refuses it, appends nothing, and the gateway keeps
// every message it acknowledged in its outbox.
func TestUntrustedGatewayRefused(t *testing.T) {
	f := startFabric(t)
	rogueCA := filepath.Join(f.dir, "rogue-pki")
	if _, err := pki.EnsureDevPKI(rogueCA, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	metricsPort, err := procs.FreePort("tcp")
	if err != nil {
		t.Fatal(err)
	}
	metrics := "127.0.0.1:" + strconv.Itoa(metricsPort)
	rogue, err := procs.StartEdge(context.Background(), bins, procs.EdgeOptions{
		GatewayID: "gw-rogue", DataDir: filepath.Join(f.dir, "gw-rogue"),
		CloudAddr: f.cloud.SyncAddr, DevCADir: rogueCA,
		ExtraArgs: []string{"-metrics-listen", metrics},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer rogue.Kill()
	pub := newPublisher(t, rogue.MQTTAddr, 1, f.led)
	pub.publish(10)
	pub.wait()
	if got := f.led.Progress().Acked; got != 10 {
		t.Fatalf("the gateway acknowledged %d of 10 while the cloud refused it", got)
	}
	waitUntil(t, 30*time.Second, "the refusal in the edge log", func() bool {
		l := strings.ToLower(rogue.Log())
		return strings.Contains(l, "certificate signed by unknown authority")
	})
	// Nothing reached the log; everything is still buffered at the edge.
	resp, err := f.cloud.Get("/v1/gateways/gw-rogue")
	if err != nil {
		t.Fatal(err)
	}
	var gw struct {
		HighWaterMark uint64 `json:"high_water_mark"`
	}
	decodeJSON(t, resp, &gw)
	if gw.HighWaterMark != 0 {
		t.Fatalf("the cloud appended records of an untrusted gateway (high-water mark %d)", gw.HighWaterMark)
	}
	if n := scrape(t, "http://"+metrics+"/metrics", "tributary_edge_outbox_records"); n != 10 {
		t.Fatalf("the refused gateway holds %v records, want all 10", n)
	}
}

// TestBadConfigRefused: an unreadable or invalid config file is refused
// with an error that says what to fix, and the process exits 2.
func TestBadConfigRefused(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("data_dir: /tmp/x\nno_such_key: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	unreadable := filepath.Join(dir, "missing.yaml")
	for _, tc := range []struct {
		bin, config, want string
	}{
		{bins.Edge, unreadable, "no such file"},
		{bins.Edge, bad, "no_such_key"},
		{bins.Cloud, unreadable, "no such file"},
		{bins.Cloud, bad, "no_such_key"},
	} {
		out, err := exec.Command(tc.bin, "-config", tc.config).CombinedOutput()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 2 {
			t.Errorf("%s -config %s: want exit 2, got %v\n%s", filepath.Base(tc.bin), tc.config, err, out)
			continue
		}
		if !strings.Contains(string(out), tc.want) {
			t.Errorf("%s -config %s: error does not mention %q:\n%s", filepath.Base(tc.bin), tc.config, tc.want, out)
		}
	}
}

func scrape(t *testing.T, url, metric string) float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	s := bufio.NewScanner(resp.Body)
	for s.Scan() {
		line := s.Text()
		if strings.HasPrefix(line, metric+"{") || strings.HasPrefix(line, metric+" ") {
			fields := strings.Fields(line)
			v, err := strconv.ParseFloat(fields[len(fields)-1], 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	t.Fatalf("metric %s not found at %s", metric, url)
	return 0
}
