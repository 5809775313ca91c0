package link

import (
	"context"
	"crypto/tls"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
	"github.com/tributary-io/tributary/sync/pki"
	"github.com/tributary-io/tributary/sync/wire"
)

// rawConn dials the server as a gateway without the Client, for tests that
// break the protocol on purpose.
func rawConn(t *testing.T, addr string, tlsConf *tls.Config) (*quic.Conn, *quic.Stream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := quic.DialAddr(ctx, addr, tlsConf, &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.CloseWithError(0, "") })
	str, err := conn.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return conn, str
}

func writeFrame(t *testing.T, str *quic.Stream, f *syncv1.Frame) {
	t.Helper()
	if err := wire.WriteFrame(str, f); err != nil {
		t.Fatal(err)
	}
}

func readFrame(t *testing.T, str *quic.Stream) *syncv1.Frame {
	t.Helper()
	_ = str.SetReadDeadline(time.Now().Add(10 * time.Second))
	f, err := wire.ReadFrame(str, 0)
	if err != nil {
		t.Fatalf("reading a frame: %v", err)
	}
	return f
}

func helloFrame(gw string, v syncv1.Version) *syncv1.Frame {
	return &syncv1.Frame{Body: &syncv1.Frame_Hello{Hello: &syncv1.Hello{ProtocolVersion: v, GatewayId: gw}}}
}

// handshakeRaw sends Hello for gw and returns the Welcome.
func handshakeRaw(t *testing.T, str *quic.Stream, gw string) *syncv1.Welcome {
	t.Helper()
	writeFrame(t, str, helloFrame(gw, syncv1.Version_VERSION_1))
	f := readFrame(t, str)
	if f.GetWelcome() == nil {
		t.Fatalf("expected Welcome, got %v", f)
	}
	return f.GetWelcome()
}

// expectError reads the Error frame the server must send and waits for the
// connection to close with the same code.
func expectError(t *testing.T, conn *quic.Conn, str *quic.Stream, code syncv1.ErrorCode) {
	t.Helper()
	f := readFrame(t, str)
	if f.GetError().GetCode() != code {
		t.Fatalf("got %v, want Error %v", f, code)
	}
	// Leave the closing to the server: it closes after its linger.
	<-conn.Context().Done()
	var ae *quic.ApplicationError
	if err := context.Cause(conn.Context()); !errors.As(err, &ae) || ae.ErrorCode != closeCode(code) {
		t.Fatalf("connection closed with %v, want application code %d", err, code)
	}
}

// TestAckOnlyAfterDurable holds back the sink's done callbacks: the server
// must not ack and the gateway must not delete anything until they run.
func TestAckOnlyAfterDurable(t *testing.T) {
	p := newPKI(t)
	sink := &gateSink{logSink: newLogSink(), holding: true}
	srv := startServer(t, serverConfig(t, p), sink, nil)
	src := newSource(t)
	src.add(1000) // 4 batches of 256: within the window of 8
	c := startClient(t, clientConfig(t, p, srv.Addr().String(), "gw-1"), src)
	eventually(t, "server received everything", func() bool { return srv.Stats().Records == 1000 })
	eventually(t, "appends queued", func() bool { return sink.heldCount() == 4 })
	if held, acked := src.state(); acked != 0 || held != 1000 {
		t.Fatalf("before durability: source acked %d, holds %d", acked, held)
	}
	if st := c.Stats(); st.BatchesAcked != 0 || st.AckedSeq != 0 {
		t.Fatalf("client saw acks before durability: %+v", st)
	}
	for _, f := range sink.stopHolding() {
		f()
	}
	eventually(t, "acks after durability", func() bool { h, a := src.state(); return a == 1000 && h == 0 })
	checkLog(t, sink.log, "gw-1", 1000)
}

// TestForeignCARefused: a gateway certificate from another CA fails the
// handshake, and the sink is never touched.
func TestForeignCARefused(t *testing.T) {
	p := newPKI(t)
	sink := newLogSink()
	srv := startServer(t, serverConfig(t, p), sink, nil)
	rogue, err := pki.NewCA("rogue", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tlsConf := p.clientTLS(t, "gw-1", rogue)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if conn, err := quic.DialAddr(ctx, srv.Addr().String(), tlsConf, &quic.Config{}); err == nil {
		// TLS 1.3 clients finish before the server checks them; the
		// refusal then closes the connection.
		<-conn.Context().Done()
	}

	src := newSource(t)
	src.add(10)
	cfg := clientConfig(t, p, srv.Addr().String(), "gw-1")
	cfg.TLS = tlsConf
	c := startClient(t, cfg, src)
	eventually(t, "client retries", func() bool { return c.Stats().Reconnects >= 2 })
	if st := c.Stats(); st.Sessions != 0 || st.State == Connected || st.LastError == "" {
		t.Fatalf("client stats %+v", st)
	}
	if n := sink.log.NextOffset(); n != 0 {
		t.Fatalf("log holds %d records", n)
	}
	if ss := srv.Stats(); ss.Accepted != 0 || ss.Batches != 0 {
		t.Fatalf("server stats %+v", ss)
	}
	eventually(t, "failed handshakes counted", func() bool { return srv.Stats().HandshakeFailures >= 2 })
	if held, acked := src.state(); held != 10 || acked != 0 {
		t.Fatalf("source: held %d acked %d", held, acked)
	}
}

// TestHelloRefused: a Hello naming another gateway, or an unknown version,
// is refused with the matching Error code; the Client reports it.
func TestHelloRefused(t *testing.T) {
	p := newPKI(t)
	sink := newLogSink()
	srv := startServer(t, serverConfig(t, p), sink, nil)
	addr := srv.Addr().String()

	conn, str := rawConn(t, addr, p.clientTLS(t, "gw-1", nil))
	writeFrame(t, str, helloFrame("gw-2", syncv1.Version_VERSION_1))
	expectError(t, conn, str, syncv1.ErrorCode_ERROR_CODE_UNAUTHORIZED)

	conn, str = rawConn(t, addr, p.clientTLS(t, "gw-1", nil))
	writeFrame(t, str, helloFrame("gw-1", syncv1.Version(2)))
	expectError(t, conn, str, syncv1.ErrorCode_ERROR_CODE_UNSUPPORTED_VERSION)

	conn, str = rawConn(t, addr, p.clientTLS(t, "gw-1", nil))
	writeFrame(t, str, &syncv1.Frame{Body: &syncv1.Frame_Ack{Ack: &syncv1.Ack{}}})
	expectError(t, conn, str, syncv1.ErrorCode_ERROR_CODE_PROTOCOL)

	// The Client with a certificate for gw-1 claiming to be gw-2.
	src := newSource(t)
	src.add(3)
	cfg := clientConfig(t, p, addr, "gw-1")
	cfg.GatewayID = "gw-2"
	var mu sync.Mutex
	var lastErr error
	cfg.OnState = func(_ State, err error) {
		if err != nil {
			mu.Lock()
			lastErr = err
			mu.Unlock()
		}
	}
	startClient(t, cfg, src)
	eventually(t, "client told unauthorized", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return errors.Is(lastErr, &RemoteError{Code: syncv1.ErrorCode_ERROR_CODE_UNAUTHORIZED})
	})
	if n := sink.log.NextOffset(); n != 0 {
		t.Fatalf("log holds %d records", n)
	}
	if ss := srv.Stats(); ss.Accepted != 0 || ss.Refused < 4 {
		t.Fatalf("server stats %+v", ss)
	}
}

// TestMalformedFrame sends bad frames after a valid handshake: each closes
// that connection with an Error, nothing of it is appended, and another
// gateway's session keeps flowing throughout.
func TestMalformedFrame(t *testing.T) {
	p := newPKI(t)
	sink := newLogSink()
	srv := startServer(t, serverConfig(t, p), sink, nil)
	addr := srv.Addr().String()

	good := newSource(t)
	good.add(500)
	gc := startClient(t, clientConfig(t, p, addr, "gw-good"), good)
	eventually(t, "good gateway flowing", func() bool { _, a := good.state(); return a == 500 })

	batchFrame := func(recs []*syncv1.Record) []byte {
		b, err := wire.EncodeRecords(recs, 0)
		if err != nil {
			t.Fatal(err)
		}
		return frameBytes(t, &syncv1.Frame{Body: &syncv1.Frame_Batch{Batch: b}})
	}
	unordered := batchFrame([]*syncv1.Record{record(1), record(2)})
	// Swap the two records' seqs inside an otherwise valid batch.
	bad, _ := wire.EncodeRecords([]*syncv1.Record{record(1), record(2)}, 0)
	bad.LastSeq = 1
	badList := &syncv1.RecordList{Records: []*syncv1.Record{record(2), record(1)}}
	bad.Records = marshal(t, badList)
	unordered = frameBytes(t, &syncv1.Frame{Body: &syncv1.Frame_Batch{Batch: bad}})
	wrongCount, _ := wire.EncodeRecords([]*syncv1.Record{record(1), record(2)}, 0)
	wrongCount.Count = 3
	noEvent, _ := wire.EncodeRecords([]*syncv1.Record{record(1)}, 0)
	noEvent.Records = marshal(t, &syncv1.RecordList{Records: []*syncv1.Record{{Seq: 1}}})

	tests := []struct {
		name  string
		bytes []byte
		code  syncv1.ErrorCode
	}{
		{"garbage body", []byte{0, 0, 0, 5, 0xff, 0xfe, 0xfd, 0xfc, 0xfb}, syncv1.ErrorCode_ERROR_CODE_PROTOCOL},
		{"zero length", []byte{0, 0, 0, 0}, syncv1.ErrorCode_ERROR_CODE_PROTOCOL},
		{"oversize length", []byte{0x7f, 0xff, 0xff, 0xff}, syncv1.ErrorCode_ERROR_CODE_FRAME_TOO_LARGE},
		{"records out of order", unordered, syncv1.ErrorCode_ERROR_CODE_PROTOCOL},
		{"count mismatch", frameBytes(t, &syncv1.Frame{Body: &syncv1.Frame_Batch{Batch: wrongCount}}), syncv1.ErrorCode_ERROR_CODE_PROTOCOL},
		{"record without event", frameBytes(t, &syncv1.Frame{Body: &syncv1.Frame_Batch{Batch: noEvent}}), syncv1.ErrorCode_ERROR_CODE_PROTOCOL},
		{"second Hello", frameBytes(t, helloFrame("gw-bad", syncv1.Version_VERSION_1)), syncv1.ErrorCode_ERROR_CODE_PROTOCOL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, str := rawConn(t, addr, p.clientTLS(t, "gw-bad", nil))
			handshakeRaw(t, str, "gw-bad")
			if _, err := str.Write(tt.bytes); err != nil {
				t.Fatal(err)
			}
			expectError(t, conn, str, tt.code)
			if hwm := sink.log.HighWaterMark("gw-bad"); hwm != 0 {
				t.Fatalf("log holds gw-bad records up to %d", hwm)
			}
			good.add(100)
		})
	}
	eventually(t, "good gateway kept flowing", func() bool {
		_, a := good.state()
		return a == uint64(500+100*len(tests))
	})
	if st := gc.Stats(); st.Sessions != 1 || st.Reconnects != 0 {
		t.Fatalf("good gateway was disturbed: %+v", st)
	}
	if ss := srv.Stats(); ss.ProtocolErrors != uint64(len(tests)) {
		t.Fatalf("server counted %d protocol errors, want %d", ss.ProtocolErrors, len(tests))
	}
	checkLog(t, sink.log, "gw-good", uint64(500+100*len(tests)))
	checkLog(t, sink.log, "gw-bad", 0)
}

// TestBatchBeyondWindow: a gateway that ignores the window is closed with
// a protocol error.
func TestBatchBeyondWindow(t *testing.T) {
	p := newPKI(t)
	sink := &gateSink{logSink: newLogSink(), holding: true} // never acks
	cfg := serverConfig(t, p)
	cfg.Window = 2
	srv := startServer(t, cfg, sink, nil)
	conn, str := rawConn(t, srv.Addr().String(), p.clientTLS(t, "gw-1", nil))
	if w := handshakeRaw(t, str, "gw-1"); w.GetWindow() != 2 {
		t.Fatalf("window %d", w.GetWindow())
	}
	for seq := uint64(1); seq <= 3; seq++ {
		b, err := wire.EncodeRecords([]*syncv1.Record{record(seq)}, 0)
		if err != nil {
			t.Fatal(err)
		}
		writeFrame(t, str, &syncv1.Frame{Body: &syncv1.Frame_Batch{Batch: b}})
	}
	expectError(t, conn, str, syncv1.ErrorCode_ERROR_CODE_PROTOCOL)
	if n := sink.heldCount(); n != 2 {
		t.Fatalf("sink got %d appends, want the 2 within the window", n)
	}
}

// failSink fails the first append that holds failSeq, after appending it
// (an append error leaves the records in the log or not: the worst case).
type failSink struct {
	*logSink
	mu      sync.Mutex
	failSeq uint64
	failed  int
}

func (f *failSink) AppendAsync(gw string, recs []wire.RawRecord, done func(error)) {
	f.mu.Lock()
	fail := f.failed == 0 && recs[0].Seq <= f.failSeq && f.failSeq <= recs[len(recs)-1].Seq
	if fail {
		f.failed++
	}
	f.mu.Unlock()
	if !fail {
		f.logSink.AppendAsync(gw, recs, done)
		return
	}
	f.logSink.AppendAsync(gw, recs, func(error) { done(errors.New("disk on fire")) })
}

// TestSinkFailure: an append error closes the session with
// Error(INTERNAL); the gateway reconnects and resumes without loss or
// duplicates.
func TestSinkFailure(t *testing.T) {
	p := newPKI(t)
	sink := &failSink{logSink: newLogSink(), failSeq: 1500}
	srv := startServer(t, serverConfig(t, p), sink, nil)
	src := newSource(t)
	src.checkAck = func(upTo uint64) {
		if hwm := sink.log.HighWaterMark("gw-1"); hwm < upTo {
			t.Errorf("source acked up to %d while the log holds only up to %d", upTo, hwm)
		}
	}
	src.add(5000)
	cfg := clientConfig(t, p, srv.Addr().String(), "gw-1")
	var mu sync.Mutex
	var errs []error
	cfg.OnState = func(_ State, err error) {
		if err != nil {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		}
	}
	c := startClient(t, cfg, src)
	eventually(t, "all acknowledged", func() bool { _, a := src.state(); return a == 5000 })
	checkLog(t, sink.log, "gw-1", 5000)
	if ss := srv.Stats(); ss.SinkErrors != 1 {
		t.Fatalf("server stats %+v", ss)
	}
	if st := c.Stats(); st.Reconnects != 1 || st.Sessions != 2 {
		t.Fatalf("client stats %+v", st)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(errs) != 1 || !errors.Is(errs[0], &RemoteError{Code: syncv1.ErrorCode_ERROR_CODE_INTERNAL}) {
		t.Fatalf("session errors %v, want one Error(INTERNAL)", errs)
	}
}

// TestSupersede: a second connection of the same gateway replaces the first,
// which is told why and closed.
func TestSupersede(t *testing.T) {
	p := newPKI(t)
	sink := newLogSink()
	srv := startServer(t, serverConfig(t, p), sink, nil)
	conn, str := rawConn(t, srv.Addr().String(), p.clientTLS(t, "gw-1", nil))
	handshakeRaw(t, str, "gw-1")

	src := newSource(t)
	src.add(100)
	c := startClient(t, clientConfig(t, p, srv.Addr().String(), "gw-1"), src)
	expectError(t, conn, str, syncv1.ErrorCode_ERROR_CODE_SHUTTING_DOWN)
	eventually(t, "new session flows", func() bool { _, a := src.state(); return a == 100 })
	if ss := srv.Stats(); ss.Superseded != 1 || ss.Sessions != 1 {
		t.Fatalf("server stats %+v", ss)
	}
	if st := c.Stats(); st.Sessions != 1 {
		t.Fatalf("client stats %+v", st)
	}
}
