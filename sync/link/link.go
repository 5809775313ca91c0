// Package link is Tributary's store-and-forward protocol over QUIC: the
// gateway-side Client that drains an outbox to the cloud, and the cloud-side
// Server that appends what it receives to the central log and acknowledges
// only what is durable. The wire schema is proto/sync/v1.
package link

import (
	"context"

	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
	"github.com/tributary-io/tributary/sync/wire"
)

// ALPN is the TLS application protocol of sync connections.
const ALPN = "tributary-sync/1"

// Source is the gateway's outbox as the Client sees it. The Client calls
// its methods from several goroutines at once (reading runs ahead of
// sending, acknowledging beside both); Ack calls never overlap each other.
type Source interface {
	// Read returns records with seq > after in ascending seq order, at most
	// maxRecords and about maxBytes of payload (at least one record if any
	// exists). It returns an empty slice when there is none.
	Read(after uint64, maxRecords, maxBytes int) ([]*syncv1.Record, error)
	// Wait blocks until a record with seq > after exists or ctx ends.
	Wait(ctx context.Context, after uint64) error
	// Ack tells the source that every record with seq <= upTo is durable in
	// the cloud: it may delete them. Acks only ever grow.
	Ack(upTo uint64) error
}

// Sink is the central log as the Server sees it.
type Sink interface {
	// HighWaterMark is the highest seq of gateway durably in the log.
	HighWaterMark(gateway string) uint64
	// AppendAsync appends recs of gateway, dropping those at or below the
	// gateway's high-water mark, and calls done once they are durable (or
	// the append failed). Calls from one goroutine are appended in order.
	// done must not block. The records and the bytes they point to belong
	// to the sink: the server never touches them again.
	AppendAsync(gateway string, recs []wire.RawRecord, done func(error))
}
