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
package devicesdk

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
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
}

// Validate reports a missing Broker or DeviceID or a negative duration, as
// an error wrapping ErrConfig.
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
	return nil
}

// ErrConfig marks an invalid Config.
var ErrConfig = errors.New("devicesdk: invalid config")

// Client is a connected device. It is safe for concurrent use.
type Client struct {
	c        mqtt.Client
	deviceID string
}

// Connect connects to the gateway and keeps reconnecting in the background
// after a connection loss. It returns when the first connection is up or ctx
// ends.
func Connect(ctx context.Context, cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := mqtt.NewClient(clientOptions(cfg))
	tok := c.Connect()
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return nil, fmt.Errorf("devicesdk: connect %s: %w", cfg.Broker, err)
		}
	case <-ctx.Done():
		c.Disconnect(0)
		return nil, ctx.Err()
	}
	return &Client{c: c, deviceID: cfg.DeviceID}, nil
}

// clientOptions are the paho options both Client and Device use: a
// persistent session (clean session off), automatic reconnect and retried
// first connection, in-order delivery, and an in-memory store that resends
// in-flight messages after a reconnect in the order they were published.
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
		SetOrderMatters(true).
		SetStore(mqtt.NewOrderedMemoryStore())
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

// Close waits up to grace for in-flight publishes, then disconnects.
func (c *Client) Close(grace time.Duration) {
	c.c.Disconnect(uint(grace / time.Millisecond))
}
