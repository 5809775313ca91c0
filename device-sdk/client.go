// Package devicesdk is the Go library a device uses to talk to a Tributary
// gateway over MQTT (on eclipse/paho.mqtt.golang).
//
// There are two ways to publish:
//
//   - Client (Connect, Publish, PublishEvent) sends directly with QoS 1:
//     Publish returns only once the gateway acknowledged the message, which
//     with Tributary means the message is committed to the gateway's durable
//     outbox. Nothing survives a reboot of the device.
//   - Device (Open, Enqueue, PublishEvent, Flush, Close) goes through a
//     durable offline buffer: Enqueue returns once the message is fsync'd to
//     a journal in DeviceConfig.BufferDir, and a background sender delivers
//     buffered messages in order, removing each only after the gateway's
//     PUBACK. It works while the gateway is unreachable, reconnects on its
//     own, and after a crash or reboot resends whatever was not
//     acknowledged (at least once: a crash between send and PUBACK can
//     repeat a message). The buffer is bounded in bytes, with a RejectNew
//     or DropOldest overflow policy.
//
// PublishEvent sends a CloudEvent (cloudevents/sdk-go) in structured JSON
// mode (ContentTypeStructured), which MQTT 3.1.1 can carry.
//
// Both answer commands from the cloud (HandleCommand, Config.Commands): a
// command arrives on CommandTopic, runs its handler once per request id, and
// the reply (a CommandReply) goes back on ReplyTopic, through the durable
// buffer on a Device. ReportState publishes the device's reported
// properties as a JSON merge patch on StateTopic; the cloud keeps the merged
// result (cloud/devicestate).
package devicesdk

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// Config configures a Client. Every field documents its zero-value default.
type Config struct {
	// Broker is the gateway's URL: tcp://host:1883, ssl://host:8883 or
	// ws://host:1882. Required.
	Broker string
	// DeviceID is the MQTT client id; it becomes the device part of the
	// CloudEvent source. Required.
	DeviceID string
	// Username and Password authenticate the device. "" (the zero value):
	// none are sent.
	Username, Password string
	// TLS configures ssl:// and wss:// brokers (client certificates go in
	// TLS.Certificates). nil: the system roots, no client certificate.
	TLS *tls.Config
	// ConnectTimeout bounds one connection attempt. 0 means 10 s.
	ConnectTimeout time.Duration
	// KeepAlive is the MQTT keep-alive. 0 means 30 s.
	KeepAlive time.Duration
	// ReconnectInterval is the wait between attempts at the first
	// connection and the cap of the back-off between reconnect attempts.
	// 0 means 5 s.
	ReconnectInterval time.Duration
	// Commands are command handlers by name, installed before the first
	// connection so that commands the gateway kept while the device was
	// away find their handler (HandleCommand adds more later). A name must
	// be one MQTT topic level without wildcards. nil: none (every command
	// is answered 404 until HandleCommand registers its handler).
	Commands map[string]CommandHandler
}

// Validate reports a missing Broker or DeviceID, a DeviceID that is not one
// MQTT topic level, a negative duration or a bad Commands entry, as an error
// wrapping ErrConfig.
func (cfg Config) Validate() error {
	if cfg.Broker == "" {
		return fmt.Errorf("%w: Broker is required", ErrConfig)
	}
	if cfg.DeviceID == "" {
		return fmt.Errorf("%w: DeviceID is required", ErrConfig)
	}
	if cfg.ConnectTimeout < 0 || cfg.KeepAlive < 0 || cfg.ReconnectInterval < 0 {
		return fmt.Errorf("%w: negative duration", ErrConfig)
	}
	if strings.ContainsAny(cfg.DeviceID, "/+#") {
		return fmt.Errorf("%w: DeviceID %q contains '/', '+' or '#'", ErrConfig, cfg.DeviceID)
	}
	for name, h := range cfg.Commands {
		if name == "" || strings.ContainsAny(name, "/+#") {
			return fmt.Errorf("%w: command name %q is not one topic level", ErrConfig, name)
		}
		if h == nil {
			return fmt.Errorf("%w: nil handler for command %q", ErrConfig, name)
		}
	}
	return nil
}

// ErrConfig marks an invalid Config.
var ErrConfig = errors.New("devicesdk: invalid config")

// Client is a connected device. It is safe for concurrent use.
type Client struct {
	c        mqtt.Client
	deviceID string
	cmd      *commander
}

// Connect connects to the gateway and keeps reconnecting in the background
// after a connection loss. It returns when the first connection is up or ctx
// ends. On every connection it subscribes (QoS 1) to the device's commands
// (see HandleCommand).
func Connect(ctx context.Context, cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cmd := newCommander(cfg.DeviceID, discard(), cfg.Commands, nil)
	c := newPahoClient(cfg, cmd, newAckStore(mqtt.NewOrderedMemoryStore()))
	cmd.reply = publishReply(c)
	tok := c.Connect()
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return nil, fmt.Errorf("devicesdk: connect %s: %w", cfg.Broker, err)
		}
	case <-ctx.Done():
		c.Disconnect(0)
		cmd.close(ctx)
		return nil, ctx.Err()
	}
	return &Client{c: c, deviceID: cfg.DeviceID, cmd: cmd}, nil
}

// newPahoClient makes the paho client with cmd subscribing on every
// connection and routing commands that arrive before the subscription is
// renewed (a resumed session) to cmd. store holds in-flight messages; it
// must resend them in the order they were published.
func newPahoClient(cfg Config, cmd *commander, store mqtt.Store) mqtt.Client {
	opts := clientOptions(cfg).SetStore(store)
	opts.SetOnConnectHandler(cmd.onConnect)
	c := mqtt.NewClient(opts)
	c.AddRoute(commandFilter(cfg.DeviceID), cmd.onMessage)
	return c
}

// clientOptions are the paho options both Client and Device use: a
// persistent session (clean session off), automatic reconnect and retried
// first connection, and in-order delivery. newPahoClient adds the store.
func clientOptions(cfg Config) *mqtt.ClientOptions {
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = 30 * time.Second
	}
	if cfg.ReconnectInterval == 0 {
		cfg.ReconnectInterval = 5 * time.Second
	}
	opts := mqtt.NewClientOptions().
		AddBroker(cfg.Broker).
		SetClientID(cfg.DeviceID).
		SetUsername(cfg.Username).
		SetPassword(cfg.Password).
		SetCleanSession(false).
		SetAutoReconnect(true).
		SetConnectRetry(true).
		SetConnectRetryInterval(cfg.ReconnectInterval).
		SetMaxReconnectInterval(cfg.ReconnectInterval).
		SetConnectTimeout(cfg.ConnectTimeout).
		SetKeepAlive(cfg.KeepAlive).
		SetOrderMatters(true)
	if cfg.TLS != nil {
		opts.SetTLSConfig(cfg.TLS)
	}
	return opts
}

// Publish sends payload to topic with QoS 1 and returns once the gateway
// acknowledged it (durably committed), or with the error that prevented it.
// If ctx ends first the message may still be delivered later.
func (c *Client) Publish(ctx context.Context, topic string, payload []byte) error {
	if topic == "" {
		return errors.New("devicesdk: empty topic")
	}
	tok := c.c.Publish(topic, 1, false, payload)
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return fmt.Errorf("devicesdk: publish to %s: %w", topic, err)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Connected reports whether the connection is up now.
func (c *Client) Connected() bool { return c.c.IsConnectionOpen() }

// Close cancels running command handlers' context and waits up to grace
// for them to reply, then waits up to grace for in-flight publishes and
// disconnects. Commands arriving meanwhile are not run.
func (c *Client) Close(grace time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	c.cmd.close(ctx)
	cancel()
	c.c.Disconnect(uint(grace / time.Millisecond))
}
