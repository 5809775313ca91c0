package gateway

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/tributary-io/tributary/sync/pki"
)

// unusedUDP returns an address where no cloud answers.
func unusedUDP(t *testing.T) string {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := c.LocalAddr().String()
	c.Close()
	return addr
}

// TestQuotaFromConfigRefusesAndKeeps runs a gateway whose cloud is
// unreachable with a small reject-new quota: publishes are acknowledged until
// the quota is full, then refused; everything acknowledged stays in the
// outbox, and the refusals are counted.
func TestQuotaFromConfigRefusesAndKeeps(t *testing.T) {
	dir := t.TempDir()
	if _, err := pki.EnsureDevPKI(filepath.Join(dir, "ca"), []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	var cfg Config
	cfg.GatewayID = "gw-q"
	cfg.DataDir = filepath.Join(dir, "gw")
	cfg.MQTT.Listeners.TCP.Address = "127.0.0.1:0"
	cfg.Cloud.Address = unusedUDP(t)
	cfg.Cloud.DevCADir = filepath.Join(dir, "ca")
	cfg.Outbox.QuotaBytes = 20 * 1024
	cfg.Outbox.Overflow = "reject-new"
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

	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("tcp://" + g.MQTTAddr()).SetClientID("dev-q").SetAutoReconnect(false))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer c.Disconnect(0)
	payload := make([]byte, 1000)
	acked := 0
	for i := 0; i < 100; i++ {
		tok := c.Publish("sensors/q", 1, false, payload)
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			break // refused: MQTT 3.1.1 has no negative PUBACK, the client is disconnected
		}
		acked++
	}
	if acked == 0 || acked >= 100 {
		t.Fatalf("%d of 100 acknowledged: the 20 KiB quota was not applied", acked)
	}
	s := g.Stats().Outbox
	if int(s.Records) != acked {
		t.Fatalf("outbox holds %d records, %d were acknowledged", s.Records, acked)
	}
	if s.Rejected == 0 {
		t.Fatalf("no refusal counted: %+v", s)
	}
	if s.Bytes > uint64(cfg.Outbox.QuotaBytes) {
		t.Fatalf("outbox holds %d bytes over the %d quota", s.Bytes, cfg.Outbox.QuotaBytes)
	}
}
