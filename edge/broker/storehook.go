package broker

import (
	"encoding/json"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"
)

// storeHook is the mochi storage hook over a sessionStore. mochi calls the
// Stored* methods once, in Serve, to restore state; the On* methods queue
// changes, which the store commits in the background (see sessionStore).
//
// Only sessions that outlive their connection are stored (MQTT 3.1.1 clean
// session off, MQTT 5 session expiry interval above 0): their client record,
// subscriptions and in-flight outgoing messages. Retained messages are
// stored whoever published them. In-flight rows are kept for outgoing
// PUBLISH and PUBREL only; an incoming QoS 2 handshake is not (after a crash
// the client's resend is taken as a new message).
type storeHook struct {
	mqtt.HookBase
	s *sessionStore

	// restoredInflight, if set, is called when StoredInflightMessages
	// restores at least one in-flight message.
	restoredInflight func()

	mu       sync.Mutex
	clients  map[string]struct{}      // client ids with a stored record
	inflight map[inflightKey]struct{} // in-flight rows stored
}

type inflightKey struct {
	client string
	id     uint16
}

var _ mqtt.Hook = (*storeHook)(nil)

func newStoreHook(s *sessionStore) *storeHook {
	return &storeHook{s: s, clients: map[string]struct{}{}, inflight: map[inflightKey]struct{}{}}
}

func (h *storeHook) ID() string { return "tributary-sessions" }

// Provides is asked for every hook on every event mochi raises, several
// times per message: a switch, not a slice search.
func (h *storeHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnSessionEstablished, mqtt.OnDisconnect, mqtt.OnSubscribed, mqtt.OnUnsubscribed,
		mqtt.OnRetainMessage, mqtt.OnRetainedExpired, mqtt.OnQosPublish, mqtt.OnQosComplete,
		mqtt.OnQosDropped, mqtt.OnClientExpired, mqtt.OnWillSent,
		mqtt.StoredClients, mqtt.StoredSubscriptions, mqtt.StoredInflightMessages, mqtt.StoredRetainedMessages:
		return true
	}
	return false
}

// persists reports whether cl's session outlives its connection.
func persists(cl *mqtt.Client) bool {
	if cl.Net.Inline {
		return false
	}
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval > 0
	}
	return !cl.Properties.Clean
}

// enqueue queues a change whose data is v as JSON. The storage types hold
// only strings, numbers and byte slices, so encoding cannot fail; if it did,
// the change is dropped and counted.
func (h *storeHook) enqueue(op storeOp, v any) {
	data, err := json.Marshal(v)
	if err != nil {
		h.s.failures.Add(1)
		h.s.log.Error("sessions: change not encoded; not stored", "key", op.key, "error", err)
		return
	}
	op.data = data
	h.s.enqueue(op)
}

func (h *storeHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	if persists(cl) {
		h.putClient(cl)
		return
	}
	// A clean start discards whatever session this id had.
	h.forgetClient(cl.ID)
}

func (h *storeHook) OnWillSent(cl *mqtt.Client, _ packets.Packet) {
	h.mu.Lock()
	_, stored := h.clients[cl.ID]
	h.mu.Unlock()
	if stored && !cl.IsTakenOver() {
		h.putClient(cl) // the will is spent
	}
}

func (h *storeHook) putClient(cl *mqtt.Client) {
	p := cl.Properties.Props
	c := storage.Client{
		ID:              cl.ID,
		T:               storage.ClientKey,
		Remote:          cl.Net.Remote,
		Listener:        cl.Net.Listener,
		Username:        cl.Properties.Username,
		Clean:           cl.Properties.Clean,
		ProtocolVersion: cl.Properties.ProtocolVersion,
		Properties: storage.ClientProperties{
			SessionExpiryInterval:     p.SessionExpiryInterval,
			SessionExpiryIntervalFlag: p.SessionExpiryIntervalFlag,
			AuthenticationMethod:      p.AuthenticationMethod,
			AuthenticationData:        p.AuthenticationData,
			RequestProblemInfo:        p.RequestProblemInfo,
			RequestProblemInfoFlag:    p.RequestProblemInfoFlag,
			RequestResponseInfo:       p.RequestResponseInfo,
			ReceiveMaximum:            p.ReceiveMaximum,
			TopicAliasMaximum:         p.TopicAliasMaximum,
			User:                      p.User,
			MaximumPacketSize:         p.MaximumPacketSize,
		},
		Will: storage.ClientWill(cl.Properties.Will),
	}
	h.mu.Lock()
	h.clients[cl.ID] = struct{}{}
	h.mu.Unlock()
	h.enqueue(storeOp{kind: putClient, key: cl.ID}, c)
}

// forgetClient deletes a stored session: client, subscriptions, in-flight.
func (h *storeHook) forgetClient(id string) {
	h.mu.Lock()
	_, stored := h.clients[id]
	delete(h.clients, id)
	if stored {
		for k := range h.inflight {
			if k.client == id {
				delete(h.inflight, k)
			}
		}
	}
	h.mu.Unlock()
	if stored {
		h.s.enqueue(storeOp{kind: delClient, key: id})
	}
}

func (h *storeHook) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	if expire && !cl.IsTakenOver() && cl.StopCause() != packets.ErrSessionTakenOver {
		h.forgetClient(cl.ID)
	}
}

func (h *storeHook) OnClientExpired(cl *mqtt.Client) { h.forgetClient(cl.ID) }

func (h *storeHook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	if !persists(cl) {
		return
	}
	for i, f := range pk.Filters {
		if i >= len(codes) || codes[i] >= packets.ErrUnspecifiedError.Code {
			continue
		}
		sub := storage.Subscription{
			ID:                cl.ID + ":" + f.Filter,
			T:                 storage.SubscriptionKey,
			Client:            cl.ID,
			Filter:            f.Filter,
			Qos:               codes[i],
			Identifier:        f.Identifier,
			NoLocal:           f.NoLocal,
			RetainHandling:    f.RetainHandling,
			RetainAsPublished: f.RetainAsPublished,
		}
		h.enqueue(storeOp{kind: putSub, key: cl.ID, filter: f.Filter}, sub)
	}
}

func (h *storeHook) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	h.mu.Lock()
	_, stored := h.clients[cl.ID]
	h.mu.Unlock()
	if !stored || cl.IsTakenOver() {
		return
	}
	for _, f := range pk.Filters {
		h.s.enqueue(storeOp{kind: delSub, key: cl.ID, filter: f.Filter})
	}
}

func (h *storeHook) OnRetainMessage(_ *mqtt.Client, pk packets.Packet, r int64) {
	switch r {
	case -1:
		h.s.enqueue(storeOp{kind: delRetained, key: pk.TopicName})
	case 1:
		m := storedMessage(pk, "")
		m.T = storage.RetainedKey
		h.enqueue(storeOp{kind: putRetained, key: pk.TopicName}, m)
	}
}

func (h *storeHook) OnRetainedExpired(topic string) {
	h.s.enqueue(storeOp{kind: delRetained, key: topic})
}

func (h *storeHook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, _ int) {
	t := pk.FixedHeader.Type
	if (t != packets.Publish && t != packets.Pubrel) || !persists(cl) || cl.IsTakenOver() {
		return
	}
	m := storedMessage(pk, cl.ID)
	m.Sent = sent
	h.mu.Lock()
	h.inflight[inflightKey{cl.ID, pk.PacketID}] = struct{}{}
	h.mu.Unlock()
	h.enqueue(storeOp{kind: putInflight, key: cl.ID, id: pk.PacketID}, m)
}

func (h *storeHook) OnQosComplete(cl *mqtt.Client, pk packets.Packet) { h.dropInflight(cl, pk) }
func (h *storeHook) OnQosDropped(cl *mqtt.Client, pk packets.Packet)  { h.dropInflight(cl, pk) }

func (h *storeHook) dropInflight(cl *mqtt.Client, pk packets.Packet) {
	if cl.IsTakenOver() {
		return // the new connection holds these messages now
	}
	k := inflightKey{cl.ID, pk.PacketID}
	h.mu.Lock()
	_, stored := h.inflight[k]
	delete(h.inflight, k)
	h.mu.Unlock()
	if stored {
		h.s.enqueue(storeOp{kind: delInflight, key: cl.ID, id: pk.PacketID})
	}
}

// storedMessage converts a publish (or PUBREL) for storage; client is the
// id of the session it is in flight to ("" for a retained message).
func storedMessage(pk packets.Packet, client string) storage.Message {
	p := pk.Properties
	id := client + ":" + pk.FormatID()
	if client == "" {
		id = pk.TopicName
	}
	return storage.Message{
		ID:          id,
		T:           storage.InflightKey,
		Client:      client,
		Origin:      pk.Origin,
		FixedHeader: pk.FixedHeader,
		TopicName:   pk.TopicName,
		Payload:     pk.Payload,
		Created:     pk.Created,
		PacketID:    pk.PacketID,
		Properties: storage.MessageProperties{
			PayloadFormat:          p.PayloadFormat,
			PayloadFormatFlag:      p.PayloadFormatFlag,
			MessageExpiryInterval:  p.MessageExpiryInterval,
			ContentType:            p.ContentType,
			ResponseTopic:          p.ResponseTopic,
			CorrelationData:        p.CorrelationData,
			SubscriptionIdentifier: p.SubscriptionIdentifier,
			User:                   p.User,
		},
	}
}

func (h *storeHook) StoredClients() ([]storage.Client, error) {
	v, err := loadRows(h.s, "clients", decodeClient)
	h.mu.Lock()
	for _, c := range v {
		h.clients[c.ID] = struct{}{}
	}
	h.mu.Unlock()
	return v, err
}

func (h *storeHook) StoredSubscriptions() ([]storage.Subscription, error) {
	return loadRows(h.s, "subscriptions", decodeSubscription)
}

func (h *storeHook) StoredInflightMessages() ([]storage.Message, error) {
	v, err := loadRows(h.s, "inflight", decodeMessage)
	h.mu.Lock()
	for _, m := range v {
		h.inflight[inflightKey{m.Client, m.PacketID}] = struct{}{}
	}
	h.mu.Unlock()
	if len(v) > 0 && h.restoredInflight != nil {
		h.restoredInflight() // some may be commands
	}
	return v, err
}

func (h *storeHook) StoredRetainedMessages() ([]storage.Message, error) {
	return loadRows(h.s, "retained", decodeMessage)
}
