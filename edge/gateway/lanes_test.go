package gateway

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/binding/format/protobuf/v2/pb"
	mqtt "github.com/eclipse/paho.mqtt.golang"
	"google.golang.org/protobuf/proto"

	"github.com/tributary-io/tributary/cloud/commitlog"
	"github.com/tributary-io/tributary/cloud/ingest"
	"github.com/tributary-io/tributary/edge/broker"
	"github.com/tributary-io/tributary/sync/link"
	"github.com/tributary-io/tributary/sync/pki"
)

// TestLanesAcrossRestart: a gateway whose classes use three lanes commits
// messages of each while the cloud is unreachable, is restarted with them
// pending, and then drains them: each lane into its own producer of the
// cloud's log, every message exactly once, each device's messages in order
// within its lane. A second restart sends nothing again.
func TestLanesAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	dev, err := pki.EnsureDevPKI(filepath.Join(dir, "ca"), []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	var cfg Config
	cfg.GatewayID = "gw-lanes"
	cfg.DataDir = filepath.Join(dir, "gw")
	cfg.MQTT.Listeners.TCP.Address = "127.0.0.1:0"
	cfg.MQTT.Forwarding = []broker.Rule{
		{Filter: "alarm/#", Priority: 0},
		{Filter: "event/#", Priority: 1},
		{Filter: "telemetry/#", Priority: 4},
	}
	cfg.Outbox.Classes = map[uint8]ClassConfig{1: {Lane: 1}, 4: {Lane: 3}}
	cfg.Cloud.Address = unusedUDP(t)
	cfg.Cloud.DevCADir = filepath.Join(dir, "ca")
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := cfg
	bad.Outbox.Classes = map[uint8]ClassConfig{1: {Lane: 8}}
	if err := bad.Validate(); err == nil {
		t.Fatal("lane 8 accepted")
	}

	// Offline: messages of three lanes pile up in the outbox.
	const perTopic = 150
	topics := map[string]uint32{"alarm/a": 0, "event/a": 1, "telemetry/a": 3, "telemetry/b": 3}
	g := startGateway(t, cfg)
	publish(t, g, topics, perTopic)
	if st := g.Stats().Outbox; st.Records != uint64(len(topics)*perTopic) {
		t.Fatalf("outbox holds %d records", st.Records)
	}
	g.stop()

	// A cloud with a durable log, and the gateway restarted against it.
	clog, err := commitlog.Open(filepath.Join(dir, "log"), commitlog.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer clog.Close()
	serverTLS, err := pki.ServerTLS(dev.CA.Cert, dev.Server, link.ALPN)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := link.NewServer(link.ServerConfig{TLS: serverTLS}, &ingest.Sink{Log: clog})
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Serve(context.Background(), pc) }()
	defer func() {
		srv.Close()
		<-srvDone
	}()
	cfg.Cloud.Address = pc.LocalAddr().String()
	g = startGateway(t, cfg)
	pollLanes(t, "the outbox drained", func() bool { return g.Stats().Outbox.Records == 0 })
	checkLanesLog(t, clog, cfg.GatewayID, topics, perTopic)
	g.stop()

	// Restarted once more with nothing pending: nothing is appended again.
	next := clog.NextOffset()
	g = startGateway(t, cfg)
	pollLanes(t, "a session", func() bool { return g.Stats().Link.Sessions > 0 })
	g.stop()
	if clog.NextOffset() != next {
		t.Fatalf("log grew from %d to %d after a restart with nothing pending", next, clog.NextOffset())
	}
}

type runningGateway struct {
	*Gateway
	stop func()
}

func startGateway(t *testing.T, cfg Config) runningGateway {
	t.Helper()
	g, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if err := g.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
	t.Cleanup(stop)
	return runningGateway{g, stop}
}

// publish sends n QoS 1 messages to each topic, "<topic> <i>" as payload.
func publish(t *testing.T, g runningGateway, topics map[string]uint32, n int) {
	t.Helper()
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("tcp://" + g.MQTTAddr()).SetClientID("dev-lanes").SetAutoReconnect(false))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer c.Disconnect(0)
	for i := range n {
		for topic := range topics {
			tok := c.Publish(topic, 1, false, topic+" "+strconv.Itoa(i))
			if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				t.Fatalf("publish %s %d: %v", topic, i, tok.Error())
			}
		}
	}
}

func pollLanes(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// checkLanesLog: every topic's n messages are in the log once, under the
// producer of the topic's lane, in publish order.
func checkLanesLog(t *testing.T, clog commitlog.Log, gw string, topics map[string]uint32, n int) {
	t.Helper()
	next := map[string]int{}
	seqs := map[string]uint64{}
	for from := clog.FirstOffset(); from < clog.NextOffset(); {
		recs, err := clog.Read(from, 1000, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			from = r.Offset + 1
			var ev pb.CloudEvent
			if err := proto.Unmarshal(r.Value, &ev); err != nil {
				t.Fatal(err)
			}
			var topic string
			var i int
			if _, err := fmt.Sscanf(string(ev.GetBinaryData()), "%s %d", &topic, &i); err != nil {
				t.Fatalf("offset %d: payload %q", r.Offset, ev.GetBinaryData())
			}
			lane, ok := topics[topic]
			if !ok || r.Producer != link.LaneProducer(gw, lane) {
				t.Fatalf("offset %d: %s from producer %q", r.Offset, topic, r.Producer)
			}
			if i != next[topic] {
				t.Fatalf("offset %d: %s message %d, want %d (lost, duplicated or out of order)", r.Offset, topic, i, next[topic])
			}
			next[topic]++
			if r.ProducerSeq <= seqs[r.Producer] {
				t.Fatalf("offset %d: producer %s seq %d after %d", r.Offset, r.Producer, r.ProducerSeq, seqs[r.Producer])
			}
			seqs[r.Producer] = r.ProducerSeq
			if ev.GetId() != EventID(gw, r.ProducerSeq) {
				t.Fatalf("offset %d: event id %q", r.Offset, ev.GetId())
			}
		}
	}
	for topic := range topics {
		if next[topic] != n {
			t.Fatalf("%s: %d messages in the log, want %d", topic, next[topic], n)
		}
	}
}
