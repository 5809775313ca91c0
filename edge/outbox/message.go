package outbox

import "time"

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
	Message
}
