package broker

import (
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/tributary-io/tributary/edge/outbox"
)

// BenchmarkDurableAck measures QoS 1 publish throughput with every PUBACK
// after its SQLite commit (real outbox, synchronous=full), real paho clients
// over loopback, 200-byte payloads, a fixed window of messages in flight per
// publisher and one QoS 1 subscriber on "#", in both ack modes. The
// "local" peer is plain mochi in the same run: a rule keeps every topic
// local, so nothing touches the disk; quote ratios against it. Run with a
// fixed count, e.g. -bench DurableAck -benchtime 20000x.
func BenchmarkDurableAck(b *testing.B) {
	for _, mode := range []AckMode{AckAsync, AckSync, "local"} {
		for _, shape := range []struct{ publishers, window int }{{50, 100}, {1, 100}} {
			b.Run(fmt.Sprintf("%s/%dx%d", mode, shape.publishers, shape.window), func(b *testing.B) {
				benchDurableAck(b, mode, shape.publishers, shape.window)
			})
		}
	}
}

func benchDurableAck(b *testing.B, mode AckMode, publishers, window int) {
	ob, err := outbox.Open(filepath.Join(b.TempDir(), "outbox.db"), outbox.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer ob.Close()
	cfg := Config{AckMode: mode, Listeners: Listeners{TCP: TCPListener{Address: "127.0.0.1:0"}}}
	if mode == "local" {
		cfg.AckMode = AckAsync
		cfg.Forwarding = []Rule{{Filter: "#", Local: true}}
	}
	br, err := New(cfg, ob, nil)
	if err != nil {
		b.Fatal(err)
	}
	if err := br.Start(); err != nil {
		b.Fatal(err)
	}
	defer br.Close()
	url := "tcp://" + br.Addr().TCP.String()
	connect := func(id string) paho.Client {
		c := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID(id).
			SetCleanSession(true).SetAutoReconnect(false).SetOrderMatters(false).
			SetMessageChannelDepth(1 << 16))
		if tok := c.Connect(); !tok.WaitTimeout(safetyTimeout) || tok.Error() != nil {
			b.Fatalf("connect %s: %v", id, tok.Error())
		}
		return c
	}
	var delivered atomic.Int64
	sub := connect("bench-sub")
	defer sub.Disconnect(0)
	if tok := sub.Subscribe("#", 1, func(paho.Client, paho.Message) { delivered.Add(1) }); !tok.WaitTimeout(safetyTimeout) || tok.Error() != nil {
		b.Fatal(tok.Error())
	}
	clients := make([]paho.Client, publishers)
	for i := range clients {
		clients[i] = connect(fmt.Sprintf("bench-pub-%d", i))
		defer clients[i].Disconnect(0)
	}
	payload := strings.Repeat("x", 200)
	var failed atomic.Int64

	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for i, c := range clients {
		n := b.N / publishers
		if i < b.N%publishers {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			inflight := make(chan paho.Token, window) // PUBACKs come in order: wait FIFO
			done := make(chan struct{})
			go func() {
				defer close(done)
				for tok := range inflight {
					if !tok.WaitTimeout(safetyTimeout) || tok.Error() != nil {
						failed.Add(1)
					}
				}
			}()
			topic := fmt.Sprintf("sensors/bench-%d", i)
			for range n {
				inflight <- c.Publish(topic, 1, false, payload)
			}
			close(inflight)
			<-done
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if f := failed.Load(); f > 0 {
		b.Fatalf("%d publishes not acknowledged", f)
	}
	st := ob.Stats()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msg/s")
	b.ReportMetric(st.RowsPerCommit(), "rows/commit")
	b.ReportMetric(float64(br.Stats().LocalDropped), "dropped")
	b.ReportMetric(0, "ns/op")
}
