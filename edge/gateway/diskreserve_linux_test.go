//go:build linux

package gateway

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tributary-io/tributary/sync/pki"
)

// TestDiskReserveRefusesPublishes runs a real gateway whose data directory
// is a real 4 MiB tmpfs and whose outbox.min_free_bytes is the whole file
// system, so free space is always below the reserve: an MQTT 5 QoS 1
// publish to the (default reject-new) outbox is refused with PUBACK 0x97,
// nothing is stored, and /metrics counts the refusals and exports the
// disk_full drop reason. Mounting needs root; the test skips without it.
func TestDiskReserveRefusesPublishes(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "gw")
	if err := os.Mkdir(data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", data, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "size=4m,mode=0755"); err != nil {
		t.Skipf("cannot mount a tmpfs (%v): needs root or CAP_SYS_ADMIN", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(data, 0); err != nil {
			t.Errorf("unmount %s: %v", data, err)
			syscall.Unmount(data, syscall.MNT_DETACH)
		}
	})
	if _, err := pki.EnsureDevPKI(filepath.Join(dir, "ca"), []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := ParseConfig([]byte("outbox:\n  min_free_bytes: 4194304\n"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.GatewayID = "gw-m" // scrape strips this label
	cfg.DataDir = data
	cfg.MetricsListen = "127.0.0.1:0"
	cfg.MQTT.Listeners.TCP.Address = "127.0.0.1:0"
	cfg.Cloud.Address = unusedUDP(t)
	cfg.Cloud.DevCADir = filepath.Join(dir, "ca")
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	g, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- g.Run(ctx) }()
	defer func() {
		cancel()
		<-runDone
		g.Close()
	}()

	conn, err := net.Dial("tcp", g.MQTTAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(conn)
	send(t, conn, packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect:     packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, ClientIdentifier: "dev-d", Keepalive: 60},
	})
	if pk := recv(t, r); pk.FixedHeader.Type != packets.Connack || pk.ReasonCode != 0 {
		t.Fatalf("CONNACK: type %d reason %#x", pk.FixedHeader.Type, pk.ReasonCode)
	}
	const n = 3
	for id := uint16(1); id <= n; id++ {
		send(t, conn, packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
			PacketID:    id,
			TopicName:   "sensors/d",
			Payload:     []byte(fmt.Sprintf("d%d", id)),
		})
		pk := recv(t, r)
		if pk.FixedHeader.Type != packets.Puback || pk.PacketID != id || pk.ReasonCode != packets.ErrQuotaExceeded.Code {
			t.Fatalf("packet type %d id %d reason %#x, want PUBACK %d reason %#x", pk.FixedHeader.Type, pk.PacketID, pk.ReasonCode, id, packets.ErrQuotaExceeded.Code)
		}
	}

	m := scrape(t, "http://"+g.metrics.ln.Addr().String()+"/metrics")
	var rejected float64
	diskFull := false
	for k, v := range m {
		if strings.HasPrefix(k, "tributary_edge_outbox_rejected_total{") {
			rejected += v
		}
		if strings.HasPrefix(k, "tributary_edge_outbox_dropped_total{") && strings.Contains(k, `reason="disk_full"`) {
			diskFull = true
		}
	}
	if rejected != n || !diskFull || m["tributary_edge_outbox_records"] != 0 {
		t.Fatalf("after %d refused publishes: outbox rejected %v, disk_full series present %v, records %v",
			n, rejected, diskFull, m["tributary_edge_outbox_records"])
	}
}
