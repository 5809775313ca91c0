package gateway

import (
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/tributary-io/tributary/edge/broker"
	"github.com/tributary-io/tributary/edge/outbox"
	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
)

const cmdSafety = 30 * time.Second

// cmdRig is the gateway's command path without the cloud link: a real
// outbox, a real broker with its sessions file, and the command store, all
// on one data directory, with the statuses the store sends collected.
type cmdRig struct {
	t     *testing.T
	dir   string
	ob    *outbox.Outbox
	b     *broker.Broker
	store *commandStore
	addr  string

	mu       sync.Mutex
	statuses []*syncv1.CommandStatus
	changed  chan struct{}
}

func openRig(t *testing.T, dir, addr string) *cmdRig {
	t.Helper()
	r := &cmdRig{t: t, dir: dir, changed: make(chan struct{}, 1)}
	var err error
	if r.ob, err = outbox.Open(filepath.Join(dir, "outbox.db"), outbox.Options{}); err != nil {
		t.Fatal(err)
	}
	var cfg broker.Config
	cfg.Listeners.TCP.Address = addr
	cfg.Sessions.File = filepath.Join(dir, "sessions.db")
	if r.b, err = broker.New(cfg, r.ob, nil); err != nil {
		t.Fatal(err)
	}
	if r.store, err = openCommandStore(filepath.Join(dir, "commands.db"), slog.New(slog.DiscardHandler), time.Now); err != nil {
		t.Fatal(err)
	}
	if err := r.b.SetCommandObserver(r.store); err != nil {
		t.Fatal(err)
	}
	if err := r.b.Start(); err != nil {
		t.Fatal(err)
	}
	r.addr = r.b.Addr().TCP.String()
	r.store.start(r.b, r.collect)
	t.Cleanup(r.close)
	return r
}

func (r *cmdRig) close() {
	if r.b == nil {
		return
	}
	if err := r.b.Close(); err != nil {
		r.t.Errorf("broker close: %v", err)
	}
	if err := r.store.close(); err != nil {
		r.t.Errorf("commands close: %v", err)
	}
	if err := r.ob.Close(); err != nil {
		r.t.Errorf("outbox close: %v", err)
	}
	r.b = nil
}

func (r *cmdRig) collect(st *syncv1.CommandStatus) {
	r.mu.Lock()
	r.statuses = append(r.statuses, st)
	r.mu.Unlock()
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// waitStatus waits for a status of id in state and returns it.
func (r *cmdRig) waitStatus(id string, state syncv1.CommandState) *syncv1.CommandStatus {
	r.t.Helper()
	deadline := time.After(cmdSafety)
	for {
		r.mu.Lock()
		for _, st := range r.statuses {
			if st.GetRequestId() == id && st.GetState() == state {
				r.mu.Unlock()
				return st
			}
		}
		r.mu.Unlock()
		select {
		case <-r.changed:
		case <-deadline:
			r.t.Fatalf("no %s status for %s; got %v", state, id, r.snapshot())
		}
	}
}

func (r *cmdRig) snapshot() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, st := range r.statuses {
		out = append(out, st.GetRequestId()+":"+st.GetState().String())
	}
	return out
}

func (r *cmdRig) count(id string, state syncv1.CommandState) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, st := range r.statuses {
		if st.GetRequestId() == id && st.GetState() == state {
			n++
		}
	}
	return n
}

func request(id, device string, expiry time.Duration) *syncv1.CommandRequest {
	return &syncv1.CommandRequest{RequestId: id, Device: device, Name: "reboot", Payload: []byte(`{"delay":0}`),
		ExpiresUnixMs: time.Now().Add(expiry).UnixMilli()}
}

// device connects a paho device (MQTT 3.1.1) that subscribes to its
// commands and answers each with reply (nil: does not answer). received
// gets every command topic it sees.
func device(t *testing.T, addr, id string, clean bool, reply []byte, received chan<- string) mqtt.Client {
	t.Helper()
	handler := func(c mqtt.Client, m mqtt.Message) {
		if received != nil {
			received <- m.Topic()
		}
		if reply == nil {
			return
		}
		reqID := m.Topic()[strings.LastIndexByte(m.Topic(), '/')+1:]
		c.Publish(broker.ReplyTopic(id, reqID), 1, false, reply)
	}
	// The handler is in place before the connection: a resumed session's
	// held command arrives right after CONNACK, before Subscribe returns,
	// and paho neither delivers nor acknowledges a message without one (the
	// device SDK installs its route before connecting for the same reason).
	opts := mqtt.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetCleanSession(clean).
		SetAutoReconnect(false).SetConnectRetry(false).SetOrderMatters(false).
		SetDefaultPublishHandler(handler)
	c := mqtt.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(cmdSafety) || tok.Error() != nil {
		t.Fatalf("%s connect: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	if tok := c.Subscribe(broker.CommandTopicPrefix+id+"/#", 1, handler); !tok.WaitTimeout(cmdSafety) || tok.Error() != nil {
		t.Fatalf("%s subscribe: %v", id, tok.Error())
	}
	return c
}

// TestCommandRepliedAndRecorded: a command to a connected device is
// accepted, delivered and replied; the reply is an event in the outbox.
func TestCommandRepliedAndRecorded(t *testing.T) {
	r := openRig(t, t.TempDir(), "127.0.0.1:0")
	device(t, r.addr, "dev-1", true, []byte(`{"status":200,"payload":{"rebooting":true}}`), nil)
	r.store.Accept(request("r1", "dev-1", time.Minute))
	// The device may reply before the command's commit: the status sent
	// after the commit is then already REPLIED (a later state implies the
	// earlier ones).
	st := r.waitStatus("r1", syncv1.CommandState_COMMAND_STATE_REPLIED)
	if st.GetReplyStatus() != 200 || string(st.GetReplyPayload()) != `{"rebooting":true}` || st.GetDevice() != "dev-1" {
		t.Fatalf("REPLIED status %v", st)
	}
	// REPLIED goes up before the reply's outbox commit: wait for it.
	waitFor(t, "the reply event in the outbox", func() bool {
		recs, err := r.ob.Read(0, 100, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		for _, rec := range recs {
			if rec.EventType == broker.ReplyEventType && rec.Topic == "$tributary/replies/dev-1/r1" && rec.ClientID == "dev-1" {
				return true
			}
		}
		return false
	})
	// Sent again: answered from what is known, not executed again.
	waitFor(t, "the command committed", func() bool {
		r.store.mu.Lock()
		defer r.store.mu.Unlock()
		return len(r.store.dirty) == 0 && len(r.store.after) == 0
	})
	before := r.count("r1", syncv1.CommandState_COMMAND_STATE_REPLIED)
	r.store.Accept(request("r1", "dev-1", time.Minute))
	waitFor(t, "the repeated answer", func() bool { return r.count("r1", syncv1.CommandState_COMMAND_STATE_REPLIED) > before })
	if s := r.store.stats(); s.Accepted != 1 || s.Replied != 1 || s.Pending != 0 {
		t.Fatalf("stats %+v", s)
	}
	// A second reply finds the command finished: it is not taken.
	if r.store.Replied("dev-1", "r1", []byte(`{"status":200}`)) {
		t.Fatal("a second reply was taken")
	}
}

// TestCommandWaitsForDevice: a command to an offline device is accepted and
// waits; the device connecting and subscribing gets it.
func TestCommandWaitsForDevice(t *testing.T) {
	r := openRig(t, t.TempDir(), "127.0.0.1:0")
	r.store.Accept(request("r2", "dev-2", time.Minute))
	r.waitStatus("r2", syncv1.CommandState_COMMAND_STATE_ACCEPTED)
	got := make(chan string, 4)
	device(t, r.addr, "dev-2", true, []byte(`{"status":204}`), got)
	// The reply may overtake the PUBACK: REPLIED implies delivered.
	r.waitStatus("r2", syncv1.CommandState_COMMAND_STATE_REPLIED)
	if topic := <-got; topic != "$tributary/commands/dev-2/reboot/r2" {
		t.Fatalf("device got %q", topic)
	}
}

// TestCommandExpiresOffline: a device that never comes gets EXPIRED with a
// clear reason; invalid requests are REJECTED.
func TestCommandExpiresOffline(t *testing.T) {
	r := openRig(t, t.TempDir(), "127.0.0.1:0")
	r.store.Accept(request("r3", "dev-3", 200*time.Millisecond))
	r.waitStatus("r3", syncv1.CommandState_COMMAND_STATE_ACCEPTED)
	st := r.waitStatus("r3", syncv1.CommandState_COMMAND_STATE_EXPIRED)
	if st.GetReason() != "device offline until expiry" {
		t.Fatalf("reason %q", st.GetReason())
	}
	r.store.Accept(request("r4", "a/b", time.Minute))
	if st := r.waitStatus("r4", syncv1.CommandState_COMMAND_STATE_REJECTED); !strings.Contains(st.GetReason(), "topic level") {
		t.Fatalf("reason %q", st.GetReason())
	}
	r.store.Accept(request("r5", "dev-3", -time.Second))
	r.waitStatus("r5", syncv1.CommandState_COMMAND_STATE_EXPIRED)
	// Delivered but never answered.
	device(t, r.addr, "dev-8", true, nil, nil)
	r.store.Accept(request("r8", "dev-8", 300*time.Millisecond))
	r.waitStatus("r8", syncv1.CommandState_COMMAND_STATE_DELIVERED)
	if st := r.waitStatus("r8", syncv1.CommandState_COMMAND_STATE_EXPIRED); st.GetReason() != "device did not reply before expiry" {
		t.Fatalf("reason %q", st.GetReason())
	}
	if s := r.store.stats(); s.Expired != 3 || s.Rejected != 1 || s.Accepted != 2 || s.Delivered != 1 {
		t.Fatalf("stats %+v", s)
	}
}

// TestCommandSurvivesRestart: a command accepted for an offline device, and
// its unacknowledged status, survive closing and reopening the gateway's
// files; the device gets it after the restart.
func TestCommandSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	r := openRig(t, dir, "127.0.0.1:0")
	r.store.Accept(request("r6", "dev-6", time.Minute))
	r.waitStatus("r6", syncv1.CommandState_COMMAND_STATE_ACCEPTED)
	r.close()

	r2 := openRig(t, dir, "127.0.0.1:0")
	if un := r2.store.Unacked(); len(un) != 1 || un[0].GetRequestId() != "r6" || un[0].GetState() != syncv1.CommandState_COMMAND_STATE_ACCEPTED {
		t.Fatalf("Unacked after restart: %v", un)
	}
	r2.store.Acked("r6", syncv1.CommandState_COMMAND_STATE_ACCEPTED)
	device(t, r2.addr, "dev-6", true, []byte(`{"status":200}`), nil)
	r2.waitStatus("r6", syncv1.CommandState_COMMAND_STATE_REPLIED)
	waitFor(t, "unacked REPLIED only", func() bool {
		un := r2.store.Unacked()
		return len(un) == 1 && un[0].GetState() == syncv1.CommandState_COMMAND_STATE_REPLIED
	})
}

// TestCommandPersistentSessionOnce: a command published into the persistent
// session of an offline device is delivered once when it returns, even
// across a gateway restart in between (the session, not the store, holds
// it then).
func TestCommandPersistentSessionOnce(t *testing.T) {
	dir := t.TempDir()
	r := openRig(t, dir, "127.0.0.1:0")
	got := make(chan string, 8)
	c := device(t, r.addr, "dev-7", false, nil, got)
	c.Disconnect(100)
	waitFor(t, "dev-7 gone", func() bool { return r.b.Stats().Clients == 0 })
	r.store.Accept(request("r7", "dev-7", time.Minute))
	r.waitStatus("r7", syncv1.CommandState_COMMAND_STATE_ACCEPTED)
	waitFor(t, "published into the session", func() bool {
		r.store.mu.Lock()
		defer r.store.mu.Unlock()
		return r.store.cmds["r7"].published
	})
	addr := r.addr
	r.close()

	r2 := openRig(t, dir, addr)
	// The device resumes its session: mochi resends the held command; the
	// store tries to publish it too (device online) and must not.
	c = device(t, r2.addr, "dev-7", false, []byte(`{"status":200}`), got)
	r2.waitStatus("r7", syncv1.CommandState_COMMAND_STATE_REPLIED)
	if topic := <-got; topic != "$tributary/commands/dev-7/reboot/r7" {
		t.Fatalf("device got %q", topic)
	}
	// A message to itself through the broker after the reply: a second
	// command publish queued before it would have arrived before it.
	probe := make(chan struct{}, 1)
	if tok := c.Subscribe("probe/dev-7", 1, func(mqtt.Client, mqtt.Message) { probe <- struct{}{} }); !tok.WaitTimeout(cmdSafety) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	if tok := c.Publish("probe/dev-7", 1, false, "x"); !tok.WaitTimeout(cmdSafety) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	select {
	case <-probe:
	case <-time.After(cmdSafety):
		t.Fatal("probe not received")
	}
	select {
	case extra := <-got:
		t.Fatalf("command delivered twice: %q", extra)
	default:
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(cmdSafety)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond) // polling interval, not a wait for an event
	}
}

// TestCommandStoreRefusesDSNPaths: a path the SQLite driver would read as
// options or as a URI is refused rather than opening another file.
func TestCommandStoreRefusesDSNPaths(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []string{"", filepath.Join(dir, "commands.db?mode=memory"), "file:" + filepath.Join(dir, "commands.db")} {
		if s, err := openCommandStore(p, slog.New(slog.DiscardHandler), time.Now); err == nil {
			s.db.Close()
			t.Errorf("openCommandStore(%q) succeeded", p)
		}
	}
}
