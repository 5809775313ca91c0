package broker

import (
	"bytes"
	"errors"
	"fmt"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tributary-io/tributary/edge/outbox"
)

// hook is the broker's mochi hook: it routes publishes, commits forwarded
// ones to the outbox before they are acknowledged, and tracks per-client
// acknowledgement sessions for AckAsync.
type hook struct {
	mqtt.HookBase
	b *Broker
}

var _ mqtt.Hook = (*hook)(nil)

func (h *hook) ID() string { return "tributary-outbox" }

func (h *hook) Provides(b byte) bool {
	switch b {
	case mqtt.OnPublish, mqtt.OnDisconnect, mqtt.OnPacketEncode, mqtt.OnWillSent:
		return true
	case mqtt.OnPublished:
		return h.b.marks != nil
	}
	return false
}

// OnPublished runs after mochi delivered a publish it acknowledged itself:
// a forwarded one committed on the blocking path is now delivered. Only a
// device's own publish, not taken by this package, can be one: the common
// cases (this package's local deliveries through the inline client, and
// publishes answered asynchronously) return before the map lookup.
func (h *hook) OnPublished(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline || pk.Ignore {
		return
	}
	if seq, ok := h.b.syncSeqs.LoadAndDelete(cl); ok {
		h.b.marks.delivered(seq.(uint64))
	}
}

// OnWillSent forwards a will message that mochi has just published to
// local subscribers, if the rules forward its topic. Nobody waits for its
// commit: there is no client left to acknowledge.
func (h *hook) OnWillSent(cl *mqtt.Client, pk packets.Packet) {
	b := h.b
	route := b.router.route(pk.TopicName)
	if !route.Forward {
		return
	}
	b.willMu.Lock()
	defer b.willMu.Unlock()
	if b.noWills {
		return // Close is waiting for the last appends; a delayed will came too late
	}
	b.received.Add(1)
	b.forwarded.Add(1)
	b.work.Add(1)
	b.ob.Append(b.message(cl, &pk, route), func(seq uint64, err error) {
		b.countCommit(err)
		if err == nil {
			b.marks.seen(seq) // mochi delivered it already
		}
		b.work.Done()
	})
}

// OnPacketEncode advertises the Maximum Packet Size in a successful CONNACK
// (MQTT 5 only; mochi enforces the limit but never announces it).
func (h *hook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Connack && pk.ReasonCode < packets.ErrUnspecifiedError.Code {
		pk.Properties.MaximumPacketSize = uint32(h.b.cfg.Limits.MaxPayloadBytes + packetOverhead)
	}
	return pk
}

// OnDisconnect forgets the client's session. Entries still queued keep a
// pointer to it and are finished (delivered; their PUBACK write fails).
func (h *hook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	h.b.sessMu.Lock()
	delete(h.b.sessions, cl)
	h.b.sessMu.Unlock()
	if h.b.rates != nil {
		h.b.rates.left(cl.ID, h.b.now())
	}
	if seq, ok := h.b.syncSeqs.LoadAndDelete(cl); ok {
		// mochi did not get to deliver it (the PUBACK write failed): the
		// client was not acknowledged and resends.
		h.b.marks.delivered(seq.(uint64))
	}
}

// OnPublish runs on the publishing client's read goroutine, before mochi
// acknowledges and delivers. Returning packets.ErrRejectPacket makes mochi do
// neither: the broker then answers the client itself (or, for a refusal,
// does not answer).
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	b := h.b
	if cl.Net.Inline {
		return restoreOrigin(pk), nil
	}
	b.received.Add(1)
	limited := b.overRate(cl) // may wait (MQTT 3.1.1 backpressure)
	route := b.route(cl, &pk)
	qos := pk.FixedHeader.Qos
	if qos == 1 && b.cfg.AckMode == AckAsync {
		return b.publishAsync(cl, pk, route, limited)
	}
	if limited {
		b.rejected.Add(1)
		return b.refuse(cl, pk, codeRateTooHigh)
	}
	if len(pk.Payload) > b.cfg.Limits.MaxPayloadBytes {
		b.rejected.Add(1)
		return b.refuse(cl, pk, b.tooLarge())
	}
	if !route.Forward {
		return pk, nil
	}
	b.forwarded.Add(1)
	m := b.message(cl, &pk, route)
	if qos == 0 {
		b.work.Add(1)
		b.ob.Append(m, func(seq uint64, err error) {
			b.countCommit(err)
			if err == nil {
				b.marks.seen(seq) // mochi delivers it when OnPublish returns
			}
			b.work.Done()
		})
		return pk, nil
	}
	// AckSync, or QoS 2 in either mode: wait for the commit here.
	type result struct {
		seq uint64
		err error
	}
	done := make(chan result, 1)
	b.work.Add(1)
	b.ob.Append(m, func(seq uint64, err error) {
		b.countCommit(err)
		if err == nil {
			b.marks.committed(seq)
		}
		done <- result{seq, err}
		b.work.Done()
	})
	select {
	case r := <-done:
		if r.err != nil {
			b.rejected.Add(1)
			return b.refuse(cl, pk, commitCode(r.err))
		}
		if b.marks != nil {
			b.syncSeqs.Store(cl, r.seq) // delivered once mochi calls OnPublished
		}
		return pk, nil
	case <-b.closing:
		// Shutting down: no acknowledgement; the client resends after it
		// reconnects (a duplicate row if this commit still succeeds).
		return pk, packets.ErrRejectPacket
	}
}

// refuse answers a publish that will not be acknowledged: MQTT 5 gets a
// negative PUBACK (PUBREC for QoS 2) carrying code; MQTT 3.1.1, which has no
// negative acknowledgement, is disconnected so that it resends. QoS 0 is
// dropped. It is used on the read goroutine only (AckSync and QoS 0/2).
func (b *Broker) refuse(cl *mqtt.Client, pk packets.Packet, code packets.Code) (packets.Packet, error) {
	switch {
	case pk.FixedHeader.Qos == 0:
	case cl.Properties.ProtocolVersion == 5:
		typ := packets.Puback
		if pk.FixedHeader.Qos == 2 {
			typ = packets.Pubrec
		}
		ack := packets.Packet{
			FixedHeader: packets.FixedHeader{Type: typ},
			PacketID:    pk.PacketID,
			ReasonCode:  code.Code,
			Properties:  packets.Properties{ReasonString: code.Reason},
		}
		if err := cl.WritePacket(ack); err != nil {
			b.log.Debug("negative ack not written", "client", cl.ID, "error", err)
		}
	default:
		cl.Stop(code)
	}
	return pk, packets.ErrRejectPacket
}

// commitCode is the MQTT 5 reason code for a message the outbox did not
// store: 0x97 (quota exceeded) when it is full, 0x80 otherwise.
func commitCode(err error) packets.Code {
	switch {
	case errors.Is(err, outbox.ErrQuotaExceeded):
		return packets.Code{Code: packets.ErrQuotaExceeded.Code, Reason: "outbox quota exceeded"}
	case errors.Is(err, outbox.ErrDiskFull):
		return packets.Code{Code: packets.ErrQuotaExceeded.Code, Reason: "outbox disk full"}
	}
	return packets.Code{Code: packets.ErrUnspecifiedError.Code, Reason: "outbox commit failed"}
}

func (b *Broker) tooLarge() packets.Code {
	return packets.Code{
		Code:   packets.ErrQuotaExceeded.Code,
		Reason: fmt.Sprintf("payload larger than %d bytes", b.cfg.Limits.MaxPayloadBytes),
	}
}

func (b *Broker) countCommit(err error) {
	if err != nil {
		b.commitErrors.Add(1)
		b.log.Warn("outbox commit failed", "error", err)
		return
	}
	b.committed.Add(1)
}

// message builds the outbox message for a forwarded publish. The payload is
// copied: the outbox keeps it until the commit while mochi delivers pk.
func (b *Broker) message(cl *mqtt.Client, pk *packets.Packet, r Route) outbox.Message {
	m := outbox.Message{
		ClientID:    cl.ID,
		Username:    string(cl.Properties.Username),
		Topic:       pk.TopicName,
		Payload:     bytes.Clone(pk.Payload),
		QoS:         pk.FixedHeader.Qos,
		Retain:      pk.FixedHeader.Retain,
		ContentType: pk.Properties.ContentType,
		EventType:   r.EventType,
		Priority:    r.Priority,
		Received:    b.now(),
	}
	if len(pk.Properties.User) > 0 {
		m.UserProperties = make([]outbox.UserProperty, len(pk.Properties.User))
		for i, u := range pk.Properties.User {
			m.UserProperties[i] = outbox.UserProperty{Key: u.Key, Value: u.Val}
		}
	}
	return m
}

// deliveryMarker tags packets the broker injects through mochi's inline
// client for local delivery. It is compared by address, so no packet from
// elsewhere can carry it.
var deliveryMarker = []byte("tributary-local-delivery")

func isDelivery(pk *packets.Packet) bool {
	p := pk.Connect.ProtocolName
	return len(p) == len(deliveryMarker) && &p[0] == &deliveryMarker[0]
}

// restoreOrigin undoes what injecting through the inline client changed:
// the origin becomes the publishing device again, so NoLocal subscriptions
// and retained-message origins are right. Other inline publishes (the
// gateway's own) pass unchanged and are not forwarded.
func restoreOrigin(pk packets.Packet) packets.Packet {
	if !isDelivery(&pk) {
		return pk
	}
	pk.Origin = pk.Connect.ClientIdentifier
	pk.Connect = packets.ConnectParams{}
	return pk
}
