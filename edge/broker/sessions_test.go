package broker

import (
	"bufio"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tributary-io/tributary/edge/outbox"
)

// dialRawSession connects a raw client with the given clean-session flag
// (MQTT 5: clean start, and props may carry a session expiry interval).
func dialRawSession(t *testing.T, addr net.Addr, id string, version byte, clean bool, props packets.Properties) (*rawClient, packets.Packet) {
	t.Helper()
	conn, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(safetyTimeout))
	c := &rawClient{t: t, conn: conn, r: bufio.NewReader(conn), version: version}
	c.send(packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: version,
		Connect:         packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: clean, ClientIdentifier: id, Keepalive: 60},
		Properties:      props,
	})
	ack := c.mustRead(packets.Connack)
	if ack.ReasonCode != 0 {
		t.Fatalf("CONNACK reason %#x", ack.ReasonCode)
	}
	return c, ack
}

// sessionGateway is a broker over a real outbox and a real sessions file in
// dir, as a gateway runs it.
type sessionGateway struct {
	b  *Broker
	ob *outbox.Outbox
}

// startSessionGateway starts a broker on dir's outbox and sessions file;
// each setup step runs on it before Start.
func startSessionGateway(t *testing.T, dir string, cfg Config, setup ...func(*Broker) error) *sessionGateway {
	t.Helper()
	ob, err := outbox.Open(filepath.Join(dir, "outbox.db"), outbox.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listeners.TCP.Address = "127.0.0.1:0"
	cfg.Sessions.File = filepath.Join(dir, "sessions.db")
	b, err := New(cfg, ob, nil)
	for _, f := range setup {
		if err == nil {
			err = f(b)
		}
	}
	if err == nil {
		err = b.Start()
	}
	if err != nil {
		ob.Close()
		t.Fatal(err)
	}
	g := &sessionGateway{b: b, ob: ob}
	t.Cleanup(g.stop)
	return g
}

func (g *sessionGateway) stop() {
	g.b.Close()
	g.ob.Close()
}

func (g *sessionGateway) addr() net.Addr { return g.b.Addr().TCP }

// readPublishes reads n PUBLISH packets (acknowledging QoS 1 ones) and
// returns their payloads in arrival order.
func (c *rawClient) readPublishes(n int) []string {
	c.t.Helper()
	var got []string
	for len(got) < n {
		pk := c.mustReadAny()
		if pk.FixedHeader.Type != packets.Publish {
			continue
		}
		got = append(got, string(pk.Payload))
		if pk.FixedHeader.Qos > 0 {
			c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
		}
	}
	return got
}

// expectNothing checks that nothing but the PINGRESP arrives.
func (c *rawClient) expectNothing() {
	c.t.Helper()
	c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	if pk := c.mustReadAny(); pk.FixedHeader.Type != packets.Pingresp {
		c.t.Fatalf("got packet type %d (%q), want nothing before PINGRESP", pk.FixedHeader.Type, pk.Payload)
	}
}

// TestSessionsSurviveRestart: persistent sessions (3.1.1 and 5) keep their
// subscriptions and the messages queued for them while offline across a
// clean restart; retained messages too; clean sessions are not kept; an
// acknowledged message is not sent again after the next restart.
func TestSessionsSurviveRestart(t *testing.T) {
	for _, mode := range ackModes {
		t.Run(string(mode), func(t *testing.T) {
			dir := t.TempDir()
			cfg := Config{AckMode: mode}
			g := startSessionGateway(t, dir, cfg)

			sub, _ := dialRawSession(t, g.addr(), "sub", 4, false, packets.Properties{})
			sub.subscribe(1, packets.Subscription{Filter: "sensors/#", Qos: 1})
			sub5, _ := dialRawSession(t, g.addr(), "sub5", 5, true, packets.Properties{SessionExpiryInterval: 3600, SessionExpiryIntervalFlag: true})
			sub5.subscribe(1, packets.Subscription{Filter: "alerts/#", Qos: 1})
			tmp, _ := dialRawSession(t, g.addr(), "tmp", 4, true, packets.Properties{})
			tmp.subscribe(1, packets.Subscription{Filter: "#", Qos: 1})
			sub.conn.Close()
			sub5.conn.Close()
			tmp.conn.Close()
			waitUntil(t, "the subscribers to leave", func() bool { return g.b.Stats().Clients == 0 })

			pub, _ := dialRaw(t, g.addr(), "dev", 4, packets.Properties{})
			pub.send(packets.Packet{
				FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1, Retain: true},
				PacketID:    1, TopicName: "sensors/state", Payload: []byte("on"),
			})
			pub.mustRead(packets.Puback)
			pub.publish(2, 1, "sensors/a", []byte("m1"), packets.Properties{})
			pub.mustRead(packets.Puback)
			pub.publish(3, 1, "sensors/a", []byte("m2"), packets.Properties{})
			pub.mustRead(packets.Puback)
			pub.publish(4, 1, "alerts/x", []byte("a1"), packets.Properties{})
			pub.mustRead(packets.Puback)
			pub.conn.Close()
			g.stop()

			g = startSessionGateway(t, dir, cfg)
			if _, ok := g.b.srv.Clients.Get("tmp"); ok {
				t.Error("the clean session of tmp was restored")
			}
			sub, connack := dialRawSession(t, g.addr(), "sub", 4, false, packets.Properties{})
			if !connack.SessionPresent {
				t.Fatal("sub: CONNACK without session present")
			}
			// Queued while offline: the retained state and both messages.
			// mochi resends in-flight messages sorted by their creation
			// second only (Inflight.GetAll), so their order is not checked.
			got := sub.readPublishes(3)
			slices.Sort(got)
			if fmt.Sprint(got) != "[m1 m2 on]" {
				t.Fatalf("sub got %v after the restart, want m1, m2 and on", got)
			}
			sub5, connack = dialRawSession(t, g.addr(), "sub5", 5, false, packets.Properties{SessionExpiryInterval: 3600, SessionExpiryIntervalFlag: true})
			if !connack.SessionPresent {
				t.Fatal("sub5: CONNACK without session present")
			}
			if got := sub5.readPublishes(1); got[0] != "a1" {
				t.Fatalf("sub5 got %v", got)
			}
			// The subscriptions are in place without subscribing again.
			pub, _ = dialRaw(t, g.addr(), "dev", 4, packets.Properties{})
			pub.publish(5, 1, "sensors/a", []byte("m3"), packets.Properties{})
			pub.mustRead(packets.Puback)
			if got := sub.readPublishes(1); got[0] != "m3" {
				t.Fatalf("sub got %v, want m3", got)
			}
			late, _ := dialRaw(t, g.addr(), "late", 4, packets.Properties{})
			late.subscribe(1, packets.Subscription{Filter: "sensors/state", Qos: 1})
			if got := late.readPublishes(1); got[0] != "on" {
				t.Fatalf("retained: got %v", got)
			}
			sub.expectNothing() // every PUBACK of sub is processed before the restart
			sub5.expectNothing()
			g.stop()

			g = startSessionGateway(t, dir, cfg)
			sub, connack = dialRawSession(t, g.addr(), "sub", 4, false, packets.Properties{})
			if !connack.SessionPresent {
				t.Fatal("sub: CONNACK without session present after the second restart")
			}
			sub.expectNothing() // acknowledged before the restart: not sent again
			// A clean start ends the stored session for good.
			sub.conn.Close()
			waitUntil(t, "sub to leave", func() bool { return g.b.Stats().Clients == 0 })
			sub, connack = dialRawSession(t, g.addr(), "sub", 4, true, packets.Properties{})
			if connack.SessionPresent {
				t.Fatal("clean start: session present")
			}
			sub.conn.Close()
			waitUntil(t, "sub to leave", func() bool { return g.b.Stats().Clients == 0 })
			g.stop()
			g = startSessionGateway(t, dir, cfg)
			if _, ok := g.b.srv.Clients.Get("sub"); ok {
				t.Error("sub's session came back after a clean start ended it")
			}
			if st := g.b.Stats(); st.SessionErrors != 0 || st.Replayed != 0 {
				t.Errorf("stats %+v: a clean shutdown leaves nothing to replay", st)
			}
		})
	}
}

// TestSessionsSkipUndecodableRows: a row that does not decode is skipped;
// the others load.
func TestSessionsSkipUndecodableRows(t *testing.T) {
	dir := t.TempDir()
	g := startSessionGateway(t, dir, Config{})
	sub, _ := dialRawSession(t, g.addr(), "sub", 4, false, packets.Properties{})
	sub.subscribe(1, packets.Subscription{Filter: "a/#", Qos: 1})
	sub.conn.Close()
	waitUntil(t, "sub to leave", func() bool { return g.b.Stats().Clients == 0 })
	g.stop()

	db, err := sql.Open("sqlite", filepath.Join(dir, "sessions.db"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO subscriptions (client, filter, data) VALUES ('sub', 'b/#', x'7b7b7b')`); err != nil {
		t.Fatal(err)
	}
	db.Close()

	g = startSessionGateway(t, dir, Config{})
	cl, ok := g.b.srv.Clients.Get("sub")
	if !ok {
		t.Fatal("session not restored")
	}
	if _, ok := cl.State.Subscriptions.Get("a/#"); !ok {
		t.Fatal("the good subscription was not restored")
	}
}

// The sessions crash child runs a broker over a real outbox and sessions
// file until it is killed. On the line "discard" on stdin its session writer
// stops committing (as if the process died before each commit) and it
// answers "DISCARDING".
const envSessionsDir = "TRIBUTARY_BROKER_SESSIONS_DIR"

// TestSessionsCrashChild is not a test: TestReplayAfterCrash runs it.
func TestSessionsCrashChild(t *testing.T) {
	dir := os.Getenv(envSessionsDir)
	if dir == "" {
		t.Skip("sessions crash child: run by TestReplayAfterCrash")
	}
	ob, err := outbox.Open(filepath.Join(dir, "outbox.db"), outbox.Options{})
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(2)
	}
	b, err := New(Config{
		Listeners: Listeners{TCP: TCPListener{Address: "127.0.0.1:0"}},
		Sessions:  Sessions{File: filepath.Join(dir, "sessions.db")},
	}, ob, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err == nil {
		err = b.Start()
	}
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(2)
	}
	fmt.Println("ADDR", b.Addr().TCP)
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if sc.Text() == "discard" {
			b.store.discard.Store(true)
			fmt.Println("DISCARDING")
		}
	}
	os.Exit(3) // stdin closed: the parent is gone
}

type sessionsChild struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines *bufio.Scanner
	addr  string
}

func startSessionsChild(t *testing.T, dir string) *sessionsChild {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestSessionsCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), envSessionsDir+"="+dir)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &sessionsChild{cmd: cmd, stdin: stdin, lines: bufio.NewScanner(stdout)}
	t.Cleanup(c.kill)
	c.addr = c.expect(t, "ADDR ")
	return c
}

// expect reads lines until one starts with prefix and returns the rest.
func (c *sessionsChild) expect(t *testing.T, prefix string) string {
	t.Helper()
	for c.lines.Scan() {
		if rest, ok := strings.CutPrefix(c.lines.Text(), prefix); ok {
			return rest
		}
		if strings.HasPrefix(c.lines.Text(), "ERROR") {
			t.Fatalf("child: %s", c.lines.Text())
		}
	}
	t.Fatalf("child ended before %q: %v", prefix, c.lines.Err())
	return ""
}

// kill sends SIGKILL and reaps the child; it may be called twice.
func (c *sessionsChild) kill() {
	if c.cmd.ProcessState != nil {
		return
	}
	_ = c.cmd.Process.Kill()
	c.stdin.Close()
	_ = c.cmd.Wait()
}

type tcpAddr string

func (a tcpAddr) Network() string { return "tcp" }
func (a tcpAddr) String() string  { return string(a) }

// TestReplayAfterCrash: messages acknowledged to their publisher while the
// only record of their delivery to an offline persistent session was in
// memory (the session writer commits nothing: as if the crash came before
// its commit) reach that session after a SIGKILL and a restart, because they
// are delivered again from the outbox after the stored marker. Without the
// replay the session would get none of them.
func TestReplayAfterCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test")
	}
	const n = 200
	dir := t.TempDir()
	child := startSessionsChild(t, dir)
	sub, _ := dialRawSession(t, tcpAddr(child.addr), "sub", 4, false, packets.Properties{})
	sub.subscribe(1, packets.Subscription{Filter: "sensors/#", Qos: 1})
	sub.conn.Close()
	// The subscription must be committed before the writer stops.
	waitUntil(t, "the subscription to be stored", func() bool {
		return countRows(t, filepath.Join(dir, "sessions.db"), "subscriptions") == 1
	})
	if _, err := io.WriteString(child.stdin, "discard\n"); err != nil {
		t.Fatal(err)
	}
	child.expect(t, "DISCARDING")

	pub, _ := dialRaw(t, tcpAddr(child.addr), "dev", 4, packets.Properties{})
	for i := range n {
		pub.publish(uint16(i+1), 1, "sensors/a", fmt.Appendf(nil, "m%03d", i), packets.Properties{})
	}
	for i := range n {
		if pk := pub.mustRead(packets.Puback); pk.PacketID != uint16(i+1) {
			t.Fatalf("PUBACK %d, want %d", pk.PacketID, i+1)
		}
	}
	child.kill() // SIGKILL with every message acknowledged
	if rows := countRows(t, filepath.Join(dir, "sessions.db"), "inflight"); rows != 0 {
		t.Fatalf("%d in-flight rows stored: the test wanted none, so that only the replay can deliver", rows)
	}

	child = startSessionsChild(t, dir)
	sub, connack := dialRawSession(t, tcpAddr(child.addr), "sub", 4, false, packets.Properties{})
	if !connack.SessionPresent {
		t.Fatal("CONNACK without session present")
	}
	got := map[string]bool{}
	for _, p := range sub.readPublishes(n) {
		got[p] = true
	}
	for i := range n {
		if p := fmt.Sprintf("m%03d", i); !got[p] {
			t.Errorf("%s acknowledged before the crash, not delivered after it", p)
		}
	}
}

// countRows counts a table's rows in a sessions file, read beside the
// process that writes it.
func countRows(t *testing.T, path, table string) int {
	t.Helper()
	db, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(5000)&_pragma=query_only(1)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM ` + table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestMarkerFollowsDeliveries: in both modes and over every path (QoS 1
// acknowledged by the broker or by mochi, QoS 0, QoS 2, a will), the stored
// delivery marker reaches the outbox's last seq once everything is
// delivered, so a crash after a quiet moment replays nothing.
func TestMarkerFollowsDeliveries(t *testing.T) {
	for _, mode := range ackModes {
		t.Run(string(mode), func(t *testing.T) {
			dir := t.TempDir()
			g := startSessionGateway(t, dir, Config{AckMode: mode})
			sub, _ := dialRaw(t, g.addr(), "sub", 5, packets.Properties{})
			sub.subscribe(1, packets.Subscription{Filter: "#", Qos: 2})
			c, _ := dialRaw(t, g.addr(), "dev", 5, packets.Properties{})
			id := uint16(0)
			for qos := range byte(3) {
				for range 20 {
					id++
					c.publish(id, qos, "sensors/a", []byte("m"), packets.Properties{})
				}
			}
			c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
			for {
				pk := c.mustReadAny()
				if pk.FixedHeader.Type == packets.Pubrec {
					c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: pk.PacketID})
				}
				if pk.FixedHeader.Type == packets.Pingresp {
					break
				}
			}
			will, _ := dialRawWill(t, g.addr(), "dying", "sensors/dying/status")
			will.conn.Close()
			waitUntil(t, "the will and 60 messages in the outbox", func() bool { return g.ob.Stats().LastSeq == 61 })
			waitUntil(t, "the stored marker to reach the last seq", func() bool {
				return storedMarker(t, filepath.Join(dir, "sessions.db")) == 61
			})
		})
	}
}

func dialRawWill(t *testing.T, addr net.Addr, id, willTopic string) (*rawClient, packets.Packet) {
	t.Helper()
	conn, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &rawClient{t: t, conn: conn, r: bufio.NewReader(conn), version: 4}
	c.send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), Clean: true, ClientIdentifier: id, Keepalive: 60,
			WillFlag: true, WillTopic: willTopic, WillPayload: []byte("offline"), WillQos: 1,
		},
	})
	return c, c.mustRead(packets.Connack)
}

func storedMarker(t *testing.T, path string) uint64 {
	t.Helper()
	db, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(5000)&_pragma=query_only(1)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var v int64
	if err := db.QueryRow(`SELECT value FROM marks WHERE name = ?`, markDelivered).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return uint64(v)
}

// TestSessionStoreLateChange: a change queued after close (mochi's event
// loop finishing a sweep) is dropped, not a panic, and close is not doubled.
func TestSessionStoreLateChange(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sessions.db")
	s, err := openSessionStore(path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	s.start(nil, 0)
	s.enqueue(storeOp{kind: putRetained, key: "a", data: []byte(`{}`)})
	if err := s.close(); err != nil {
		t.Fatal(err)
	}
	s.enqueue(storeOp{kind: putRetained, key: "b", data: []byte(`{}`)})
	if err := s.close(); err == nil {
		t.Error("second close succeeded")
	}
	if n := countRows(t, path, "retained"); n != 1 {
		t.Errorf("%d retained rows, want the one queued before close", n)
	}
}
