package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// logSink is a JSON slog handler's output, safe for concurrent writes.
type logSink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

// records decodes every line written so far.
func (s *logSink) records(t *testing.T) []map[string]any {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for line := range strings.SplitSeq(strings.TrimSpace(s.buf.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

func newSinkLogger(level slog.Level) (*logSink, *slog.Logger) {
	s := &logSink{}
	return s, slog.New(slog.NewJSONHandler(s, &slog.HandlerOptions{Level: level}))
}

// TestMochiHandlerFilters checks each rule of mochiHandler on records shaped
// like mochi's, and that everything else passes untouched.
func TestMochiHandlerFilters(t *testing.T) {
	ctx := context.Background()
	pk := packets.Packet{TopicName: "sensors/a", Payload: bytes.Repeat([]byte("x"), 200)}
	sink, base := newSinkLogger(slog.LevelDebug)
	log := slog.New(mochiHandler{inner: base.Handler()}).With("component", "mochi")

	log.Debug(msgPublishRejected, "error", packets.ErrRejectPacket, "hook", "tributary-outbox", "packet", pk)
	log.Debug(msgPublishRejected, "error", fmt.Errorf("wrapped: %w", packets.ErrRejectPacket), "packet", pk)
	log.Debug(msgPublishRejected, "error", packets.ErrNotAuthorized, "packet", pk) // another error: kept
	log.Debug("packet rejected", "error", packets.ErrRejectPacket)                 // another message: kept
	log.Warn("", "error", io.EOF)
	log.Warn("", "error", fmt.Errorf("read connection: %w", io.EOF))
	log.Warn("", "error", errors.New("use of closed network connection")) // kept at WARN
	log.Warn("something else", "error", io.EOF)                           // kept at WARN

	type rec struct{ level, msg, err string }
	var got []rec
	for _, m := range sink.records(t) {
		if m["component"] != "mochi" {
			t.Errorf("record lost the logger's attributes: %v", m)
		}
		e, _ := m["error"].(string)
		got = append(got, rec{m["level"].(string), m["msg"].(string), e})
	}
	want := []rec{
		{"DEBUG", msgPublishRejected, packets.ErrNotAuthorized.Error()},
		{"DEBUG", "packet rejected", packets.ErrRejectPacket.Error()},
		{"DEBUG", "", "EOF"},
		{"DEBUG", "", "read connection: EOF"},
		{"WARN", "", "use of closed network connection"},
		{"WARN", "something else", "EOF"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("records\n got %v\nwant %v", got, want)
	}

	// Demoted records respect the destination's level.
	sink, base = newSinkLogger(slog.LevelInfo)
	log = slog.New(mochiHandler{inner: base.Handler()})
	if !log.Handler().Enabled(ctx, slog.LevelWarn) || log.Handler().Enabled(ctx, slog.LevelDebug) {
		t.Error("Enabled does not follow the inner handler")
	}
	log.Warn("", "error", io.EOF)
	log.Warn("", "error", errors.New("accept: too many open files"))
	if recs := sink.records(t); len(recs) != 1 || recs[0]["error"] != "accept: too many open files" {
		t.Errorf("at INFO: records %v, want only the non-EOF warning", recs)
	}
}

// TestBrokerLogNoise runs the broker at DEBUG in AckAsync mode: neither its
// acknowledged publishes nor a refused one (which mochi sees as a rejected
// packet) log "publish packet rejected" records, a client leaving without
// DISCONNECT and a connection closed before CONNECT are DEBUG records, and
// mochi's other records still arrive.
func TestBrokerLogNoise(t *testing.T) {
	sink, logger := newSinkLogger(slog.LevelDebug)
	ob := failOutbox(t)
	b, err := New(Config{Listeners: Listeners{TCP: TCPListener{Address: "127.0.0.1:0"}}}, ob, logger)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })

	c5, _ := dialRaw(t, b.Addr().TCP, "dev5", 5, packets.Properties{})
	c5.publish(1, 2, "sensors/a", []byte("fail-1"), packets.Properties{}) // QoS 2 takes the blocking path
	if pk := c5.mustRead(packets.Pubrec); pk.ReasonCode < 0x80 {
		t.Fatalf("PUBREC reason %#x, want a refusal", pk.ReasonCode)
	}
	c, _ := dialRaw(t, b.Addr().TCP, "dev", 4, packets.Properties{})
	for id := uint16(1); id <= 3; id++ {
		c.publish(id, 1, "sensors/a", []byte("m"), packets.Properties{})
	}
	for id := uint16(1); id <= 3; id++ {
		if pk := c.mustRead(packets.Puback); pk.PacketID != id {
			t.Fatalf("PUBACK %d, want %d", pk.PacketID, id)
		}
	}
	c.conn.Close() // no DISCONNECT
	early, err := net.Dial("tcp", b.Addr().TCP.String())
	if err != nil {
		t.Fatal(err)
	}
	early.Close() // no CONNECT

	eofs := func() (debug, other int) {
		for _, m := range sink.records(t) {
			if e, _ := m["error"].(string); m["msg"] == "" && strings.HasSuffix(e, "EOF") {
				if m["level"] == "DEBUG" {
					debug++
				} else {
					other++
				}
			}
		}
		return debug, other
	}
	deadline := time.Now().Add(safetyTimeout)
	for d, o := eofs(); d+o < 2; d, o = eofs() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for the two EOF records (have %d)", d+o)
		}
		time.Sleep(time.Millisecond) // polling interval, not a wait for an event
	}
	if _, other := eofs(); other != 0 {
		t.Errorf("%d EOF records above DEBUG", other)
	}
	var started, disconnected bool
	for _, m := range sink.records(t) {
		switch m["msg"] {
		case msgPublishRejected:
			t.Errorf("noise record: %v", m)
		case "mochi mqtt starting":
			started = m["component"] == "mochi"
		case "client disconnected":
			disconnected = true
		}
	}
	if !started || !disconnected {
		t.Errorf("mochi's own records missing: started %v, client disconnected %v", started, disconnected)
	}
}
