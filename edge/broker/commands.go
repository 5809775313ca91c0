package broker

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// The reserved topic tree. Everything under "$tributary/" belongs to the
// gateway: devices reach it only as the rules of reservedACL allow, before and
// regardless of the configured Authorizer.
//
//	$tributary/commands/<device>/<name>/<request-id>  gateway → device (QoS 1, published by the gateway only)
//	$tributary/replies/<device>/<request-id>          device → gateway, JSON {"status": int, "payload": any}
//	$tributary/state/<device>                         device → gateway, reported properties (JSON merge patch)
const (
	ReservedPrefix      = "$tributary/"
	CommandTopicPrefix  = "$tributary/commands/"
	ReplyTopicPrefix    = "$tributary/replies/"
	StateTopicPrefix    = "$tributary/state/"
	StateEventType      = "io.tributary.device.state"
	ReplyEventType      = "io.tributary.command.reply"
	commandContentType  = "application/json"
	reservedTopicParent = "$tributary"
)

// CommandTopic is the topic a command is published on.
func CommandTopic(device, name, requestID string) string {
	return CommandTopicPrefix + device + "/" + name + "/" + requestID
}

// ReplyTopic is the topic a device publishes its reply to a command on.
func ReplyTopic(device, requestID string) string {
	return ReplyTopicPrefix + device + "/" + requestID
}

// StateTopic is the topic a device publishes its reported state on.
func StateTopic(device string) string { return StateTopicPrefix + device }

// ErrBadCommand is returned (wrapped) by PublishCommand for a command whose
// device id, name or request id cannot be a topic level.
var ErrBadCommand = errors.New("broker: invalid command")

// ErrNoSubscriber is returned by PublishCommand when the device has no
// subscription (live or in a persistent session) that would receive the
// command: it is not published and the caller keeps it pending.
var ErrNoSubscriber = errors.New("broker: device is not subscribed to its commands")

// ErrCommandExpired is returned by PublishCommand for a command whose expiry
// has passed.
var ErrCommandExpired = errors.New("broker: command expired")

// ErrNotStarted is returned by PublishCommand before Start or after Close.
var ErrNotStarted = errors.New("broker: not serving")

// ValidLevel reports whether s can be one level of a topic name: non-empty,
// without '/', '+', '#' or NUL. Device ids, command names and request ids
// must be.
func ValidLevel(s string) bool {
	return s != "" && !strings.ContainsAny(s, "/+#\x00")
}

// Command is one command for PublishCommand.
type Command struct {
	Device    string // the device's MQTT client id
	Name      string
	RequestID string
	Payload   []byte // the caller's JSON body, published as-is
	// ContentType for MQTT 5 subscribers; "" means application/json.
	ContentType string
	Expires     time.Time // the command is not published at or after this instant
}

// CommandObserver learns what the broker sees of commands. Its methods run on
// mochi's client goroutines: they must be fast and must not call back into
// the broker synchronously.
type CommandObserver interface {
	// Delivered reports that device acknowledged (PUBACK) the command
	// with requestID.
	Delivered(device, requestID string)
	// Replied reports a reply the device published for requestID. It
	// returns false when the request is unknown (or no longer waits for a
	// reply): the broker then drops the reply (counted, logged) instead of
	// forwarding it as an event.
	Replied(device, requestID string, payload []byte) bool
	// Online reports that device connected (with or without a resumed
	// session) or subscribed to its commands: commands still pending for it
	// may now be published.
	Online(device string)
}

// commandState is the broker's part of commands.
type commandState struct {
	obs            CommandObserver // nil: no commands (replies are dropped)
	unknownReplies atomic.Uint64
	// mayHold is set once a client may hold a command in flight: one was
	// published, or the sessions file restored in-flight messages. Until
	// then commandHook.OnPacketRead skips its in-flight lookup (a copy of
	// the whole packet under a lock) on every PUBACK a subscriber sends.
	mayHold atomic.Bool
}

// SetCommandObserver sets who learns of command deliveries and replies. Call
// before Start. Without one, replies are dropped as unknown.
func (b *Broker) SetCommandObserver(o CommandObserver) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.started {
		return ErrStarted
	}
	b.cmd.obs = o
	return nil
}

// UnknownReplies counts replies dropped because no command waited for them.
func (b *Broker) UnknownReplies() uint64 { return b.cmd.unknownReplies.Load() }

// PublishCommand publishes c to its device's command topic through mochi's
// inline client, QoS 1, not retained, with (for MQTT 5 subscribers) the
// response topic, the request id as correlation data, the content type and
// the seconds left until c.Expires as message expiry. A device offline with a
// persistent session that holds the subscription gets the command queued in
// that session. If the device's session already holds this command (it was
// published before, maybe before a restart, and not yet acknowledged),
// nothing is published again and the result is nil. now is the current time.
func (b *Broker) PublishCommand(c Command, now time.Time) error {
	if !ValidLevel(c.Device) || !ValidLevel(c.Name) || !ValidLevel(c.RequestID) {
		return fmt.Errorf("%w: device %q, name %q, request id %q must each be a non-empty topic level", ErrBadCommand, c.Device, c.Name, c.RequestID)
	}
	left := c.Expires.Sub(now)
	if left <= 0 {
		return ErrCommandExpired
	}
	b.mu.Lock()
	srv, serving := b.srv, b.started && !b.closed
	b.mu.Unlock()
	if !serving {
		return ErrNotStarted
	}
	topic := CommandTopic(c.Device, c.Name, c.RequestID)
	if cl, ok := srv.Clients.Get(c.Device); ok {
		for _, p := range cl.State.Inflight.GetAll(false) {
			if id, ok := commandOf(&p); ok && id == c.RequestID {
				return nil // the session holds it already
			}
		}
	}
	if _, ok := srv.Topics.Subscribers(topic).Subscriptions[c.Device]; !ok {
		return ErrNoSubscriber
	}
	ct := c.ContentType
	if ct == "" {
		ct = commandContentType
	}
	secs := math.Ceil(left.Seconds())
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		PacketID:    1, // mochi checks that a QoS 1 publish has one; the inline client never acknowledges
		TopicName:   topic,
		Payload:     c.Payload,
		Properties: packets.Properties{
			ResponseTopic:         ReplyTopic(c.Device, c.RequestID),
			CorrelationData:       []byte(c.RequestID),
			ContentType:           ct,
			MessageExpiryInterval: uint32(min(secs, math.MaxUint32)),
		},
	}
	b.cmd.mayHold.Store(true) // before any PUBACK for it can be read
	if err := srv.InjectPacket(b.inline, pk); err != nil {
		return fmt.Errorf("broker: publish command: %w", err)
	}
	return nil
}

// commandOf returns the request id of a command publish held in a client's
// in-flight store. The topic name may be empty there (topic alias), so the
// correlation data, which the gateway always sets, is read first.
func commandOf(p *packets.Packet) (string, bool) {
	if strings.HasPrefix(p.Properties.ResponseTopic, ReplyTopicPrefix) && len(p.Properties.CorrelationData) > 0 {
		return string(p.Properties.CorrelationData), true
	}
	if rest, ok := strings.CutPrefix(p.TopicName, CommandTopicPrefix); ok {
		if i := strings.LastIndexByte(rest, '/'); i >= 0 {
			return rest[i+1:], true
		}
	}
	return "", false
}

// route decides what happens to a client's publish: the reserved topics
// first (state is forwarded as StateEventType, a reply for a known command
// as ReplyEventType, an unknown reply is dropped), then the configured rules.
// reservedACL has already refused what the client may not publish there.
func (b *Broker) route(cl *mqtt.Client, pk *packets.Packet) Route {
	topic := pk.TopicName
	if !strings.HasPrefix(topic, ReservedPrefix) {
		return b.router.route(topic)
	}
	if strings.HasPrefix(topic, StateTopicPrefix) {
		return Route{Forward: true, EventType: StateEventType}
	}
	if rest, ok := strings.CutPrefix(topic, ReplyTopicPrefix); ok {
		device, id, _ := strings.Cut(rest, "/")
		if b.cmd.obs != nil && b.cmd.obs.Replied(device, id, pk.Payload) {
			return Route{Forward: true, EventType: ReplyEventType}
		}
		b.cmd.unknownReplies.Add(1)
		b.log.Warn("reply for an unknown or finished command dropped", "client", cl.ID, "request_id", id)
	}
	return Route{}
}

// reservedACL decides access to the reserved topic tree for client id, before
// and regardless of the configured Authorizer; decided is false for topics
// outside it. For reading (subscribe filters and the topics of deliveries), a
// client may use its own command tree only: "$tributary/commands/<id>/#" and
// narrower filters under it. For writing, its own reply topics
// "$tributary/replies/<id>/<request-id>" and its state topic
// "$tributary/state/<id>" only; nobody may publish commands (the gateway
// publishes them through the inline client, which mochi does not check). A
// client id that cannot be a topic level gets nothing here.
func reservedACL(id, topic string, write bool) (allowed, decided bool) {
	inner := topic
	if rest, ok := strings.CutPrefix(topic, "$share/"); ok {
		if _, f, ok := strings.Cut(rest, "/"); ok {
			inner = f
		}
	}
	if inner != reservedTopicParent && !strings.HasPrefix(inner, ReservedPrefix) {
		return false, false
	}
	if inner != topic || !ValidLevel(id) {
		return false, true // no shared subscriptions to the reserved tree
	}
	if write {
		if topic == StateTopicPrefix+id {
			return true, true
		}
		rest, ok := strings.CutPrefix(topic, ReplyTopicPrefix+id+"/")
		return ok && ValidLevel(rest), true
	}
	own := CommandTopicPrefix + id
	return strings.HasPrefix(topic, own+"/"), true
}

// reservedFirst applies reservedACL before the configured Authorizer.
type reservedFirst struct{ next Authorizer }

func (r reservedFirst) Authenticate(c ClientInfo, password []byte) bool {
	return r.next.Authenticate(c, password)
}

func (r reservedFirst) Authorize(c ClientInfo, topic string, write bool) bool {
	if allowed, decided := reservedACL(c.ID, topic, write); decided {
		return allowed
	}
	return r.next.Authorize(c, topic, write)
}

// commandHook tells the CommandObserver about deliveries and devices coming
// online, and refuses will messages on the reserved tree (mochi publishes
// wills without an ACL check).
type commandHook struct {
	mqtt.HookBase
	b *Broker
}

var _ mqtt.Hook = (*commandHook)(nil)

func (h *commandHook) ID() string { return "tributary-commands" }

func (h *commandHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect:
		return true
	case mqtt.OnPacketRead, mqtt.OnSubscribed, mqtt.OnSessionEstablished:
		return h.b.cmd.obs != nil
	}
	return false
}

// OnConnect refuses a client whose will is on the reserved tree: the
// connection is closed without a CONNACK.
func (h *commandHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	if pk.Connect.WillFlag && (pk.Connect.WillTopic == reservedTopicParent || strings.HasPrefix(pk.Connect.WillTopic, ReservedPrefix)) {
		h.b.log.Warn("connection refused: will message on a reserved topic", "client", cl.ID, "topic", pk.Connect.WillTopic)
		return packets.ErrNotAuthorized
	}
	return nil
}

// OnPacketRead sees a PUBACK before mochi removes the acknowledged publish
// from the client's in-flight store, so the command it acknowledges is
// still there to be named.
func (h *commandHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type != packets.Puback || !h.b.cmd.mayHold.Load() {
		return pk, nil
	}
	if p, ok := cl.State.Inflight.Get(pk.PacketID); ok && p.FixedHeader.Type == packets.Publish {
		if id, ok := commandOf(&p); ok {
			h.b.cmd.obs.Delivered(cl.ID, id)
		}
	}
	return pk, nil
}

func (h *commandHook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	for i, f := range pk.Filters {
		if i < len(codes) && codes[i] < 0x80 && strings.HasPrefix(f.Filter, CommandTopicPrefix) {
			h.b.cmd.obs.Online(cl.ID)
			return
		}
	}
}

func (h *commandHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	if !cl.Net.Inline {
		h.b.cmd.obs.Online(cl.ID)
	}
}
