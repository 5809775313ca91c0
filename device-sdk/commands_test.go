package devicesdk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	mqttsrv "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// subWatcher is a mochi hook that lets a test wait until a client has
// subscribed to a filter (on this broker: a fresh broker proves a renewed
// subscription).
type subWatcher struct {
	mqttsrv.HookBase
	mu   sync.Mutex
	subs map[string]int // client id + " " + filter -> times subscribed
	ch   chan struct{}  // closed and replaced on every subscription
}

func (w *subWatcher) ID() string           { return "subwatcher" }
func (w *subWatcher) Provides(b byte) bool { return b == mqttsrv.OnSubscribed }
func (w *subWatcher) OnSubscribed(cl *mqttsrv.Client, pk packets.Packet, codes []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, f := range pk.Filters {
		if i < len(codes) && codes[i] < 0x80 {
			w.subs[cl.ID+" "+f.Filter]++
		}
	}
	close(w.ch)
	w.ch = make(chan struct{})
}

// wait blocks until client has subscribed to filter at least n times.
func (w *subWatcher) wait(t *testing.T, client, filter string, n int) {
	t.Helper()
	deadline := time.NewTimer(20 * time.Second)
	defer deadline.Stop()
	for {
		w.mu.Lock()
		got, ch := w.subs[client+" "+filter], w.ch
		w.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("%s never subscribed to %s (%d of %d times)", client, filter, got, n)
		}
	}
}

// cmdBroker is a real mochi broker with a publish recorder and a
// subscription watcher.
type cmdBroker struct {
	addr string
	rec  *recorder
	subs *subWatcher
}

func startCmdBroker(t *testing.T) *cmdBroker {
	t.Helper()
	s := mqttsrv.New(&mqttsrv.Options{InlineClient: false})
	b := &cmdBroker{rec: &recorder{}, subs: &subWatcher{subs: map[string]int{}, ch: make(chan struct{})}}
	for _, h := range []mqttsrv.Hook{new(auth.AllowHook), b.rec, b.subs} {
		if err := s.AddHook(h, nil); err != nil {
			t.Fatal(err)
		}
	}
	l := listeners.NewTCP(listeners.Config{ID: "t", Address: "127.0.0.1:0"})
	if err := s.AddListener(l); err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	b.addr = "tcp://" + l.Address()
	return b
}

// caller plays the gateway's part with a real paho client: it publishes
// commands and collects replies.
type caller struct {
	c       mqtt.Client
	replies chan mqtt.Message
}

func newCaller(t *testing.T, b *cmdBroker, device string) *caller {
	t.Helper()
	cl := &caller{replies: make(chan mqtt.Message, 100)}
	opts := mqtt.NewClientOptions().AddBroker(b.addr).SetClientID("caller-" + device).SetCleanSession(true)
	cl.c = mqtt.NewClient(opts)
	if tok := cl.c.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("caller connect: %v", tok.Error())
	}
	t.Cleanup(func() { cl.c.Disconnect(0) })
	tok := cl.c.Subscribe(replyTopicPrefix+device+"/+", 1, func(_ mqtt.Client, m mqtt.Message) { cl.replies <- m })
	if !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("caller subscribe: %v", tok.Error())
	}
	return cl
}

func (cl *caller) send(t *testing.T, device, name, id, payload string) {
	t.Helper()
	tok := cl.c.Publish(CommandTopic(device, name, id), 1, false, payload)
	if !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("publish command: %v", tok.Error())
	}
}

// reply waits for the next reply and checks its topic.
func (cl *caller) reply(t *testing.T, device, id string) CommandReply {
	t.Helper()
	select {
	case m := <-cl.replies:
		if m.Topic() != ReplyTopic(device, id) {
			t.Fatalf("reply on %s, want %s", m.Topic(), ReplyTopic(device, id))
		}
		var r CommandReply
		if err := json.Unmarshal(m.Payload(), &r); err != nil {
			t.Fatalf("reply %q: %v", m.Payload(), err)
		}
		return r
	case <-time.After(30 * time.Second):
		t.Fatalf("no reply to %s", id)
		return CommandReply{}
	}
}

// noReply checks that no further reply is queued after a round trip that
// would have carried one: it sends a probe command to a known handler and
// expects the probe's reply to be the next.
func (cl *caller) noReplyBefore(t *testing.T, device, probeID string) {
	t.Helper()
	cl.send(t, device, "echo", probeID, `{}`)
	cl.reply(t, device, probeID)
}

func echo(_ context.Context, cmd Command) (int, any, error) {
	return 200, map[string]any{"name": cmd.Name, "id": cmd.RequestID, "got": json.RawMessage(cmd.Payload)}, nil
}

func TestClientCommandRoundTrip(t *testing.T) {
	b := startCmdBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Connect(ctx, Config{Broker: b.addr, DeviceID: "cmd-1", Commands: map[string]CommandHandler{"echo": echo}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(time.Second)
	c.HandleCommand("fail", func(context.Context, Command) (int, any, error) {
		return 0, nil, errors.New("disk on fire")
	})
	c.HandleCommand("teapot", func(context.Context, Command) (int, any, error) {
		return 418, nil, errors.New("short and stout")
	})
	c.HandleCommand("panics", func(context.Context, Command) (int, any, error) { panic("boom") })
	b.subs.wait(t, "cmd-1", commandFilter("cmd-1"), 1)
	cl := newCaller(t, b, "cmd-1")

	cl.send(t, "cmd-1", "echo", "r1", `{"x":1}`)
	r := cl.reply(t, "cmd-1", "r1")
	if r.Status != 200 || string(r.Payload) != `{"got":{"x":1},"id":"r1","name":"echo"}` {
		t.Fatalf("echo reply %d %s", r.Status, r.Payload)
	}
	for _, tc := range []struct {
		name, id string
		status   int
		payload  string
	}{
		{"nope", "r2", 404, `{"error":"no handler for command nope"}`},
		{"fail", "r3", 500, `{"error":"disk on fire"}`},
		{"teapot", "r4", 418, `{"error":"short and stout"}`},
		{"panics", "r5", 500, `{"error":"command handler panicked: boom"}`},
	} {
		cl.send(t, "cmd-1", tc.name, tc.id, `{}`)
		r := cl.reply(t, "cmd-1", tc.id)
		if r.Status != tc.status || string(r.Payload) != tc.payload {
			t.Errorf("%s: reply %d %s, want %d %s", tc.name, r.Status, r.Payload, tc.status, tc.payload)
		}
	}
}

// A command redelivered (same request id) while its handler runs and after
// it finished runs the handler once; the finished one's reply is re-sent.
func TestCommandRedeliveryRunsOnce(t *testing.T) {
	b := startCmdBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var runs atomic.Int32
	started, release := make(chan struct{}, 10), make(chan struct{})
	c, err := Connect(ctx, Config{Broker: b.addr, DeviceID: "cmd-dup"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(time.Second)
	c.HandleCommand("echo", echo)
	c.HandleCommand("slow", func(_ context.Context, cmd Command) (int, any, error) {
		n := runs.Add(1)
		started <- struct{}{}
		<-release
		return 200, map[string]int32{"run": n}, nil
	})
	b.subs.wait(t, "cmd-dup", commandFilter("cmd-dup"), 1)
	cl := newCaller(t, b, "cmd-dup")

	cl.send(t, "cmd-dup", "slow", "r1", `{}`)
	<-started
	cl.send(t, "cmd-dup", "slow", "r1", `{}`) // while running: ignored
	cl.noReplyBefore(t, "cmd-dup", "probe1")
	close(release)
	first := cl.reply(t, "cmd-dup", "r1")
	cl.send(t, "cmd-dup", "slow", "r1", `{}`) // after: the same reply again
	second := cl.reply(t, "cmd-dup", "r1")
	if first.Status != 200 || string(first.Payload) != `{"run":1}` || string(second.Payload) != string(first.Payload) {
		t.Fatalf("replies %d %s then %d %s", first.Status, first.Payload, second.Status, second.Payload)
	}
	cl.noReplyBefore(t, "cmd-dup", "probe2")
	if n := runs.Load(); n != 1 {
		t.Fatalf("handler ran %d times", n)
	}
}

// The remembered request ids are bounded: after recentCommands newer
// commands, an old id runs again.
func TestCommandRecentIsBounded(t *testing.T) {
	var mu sync.Mutex
	var sent []string
	cmd := newCommander("d", discard(), nil, func(_ context.Context, topic string, payload []byte) error {
		mu.Lock()
		sent = append(sent, topic)
		mu.Unlock()
		return nil
	})
	var runs atomic.Int32
	cmd.handle("n", func(context.Context, Command) (int, any, error) { runs.Add(1); return 200, nil, nil })
	for i := range recentCommands + 1 {
		cmd.onMessage(nil, message{topic: CommandTopic("d", "n", fmt.Sprint(i))})
	}
	if err := cmd.close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(cmd.recent) != recentCommands || cmd.order.Len() != recentCommands {
		t.Fatalf("remembers %d ids (%d in order)", len(cmd.recent), cmd.order.Len())
	}
	if _, ok := cmd.recent["0"]; ok {
		t.Fatal("the oldest id was not evicted")
	}
	if runs.Load() != recentCommands+1 || len(sent) != recentCommands+1 {
		t.Fatalf("%d runs, %d replies", runs.Load(), len(sent))
	}
}

// message is an mqtt.Message for driving a commander without a broker.
type message struct {
	topic   string
	payload []byte
}

func (m message) Duplicate() bool   { return false }
func (m message) Qos() byte         { return 1 }
func (m message) Retained() bool    { return false }
func (m message) Topic() string     { return m.topic }
func (m message) MessageID() uint16 { return 0 }
func (m message) Payload() []byte   { return m.payload }
func (m message) Ack()              {}

func TestCommandMalformedTopicsIgnored(t *testing.T) {
	var replies atomic.Int32
	cmd := newCommander("d", discard(), nil, func(context.Context, string, []byte) error { replies.Add(1); return nil })
	for _, topic := range []string{
		"$tributary/commands/d/n", "$tributary/commands/d//id", "$tributary/commands/d/n/",
		"$tributary/commands/other/n/id", "$tributary/commands/d/n/id/extra", "sensors/x",
	} {
		cmd.onMessage(nil, message{topic: topic})
	}
	if err := cmd.close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if replies.Load() != 0 || len(cmd.recent) != 0 {
		t.Fatalf("%d replies to malformed topics", replies.Load())
	}
}

func TestEncodeReply(t *testing.T) {
	for _, tc := range []struct {
		status int
		reply  any
		err    error
		want   string
	}{
		{0, nil, nil, `{"status":200}`},
		{201, "made", nil, `{"status":201,"payload":"made"}`},
		{0, nil, errors.New("x"), `{"status":500,"payload":{"error":"x"}}`},
		{503, map[string]int{"retry": 5}, errors.New("busy"), `{"status":503,"payload":{"retry":5}}`},
		{700, nil, nil, `{"status":500,"payload":{"error":"handler returned invalid status 700"}}`},
		{200, json.RawMessage(`[1,2]`), nil, `{"status":200,"payload":[1,2]}`},
		{200, func() {}, nil, `{"status":500,"payload":{"error":"encode reply: json: unsupported type: func()"}}`},
	} {
		if got := string(encodeReply(tc.status, tc.reply, tc.err)); got != tc.want {
			t.Errorf("encodeReply(%d, %v, %v) = %s, want %s", tc.status, tc.reply, tc.err, got, tc.want)
		}
	}
}

// After the gateway restarts (here: the device's link moves to a fresh
// broker without its session), the device subscribes again and answers.
func TestCommandsResubscribeOnReconnect(t *testing.T) {
	b1, b2 := startCmdBroker(t), startCmdBroker(t)
	g := newGate(t, b1.addr, true)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := Config{Broker: g.addr(), DeviceID: "cmd-re", ConnectTimeout: time.Second, ReconnectInterval: 50 * time.Millisecond,
		Commands: map[string]CommandHandler{"echo": echo}}
	c, err := Connect(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(time.Second)
	b1.subs.wait(t, "cmd-re", commandFilter("cmd-re"), 1)
	g.retarget(b2.addr)
	g.set(false)
	g.set(true)
	b2.subs.wait(t, "cmd-re", commandFilter("cmd-re"), 1)
	cl := newCaller(t, b2, "cmd-re")
	cl.send(t, "cmd-re", "echo", "after", `"hi"`)
	if r := cl.reply(t, "cmd-re", "after"); r.Status != 200 {
		t.Fatalf("reply %+v", r)
	}
}

// Close cancels a running handler's context and still sends its reply.
func TestClientCloseCancelsHandlers(t *testing.T) {
	b := startCmdBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	started := make(chan struct{})
	c, err := Connect(ctx, Config{Broker: b.addr, DeviceID: "cmd-close", Commands: map[string]CommandHandler{
		"wait": func(ctx context.Context, _ Command) (int, any, error) {
			close(started)
			<-ctx.Done()
			return 0, nil, ctx.Err()
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	b.subs.wait(t, "cmd-close", commandFilter("cmd-close"), 1)
	cl := newCaller(t, b, "cmd-close")
	cl.send(t, "cmd-close", "wait", "w1", `{}`)
	<-started
	c.Close(10 * time.Second)
	r := cl.reply(t, "cmd-close", "w1")
	if r.Status != 500 || string(r.Payload) != `{"error":"context canceled"}` {
		t.Fatalf("reply %d %s", r.Status, r.Payload)
	}
}

// A Device's reply goes through the durable buffer: a reply made while the
// link is down survives a reboot and is delivered after it.
func TestDeviceReplySurvivesReboot(t *testing.T) {
	b := startCmdBroker(t)
	g := newGate(t, b.addr, true)
	dir := t.TempDir()
	cfg := testDeviceConfig(t, g.addr(), dir)
	cfg.DeviceID = "cmd-dev"
	// The handler stays registered after the reboot: if the gateway had
	// not seen the command's PUBACK before the link broke, it redelivers it
	// and the new process runs it again (once per process), with the same
	// reply.
	started, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	cfg.Commands = map[string]CommandHandler{"reboot": func(_ context.Context, cmd Command) (int, any, error) {
		once.Do(func() { close(started) })
		<-release
		return 202, map[string]string{"rebooting": "now"}, nil
	}}
	d, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	b.subs.wait(t, "cmd-dev", commandFilter("cmd-dev"), 1)
	cl := newCaller(t, b, "cmd-dev")
	cl.send(t, "cmd-dev", "reboot", "rb1", `{"delay_s":0}`)
	<-started
	g.set(false) // the link breaks while the handler runs
	close(release)
	// Close waits for the handler's reply to be buffered; the link is
	// down, so it stays on disk.
	cctx, ccancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer ccancel()
	if err := d.Close(cctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close with the link down = %v", err)
	}
	for _, m := range b.rec.snapshot() {
		if strings.HasPrefix(m, replyTopicPrefix) {
			t.Fatalf("reply reached the broker over a broken link: %s", m)
		}
	}
	// Reboot with the link up: the buffered reply is sent.
	g.set(true)
	d, err = Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	defer d.Close(ctx)
	r := cl.reply(t, "cmd-dev", "rb1")
	if r.Status != 202 || string(r.Payload) != `{"rebooting":"now"}` {
		t.Fatalf("reply %d %s", r.Status, r.Payload)
	}
}

func TestReportState(t *testing.T) {
	b := startCmdBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Connect(ctx, Config{Broker: b.addr, DeviceID: "st-client"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(time.Second)
	if err := c.ReportState(ctx, map[string]any{"fw": "1.2", "old": nil, "net": map[string]any{"rssi": -60}}); err != nil {
		t.Fatal(err)
	}
	if err := c.ReportState(ctx, nil); !errors.Is(err, ErrConfig) {
		t.Fatalf("nil patch: %v", err)
	}
	if err := c.ReportState(ctx, map[string]any{"bad": func() {}}); !errors.Is(err, ErrConfig) {
		t.Fatalf("unencodable patch: %v", err)
	}
	d, err := Open(testDeviceConfig(t, b.addr, t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	devID := d.cfg.DeviceID
	if err := d.ReportState(ctx, map[string]any{"uptime_s": 5}); err != nil {
		t.Fatal(err)
	}
	if err := d.ReportState(ctx, map[string]any{"uptime_s": nil}); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	got := b.rec.snapshot()
	want := []string{
		`$tributary/state/st-client={"fw":"1.2","net":{"rssi":-60},"old":null}`,
		`$tributary/state/` + devID + `={"uptime_s":5}`,
		`$tributary/state/` + devID + `={"uptime_s":null}`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("broker saw\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestCommandConfigRejected(t *testing.T) {
	ok := func(context.Context, Command) (int, any, error) { return 200, nil, nil }
	for _, cfg := range []Config{
		{Broker: "tcp://x:1", DeviceID: "a/b"},
		{Broker: "tcp://x:1", DeviceID: "d", Commands: map[string]CommandHandler{"": ok}},
		{Broker: "tcp://x:1", DeviceID: "d", Commands: map[string]CommandHandler{"a+": ok}},
		{Broker: "tcp://x:1", DeviceID: "d", Commands: map[string]CommandHandler{"n": nil}},
	} {
		if err := cfg.Validate(); !errors.Is(err, ErrConfig) {
			t.Errorf("Validate(%+v) = %v, want ErrConfig", cfg, err)
		}
	}
}

// A command published while the device is away waits in its persistent
// session and runs when it returns: Config.Commands is installed before the
// connection, and the command is routed even before the subscription is
// renewed.
func TestCommandQueuedWhileOffline(t *testing.T) {
	b := startCmdBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := Config{Broker: b.addr, DeviceID: "cmd-away", Commands: map[string]CommandHandler{"echo": echo}}
	c, err := Connect(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	b.subs.wait(t, "cmd-away", commandFilter("cmd-away"), 1)
	c.Close(time.Second)
	cl := newCaller(t, b, "cmd-away")
	cl.send(t, "cmd-away", "echo", "queued", `{"while":"away"}`)
	c, err = Connect(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(time.Second)
	r := cl.reply(t, "cmd-away", "queued")
	if r.Status != 200 || string(r.Payload) != `{"got":{"while":"away"},"id":"queued","name":"echo"}` {
		t.Fatalf("reply %d %s", r.Status, r.Payload)
	}
}

// Whatever arrives on a command topic, the device does not panic and every
// reply is a CommandReply with a valid status.
func FuzzCommandMessage(f *testing.F) {
	f.Add(CommandTopic("d", "echo", "r1"), []byte(`{"x":1}`))
	f.Add(CommandTopic("d", "nope", "r2"), []byte(`not json`))
	f.Add("$tributary/commands/d/echo/a/b", []byte{})
	f.Add("$tributary/commands/d/panics/r3", []byte(`null`))
	f.Fuzz(func(t *testing.T, topic string, payload []byte) {
		var mu sync.Mutex
		var replies [][]byte
		cmd := newCommander("d", discard(), map[string]CommandHandler{
			"echo":   echo,
			"panics": func(context.Context, Command) (int, any, error) { panic("boom") },
		}, func(_ context.Context, _ string, b []byte) error {
			mu.Lock()
			replies = append(replies, b)
			mu.Unlock()
			return nil
		})
		cmd.onMessage(nil, message{topic: topic, payload: payload})
		if err := cmd.close(context.Background()); err != nil {
			t.Fatal(err)
		}
		for _, b := range replies {
			var r CommandReply
			if err := json.Unmarshal(b, &r); err != nil || r.Status < 100 || r.Status > 599 {
				t.Fatalf("reply %q: %v", b, err)
			}
		}
	})
}
