package devicesdk

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/cloudevents/sdk-go/v2/event"
)

// ContentTypeStructured is the media type of a CloudEvent in structured JSON
// mode: the whole event, attributes and data, as one JSON object. That is
// what PublishEvent puts in an MQTT payload (MQTT 3.1.1 has no properties to
// carry binary-mode attributes).
const ContentTypeStructured = "application/cloudevents+json"

// encodeEvent fills in the attributes a device may leave out and returns the
// event in structured JSON mode. Defaults: ID a random 128-bit hex string;
// Source "/devices/<deviceID>"; SpecVersion 1.0 (event.New's). The caller's
// ev is not modified.
func encodeEvent(deviceID string, ev event.Event) ([]byte, error) {
	ev = ev.Clone()
	if ev.SpecVersion() == "" {
		ev.SetSpecVersion(event.CloudEventsVersionV1)
	}
	if ev.ID() == "" {
		var b [16]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("devicesdk: event id: %w", err)
		}
		ev.SetID(hex.EncodeToString(b[:]))
	}
	if ev.Source() == "" {
		ev.SetSource("/devices/" + deviceID)
	}
	if err := ev.Validate(); err != nil {
		return nil, fmt.Errorf("%w: invalid CloudEvent: %w", ErrConfig, err)
	}
	b, err := json.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("devicesdk: encode CloudEvent: %w", err)
	}
	return b, nil
}

// PublishEvent publishes ev to topic as a structured-mode JSON CloudEvent
// (see ContentTypeStructured) and, like Publish, returns once the gateway
// acknowledged it. A missing ID or Source is filled in (see Device's
// PublishEvent); an event that is still invalid is rejected with an error
// wrapping ErrConfig, and nothing is sent.
func (c *Client) PublishEvent(ctx context.Context, topic string, ev event.Event) error {
	b, err := encodeEvent(c.deviceID, ev)
	if err != nil {
		return err
	}
	return c.Publish(ctx, topic, b)
}

// PublishEvent buffers ev for topic as a structured-mode JSON CloudEvent
// (see ContentTypeStructured) and returns once it is fsync'd, like Enqueue.
// A missing ID is set to a random 128-bit hex string and a missing Source to
// "/devices/<DeviceID>"; an event that is still invalid is rejected with an
// error wrapping ErrConfig. ctx is checked before buffering only: buffering
// itself is one fsync'd write.
func (d *Device) PublishEvent(ctx context.Context, topic string, ev event.Event) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b, err := encodeEvent(d.cfg.DeviceID, ev)
	if err != nil {
		return err
	}
	return d.Enqueue(topic, b)
}
