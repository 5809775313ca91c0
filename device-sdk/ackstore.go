package devicesdk

import (
	"strconv"
	"strings"
	"sync"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// ackStore is paho's message store (an OrderedMemoryStore: resends in
// publish order) with a signal for each outbound QoS 1 publish when the
// gateway's PUBACK removes it, and publishes stored as copies (see Put).
//
// Why not the publish token: in paho v1.5.1 with a persistent session and
// automatic reconnect, a connection loss does not fail the tokens of
// unacknowledged publishes. At the reconnect, resume() re-claims each stored
// message's packet id for a fresh internal token, and claimID completes the
// caller's old token with no error, before the stored message is even
// written again to the new connection and long before its PUBACK. A sender
// that trusts that token removes the message from its buffer too early (a
// crash then loses it) and sends the next message, which can reach the
// gateway before paho's resend of the previous one: the out-of-order flake
// of TestDeviceResendsAfterConnectionLoss.
//
// The store, by contrast, is what paho itself trusts: it deletes a
// publish's "o.<id>" entry only when the PUBACK for that id is read off
// the wire (persistInbound), before it completes any token. So a
// publish's acked channel closes exactly on its PUBACK.
type ackStore struct {
	mqtt.Store

	mu sync.Mutex
	// pending holds the outbound QoS 1 publishes put and not yet deleted,
	// by packet id; each channel is closed when its entry is deleted.
	pending map[uint16]chan struct{}
}

var _ mqtt.Store = (*ackStore)(nil)

func newAckStore(s mqtt.Store) *ackStore {
	return &ackStore{Store: s, pending: make(map[uint16]chan struct{})}
}

// closedCh is returned for an id with nothing pending: already acknowledged.
var closedCh = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// outboundID parses paho's "o.<id>" key; ok is false for any other key.
func outboundID(key string) (uint16, bool) {
	s, ok := strings.CutPrefix(key, "o.")
	if !ok {
		return 0, false
	}
	id, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, false
	}
	return uint16(id), true
}

// Put stores the message and, for an outbound QoS 1 publish, starts
// waiting for its PUBACK (a re-put of a pending id keeps waiting on the same
// channel).
//
// A publish is stored as a copy. paho v1.5.1 stores the very packet it
// sends, and at a reconnect resume() sets Dup on the stored packet and
// sends it; if the Publish call that made it was still waiting to hand the
// same packet to the connection when the old one failed, the new
// connection writes that packet while resume() writes its Dup flag (a data
// race the race detector reports, and two writers of RemainingLength).
// With a copy, paho's resend and the original send are separate packets.
// The payload is shared: nothing writes it.
func (s *ackStore) Put(key string, m packets.ControlPacket) {
	if p, ok := m.(*packets.PublishPacket); ok {
		c := *p
		m = &c
		if id, ok := outboundID(key); ok && p.Qos == 1 {
			s.mu.Lock()
			if _, ok := s.pending[id]; !ok {
				s.pending[id] = make(chan struct{})
			}
			s.mu.Unlock()
		}
	}
	s.Store.Put(key, m)
}

// Del removes the message and signals a pending publish with that id as
// acknowledged. paho deletes an outbound publish only on its PUBACK.
func (s *ackStore) Del(key string) {
	s.Store.Del(key)
	id, ok := outboundID(key)
	if !ok {
		return
	}
	s.mu.Lock()
	if ch, ok := s.pending[id]; ok {
		close(ch)
		delete(s.pending, id)
	}
	s.mu.Unlock()
}

// Reset forgets every stored message. Pending publishes are not signalled:
// forgotten is not acknowledged (their senders learn of it from a failed
// token or resend after a reconnect).
func (s *ackStore) Reset() {
	s.Store.Reset()
	s.mu.Lock()
	s.pending = make(map[uint16]chan struct{})
	s.mu.Unlock()
}

// acked returns a channel closed when the publish with packet id is
// acknowledged. Call it after paho's Publish returned a token for id with
// no error: paho puts the message before sending it, so an id with nothing
// pending was already acknowledged. Packet ids are reused only after paho
// has cycled through all 65535 of them.
func (s *ackStore) acked(id uint16) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ch, ok := s.pending[id]; ok {
		return ch
	}
	return closedCh
}
