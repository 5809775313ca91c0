package link

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/binding/format/protobuf/v2/pb"
	"google.golang.org/protobuf/proto"

	"github.com/tributary-io/tributary/cloud/commitlog"
	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
	"github.com/tributary-io/tributary/sync/flow"
	"github.com/tributary-io/tributary/sync/pki"
	"github.com/tributary-io/tributary/sync/wire"
)

// testPKI is one CA with a server certificate for 127.0.0.1.
type testPKI struct {
	ca     *pki.KeyPair
	server *pki.KeyPair
}

func newPKI(t *testing.T) *testPKI {
	t.Helper()
	ca, err := pki.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := pki.IssueServer(ca, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	return &testPKI{ca: ca, server: srv}
}

func (p *testPKI) serverTLS(t *testing.T) *tls.Config {
	t.Helper()
	c, err := pki.ServerTLS(p.ca.Cert, p.server, ALPN)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// clientTLS returns a gateway TLS config for gw, issued by issuer (p's CA
// if nil) and trusting p's CA.
func (p *testPKI) clientTLS(t *testing.T, gw string, issuer *pki.KeyPair) *tls.Config {
	t.Helper()
	if issuer == nil {
		issuer = p.ca
	}
	kp, err := pki.IssueGateway(issuer, gw)
	if err != nil {
		t.Fatal(err)
	}
	c, err := pki.ClientTLS(p.ca.Cert, kp, "127.0.0.1", ALPN)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("SYNC_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
}

func record(seq uint64) *syncv1.Record {
	return &syncv1.Record{Seq: seq, Event: &pb.CloudEvent{
		Id:          fmt.Sprintf("ev-%d", seq),
		Source:      "/devices/d1",
		SpecVersion: "1.0",
		Type:        "io.tributary.telemetry",
		Attributes: map[string]*pb.CloudEventAttributeValue{
			"subject": {Attr: &pb.CloudEventAttributeValue_CeString{CeString: fmt.Sprintf("devices/d%d/temp", seq%7)}},
		},
		Data: &pb.CloudEvent_TextData{TextData: fmt.Sprintf(`{"n":%d,"pad":"0123456789012345678901234567890123456789"}`, seq)},
	}}
}

// memSource is an in-memory outbox: Ack deletes. checkAck, if set, is
// called under the lock before an Ack is applied (to assert durability).
type memSource struct {
	t        *testing.T
	mu       sync.Mutex
	recs     []*syncv1.Record
	next     uint64
	acked    uint64
	acks     int
	changed  chan struct{}
	checkAck func(upTo uint64)
}

func newSource(t *testing.T) *memSource {
	return &memSource{t: t, next: 1, changed: make(chan struct{})}
}

// add appends n records with the next sequences.
func (s *memSource) add(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		s.recs = append(s.recs, record(s.next))
		s.next++
	}
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *memSource) Read(after uint64, maxRecords, maxBytes int) ([]*syncv1.Record, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := sort.Search(len(s.recs), func(i int) bool { return s.recs[i].Seq > after })
	var out []*syncv1.Record
	size := 0
	for ; i < len(s.recs) && len(out) < maxRecords; i++ {
		n := proto.Size(s.recs[i])
		if len(out) > 0 && size+n > maxBytes {
			break
		}
		size += n
		out = append(out, s.recs[i])
	}
	return out, nil
}

func (s *memSource) Wait(ctx context.Context, after uint64) error {
	for {
		s.mu.Lock()
		if n := len(s.recs); n > 0 && s.recs[n-1].Seq > after {
			s.mu.Unlock()
			return nil
		}
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (s *memSource) Ack(upTo uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if upTo <= s.acked {
		s.t.Errorf("source: Ack(%d) does not grow (acked %d)", upTo, s.acked)
	}
	if s.checkAck != nil {
		s.checkAck(upTo)
	}
	s.acked = upTo
	s.acks++
	i := sort.Search(len(s.recs), func(i int) bool { return s.recs[i].Seq > upTo })
	s.recs = s.recs[i:]
	return nil
}

func (s *memSource) state() (held int, acked uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.recs), s.acked
}

// logSink adapts commitlog.Memory to Sink: Producer = gateway, ProducerSeq =
// seq, Topic = subject, Value = the protobuf CloudEvent.
type logSink struct {
	log *commitlog.Memory

	mu         sync.Mutex
	duplicates int
}

func newLogSink() *logSink { return &logSink{log: commitlog.NewMemory(nil)} }

var _ Sink = (*logSink)(nil)

func (s *logSink) HighWaterMark(gw string) uint64 { return s.log.HighWaterMark(gw) }

func (s *logSink) AppendAsync(gw string, recs []wire.RawRecord, done func(error)) {
	out := make([]commitlog.Record, 0, len(recs))
	for _, r := range recs {
		out = append(out, commitlog.Record{Topic: r.Subject, Producer: gw, ProducerSeq: r.Seq, Value: r.Event})
	}
	s.log.AppendAsync(out, func(res commitlog.AppendResult, err error) {
		s.mu.Lock()
		s.duplicates += res.Duplicates
		s.mu.Unlock()
		done(err)
	})
}

func (s *logSink) dups() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.duplicates
}

// checkLog asserts that the log holds exactly seqs 1..n of gw, once each,
// in order, with the events the source produced.
func checkLog(t *testing.T, log *commitlog.Memory, gw string, n uint64) {
	t.Helper()
	recs, err := log.Read(0, 1<<30, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	want := uint64(1)
	for _, r := range recs {
		if r.Producer != gw {
			continue
		}
		if r.ProducerSeq != want {
			t.Fatalf("log: gateway %s record at offset %d has seq %d, want %d", gw, r.Offset, r.ProducerSeq, want)
		}
		var ev pb.CloudEvent
		if err := proto.Unmarshal(r.Value, &ev); err != nil {
			t.Fatal(err)
		}
		if exp := record(want).Event; !proto.Equal(&ev, exp) {
			t.Fatalf("log: seq %d holds %v, want %v", want, &ev, exp)
		}
		want++
	}
	if want-1 != n {
		t.Fatalf("log: gateway %s has %d records, want %d", gw, want-1, n)
	}
}

// eventually polls cond until it holds or 30 s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

func serverConfig(t *testing.T, p *testPKI) ServerConfig {
	return ServerConfig{
		TLS:          p.serverTLS(t),
		Window:       8,
		ErrorLinger:  300 * time.Millisecond,
		HelloTimeout: 5 * time.Second,
		Logger:       testLogger(t),
	}
}

// startServer serves on pc (a new loopback socket if nil) until the test
// ends.
func startServer(t *testing.T, cfg ServerConfig, sink Sink, pc net.PacketConn) *Server {
	t.Helper()
	if pc == nil {
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
	}
	srv := NewServer(cfg, sink)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(context.Background(), pc) }()
	eventually(t, "server address", func() bool { return srv.Addr() != nil })
	t.Cleanup(func() {
		srv.Close()
		if err := <-errc; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return srv
}

func clientConfig(t *testing.T, p *testPKI, addr, gw string) ClientConfig {
	return ClientConfig{
		Addr:            addr,
		TLS:             p.clientTLS(t, gw, nil),
		GatewayID:       gw,
		SoftwareVersion: "test",
		MaxBatchRecords: 256,
		CompressAbove:   8 << 10,
		Backoff:         flow.Backoff{Min: 5 * time.Millisecond, Max: 100 * time.Millisecond},
		DialTimeout:     5 * time.Second,
		Logger:          testLogger(t),
	}
}

// startClient runs a Client until the test ends.
func startClient(t *testing.T, cfg ClientConfig, src Source) *Client {
	t.Helper()
	c := NewClient(cfg, src)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return c
}

func marshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// frameBytes is f as it travels: length prefix and body.
func frameBytes(t *testing.T, f *syncv1.Frame) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := wire.WriteFrame(&buf, f); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
