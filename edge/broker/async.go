package broker

import (
	"bytes"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// session is one connected client's acknowledgement queue for AckAsync.
//
// Goroutines: the client's read goroutine appends entries (publishAsync);
// outbox callbacks mark them done (complete); at most one drain goroutine
// per session (draining) writes acknowledgements and delivers, taking
// entries from the head only, so PUBACKs leave in the order the publishes
// arrived whatever order commits report in. An entry leaves the queue only
// after its PUBACK was written and it was delivered, so an empty queue means
// nothing of this client is in flight and mochi may acknowledge directly.
type session struct {
	cl    *mqtt.Client
	v5    bool
	space chan struct{} // capacity 1: "entries left the queue"

	mu       sync.Mutex
	queue    []*entry // in arrival order
	unacked  int      // entries whose PUBACK has not been written yet
	draining bool     // a drain goroutine owns the head
}

// entry is one QoS 1 publish waiting for its acknowledgement.
type entry struct {
	msg delivery // delivered locally before the ack if code is success
	// done, code and seq are guarded by session.mu until done is set;
	// after that they are read by the drain goroutine only.
	done bool
	code packets.Code // CodeSuccess or the refusal
	seq  uint64       // the outbox seq once committed (0: not forwarded or not committed)
}

func (b *Broker) session(cl *mqtt.Client) *session {
	b.sessMu.RLock()
	s := b.sessions[cl]
	b.sessMu.RUnlock()
	if s != nil {
		return s
	}
	b.sessMu.Lock()
	defer b.sessMu.Unlock()
	if s = b.sessions[cl]; s == nil {
		s = &session{cl: cl, v5: cl.Properties.ProtocolVersion == 5, space: make(chan struct{}, 1)}
		b.sessions[cl] = s
	}
	return s
}

// publishAsync handles a QoS 1 publish in AckAsync mode; see the package
// documentation.
// limited reports that overRate refused it.
func (b *Broker) publishAsync(cl *mqtt.Client, pk packets.Packet, route Route, limited bool) (packets.Packet, error) {
	s := b.session(cl)
	limit := b.cfg.Limits.ReceiveMaximum

	s.mu.Lock()
	for s.unacked >= limit || len(s.queue) >= limit {
		if s.v5 && s.unacked >= limit {
			s.mu.Unlock()
			b.rejected.Add(1)
			_ = b.srv.DisconnectClient(cl, packets.ErrReceiveMaximum)
			return pk, packets.ErrRejectPacket
		}
		// MQTT 3.1.1 has no Receive Maximum: stop reading this client
		// until a slot frees.
		s.mu.Unlock()
		select {
		case <-s.space:
		case <-b.closing:
			return pk, packets.ErrRejectPacket
		}
		s.mu.Lock()
	}

	e := &entry{msg: deliveryOf(&pk), code: packets.CodeSuccess}
	forward := false
	switch {
	case limited:
		e.done, e.code = true, codeRateTooHigh
	case len(pk.Payload) > b.cfg.Limits.MaxPayloadBytes:
		e.done, e.code = true, b.tooLarge()
	case route.Forward:
		forward = true
	case len(s.queue) == 0:
		// Not forwarded and nothing of this client in flight: mochi may
		// acknowledge and deliver it right now without breaking order.
		s.mu.Unlock()
		return pk, nil
	default:
		e.done = true // local only, but after the acks queued before it
	}
	s.queue = append(s.queue, e)
	s.unacked++
	b.work.Add(1) // released when the entry leaves the queue
	start := e.done && !s.draining
	if start {
		s.draining = true
		b.work.Add(1)
	}
	s.mu.Unlock()
	if start {
		go b.drain(s)
	}

	if forward {
		b.forwarded.Add(1)
		b.ob.Append(b.message(cl, &pk, route), func(seq uint64, err error) {
			b.countCommit(err)
			code := packets.CodeSuccess
			if err != nil {
				code, seq = commitCode(err), 0
			} else {
				b.marks.committed(seq)
			}
			b.complete(s, e, code, seq)
		})
	}
	return taken(pk), nil
}

// taken is what OnPublish returns to mochi for a publish this package
// answers itself: as QoS 0 without the retain flag and with Ignore set, mochi
// (v2.7.9 Server.processPublish) neither acknowledges, retains nor delivers
// it. Returning packets.ErrRejectPacket has the same effect, but mochi then
// boxes the whole packet for a DEBUG record on every publish: about 800
// bytes of garbage per message, whatever the log level.
func taken(pk packets.Packet) packets.Packet {
	pk.FixedHeader.Qos, pk.FixedHeader.Retain, pk.Ignore = 0, false, true
	return pk
}

// complete records an entry's outcome and makes sure a drain runs. It runs
// on the outbox writer goroutine, so it only flips state and may start a
// goroutine.
func (b *Broker) complete(s *session, e *entry, code packets.Code, seq uint64) {
	s.mu.Lock()
	e.done, e.code, e.seq = true, code, seq
	start := !s.draining
	if start {
		s.draining = true
		b.work.Add(1)
	}
	s.mu.Unlock()
	if start {
		go b.drain(s)
	}
}

// drain delivers the finished entries at the head of the queue locally,
// writes their acknowledgements in one socket write, removes them, and
// repeats until the head is unfinished.
func (b *Broker) drain(s *session) {
	defer b.work.Done()
	for {
		s.mu.Lock()
		n := 0
		for n < len(s.queue) && s.queue[n].done {
			n++
		}
		if n == 0 {
			s.draining = false
			s.mu.Unlock()
			return
		}
		// Appends only write past len(s.queue), so batch stays intact
		// until the compaction below.
		batch := s.queue[:n:n]
		s.unacked -= n // counted as acknowledged before the client can see the PUBACK
		s.mu.Unlock()

		// Deliver first, as mochi does: once a client holds the PUBACK, a
		// retained message is in place and subscribers have it queued.
		for _, e := range batch {
			if e.code == packets.CodeSuccess {
				b.deliver(s.cl.ID, &e.msg)
				if e.seq != 0 {
					b.marks.delivered(e.seq)
				}
			}
		}
		b.writeAcks(s, batch)

		s.mu.Lock()
		rest := copy(s.queue, s.queue[n:])
		clear(s.queue[rest:])
		s.queue = s.queue[:rest]
		s.mu.Unlock()
		select {
		case s.space <- struct{}{}:
		default:
		}
		b.work.Add(-n)
	}
}

// writeAcks writes one PUBACK per entry, in order, in a single write. An
// MQTT 3.1.1 client whose message was refused gets the PUBACKs before it and
// is then disconnected, so it resends the refused message and those after.
func (b *Broker) writeAcks(s *session, batch []*entry) {
	cl := s.cl
	noProblemInfo := cl.Properties.Props.RequestProblemInfoFlag && cl.Properties.Props.RequestProblemInfo == 0
	var buf bytes.Buffer
	var stop error
	count := 0
	for _, e := range batch {
		if e.code.Code >= 0x80 {
			b.rejected.Add(1)
			if !s.v5 {
				if stop == nil {
					stop = e.code
				}
				continue
			}
		}
		if stop != nil {
			continue
		}
		ack := packetsPuback(e.msg.id, e.code, cl.Properties.ProtocolVersion, noProblemInfo)
		if err := ack.PubackEncode(&buf); err != nil {
			stop = err
			continue
		}
		count++
	}
	if buf.Len() > 0 && !cl.Closed() {
		cl.Lock()
		n, err := cl.Net.Conn.Write(buf.Bytes())
		cl.Unlock()
		if err != nil {
			b.log.Debug("acknowledgements not written; closing client", "client", cl.ID, "error", err)
			cl.Stop(err)
		} else {
			atomic.AddInt64(&b.srv.Info.BytesSent, int64(n))
			atomic.AddInt64(&b.srv.Info.PacketsSent, int64(count))
		}
	}
	if stop != nil {
		b.log.Info("disconnecting MQTT 3.1.1 client: publish refused", "client", cl.ID, "reason", stop)
		cl.Stop(stop)
	}
}

func packetsPuback(id uint16, code packets.Code, version byte, noProblemInfo bool) packets.Packet {
	ack := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Puback},
		PacketID:        id,
		ReasonCode:      code.Code,
		ProtocolVersion: version,
	}
	if code.Code >= 0x80 && !noProblemInfo {
		ack.Properties.ReasonString = code.Reason
	}
	return ack
}

// delivery is what local delivery needs of a publish, kept while it waits
// for its commit: a third of a packets.Packet's 800 bytes.
type delivery struct {
	id      uint16 // the publisher's packet identifier (mochi validates it on injection)
	topic   string
	payload []byte
	props   packets.Properties
	qos     byte
	retain  bool
}

func deliveryOf(pk *packets.Packet) delivery {
	return delivery{id: pk.PacketID, topic: pk.TopicName, payload: pk.Payload, props: pk.Properties, qos: pk.FixedHeader.Qos, retain: pk.FixedHeader.Retain}
}

// deliver hands a committed publish to local subscribers through mochi's
// inline client, which keeps MQTT 5 properties (Server.Publish drops them);
// the hook's restoreOrigin puts the publisher back as the origin.
func (b *Broker) deliver(origin string, d *delivery) {
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: d.qos, Retain: d.retain},
		PacketID:    d.id,
		TopicName:   d.topic,
		Payload:     d.payload,
		Properties:  d.props,
		Connect:     packets.ConnectParams{ClientIdentifier: origin, ProtocolName: deliveryMarker},
	}
	pk.Properties.TopicAlias, pk.Properties.TopicAliasFlag = 0, false
	if err := b.srv.InjectPacket(b.inline, pk); err != nil {
		b.log.Warn("local delivery failed", "client", origin, "topic", pk.TopicName, "error", err)
	}
}
