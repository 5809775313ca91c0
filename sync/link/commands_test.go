package link

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
)

// memCommands is a gateway command store held in memory: the narrow seam
// the Client depends on. Accept answers ACCEPTED (or the known status).
type memCommands struct {
	send     func(*syncv1.CommandStatus) // Client.SendCommandStatus
	mu       sync.Mutex
	requests map[string]*syncv1.CommandRequest
	unacked  []*syncv1.CommandStatus
	accepts  int
}

func newMemCommands(unacked ...*syncv1.CommandStatus) *memCommands {
	return &memCommands{requests: map[string]*syncv1.CommandRequest{}, unacked: unacked}
}

func (m *memCommands) Accept(req *syncv1.CommandRequest) {
	m.mu.Lock()
	m.accepts++
	st := &syncv1.CommandStatus{RequestId: req.GetRequestId(), Device: req.GetDevice(), State: syncv1.CommandState_COMMAND_STATE_ACCEPTED}
	if _, ok := m.requests[req.GetRequestId()]; !ok {
		m.requests[req.GetRequestId()] = req
		m.unacked = append(m.unacked, st)
	}
	m.mu.Unlock()
	m.send(st)
}

func (m *memCommands) add(st *syncv1.CommandStatus) {
	m.mu.Lock()
	m.unacked = append(m.unacked, st)
	m.mu.Unlock()
}

func (m *memCommands) Unacked() []*syncv1.CommandStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]*syncv1.CommandStatus(nil), m.unacked...)
}

func (m *memCommands) Acked(id string, state syncv1.CommandState) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, st := range m.unacked {
		if st.GetRequestId() == id && st.GetState() == state {
			m.unacked = append(m.unacked[:i], m.unacked[i+1:]...)
			return
		}
	}
}

func (m *memCommands) pending() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.unacked)
}

// statusLog collects what OnCommandStatus receives.
type statusLog struct {
	mu  sync.Mutex
	got []string // "gateway request state"
}

func (l *statusLog) on(gw string, st *syncv1.CommandStatus) {
	l.mu.Lock()
	l.got = append(l.got, gw+" "+st.GetRequestId()+" "+st.GetState().String())
	l.mu.Unlock()
}

func (l *statusLog) count(want string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range l.got {
		if s == want {
			n++
		}
	}
	return n
}

func commandRequest(id string) *syncv1.CommandRequest {
	return &syncv1.CommandRequest{RequestId: id, Device: "dev-1", Name: "reboot", Payload: []byte(`{}`),
		ExpiresUnixMs: time.Now().Add(time.Minute).UnixMilli()}
}

// TestCommandRoundTrip: a request reaches the gateway's store while records
// drain on the same stream, its ACCEPTED comes back, a later status sent by
// the gateway arrives, and every status is acknowledged to the store.
func TestCommandRoundTrip(t *testing.T) {
	p := newPKI(t)
	var log statusLog
	cfg := serverConfig(t, p)
	cfg.OnCommandStatus = log.on
	sink := newLogSink()
	srv := startServer(t, cfg, sink, nil)
	ctx := context.Background()

	if err := srv.SendCommand(ctx, "gw-1", commandRequest("r1")); !errors.Is(err, ErrGatewayOffline) {
		t.Fatalf("no session: %v, want ErrGatewayOffline", err)
	}
	if err := srv.SendCommand(ctx, "gw-1", &syncv1.CommandRequest{RequestId: "r1"}); !errors.Is(err, ErrInvalidCommand) {
		t.Fatalf("incomplete request: %v, want ErrInvalidCommand", err)
	}

	src := newSource(t)
	src.add(3000)
	store := newMemCommands()
	ccfg := clientConfig(t, p, srv.Addr().String(), "gw-1")
	ccfg.Commands = store
	c := NewClient(ccfg, src)
	store.send = c.SendCommandStatus
	runClient(t, c)
	eventually(t, "session", func() bool { return c.Stats().State == Connected })

	for _, id := range []string{"r1", "r2", "r1"} { // r1 twice: Accept answers with what it knows
		if err := srv.SendCommand(ctx, "gw-1", commandRequest(id)); err != nil {
			t.Fatal(err)
		}
	}
	src.add(3000)
	eventually(t, "ACCEPTED for r1 and r2", func() bool {
		return log.count("gw-1 r1 COMMAND_STATE_ACCEPTED") == 2 && log.count("gw-1 r2 COMMAND_STATE_ACCEPTED") == 1
	})
	st := &syncv1.CommandStatus{RequestId: "r1", Device: "dev-1", State: syncv1.CommandState_COMMAND_STATE_REPLIED, ReplyStatus: 200, ReplyPayload: []byte(`"ok"`)}
	store.add(st)
	c.SendCommandStatus(st)
	eventually(t, "REPLIED for r1", func() bool { return log.count("gw-1 r1 COMMAND_STATE_REPLIED") == 1 })
	eventually(t, "every status acknowledged", func() bool { return store.pending() == 0 })
	eventually(t, "all records acknowledged", func() bool { _, a := src.state(); return a == 6000 })
	checkLog(t, sink.log, "gw-1", 6000)
	if st := srv.Stats(); st.ProtocolErrors != 0 {
		t.Fatalf("server stats %+v", st)
	}
	if c.Stats().Sessions != 1 {
		t.Fatalf("client reconnected: %+v", c.Stats())
	}
}

// TestCommandsUnsupported: a gateway without Commands gets no requests.
func TestCommandsUnsupported(t *testing.T) {
	p := newPKI(t)
	srv := startServer(t, serverConfig(t, p), newLogSink(), nil)
	c := startClient(t, clientConfig(t, p, srv.Addr().String(), "gw-1"), newSource(t))
	eventually(t, "session", func() bool { return c.Stats().State == Connected })
	if err := srv.SendCommand(context.Background(), "gw-1", commandRequest("r1")); !errors.Is(err, ErrCommandsUnsupported) {
		t.Fatalf("SendCommand: %v, want ErrCommandsUnsupported", err)
	}
}

// TestCommandStatusResentAfterReconnect: a status whose acknowledgement is
// lost (the cloud goes away while handling it) is sent again on the next
// session, and a status produced while no session was up is sent when one
// opens.
func TestCommandStatusResentAfterReconnect(t *testing.T) {
	p := newPKI(t)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()

	got := make(chan struct{}, 1)
	release := make(chan struct{})
	cfg := serverConfig(t, p)
	cfg.OnCommandStatus = func(string, *syncv1.CommandStatus) {
		select {
		case got <- struct{}{}:
		default:
		}
		<-release // held until the session has failed: its ack is never written
	}
	srv1 := NewServer(cfg, newLogSink())
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv1.Serve(context.Background(), pc) }()

	delivered := &syncv1.CommandStatus{RequestId: "r1", Device: "dev-1", State: syncv1.CommandState_COMMAND_STATE_DELIVERED}
	store := newMemCommands(delivered)
	ccfg := clientConfig(t, p, addr, "gw-1")
	ccfg.Commands = store
	c := startClient(t, ccfg, newSource(t))
	select {
	case <-got:
	case <-time.After(30 * time.Second):
		t.Fatal("the first server never got the status")
	}
	closed := make(chan struct{})
	go func() {
		srv1.Close()
		close(closed)
	}()
	eventually(t, "client sees the session end", func() bool { return c.Stats().State != Connected })
	close(release)
	<-closed
	if err := <-serveErr; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if store.pending() != 1 {
		t.Fatalf("%d statuses pending, want the unacknowledged one", store.pending())
	}
	// Produced while disconnected: only the store has it.
	expired := &syncv1.CommandStatus{RequestId: "r2", Device: "dev-1", State: syncv1.CommandState_COMMAND_STATE_EXPIRED, Reason: "device offline until expiry"}
	store.add(expired)
	c.SendCommandStatus(expired)

	var log statusLog
	cfg2 := serverConfig(t, p)
	cfg2.OnCommandStatus = log.on
	var pc2 net.PacketConn
	eventually(t, "the address free again", func() bool {
		pc2, err = net.ListenPacket("udp", addr)
		return err == nil
	})
	startServer(t, cfg2, newLogSink(), pc2)
	eventually(t, "both statuses on the new session", func() bool {
		return log.count("gw-1 r1 COMMAND_STATE_DELIVERED") >= 1 && log.count("gw-1 r2 COMMAND_STATE_EXPIRED") >= 1
	})
	eventually(t, "both acknowledged", func() bool { return store.pending() == 0 })
}

// runClient runs c until the test ends.
func runClient(t *testing.T, c *Client) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// TestCommandFramesRefused: a gateway that did not set accepts_commands
// sending a CommandStatus, and one sending an invalid CommandStatus or a
// cloud-side frame, closes its session with a protocol error.
func TestCommandFramesRefused(t *testing.T) {
	p := newPKI(t)
	var log statusLog
	cfg := serverConfig(t, p)
	cfg.OnCommandStatus = log.on
	srv := startServer(t, cfg, newLogSink(), nil)
	hello := func(commands bool) *syncv1.Frame {
		return &syncv1.Frame{Body: &syncv1.Frame_Hello{Hello: &syncv1.Hello{ProtocolVersion: syncv1.Version_VERSION_1, GatewayId: "gw-1", AcceptsCommands: commands}}}
	}
	valid := &syncv1.CommandStatus{RequestId: "r1", State: syncv1.CommandState_COMMAND_STATE_ACCEPTED}
	for _, tt := range []struct {
		name     string
		commands bool
		frame    *syncv1.Frame
	}{
		{"status without accepts_commands", false, &syncv1.Frame{Body: &syncv1.Frame_CommandStatus{CommandStatus: valid}}},
		{"status without request id", true, &syncv1.Frame{Body: &syncv1.Frame_CommandStatus{CommandStatus: &syncv1.CommandStatus{State: syncv1.CommandState_COMMAND_STATE_ACCEPTED}}}},
		{"status with state 0", true, &syncv1.Frame{Body: &syncv1.Frame_CommandStatus{CommandStatus: &syncv1.CommandStatus{RequestId: "r1"}}}},
		{"status with state 99", true, &syncv1.Frame{Body: &syncv1.Frame_CommandStatus{CommandStatus: &syncv1.CommandStatus{RequestId: "r1", State: 99}}}},
		{"request from a gateway", true, &syncv1.Frame{Body: &syncv1.Frame_CommandRequest{CommandRequest: commandRequest("r1")}}},
		{"status ack from a gateway", true, &syncv1.Frame{Body: &syncv1.Frame_CommandStatusAck{CommandStatusAck: &syncv1.CommandStatusAck{RequestId: "r1", State: 1}}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			conn, str := rawConn(t, srv.Addr().String(), p.clientTLS(t, "gw-1", nil))
			writeFrame(t, str, hello(tt.commands))
			if f := readFrame(t, str); f.GetWelcome() == nil {
				t.Fatalf("expected Welcome, got %v", f)
			}
			writeFrame(t, str, tt.frame)
			expectError(t, conn, str, syncv1.ErrorCode_ERROR_CODE_PROTOCOL)
		})
	}
	log.mu.Lock()
	n := len(log.got)
	log.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d refused statuses reached OnCommandStatus", n)
	}
}
