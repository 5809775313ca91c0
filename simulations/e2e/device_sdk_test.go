package e2e_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tributary-io/tributary/cloud/server"
	"github.com/tributary-io/tributary/simulations/procs"
)

// sensorChild is the SDK's example sensor (device-sdk/examples/sensor) run
// as a device process with -v, so it prints each reading once the SDK's
// durable buffer holds it ("acknowledged by the buffer").
type sensorChild struct {
	cmd      *exec.Cmd
	mu       sync.Mutex
	buffered []string // event ids, in order
	out      strings.Builder
	more     chan struct{} // a tick per buffered reading (dropped when full)
	done     chan struct{} // closed when the output ended
}

var bufferedLine = regexp.MustCompile(`msg="reading buffered" n=\d+ id=(\S+)`)

func buildSensor(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "sensor")
	cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", bin, "./device-sdk/examples/sensor")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the sensor: %v\n%s", err, out)
	}
	return bin
}

func startSensor(t *testing.T, bin string, args ...string) *sensorChild {
	t.Helper()
	c := &sensorChild{cmd: exec.Command(bin, append([]string{"-v"}, args...)...), more: make(chan struct{}, 1), done: make(chan struct{})}
	stderr, err := c.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(c.done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			c.mu.Lock()
			c.out.WriteString(line + "\n")
			if m := bufferedLine.FindStringSubmatch(line); m != nil {
				c.buffered = append(c.buffered, m[1])
			}
			c.mu.Unlock()
			select {
			case c.more <- struct{}{}:
			default:
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
	}()
	t.Cleanup(func() {
		_ = c.cmd.Process.Signal(syscall.SIGKILL)
		<-c.done
		_ = c.cmd.Wait()
		if t.Failed() {
			c.mu.Lock()
			out := c.out.String()
			c.mu.Unlock()
			if len(out) > 4000 {
				out = out[len(out)-4000:]
			}
			t.Logf("sensor output tail:\n%s", out)
		}
	})
	return c
}

// waitBuffered waits until the sensor has buffered at least n readings.
func (c *sensorChild) waitBuffered(t *testing.T, n int) {
	t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		c.mu.Lock()
		got := len(c.buffered)
		c.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-c.more:
		case <-c.done:
			t.Fatalf("sensor exited after buffering %d readings", got)
		case <-timeout:
			t.Fatalf("sensor buffered %d readings, want %d", got, n)
		}
	}
}

// kill SIGKILLs the sensor and returns the ids it had buffered.
func (c *sensorChild) kill(t *testing.T) []string {
	t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-c.done
	err := c.cmd.Wait()
	if ws, ok := c.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("sensor did not die of SIGKILL: %v", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.buffered...)
}

// sensorReadings counts, by the device's event id, the example's readings
// in the cloud's central log (each record's data is the device's
// structured CloudEvent).
func sensorReadings(t *testing.T, cloud *procs.Cloud) map[string]int {
	t.Helper()
	count := map[string]int{}
	err := cloud.ReadLog(func(e server.LogEntry) error {
		var outer struct {
			Data json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(e.Event, &outer); err != nil {
			return fmt.Errorf("log offset %d: %w", e.Offset, err)
		}
		var inner struct {
			ID   string `json:"id"`
			Type string `json:"type"`
		}
		if json.Unmarshal(outer.Data, &inner) == nil && inner.Type == "io.tributary.example.temperature" {
			count[inner.ID]++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return count
}

// TestDeviceSDKRebootWhileOffline is issue 7's process-level test: a device
// (the SDK's example sensor, a real process) publishes while its gateway is
// unreachable, is SIGKILLed, and reboots with the gateway (a real
// tributary-edge process forwarding to a real tributary-cloud) up. Every
// reading its buffer acknowledged before the kill must be in the cloud's
// central log exactly once (nothing was in flight at the kill, so there is
// no excuse for a duplicate), and the device's reported state (one update
// per boot) must be readable from the cloud's API.
func TestDeviceSDKRebootWhileOffline(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	sensor := buildSensor(t)
	dir := t.TempDir()
	cloud, err := procs.StartCloud(context.Background(), bins, procs.CloudOptions{DataDir: filepath.Join(dir, "cloud")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cloud.Kill()
		if t.Failed() {
			t.Logf("cloud log tail:\n%s", cloud.Tail(30))
		}
	})
	mqttPort, err := procs.FreePort("tcp")
	if err != nil {
		t.Fatal(err)
	}
	broker := fmt.Sprintf("tcp://127.0.0.1:%d", mqttPort)
	args := []string{"-broker", broker, "-device", "sdk-dev", "-buffer", filepath.Join(dir, "buffer"),
		"-state-interval", "1h", "-firmware", "3.2.1"}

	// 1. The gateway is not there yet: the sensor buffers, then dies.
	offline := startSensor(t, sensor, append(args, "-interval", "1ms")...)
	offline.waitBuffered(t, 200)
	acked := offline.kill(t)

	// 2. The gateway comes up on the port the device knows; the device
	// reboots (one more reading at boot, then one an hour).
	edge, err := procs.StartEdge(context.Background(), bins, procs.EdgeOptions{
		GatewayID: "gw-1", DataDir: filepath.Join(dir, "gw-1"), MQTTPort: mqttPort,
		CloudAddr: cloud.SyncAddr, DevCADir: filepath.Join(cloud.DataDir, "pki"),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		edge.Kill()
		if t.Failed() {
			t.Logf("edge log tail:\n%s", edge.Tail(30))
		}
	})
	online := startSensor(t, sensor, append(args, "-interval", "1h")...)
	online.waitBuffered(t, 1)

	// 3. Every acknowledged reading reaches the central log exactly once.
	deadline := time.Now().Add(90 * time.Second)
	var count map[string]int
	for {
		count = sensorReadings(t, cloud)
		missing := 0
		for _, id := range acked {
			if count[id] == 0 {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d acknowledged readings never reached the cloud", missing, len(acked))
		}
		waitABit()
	}
	ackedSet := map[string]bool{}
	for _, id := range acked {
		ackedSet[id] = true
		if count[id] != 1 {
			t.Errorf("reading %s is in the central log %d times", id, count[id])
		}
	}
	extra := 0
	for id := range count {
		if !ackedSet[id] {
			extra++ // readings buffered between the last "ok" line and the kill, or after the reboot
		}
	}
	t.Logf("%d readings acknowledged before the kill, all in the log once; %d more readings in the log", len(acked), extra)

	// 4. The reported state: one update per boot, merged.
	waitState(t, cloud, deadline, 2, map[string]any{"firmware": "3.2.1", "reboots": 0.0})

	// 5. The reboot command through the cloud's API, the sync link and the
	// gateway: the device replies 202, reboots, and reports a third boot.
	body := strings.NewReader(`{"reason":"e2e"}`)
	req, err := http.NewRequest(http.MethodPost, cloud.APIURL+"/v1/gateways/gw-1/devices/sdk-dev/commands/reboot?timeout=60s", body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+cloud.Token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var view struct {
		Status      string          `json:"status"`
		ReplyStatus int             `json:"reply_status"`
		Payload     json.RawMessage `json:"payload"`
		Reason      string          `json:"reason"`
	}
	err = json.NewDecoder(resp.Body).Decode(&view)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || view.Status != "replied" || view.ReplyStatus != 202 ||
		string(view.Payload) != `{"firmware":"3.2.1","rebooting":true}` {
		t.Fatalf("reboot command: %s %+v %s (%v)", resp.Status, view, view.Payload, err)
	}
	waitState(t, cloud, time.Now().Add(60*time.Second), 3, map[string]any{"reboots": 1.0})
}

// waitState polls the cloud's device-state API until the device's version
// reaches version, then checks it is exactly that and that the reported
// properties hold want.
func waitState(t *testing.T, cloud *procs.Cloud, deadline time.Time, version int, want map[string]any) {
	t.Helper()
	for {
		resp, err := cloud.Get("/v1/gateways/gw-1/devices/sdk-dev/state")
		if err != nil {
			t.Fatal(err)
		}
		var st struct {
			Reported map[string]any `json:"reported"`
			Version  int            `json:"version"`
		}
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK && err == nil && st.Version >= version {
			if st.Version != version {
				t.Fatalf("device state version %d, want %d: %v", st.Version, version, st.Reported)
			}
			for k, v := range want {
				if st.Reported[k] != v {
					t.Fatalf("device state version %d: %s = %v, want %v (%v)", st.Version, k, st.Reported[k], v, st.Reported)
				}
			}
			return
		}
		if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNotFound {
			t.Fatalf("GET state: %s", resp.Status)
		}
		if time.Now().After(deadline) {
			t.Fatalf("device state: status %s, version %d", resp.Status, st.Version)
		}
		waitABit()
	}
}

// waitABit paces polling of another process's state (no channel can tell
// us when a child process changed something).
func waitABit() {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	<-ctx.Done()
}
