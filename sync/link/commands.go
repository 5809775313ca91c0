package link

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/quic-go/quic-go"

	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
	"github.com/tributary-io/tributary/sync/wire"
)

// Commands (cloud → gateway → device) travel on the control lane, between
// Batch and Ack frames; proto/sync/v1 ("Commands") gives the exchange. This
// file holds both sides. The cloud writes CommandRequest and
// CommandStatusAck frames with the session's frame writer; the gateway's
// commands goroutine (one per session) takes requests to the gateway's
// Commands, writes their statuses and everything the gateway reports
// later, and resends at the start of every session what the cloud has not
// acknowledged. Nothing here is durable: the gateway's Commands is.

var (
	// ErrGatewayOffline is returned by Server.SendCommand when the gateway
	// has no session, or its session ended while the request was written.
	ErrGatewayOffline = errors.New("link: gateway offline")
	// ErrCommandsUnsupported is returned by Server.SendCommand when the
	// gateway's Hello did not set accepts_commands.
	ErrCommandsUnsupported = errors.New("link: gateway does not accept commands")
	// ErrInvalidCommand wraps a CommandRequest or CommandStatus missing
	// what the protocol requires.
	ErrInvalidCommand = errors.New("link: invalid command")
)

// Commands is the gateway's command store as the Client sees it. Its
// methods are called from the session's commands goroutine, never two at
// once, and must not block for long (no fsync: Accept hands the request
// on and answers later).
type Commands interface {
	// Accept takes a request from the cloud. The store answers through
	// Client.SendCommandStatus: ACCEPTED only once the request is durable,
	// REJECTED with a reason if it cannot be taken, or, for a request_id it
	// already knows, the command's current status (the request is not
	// executed twice). Every status it sends it also keeps until Acked
	// (Unacked returns it).
	Accept(req *syncv1.CommandRequest)
	// Unacked returns every status the cloud has not acknowledged yet, in
	// the order they were produced. It is called at the start of every
	// session; they are all sent again.
	Unacked() []*syncv1.CommandStatus
	// Acked records that the cloud acknowledged the status (requestID,
	// state): it need not be sent again.
	Acked(requestID string, state syncv1.CommandState)
}

// ValidateCommandRequest reports a request missing a request id, device or
// name, or with an expiry of zero.
func ValidateCommandRequest(req *syncv1.CommandRequest) error {
	switch {
	case req == nil:
		return fmt.Errorf("%w: nil request", ErrInvalidCommand)
	case req.GetRequestId() == "", req.GetDevice() == "", req.GetName() == "":
		return fmt.Errorf("%w: request_id, device and name are required", ErrInvalidCommand)
	case req.GetExpiresUnixMs() <= 0:
		return fmt.Errorf("%w: expires_unix_ms is required", ErrInvalidCommand)
	}
	return nil
}

func validateStatus(st *syncv1.CommandStatus) error {
	if st.GetRequestId() == "" {
		return fmt.Errorf("%w: CommandStatus without request_id", ErrInvalidCommand)
	}
	if _, ok := syncv1.CommandState_name[int32(st.GetState())]; !ok || st.GetState() == syncv1.CommandState_COMMAND_STATE_UNSPECIFIED {
		return fmt.Errorf("%w: CommandStatus with state %d", ErrInvalidCommand, st.GetState())
	}
	return nil
}

// ---- cloud side ----

// SendCommand writes req to gateway's live session. It returns once the
// frame is handed to QUIC; the gateway's answer (ACCEPTED or REJECTED) and
// every later status arrive through ServerConfig.OnCommandStatus. Errors:
// ErrGatewayOffline (no session, or it failed during the write),
// ErrCommandsUnsupported, ErrInvalidCommand, or ctx's error.
func (s *Server) SendCommand(ctx context.Context, gateway string, req *syncv1.CommandRequest) error {
	if err := ValidateCommandRequest(req); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	ss := s.sessions[gateway]
	s.mu.Unlock()
	if ss == nil {
		return ErrGatewayOffline
	}
	if !ss.acceptsCommands {
		return ErrCommandsUnsupported
	}
	if err := ss.write(&syncv1.Frame{Body: &syncv1.Frame_CommandRequest{CommandRequest: req}}); err != nil {
		return fmt.Errorf("%w: %w", ErrGatewayOffline, err)
	}
	return nil
}

// commandFrame handles a command frame read from the gateway; handled is
// false for other frames. A status is passed to OnCommandStatus and then
// acknowledged.
func (ss *session) commandFrame(f *syncv1.Frame) (handled bool, err error) {
	switch body := f.GetBody().(type) {
	case *syncv1.Frame_CommandStatus:
		st := body.CommandStatus
		if err := validateStatus(st); err != nil {
			return true, fmt.Errorf("%w: %w", ErrProtocol, err)
		}
		if !ss.acceptsCommands {
			return true, fmt.Errorf("%w: CommandStatus from a gateway that did not accept commands", ErrProtocol)
		}
		if cb := ss.srv.cfg.OnCommandStatus; cb != nil {
			cb(ss.gw, st)
		}
		ack := &syncv1.CommandStatusAck{RequestId: st.GetRequestId(), State: st.GetState()}
		if err := ss.write(&syncv1.Frame{Body: &syncv1.Frame_CommandStatusAck{CommandStatusAck: ack}}); err != nil {
			// The session is failing; the gateway sends the status again.
			ss.srv.log.Debug("command status ack not written", "gateway", ss.gw, "err", err)
		}
		return true, nil
	case *syncv1.Frame_CommandRequest, *syncv1.Frame_CommandStatusAck:
		return true, fmt.Errorf("%w: %s frame from a gateway", ErrProtocol, commandFrameKind(f))
	}
	return false, nil
}

func commandFrameKind(f *syncv1.Frame) string {
	switch f.GetBody().(type) {
	case *syncv1.Frame_CommandRequest:
		return "CommandRequest"
	case *syncv1.Frame_CommandStatus:
		return "CommandStatus"
	case *syncv1.Frame_CommandStatusAck:
		return "CommandStatusAck"
	}
	return frameKind(f)
}

// ---- gateway side ----

// clientCommands is the Client's command state across sessions.
type clientCommands struct {
	wmu sync.Mutex // serialises frame writes on the control stream

	mu   sync.Mutex
	live *cmdSession // nil between sessions
}

// writeFrame writes one encoded frame to the control stream; batches and
// command frames share the stream, so every write takes wmu.
func (c *Client) writeFrame(w io.Writer, frame []byte) (int, error) {
	c.cmds.wmu.Lock()
	defer c.cmds.wmu.Unlock()
	return w.Write(frame)
}

// SendCommandStatus sends st to the cloud on the live session. Without one
// (or if the session ends first) it is not sent now: the gateway's
// Commands must keep it until Acked, and Unacked hands it over again at
// the next session. It never blocks on the network.
func (c *Client) SendCommandStatus(st *syncv1.CommandStatus) {
	c.cmds.mu.Lock()
	cs := c.cmds.live
	c.cmds.mu.Unlock()
	if cs != nil {
		cs.queue(st)
	}
}

// cmdSession is one session's commands goroutine and its inputs.
type cmdSession struct {
	c   *Client
	str *quic.Stream

	mu       sync.Mutex
	requests []*syncv1.CommandRequest
	statuses []*syncv1.CommandStatus
	acks     []*syncv1.CommandStatusAck
	wake     chan struct{} // cap 1
}

func (cs *cmdSession) signal() {
	select {
	case cs.wake <- struct{}{}:
	default:
	}
}

func (cs *cmdSession) queue(st *syncv1.CommandStatus) {
	cs.mu.Lock()
	cs.statuses = append(cs.statuses, st)
	cs.mu.Unlock()
	cs.signal()
}

// startCommands starts the session's commands goroutine (when the Client
// has Commands) and returns the function that stops it and waits for it.
func (c *Client) startCommands(ctx context.Context, str *quic.Stream) (stop func()) {
	if c.cfg.Commands == nil {
		return func() {}
	}
	cs := &cmdSession{c: c, str: str, wake: make(chan struct{}, 1)}
	c.cmds.mu.Lock()
	c.cmds.live = cs
	c.cmds.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		cs.run(ctx)
	}()
	return func() {
		c.cmds.mu.Lock()
		if c.cmds.live == cs {
			c.cmds.live = nil
		}
		c.cmds.mu.Unlock()
		cancel()
		<-done
	}
}

// commandFrame takes a command frame the reader got from the cloud; handled
// is false for other frames. It never blocks: the commands goroutine does
// the work.
func (c *Client) commandFrame(f *syncv1.Frame) (handled bool, err error) {
	c.cmds.mu.Lock()
	cs := c.cmds.live
	c.cmds.mu.Unlock()
	switch body := f.GetBody().(type) {
	case *syncv1.Frame_CommandRequest:
		if cs == nil {
			return true, fmt.Errorf("%w: CommandRequest, but this gateway did not accept commands", ErrProtocol)
		}
		if err := ValidateCommandRequest(body.CommandRequest); err != nil {
			return true, fmt.Errorf("%w: %w", ErrProtocol, err)
		}
		cs.mu.Lock()
		cs.requests = append(cs.requests, body.CommandRequest)
		cs.mu.Unlock()
		cs.signal()
		return true, nil
	case *syncv1.Frame_CommandStatusAck:
		if cs == nil {
			return true, fmt.Errorf("%w: CommandStatusAck, but this gateway did not accept commands", ErrProtocol)
		}
		cs.mu.Lock()
		cs.acks = append(cs.acks, body.CommandStatusAck)
		cs.mu.Unlock()
		cs.signal()
		return true, nil
	case *syncv1.Frame_CommandStatus:
		return true, fmt.Errorf("%w: CommandStatus frame from the cloud", ErrProtocol)
	}
	return false, nil
}

// run sends what the cloud has not acknowledged, then serves requests,
// acks and new statuses until ctx ends or a write fails (the session is
// ending then; its reader reports why).
func (cs *cmdSession) run(ctx context.Context) {
	store := cs.c.cfg.Commands
	for _, st := range store.Unacked() {
		if !cs.send(st) {
			return
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-cs.wake:
		}
		cs.mu.Lock()
		reqs, sts, acks := cs.requests, cs.statuses, cs.acks
		cs.requests, cs.statuses, cs.acks = nil, nil, nil
		cs.mu.Unlock()
		for _, a := range acks {
			store.Acked(a.GetRequestId(), a.GetState())
		}
		for _, req := range reqs {
			store.Accept(req)
		}
		for _, st := range sts {
			if !cs.send(st) {
				return
			}
		}
	}
}

func (cs *cmdSession) send(st *syncv1.CommandStatus) bool {
	frame, err := wire.AppendFrame(nil, &syncv1.Frame{Body: &syncv1.Frame_CommandStatus{CommandStatus: st}})
	if err != nil {
		cs.c.log.Error("command status not sendable", "request_id", st.GetRequestId(), "err", err)
		return true // skip it; it stays unacknowledged in the store
	}
	if _, err := cs.c.writeFrame(cs.str, frame); err != nil {
		cs.c.log.Debug("command status not written", "request_id", st.GetRequestId(), "err", err)
		return false
	}
	return true
}
