package broker

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"time"

	"gopkg.in/yaml.v3"
)

// Config configures a Broker. The zero value is usable: a plain TCP listener
// on ":1883", the limits documented on Limits, forwarding of every topic
// except $SYS, and AckAsync.
type Config struct {
	Listeners Listeners `yaml:"listeners"`
	Limits    Limits    `yaml:"limits"`
	// Forwarding is the ordered list of forwarding rules; the first rule
	// whose filter matches a topic decides. Empty (the zero value): every
	// topic except those under $SYS is forwarded with type DefaultEventType
	// and priority 0. Non-empty: a topic no rule matches stays local.
	Forwarding []Rule `yaml:"forwarding"`
	// AckMode chooses how a QoS 1 PUBACK waits for the outbox commit; see
	// AckMode. "" means AckAsync.
	AckMode AckMode `yaml:"ack_mode"`
	// Auth chooses who may connect and which topics they may use.
	Auth Auth `yaml:"auth"`
	// Sessions keeps persistent sessions across restarts.
	Sessions Sessions `yaml:"sessions"`
}

// Sessions configures where session state outlives the process.
type Sessions struct {
	// File is a SQLite database (created if missing) holding persistent
	// sessions (MQTT 3.1.1 clean session off, MQTT 5 session expiry above 0)
	// with their subscriptions and in-flight messages, the retained
	// messages, and the marker from which forwarded messages are delivered
	// again to local subscribers after a crash. A gateway keeps it beside
	// the outbox database, in its data directory; it is a file of its own so
	// that its writes never wait for, or hold up, the outbox's commits.
	// Relative paths are relative to the working directory. "" (the zero
	// value): sessions, subscriptions and retained messages live in memory
	// only and are lost when the process stops.
	File string `yaml:"file"`
}

// Auth configures device authentication and authorisation.
type Auth struct {
	// CredentialsFile is a YAML CredentialsFile (bcrypt passwords, ACLs with
	// %c/%u), read by New. "" (the zero value): every device may connect and
	// use every topic (AllowAll), unless Broker.SetAuthorizer says otherwise.
	CredentialsFile string `yaml:"credentials_file"`
}

// AckMode is how the broker ties a QoS 1 PUBACK to the outbox commit. In both
// modes a PUBACK is written only after the message is committed.
type AckMode string

const (
	// AckAsync queues the message to the outbox and returns at once, so one
	// client's pipelined publishes share a group commit; after the commit the
	// PUBACKs of each client are written in order, coalesced into one write
	// per client per batch, and the messages are delivered to local
	// subscribers. QoS 2 takes the AckSync path.
	AckAsync AckMode = "async"
	// AckSync blocks mochi's OnPublish until the message is committed, then
	// lets mochi acknowledge and deliver it. Commits group across clients
	// only: one client gets one commit per message.
	AckSync AckMode = "sync"
)

// Listeners configures the network listeners.
type Listeners struct {
	// TCP is the plain MQTT listener.
	TCP TCPListener `yaml:"tcp"`
	// TLS is an MQTT over TLS listener. Nil (the zero value): none.
	TLS *TLSListener `yaml:"tls"`
	// WebSocket is an MQTT over WebSocket listener (subprotocol "mqtt", any
	// path). Nil (the zero value): none.
	WebSocket *WebSocketListener `yaml:"websocket"`
}

// TCPListener configures the plain TCP listener.
type TCPListener struct {
	// Address to listen on. "" means ":1883"; ":0" picks a free port, which
	// Broker.Addr reports.
	Address string `yaml:"address"`
	// Disabled turns the plain listener off (for TLS-only gateways). Zero
	// value: enabled.
	Disabled bool `yaml:"disabled"`
}

// TLSListener configures MQTT over TLS.
type TLSListener struct {
	// Address to listen on. "" means ":8883".
	Address string `yaml:"address"`
	// CertFile and KeyFile are PEM files with the server certificate chain
	// and its private key. Both required.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ClientCAFile, if set, is a PEM bundle of CAs; clients must then present
	// a certificate signed by one of them. "" (the zero value): client
	// certificates are not requested.
	ClientCAFile string `yaml:"client_ca_file"`
}

// WebSocketListener configures MQTT over WebSocket.
type WebSocketListener struct {
	// Address to listen on. "" means ":1882".
	Address string `yaml:"address"`
	// CertFile and KeyFile, if both set, serve wss:// instead of ws://.
	// Zero value: plain ws://.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Limits bounds what clients may do and what the broker holds in memory.
// mochi-mqtt's own defaults are not used: every value is set on purpose.
type Limits struct {
	// MaxPayloadBytes is the largest publish payload accepted. 0 means
	// 256 KiB. An over-size QoS≥1 publish from an MQTT 5 client gets a
	// PUBACK with reason 0x97 (quota exceeded); an MQTT 3.1.1 client is
	// disconnected; QoS 0 is dropped and counted. mochi's
	// MaximumPacketSize (advertised to MQTT 5 clients in CONNACK) is set to
	// MaxPayloadBytes plus 64 KiB for the topic and properties: a larger
	// packet closes the connection.
	MaxPayloadBytes int `yaml:"max_payload_bytes"`
	// MaxConnections is the number of clients connected at once; further
	// CONNECTs are refused (server unavailable / 0x89 busy). 0 means 4096.
	MaxConnections int `yaml:"max_connections"`
	// ReceiveMaximum is how many QoS≥1 publishes one client may have
	// unacknowledged (advertised to MQTT 5 clients). An MQTT 5 client that
	// exceeds it is disconnected with 0x93; an MQTT 3.1.1 client is not read
	// from until a PUBACK frees a slot. 0 means 1024.
	ReceiveMaximum int `yaml:"receive_maximum"`
	// MaxInflight is how many QoS≥1 messages may await a PUBACK from one
	// subscriber (mochi MaximumInflight); past it mochi drops messages to
	// that subscriber, counted in Stats.LocalDropped. 0 means 65535, the most
	// packet identifiers allow (mochi's own default, 8192, dropped PUBACKed
	// messages to a subscriber that fell behind one busy publisher).
	MaxInflight int `yaml:"max_inflight"`
	// MaxClientWritesPending is the length of each client's outbound queue
	// (mochi MaximumClientWritesPending); a full queue drops the message,
	// counted in Stats.LocalDropped. Each connection allocates 8 bytes per
	// slot up front. 0 means 16384 (128 KiB per connection).
	MaxClientWritesPending int `yaml:"max_client_writes_pending"`
	// MessageExpiry caps how long a message queued for a local subscriber or
	// retained on a topic lives in memory (mochi
	// MaximumMessageExpiryInterval; a publisher's shorter MQTT 5 expiry still
	// wins). The durable copy of forwarded messages is the outbox, not this.
	// A message already sent to a subscriber and awaiting its PUBACK is
	// checked once a minute, so it may outlive the cap by up to a minute.
	// 0 means 1 hour; negative means no cap. Whole seconds.
	MessageExpiry time.Duration `yaml:"message_expiry"`
	// SessionExpiry caps how long the session (subscriptions, queued
	// messages) of a disconnected persistent client is kept (mochi
	// MaximumSessionExpiryInterval). 0 means 1 hour. Whole seconds.
	SessionExpiry time.Duration `yaml:"session_expiry"`
	// WriteTimeout bounds every write to a client socket (PUBACKs and
	// deliveries); a client that does not read for this long is
	// disconnected, so a slow socket cannot hold back others. 0 means 10 s.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// PublishRate is the sustained number of publishes a second (any QoS)
	// allowed per client id. An MQTT 5 client over it gets PUBACK (QoS 1) or
	// PUBREC (QoS 2) with reason 0x96, message rate too high, and its QoS 0
	// messages are dropped: the message is not stored, forwarded or
	// delivered, and is counted in Stats.RateLimited. An MQTT 3.1.1 client,
	// which cannot be told, is not read from until it is back under the
	// rate (backpressure; counted in Stats.Throttled). 0 (the zero value):
	// no limit.
	PublishRate float64 `yaml:"publish_rate"`
	// PublishBurst is how many publishes a client may send at once after a
	// quiet period before PublishRate applies. 0 means one second's worth
	// (PublishRate rounded up). Ignored without PublishRate.
	PublishBurst int `yaml:"publish_burst"`
}

// Defaults of the fields documented above.
const (
	DefaultTCPAddress             = ":1883"
	DefaultTLSAddress             = ":8883"
	DefaultWebSocketAddress       = ":1882"
	DefaultMaxPayloadBytes        = 256 << 10
	DefaultMaxConnections         = 4096
	DefaultReceiveMaximum         = 1024
	DefaultMaxInflight            = 65535
	DefaultMaxClientWritesPending = 16384
	DefaultMessageExpiry          = time.Hour
	DefaultSessionExpiry          = time.Hour
	DefaultWriteTimeout           = 10 * time.Second

	// packetOverhead is what MaximumPacketSize allows beyond the payload: a
	// topic of up to 65,535 bytes, properties and the fixed header.
	packetOverhead = 64 << 10
	// maxPublishRate bounds Limits.PublishRate and PublishBurst: far above
	// what one client can send, small enough to stay exact in a float64.
	maxPublishRate = 1 << 30
	// maxPacket is MQTT's largest encodable packet (remaining length limit).
	maxPacket = 268435455
)

// ErrConfig is wrapped by every error Validate and ParseConfig return.
var ErrConfig = errors.New("broker config")

// withDefaults returns c with every zero value replaced by its default.
func (c Config) withDefaults() Config {
	if c.Listeners.TCP.Address == "" {
		c.Listeners.TCP.Address = DefaultTCPAddress
	}
	if c.Listeners.TLS != nil {
		t := *c.Listeners.TLS
		if t.Address == "" {
			t.Address = DefaultTLSAddress
		}
		c.Listeners.TLS = &t
	}
	if c.Listeners.WebSocket != nil {
		w := *c.Listeners.WebSocket
		if w.Address == "" {
			w.Address = DefaultWebSocketAddress
		}
		c.Listeners.WebSocket = &w
	}
	l := &c.Limits
	if l.MaxPayloadBytes == 0 {
		l.MaxPayloadBytes = DefaultMaxPayloadBytes
	}
	if l.MaxConnections == 0 {
		l.MaxConnections = DefaultMaxConnections
	}
	if l.ReceiveMaximum == 0 {
		l.ReceiveMaximum = DefaultReceiveMaximum
	}
	if l.MaxInflight == 0 {
		l.MaxInflight = DefaultMaxInflight
	}
	if l.MaxClientWritesPending == 0 {
		l.MaxClientWritesPending = DefaultMaxClientWritesPending
	}
	if l.MessageExpiry == 0 {
		l.MessageExpiry = DefaultMessageExpiry
	}
	if l.SessionExpiry == 0 {
		l.SessionExpiry = DefaultSessionExpiry
	}
	if l.WriteTimeout == 0 {
		l.WriteTimeout = DefaultWriteTimeout
	}
	if l.PublishRate > 0 && l.PublishBurst == 0 {
		l.PublishBurst = int(math.Ceil(l.PublishRate))
	}
	if c.AckMode == "" {
		c.AckMode = AckAsync
	}
	return c
}

// Validate reports the first invalid field, named by its YAML path. Errors
// wrap ErrConfig (and ErrBadFilter for a bad rule filter).
func (c Config) Validate() error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrConfig, field, fmt.Sprintf(format, args...))
	}
	switch c.AckMode {
	case "", AckAsync, AckSync:
	default:
		return bad("ack_mode", "%q is not %q or %q", c.AckMode, AckAsync, AckSync)
	}
	if c.Listeners.TCP.Disabled && c.Listeners.TLS == nil && c.Listeners.WebSocket == nil {
		return bad("listeners", "every listener is disabled")
	}
	if t := c.Listeners.TLS; t != nil {
		if t.CertFile == "" {
			return bad("listeners.tls.cert_file", "required")
		}
		if t.KeyFile == "" {
			return bad("listeners.tls.key_file", "required")
		}
	}
	if w := c.Listeners.WebSocket; w != nil && (w.CertFile == "") != (w.KeyFile == "") {
		return bad("listeners.websocket", "cert_file and key_file must be set together")
	}
	l := c.Limits
	if l.MaxPayloadBytes < 0 || l.MaxPayloadBytes > maxPacket-packetOverhead {
		return bad("limits.max_payload_bytes", "%d is outside 0..%d", l.MaxPayloadBytes, maxPacket-packetOverhead)
	}
	if l.ReceiveMaximum < 0 || l.ReceiveMaximum > 65535 {
		return bad("limits.receive_maximum", "%d is outside 0..65535", l.ReceiveMaximum)
	}
	if l.MaxInflight < 0 || l.MaxInflight > 65535 {
		return bad("limits.max_inflight", "%d is outside 0..65535", l.MaxInflight)
	}
	if l.MaxConnections < 0 {
		return bad("limits.max_connections", "%d is negative", l.MaxConnections)
	}
	if l.MaxClientWritesPending < 0 || l.MaxClientWritesPending > 1<<20 {
		return bad("limits.max_client_writes_pending", "%d is outside 0..%d", l.MaxClientWritesPending, 1<<20)
	}
	if l.SessionExpiry < 0 || l.SessionExpiry > (1<<32-1)*time.Second {
		return bad("limits.session_expiry", "%v is outside 0..%v", l.SessionExpiry, (1<<32-1)*time.Second)
	}
	if l.MessageExpiry > (1<<32-1)*time.Second {
		return bad("limits.message_expiry", "%v is more than %v", l.MessageExpiry, (1<<32-1)*time.Second)
	}
	if l.WriteTimeout < 0 {
		return bad("limits.write_timeout", "%v is negative", l.WriteTimeout)
	}
	if math.IsNaN(l.PublishRate) || l.PublishRate < 0 || l.PublishRate > maxPublishRate {
		return bad("limits.publish_rate", "%v is outside 0..%d messages a second", l.PublishRate, maxPublishRate)
	}
	if l.PublishBurst < 0 || l.PublishBurst > maxPublishRate {
		return bad("limits.publish_burst", "%d is outside 0..%d", l.PublishBurst, maxPublishRate)
	}
	for i, r := range c.Forwarding {
		if err := ValidateFilter(r.Filter); err != nil {
			return fmt.Errorf("%w: forwarding[%d].filter %q: %w", ErrConfig, i, r.Filter, err)
		}
	}
	return nil
}

// ParseConfig decodes a YAML configuration, rejecting unknown keys, and
// validates it. Empty input is the zero Config.
func ParseConfig(data []byte) (Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return Config{}, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}
