package outbox

import (
	"encoding/binary"
	"time"
)

// Message is one device publish as the broker hands it to the outbox.
type Message struct {
	ClientID string // MQTT client id of the publishing device
	Username string // MQTT user name, if any
	Topic    string
	Payload  []byte
	QoS      byte
	Retain   bool
	// ContentType is the MQTT 5 Content Type property ("" if absent).
	ContentType string
	// EventType is the CloudEvent type assigned by the forwarding rules.
	EventType string
	// Priority class, 0 = highest.
	Priority uint8
	// Received is when the broker received the publish.
	Received time.Time
	// UserProperties are MQTT 5 user properties, in order.
	UserProperties []UserProperty
}

// UserProperty is one MQTT 5 user property.
type UserProperty struct{ Key, Value string }

// Record is a Message committed to the outbox.
type Record struct {
	// Seq is assigned at commit: strictly increasing for the life of the
	// database, never reused, even after the outbox is emptied.
	Seq uint64
	// Lane is the priority lane the record was committed to (see
	// ClassPolicy.Lane).
	Lane uint8
	Message
}

// RecordOverhead is the fixed number of bytes StoredSize adds for every
// record: an estimate of its row header, integer columns and index entries.
const RecordOverhead = 64

// StoredSize is what a record of m counts against Options.QuotaBytes: the
// payload, the strings (ClientID, Username, Topic, ContentType, EventType),
// the stored encoding of the user properties, and RecordOverhead. It is
// computed from the stored columns alone, so the outbox recounts the same
// total from the database when it is reopened.
func (m Message) StoredSize() int64 {
	return int64(len(m.Payload)+len(m.ClientID)+len(m.Username)+len(m.Topic)+
		len(m.ContentType)+len(m.EventType)+userPropertiesLen(m.UserProperties)) + RecordOverhead
}

// userPropertiesLen is len(appendUserProperties(nil, props)) without
// encoding them.
func userPropertiesLen(props []UserProperty) int {
	if len(props) == 0 {
		return 0
	}
	n := uvarintLen(uint64(len(props)))
	for _, p := range props {
		n += uvarintLen(uint64(len(p.Key))) + len(p.Key) + uvarintLen(uint64(len(p.Value))) + len(p.Value)
	}
	return n
}

func uvarintLen(v uint64) int {
	var b [binary.MaxVarintLen64]byte
	return binary.PutUvarint(b[:], v)
}
