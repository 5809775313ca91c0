package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/tributary-io/tributary/cloud/server"
	"github.com/tributary-io/tributary/simulations/ledger"
	"github.com/tributary-io/tributary/simulations/procs"
)

// Deadlines for the gateway under emulation. qemu-user runs it ten to
// thirty times slower than natively, and the machine may be busy: these
// bound a hang, they are not what the test measures.
const (
	armBuildLimit   = 20 * time.Minute
	armStartLimit   = 3 * time.Minute
	armMessageLimit = 3 * time.Minute
)

// crossBuildEdge builds tributary-edge stripped (-s -w), with CGO off, for
// linux/goarch (goarm for 32-bit ARM), and returns its path. The size is
// logged: it is what an ARM gateway image carries.
func crossBuildEdge(t *testing.T, dir, goarch, goarm string) string {
	t.Helper()
	name := "tributary-edge-" + goarch + goarm
	out := filepath.Join(dir, name)
	ctx, cancel := context.WithTimeout(context.Background(), armBuildLimit)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-ldflags", "-s -w", "-o", out, "./edge/cmd/tributary-edge")
	cmd.Dir = filepath.Join("..", "..") // the module root, from simulations/e2e
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch, "GOARM="+goarm)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=0 GOOS=linux GOARCH=%s GOARM=%s go build ./edge/cmd/tributary-edge: %v\n%s", goarch, goarm, err, b)
	}
	fi, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	platform := "linux/" + goarch
	if goarm != "" {
		platform += "/v" + goarm
	}
	t.Logf("stripped %s tributary-edge: %d bytes (%.1f MiB)", platform, fi.Size(), float64(fi.Size())/(1<<20))
	return out
}

// TestEdgeBuildsForARMv7: the gateway builds for 32-bit ARM boards
// (linux/arm/v7) without cgo.
func TestEdgeBuildsForARMv7(t *testing.T) {
	t.Parallel()
	crossBuildEdge(t, t.TempDir(), "arm", "7")
}

// TestEdgeOnARM64UnderQEMU builds tributary-edge for linux/arm64, runs it
// under qemu-aarch64-static against a cloud process on this machine, and
// pushes a QoS 1 message from a paho client through it until it is in the
// cloud's central log.
func TestEdgeOnARM64UnderQEMU(t *testing.T) {
	t.Parallel()
	qemu, err := exec.LookPath("qemu-aarch64-static")
	if err != nil {
		t.Skip("qemu-aarch64-static not found (Debian package qemu-user-static, which .ci/run installs): the arm64 gateway is not run")
	}
	dir := t.TempDir()
	bin := crossBuildEdge(t, dir, "arm64", "")

	ctx := context.Background()
	cloud, err := procs.StartCloud(ctx, bins, procs.CloudOptions{DataDir: filepath.Join(dir, "cloud")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cloud.Kill()
		if t.Failed() {
			t.Logf("cloud log tail:\n%s", cloud.Tail(40))
		}
	})

	port, err := procs.FreePort("tcp")
	if err != nil {
		t.Fatal(err)
	}
	mqttAddr := fmt.Sprintf("127.0.0.1:%d", port)
	edgeDir := filepath.Join(dir, "gw-arm64")
	if err := os.MkdirAll(edgeDir, 0o755); err != nil {
		t.Fatal(err)
	}
	// The emulator is run explicitly, so no binfmt_misc registration is
	// needed.
	edge, err := procs.Start("edge-arm64", qemu, edgeDir+".log", bin,
		"-gateway-id", "gw-arm64", "-data-dir", edgeDir, "-mqtt-listen", mqttAddr,
		"-cloud", cloud.SyncAddr, "-dev-ca-dir", filepath.Join(cloud.DataDir, "pki"), "-log-level", "info")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		edge.Kill()
		if t.Failed() {
			t.Logf("arm64 edge log tail:\n%s", edge.Tail(40))
		}
	})
	pollARM(t, "the arm64 edge's MQTT port", armStartLimit, func() bool {
		if exited, err := edge.Exited(); exited {
			t.Fatalf("arm64 edge exited: %v\n%s", err, edge.Tail(40))
		}
		c, err := net.DialTimeout("tcp", mqttAddr, time.Second)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})

	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("tcp://" + mqttAddr).SetClientID("arm-device").
		SetCleanSession(true).SetAutoReconnect(false).SetConnectTimeout(armStartLimit).SetWriteTimeout(armMessageLimit))
	if tok := c.Connect(); !tok.WaitTimeout(armStartLimit) || tok.Error() != nil {
		t.Fatalf("connect to the arm64 edge: %v", tok.Error())
	}
	defer c.Disconnect(0)
	sent := time.Now()
	payload := ledger.MakePayload("arm-device", 1, sent, 200)
	tok := c.Publish("devices/arm-device/telemetry", 1, false, payload)
	if !tok.WaitTimeout(armMessageLimit) || tok.Error() != nil {
		t.Fatalf("QoS 1 publish not acknowledged by the arm64 edge: %v", tok.Error())
	}

	pollARM(t, "the message in the cloud's log", armMessageLimit, func() bool {
		found := false
		err := cloud.ReadLog(func(e server.LogEntry) error {
			if e.Gateway != "gw-arm64" {
				return nil
			}
			var ev event.Event
			if err := json.Unmarshal(e.Event, &ev); err != nil {
				return fmt.Errorf("log offset %d: %w", e.Offset, err)
			}
			if p, err := ledger.ParsePayload(ev.Data()); err == nil && p.Device == "arm-device" && p.Sent == sent.UnixNano() {
				found = true
			}
			return nil
		})
		if err != nil {
			t.Fatalf("read the cloud's log: %v", err)
		}
		return found
	})
}

// pollARM calls cond until it holds, failing the test after limit.
func pollARM(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up after %v waiting for %s", limit, what)
		}
		time.Sleep(100 * time.Millisecond) // polling interval, not a wait for an event
	}
}
