package gateway

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tributary-io/tributary/sync/pki"
)

// TestMetricsMove scrapes /metrics from a real gateway (with PprofEnv set,
// so /debug/pprof is served too) whose cloud is
// unreachable: before any publish the backlog age is 0 and no commit is
// counted; after an MQTT 5 client publishes three QoS 1 messages with a
// publish rate that allows one, the backlog age is positive, the commit
// histogram counts a commit, and two publishes are counted as dropped with
// reason rate_limited (their PUBACKs carry 0x96).
func TestMetricsMove(t *testing.T) {
	t.Setenv(PprofEnv, "1")
	dir := t.TempDir()
	if _, err := pki.EnsureDevPKI(filepath.Join(dir, "ca"), []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	var cfg Config
	cfg.GatewayID = "gw-m"
	cfg.DataDir = filepath.Join(dir, "gw")
	cfg.MetricsListen = "127.0.0.1:0"
	cfg.MQTT.Listeners.TCP.Address = "127.0.0.1:0"
	cfg.MQTT.Limits.PublishRate = 0.001 // one message, then one per 1000 s
	cfg.MQTT.Limits.PublishBurst = 1
	cfg.Cloud.Address = unusedUDP(t)
	cfg.Cloud.DevCADir = filepath.Join(dir, "ca")
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
	url := "http://" + g.metrics.ln.Addr().String() + "/metrics"
	resp, err := http.Get("http://" + g.metrics.ln.Addr().String() + "/debug/pprof/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/debug/pprof/cmdline with %s=1: %s", PprofEnv, resp.Status)
	}

	before := scrape(t, url)
	for name, want := range map[string]float64{
		`tributary_edge_outbox_backlog_age_seconds`:                0,
		`tributary_edge_outbox_commit_duration_seconds_count`:      0,
		`tributary_edge_mqtt_dropped_total{reason="rate_limited"}`: 0,
		`tributary_edge_mqtt_throttled_total`:                      0,
	} {
		if got, ok := before[name]; !ok || got != want {
			t.Errorf("before publishing: %s = %v (present %v), want %v", name, got, ok, want)
		}
	}

	conn, err := net.Dial("tcp", g.MQTTAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(conn)
	send(t, conn, packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect:     packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, ClientIdentifier: "dev-m", Keepalive: 60},
	})
	if pk := recv(t, r); pk.FixedHeader.Type != packets.Connack || pk.ReasonCode != 0 {
		t.Fatalf("CONNACK: type %d reason %#x", pk.FixedHeader.Type, pk.ReasonCode)
	}
	for id := uint16(1); id <= 3; id++ {
		send(t, conn, packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
			PacketID:    id,
			TopicName:   "sensors/m",
			Payload:     []byte(fmt.Sprintf("m%d", id)),
		})
	}
	for id := uint16(1); id <= 3; id++ {
		pk := recv(t, r)
		want := byte(0)
		if id > 1 {
			want = 0x96
		}
		if pk.FixedHeader.Type != packets.Puback || pk.PacketID != id || pk.ReasonCode != want {
			t.Fatalf("packet type %d id %d reason %#x, want PUBACK %d reason %#x", pk.FixedHeader.Type, pk.PacketID, pk.ReasonCode, id, want)
		}
	}

	after := scrape(t, url)
	if v := after[`tributary_edge_outbox_backlog_age_seconds`]; v <= 0 {
		t.Errorf("backlog age %v with a record waiting", v)
	}
	if v := after[`tributary_edge_outbox_commit_duration_seconds_count`]; v < 1 {
		t.Errorf("commit histogram count %v after a commit", v)
	}
	if v := after[`tributary_edge_outbox_commit_duration_seconds_bucket{le="+Inf"}`]; v != after[`tributary_edge_outbox_commit_duration_seconds_count`] {
		t.Errorf("+Inf bucket %v differs from the count", v)
	}
	if v := after[`tributary_edge_mqtt_dropped_total{reason="rate_limited"}`]; v != 2 {
		t.Errorf("rate_limited drops %v, want 2", v)
	}
	if v := after[`tributary_edge_outbox_records`]; v != 1 {
		t.Errorf("outbox records %v, want 1", v)
	}
	if v := after[`tributary_edge_outbox_wal_bytes`]; v <= 0 {
		t.Errorf("outbox wal bytes %v after a commit", v)
	}
	if _, ok := after[`tributary_edge_outbox_wal_restarts_total`]; !ok {
		t.Error("no tributary_edge_outbox_wal_restarts_total")
	}
}

// scrape fetches a Prometheus text exposition and returns each sample by
// its name and labels with the gateway label removed.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad sample %q", line)
		}
		key := line[:i]
		key = strings.Replace(key, `gateway="gw-m",`, "", 1)
		key = strings.Replace(key, `,gateway="gw-m"`, "", 1)
		key = strings.Replace(key, `{gateway="gw-m"}`, "", 1)
		out[key] = v
	}
	return out
}

func send(t *testing.T, w io.Writer, pk packets.Packet) {
	t.Helper()
	pk.ProtocolVersion = 5
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
}

func recv(t *testing.T, r *bufio.Reader) packets.Packet {
	t.Helper()
	var fh packets.FixedHeader
	b, err := r.ReadByte()
	if err != nil {
		t.Fatal(err)
	}
	if err := fh.Decode(b); err != nil {
		t.Fatal(err)
	}
	if fh.Remaining, _, err = packets.DecodeLength(r); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, fh.Remaining)
	if _, err := io.ReadFull(r, body); err != nil {
		t.Fatal(err)
	}
	pk := packets.Packet{FixedHeader: fh, ProtocolVersion: 5}
	switch fh.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	default:
		err = fmt.Errorf("unexpected packet type %d", fh.Type)
	}
	if err != nil {
		t.Fatal(err)
	}
	return pk
}
