package broker

import (
	"fmt"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/tributary-io/tributary/edge/outbox"
)

// OutboxReader is what the broker needs, besides Append, to deliver again
// after a crash the forwarded messages that were committed (and so possibly
// acknowledged) but maybe not yet delivered to local subscribers
// (notes/edge-durable-ack.md pitfall 6). *outbox.Outbox implements it. It is
// used at Start only, and only with Config.Sessions.File set.
type OutboxReader interface {
	// Read returns committed records with seq > after in ascending order
	// (at most maxRecords; maxBytes <= 0 means no byte limit).
	Read(after uint64, maxRecords, maxBytes int) ([]outbox.Record, error)
	// Stats().LastSeq is the highest seq ever committed.
	Stats() outbox.Stats
}

var _ OutboxReader = (*outbox.Outbox)(nil)

// replayBatch is how many records one Read of the replay takes.
const replayBatch = 1000

// replay delivers every QoS ≥ 1 record with seq > after to local subscribers,
// in seq order, as its publisher sent it (origin, topic, payload, retain
// flag, content type and user properties: what the outbox keeps). It runs in
// Start, after mochi restored the stored sessions and before any listener
// serves, so a device's replayed messages come before its new ones. QoS 0
// records are not replayed: they were delivered when they arrived, and at
// most once means not twice.
//
// Records the cloud acknowledged (and the outbox deleted) before they were
// delivered locally cannot be replayed; they are counted in the log.
func (b *Broker) replay(r OutboxReader, after uint64) (int, error) {
	n := 0
	first := true
	for {
		recs, err := r.Read(after, replayBatch, 0)
		if err != nil {
			return n, fmt.Errorf("broker: replay after seq %d: %w", after, err)
		}
		if len(recs) == 0 {
			return n, nil
		}
		if first && recs[0].Seq > after+1 {
			b.log.Warn("records gone from the outbox before their local delivery (acknowledged by the cloud or dropped); not delivered again",
				"after_seq", after, "first_seq", recs[0].Seq, "missing", recs[0].Seq-after-1)
		}
		first = false
		for i := range recs {
			rec := &recs[i]
			if rec.QoS > 0 {
				b.deliver(rec.ClientID, deliveryOfRecord(rec))
				n++
				b.replayed.Add(1)
			}
			b.marks.seen(rec.Seq)
			after = rec.Seq
		}
	}
}

// deliveryOfRecord rebuilds a publish from an outbox record.
func deliveryOfRecord(rec *outbox.Record) *delivery {
	d := &delivery{
		id:      1, // any non-zero id: mochi validates it, the inline client never uses it
		topic:   rec.Topic,
		payload: rec.Payload,
		qos:     min(rec.QoS, 2),
		retain:  rec.Retain,
	}
	d.props.ContentType = rec.ContentType
	for _, u := range rec.UserProperties {
		d.props.User = append(d.props.User, packets.UserProperty{Key: u.Key, Val: u.Value})
	}
	return d
}
