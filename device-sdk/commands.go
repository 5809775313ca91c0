package devicesdk

import (
	"container/list"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// The topics of the device ↔ gateway command and state contract. A
// command arrives (QoS 1) on CommandTopic(device, name, requestID) with the
// caller's JSON body as payload; the device answers (QoS 1) on
// ReplyTopic(device, requestID) with a CommandReply. Reported state is a
// JSON merge patch (RFC 7386) published (QoS 1) on StateTopic(device).
const (
	commandTopicPrefix = "$tributary/commands/"
	replyTopicPrefix   = "$tributary/replies/"
	stateTopicPrefix   = "$tributary/state/"
)

// CommandTopic is the topic a command named name with the given request id
// is delivered on to device.
func CommandTopic(device, name, requestID string) string {
	return commandTopicPrefix + device + "/" + name + "/" + requestID
}

// ReplyTopic is the topic device answers the command requestID on.
func ReplyTopic(device, requestID string) string {
	return replyTopicPrefix + device + "/" + requestID
}

// StateTopic is the topic device publishes its reported properties on.
func StateTopic(device string) string { return stateTopicPrefix + device }

// commandFilter is what a device subscribes to for its commands.
func commandFilter(device string) string { return commandTopicPrefix + device + "/+/+" }

// recentCommands bounds how many request ids a device remembers to run each
// command at most once and to answer a redelivery with the same reply.
const recentCommands = 1024

// Command is one invocation of a command on this device.
type Command struct {
	// RequestID identifies the invocation. A redelivery of the same
	// request id does not run the handler again (see HandleCommand).
	RequestID string
	// Name is the command's name, the handler it was dispatched to.
	Name string
	// Payload is the caller's JSON body, as the cloud API received it
	// (possibly empty). The handler owns it.
	Payload []byte
}

// CommandHandler runs a command and returns the reply's status (200 ok,
// 4xx the caller's fault, 5xx the device's) and payload, which is encoded
// with encoding/json (a json.RawMessage is sent as is; nil sends no
// payload). A non-nil error means status 500 with payload
// {"error": err.Error()}, unless the handler set a status (then that
// status, with reply if non-nil, else the error object). A zero status
// without an error means 200. ctx is cancelled when the Client or Device
// closes; a handler should return soon after.
type CommandHandler func(ctx context.Context, cmd Command) (status int, reply any, err error)

// CommandReply is the JSON a device publishes on ReplyTopic.
type CommandReply struct {
	// Status is 200 for success, 4xx or 5xx for failure (HTTP's meaning).
	Status int `json:"status"`
	// Payload is the handler's reply, omitted when it returned none.
	Payload json.RawMessage `json:"payload,omitempty"`
}

// commander receives a device's commands, runs their handlers (a goroutine
// per command) and publishes their replies through reply. It is shared by
// Client and Device; only the reply path differs.
//
// Handlers run at most once per request id while the id is among the last
// recentCommands ones seen: a redelivery of a finished command re-sends the
// stored reply, a redelivery of a running one is ignored (its reply follows).
type commander struct {
	deviceID string
	log      *slog.Logger
	// reply publishes one reply; gone is closed once close gave up waiting.
	reply func(ctx context.Context, topic string, payload []byte) error

	ctx    context.Context // cancelled by close: the handlers' context
	cancel context.CancelFunc
	gone   chan struct{} // closed when close returns
	wg     sync.WaitGroup

	mu       sync.Mutex
	handlers map[string]CommandHandler
	recent   map[string]*list.Element // request id -> element holding *call
	order    *list.List               // most recent first
	closed   bool
}

// call is one command remembered by request id.
type call struct {
	id    string
	done  bool
	reply []byte // set once done
}

func newCommander(deviceID string, log *slog.Logger, handlers map[string]CommandHandler,
	reply func(ctx context.Context, topic string, payload []byte) error) *commander {
	ctx, cancel := context.WithCancel(context.Background())
	c := &commander{
		deviceID: deviceID, log: log, reply: reply,
		ctx: ctx, cancel: cancel, gone: make(chan struct{}),
		handlers: map[string]CommandHandler{},
		recent:   map[string]*list.Element{},
		order:    list.New(),
	}
	for name, h := range handlers {
		c.handlers[name] = h
	}
	return c
}

// handle registers h for name, replacing any earlier handler; a nil h
// removes it.
func (c *commander) handle(name string, h CommandHandler) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if h == nil {
		delete(c.handlers, name)
		return
	}
	c.handlers[name] = h
}

// onConnect subscribes to the device's command topic; paho calls it on its
// own goroutine after every connection, including reconnects (a gateway
// that restarted has lost the subscription).
func (c *commander) onConnect(cl mqtt.Client) {
	tok := cl.Subscribe(commandFilter(c.deviceID), 1, c.onMessage)
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			c.log.Warn("devicesdk: subscribe to commands failed", "device", c.deviceID, "err", err)
			return
		}
		if st, ok := tok.(*mqtt.SubscribeToken); ok {
			for filter, code := range st.Result() {
				if code >= 0x80 {
					c.log.Warn("devicesdk: gateway refused the command subscription", "filter", filter, "code", code)
				}
			}
		}
	case <-c.ctx.Done():
	}
}

// onMessage is paho's callback for a command. It must not block (paho
// delivers in order on one goroutine): it only decides, under mu, whether to
// start the handler or re-send a reply.
func (c *commander) onMessage(_ mqtt.Client, m mqtt.Message) {
	name, id, ok := c.parseTopic(m.Topic())
	if !ok {
		c.log.Warn("devicesdk: ignoring a message on a malformed command topic", "topic", m.Topic())
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		c.log.Warn("devicesdk: command arrived while closing; not run", "name", name, "request_id", id)
		return
	}
	if el, dup := c.recent[id]; dup {
		c.order.MoveToFront(el)
		cl := el.Value.(*call)
		if cl.done {
			c.log.Debug("devicesdk: command redelivered; re-sending its reply", "name", name, "request_id", id)
			c.wg.Add(1)
			go c.send(id, cl.reply)
		}
		return
	}
	cl := &call{id: id}
	c.recent[id] = c.order.PushFront(cl)
	for c.order.Len() > recentCommands {
		old := c.order.Back()
		c.order.Remove(old)
		delete(c.recent, old.Value.(*call).id)
	}
	h := c.handlers[name]
	cmd := Command{RequestID: id, Name: name, Payload: append([]byte(nil), m.Payload()...)}
	c.wg.Add(1)
	go c.run(h, cmd, cl)
}

// parseTopic splits $tributary/commands/<device>/<name>/<request-id>.
func (c *commander) parseTopic(topic string) (name, id string, ok bool) {
	rest, ok := strings.CutPrefix(topic, commandTopicPrefix+c.deviceID+"/")
	if !ok {
		return "", "", false
	}
	name, id, ok = strings.Cut(rest, "/")
	if !ok || name == "" || id == "" || strings.Contains(id, "/") {
		return "", "", false
	}
	return name, id, true
}

// run runs one command's handler and publishes its reply.
func (c *commander) run(h CommandHandler, cmd Command, cl *call) {
	var b []byte
	if h == nil {
		b = encodeReply(404, nil, fmt.Errorf("no handler for command %s", cmd.Name))
	} else {
		b = encodeReply(invoke(c.ctx, h, cmd))
	}
	c.mu.Lock()
	cl.done, cl.reply = true, b
	c.mu.Unlock()
	c.send(cmd.RequestID, b)
}

// send publishes one reply; it is called with wg incremented.
func (c *commander) send(id string, b []byte) {
	defer c.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-c.gone:
			cancel()
		case <-ctx.Done():
		}
	}()
	if err := c.reply(ctx, ReplyTopic(c.deviceID, id), b); err != nil {
		c.log.Warn("devicesdk: command reply not sent", "request_id", id, "err", err)
	}
}

// invoke runs h, turning a panic into a 500.
func invoke(ctx context.Context, h CommandHandler, cmd Command) (status int, reply any, err error) {
	defer func() {
		if r := recover(); r != nil {
			status, reply, err = 500, nil, fmt.Errorf("command handler panicked: %v", r)
		}
	}()
	return h(ctx, cmd)
}

// encodeReply applies CommandHandler's rules and returns the reply's JSON.
func encodeReply(status int, reply any, err error) []byte {
	if err != nil && status == 0 {
		status = 500
	}
	if status == 0 {
		status = 200
	}
	if status < 100 || status > 599 {
		return mustJSON(CommandReply{Status: 500, Payload: errorJSON(fmt.Errorf("handler returned invalid status %d", status))})
	}
	r := CommandReply{Status: status}
	switch {
	case reply != nil:
		p, merr := json.Marshal(reply)
		if merr != nil {
			return mustJSON(CommandReply{Status: 500, Payload: errorJSON(fmt.Errorf("encode reply: %w", merr))})
		}
		r.Payload = p
	case err != nil:
		r.Payload = errorJSON(err)
	}
	return mustJSON(r)
}

func errorJSON(err error) json.RawMessage { return mustJSON(map[string]string{"error": err.Error()}) }

// mustJSON marshals values that always encode (strings, ints, valid
// RawMessages).
func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		// Unreachable for the types above; never panic on a device.
		return []byte(`{"status":500}`)
	}
	return b
}

// close stops running new commands, cancels the handlers' context and waits
// for running handlers (and their replies) until ctx ends.
func (c *commander) close(ctx context.Context) error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	done := make(chan struct{})
	go func() { c.wg.Wait(); close(done) }()
	defer close(c.gone)
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// encodeState checks and encodes a reported-state merge patch.
func encodeState(props map[string]any) ([]byte, error) {
	if props == nil {
		return nil, fmt.Errorf("%w: nil state patch", ErrConfig)
	}
	b, err := json.Marshal(props)
	if err != nil {
		return nil, fmt.Errorf("%w: state patch is not JSON: %w", ErrConfig, err)
	}
	return b, nil
}

// HandleCommand makes h answer commands named name, replacing an earlier
// handler for it (a nil h removes it). Commands with no handler are answered
// with status 404 and {"error":"no handler for command <name>"}. A command
// that arrives before its handler is registered gets that 404: register
// handlers that must see commands queued while the device was away in
// Config.Commands instead. Each command runs on a goroutine of its own, so
// handlers run concurrently. The reply is published directly with QoS 1 (not
// buffered; see Device for a reply that survives a broken link).
func (c *Client) HandleCommand(name string, h CommandHandler) { c.cmd.handle(name, h) }

// ReportState publishes props as a JSON merge patch (RFC 7386) of the
// device's reported properties to StateTopic(DeviceID) with QoS 1, and
// returns once the gateway acknowledged it: keys set replace the cloud's
// value, keys set to nil are deleted, keys absent are kept. A nil map or one
// that does not encode as JSON is rejected with an error wrapping ErrConfig.
func (c *Client) ReportState(ctx context.Context, props map[string]any) error {
	b, err := encodeState(props)
	if err != nil {
		return err
	}
	return c.Publish(ctx, StateTopic(c.deviceID), b)
}

// HandleCommand makes h answer commands named name, like
// Client.HandleCommand, except that the reply goes through the durable
// offline buffer: it is sent when the link is back, even across a reboot.
// A command is acknowledged to the gateway before its handler runs, so a
// crash while it runs loses the command (the caller sees a timeout); it is
// never run twice in one process. A reply that does not fit in a full buffer
// (RejectNew) is dropped and logged.
func (d *Device) HandleCommand(name string, h CommandHandler) { d.cmd.handle(name, h) }

// ReportState buffers props as a JSON merge patch (RFC 7386) of the
// device's reported properties for StateTopic(DeviceID), and returns once it
// is fsync'd, like Enqueue (see Client.ReportState for the merge rules). The
// patches reach the cloud in the order they were buffered while
// MaxInflight is 1.
func (d *Device) ReportState(ctx context.Context, props map[string]any) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b, err := encodeState(props)
	if err != nil {
		return err
	}
	return d.Enqueue(StateTopic(d.cfg.DeviceID), b)
}

// publishReply is the Client's reply path: QoS 1, waiting for the PUBACK
// until ctx ends.
func publishReply(cl mqtt.Client) func(ctx context.Context, topic string, payload []byte) error {
	return func(ctx context.Context, topic string, payload []byte) error {
		tok := cl.Publish(topic, 1, false, payload)
		select {
		case <-tok.Done():
			return tok.Error()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
