package dispatch

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tributary-io/tributary/cloud/commitlog"
)

// startNATS runs a real NATS server in process on 127.0.0.1 (port -1: any
// free port), with JetStream if js; it shuts down at cleanup.
func startNATS(t *testing.T, port int, js bool) *natsserver.Server {
	t.Helper()
	ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: port, NoLog: true, NoSigs: true, JetStream: js, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(ns.Shutdown)
	if !ns.ReadyForConnections(20 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	return ns
}

func natsSink(ns *natsserver.Server, subject string) string {
	return fmt.Sprintf("nats://%s/%s", ns.Addr().String(), subject)
}

func TestNATSSinkValidate(t *testing.T) {
	for _, tc := range []struct {
		sub       Subscription
		field, in string
	}{
		{Subscription{Sink: "nats://127.0.0.1:4222"}, "sink", "needs a subject"},
		{Subscription{Sink: "nats://127.0.0.1:4222/a.*.b"}, "sink", "wildcards"},
		{Subscription{Sink: "nats://127.0.0.1:4222/a.>"}, "sink", "wildcards"},
		{Subscription{Sink: "nats://127.0.0.1:4222/a..b"}, "sink", "empty token"},
		{Subscription{Sink: "nats://127.0.0.1:4222/a?jetstream=yes"}, "sink", "true or false"},
		{Subscription{Sink: "nats://127.0.0.1:4222/a?queue=q"}, "sink", "unknown NATS sink option"},
		{Subscription{Sink: "nats://127.0.0.1:4222/a", Protocol: "HTTP"}, "protocol", "does not match"},
		{Subscription{Sink: "http://127.0.0.1:4222/a", Protocol: "NATS"}, "protocol", "does not match"},
		{Subscription{Sink: "nats://127.0.0.1:4222/a", ProtocolSettings: HTTPSettings{Method: "PUT"}}, "protocol_settings.method", "no method"},
	} {
		tc.sub.ID = "n"
		err := tc.sub.Validate()
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field || !strings.Contains(err.Error(), tc.in) {
			t.Errorf("%s: %v, want an error on %s containing %q", tc.sub.Sink, err, tc.field, tc.in)
		}
	}
	ok := Subscription{ID: "n", Sink: "nats://user:secret@127.0.0.1:4222/events.in?jetstream=true", Protocol: "NATS"}
	c, err := ok.compile()
	if err != nil || c.nats.subject != "events.in" || !c.nats.jetstream || c.nats.server != "nats://user:secret@127.0.0.1:4222" {
		t.Fatalf("compile: %+v %v", c, err)
	}
	if r := redactURL(c.nats.server); strings.Contains(r, "secret") {
		t.Fatalf("redacted %q", r)
	}
}

// TestNATSSinkCore publishes to a real NATS server in both content modes;
// a subscriber on the subject gets every event, in order, with its id,
// attributes and data.
func TestNATSSinkCore(t *testing.T) {
	ns := startNATS(t, -1, false)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	const n = 40
	got := map[string]chan *nats.Msg{}
	for _, mode := range []string{ModeBinary, ModeStructured} {
		got[mode] = make(chan *nats.Msg, n)
		if _, err := nc.ChanSubscribe("ev."+mode, got[mode]); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	lg := commitlog.NewMemory(nil)
	fillLog(t, lg, n, 4)
	d := mustNew(t, lg, t.TempDir(), Options{})
	for _, mode := range []string{ModeBinary, ModeStructured} {
		sub := Subscription{ID: "nats-" + mode, Sink: natsSink(ns, "ev."+mode),
			ProtocolSettings: HTTPSettings{Mode: mode, Headers: map[string]string{"X-Origin": "tributary"}}}
		if err := d.Add(sub); err != nil {
			t.Fatal(err)
		}
	}
	started(t, d)
	for _, mode := range []string{ModeBinary, ModeStructured} {
		for i := range n {
			var m *nats.Msg
			select {
			case m = <-got[mode]:
			case <-time.After(45 * time.Second):
				t.Fatalf("%s: only %d messages", mode, i)
			}
			want := makeEvent(i, 4)
			if m.Header.Get("X-Origin") != "tributary" {
				t.Fatalf("%s: extra header missing: %v", mode, m.Header)
			}
			var e event.Event
			switch mode {
			case ModeBinary:
				h := m.Header
				if h.Get("ce-id") != want.ID() || h.Get("ce-source") != want.Source() || h.Get("ce-type") != want.Type() ||
					h.Get("ce-subject") != want.Subject() || h.Get("ce-partitionkey") != "dev-"+fmt.Sprint(i%4) ||
					h.Get("ce-specversion") != "1.0" || h.Get("content-type") != "application/json" || string(m.Data) != string(want.Data()) {
					t.Fatalf("binary message %d: headers %v data %s", i, h, m.Data)
				}
				continue
			case ModeStructured:
				if m.Header.Get("content-type") != event.ApplicationCloudEventsJSON {
					t.Fatalf("structured content type %q", m.Header.Get("content-type"))
				}
				if err := json.Unmarshal(m.Data, &e); err != nil {
					t.Fatalf("structured message %d: %v: %s", i, err, m.Data)
				}
				checkSameEvent(t, want, &e)
			}
		}
	}
	waitFor(t, "stats", func() bool { st, _ := d.Stats("nats-binary"); return st.Delivered == n && st.LowWater == n })
}

// TestNATSSinkJetStream publishes to a JetStream stream: the stream's
// acknowledgement is the delivery, the event id its Nats-Msg-Id, so a
// replay of the subscription is dropped by the stream as duplicates. A
// subject without a stream is a dead letter at once.
func TestNATSSinkJetStream(t *testing.T) {
	ns := startNATS(t, -1, true)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.CreateStream(t.Context(), jetstream.StreamConfig{Name: "EV", Subjects: []string{"ev.>"}, Duplicates: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	const n = 30
	lg := commitlog.NewMemory(nil)
	fillLog(t, lg, n, 3)
	d := mustNew(t, lg, t.TempDir(), Options{})
	if err := d.Add(Subscription{ID: "js", Sink: natsSink(ns, "ev.in") + "?jetstream=true", Parallelism: 3}); err != nil {
		t.Fatal(err)
	}
	if err := d.Add(Subscription{ID: "nostream", Sink: natsSink(ns, "other.in") + "?jetstream=true",
		Filters: nil, From: fmt.Sprint(n - 2)}); err != nil {
		t.Fatal(err)
	}
	started(t, d)
	waitFor(t, "stored", func() bool { st, _ := d.Stats("js"); return st.Delivered == n })
	waitFor(t, "no stream: dead letters", func() bool { st, _ := d.Stats("nostream"); return st.DeadLettered == 2 })
	if msgs := streamMsgs(t, stream); msgs != n {
		t.Fatalf("stream holds %d messages, want %d", msgs, n)
	}
	if _, err := d.Replay("js", ReplayRequest{FromOffset: u64(0)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "replayed", func() bool { st, _ := d.Stats("js"); return st.Delivered == 2*n })
	if msgs := streamMsgs(t, stream); msgs != n {
		t.Fatalf("after a replay the stream holds %d messages, want %d (duplicates dropped by id)", msgs, n)
	}
	m, err := stream.GetMsg(t.Context(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get("ce-id") == "" || m.Header.Get(jetstream.MsgIDHeader) != m.Header.Get("ce-id") {
		t.Fatalf("stored message headers %v", m.Header)
	}
	dls := deadLetters(t, lg, "$deadletter/nostream")
	if len(dls) != 2 || !strings.Contains(extString(t, dls[0], ExtDLReason), "no response from stream") {
		t.Fatalf("dead letters %v", dls)
	}
}

func streamMsgs(t *testing.T, s jetstream.Stream) uint64 {
	t.Helper()
	info, err := s.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// TestNATSSinkServerLater: the NATS server is down when delivery starts;
// attempts fail and are retried until it comes up, then everything arrives.
func TestNATSSinkServerLater(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	lg := commitlog.NewMemory(nil)
	fillLog(t, lg, 10, 2)
	d := mustNew(t, lg, t.TempDir(), Options{})
	sink := fmt.Sprintf("nats://127.0.0.1:%d/late", port)
	if err := d.Add(Subscription{ID: "late", Sink: sink, Retry: RetryPolicy{MaxAttempts: 1000, MinBackoff: Duration(5 * time.Millisecond), MaxBackoff: Duration(50 * time.Millisecond)}}); err != nil {
		t.Fatal(err)
	}
	started(t, d)
	waitFor(t, "failed attempts", func() bool { st, _ := d.Stats("late"); return st.Retries >= 2 })
	if st, _ := d.Stats("late"); st.Delivered != 0 || !strings.Contains(st.LastError, "connect") {
		t.Fatalf("before the server: %+v", st)
	}
	ns := startNATS(t, port, false)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	sub, err := nc.SubscribeSync("late")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "delivered", func() bool { st, _ := d.Stats("late"); return st.Delivered == 10 })
	// Events delivered before our subscription started are gone (core
	// NATS keeps nothing); the ones after must be in order.
	last := -1
	for {
		m, err := sub.NextMsg(10 * time.Millisecond)
		if err != nil {
			break
		}
		var i int
		fmt.Sscanf(m.Header.Get("ce-id"), "ev-%d", &i)
		if i <= last {
			t.Fatalf("out of order: %d after %d", i, last)
		}
		last = i
	}
	if st, _ := d.Stats("late"); st.DeadLettered != 0 {
		t.Fatalf("dead letters: %+v", st)
	}
}
