package fleet

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cloudevents/sdk-go/binding/format/protobuf/v2/pb"
	"google.golang.org/protobuf/proto"

	"github.com/tributary-io/tributary/cloud/dispatch"
)

// The simulator drives the cloud and the gateways through two small
// interfaces, so one run loop serves both modes: in this process (fast, one
// address space, a "kill" is an abrupt Close) and as child processes (a kill
// is a real SIGKILL; stats come from the edge's /metrics and the log from the
// cloud's HTTP API).

// errDown is returned by a node that is not running (between a kill and its
// restart).
var errDown = errors.New("not running")

// cloudNode is the cloud.
type cloudNode interface {
	// SyncAddr is the QUIC address gateways (their relays) dial. It stays
	// the same across restarts.
	SyncAddr() string
	// PKIDir holds the development CA gateways mint certificates from.
	PKIDir() string
	// Kill crashes the cloud; Start starts it again on the same data and
	// ports.
	Kill() error
	Start(ctx context.Context) error
	// Close stops it for good.
	Close() error
	// ReadLog calls fn for up to max records from offset from and returns
	// the offset to read next. errDown while the cloud is down.
	ReadLog(from uint64, max int, fn func(logRecord)) (uint64, error)
	// NextOffset is the log's end, as last known.
	NextOffset() uint64
}

// edgeNode is one gateway.
type edgeNode interface {
	ID() string
	// MQTTAddr is where devices connect; it stays the same across restarts.
	MQTTAddr() string
	// Stats are the gateway's counters summed over its restarts.
	Stats() (edgeStats, error)
	// Kill crashes the gateway; Start starts it again on the same data.
	Kill() error
	Start(ctx context.Context) error
	Close() error
}

// edgeStats are what the simulator reads from a gateway. Counters are
// summed over the gateway's incarnations (each restart starts at zero).
type edgeStats struct {
	// Up says the gateway is running.
	Up bool
	// Backlog is the outbox's records not yet acknowledged by the cloud.
	Backlog uint64
	// Connected says the link to the cloud is up.
	Connected bool
	// Refused counts publishes refused to devices (a negative PUBACK or a
	// disconnect): a full disk or quota, an oversize payload.
	Refused uint64
	// DiskFailures counts outbox rows whose commit failed (disk full).
	DiskFailures uint64
	// QuotaRejected counts messages the outbox refused under its quota.
	QuotaRejected uint64
	// Drops are the outbox's deletions before the cloud had the records,
	// per priority class. DropsKnown is false when the gateway does not
	// report them (child processes: not in the edge's metrics).
	Drops      map[uint8]classDrops
	DropsKnown bool
	// Restarts counts Start calls after the first.
	Restarts int
}

type classDrops struct{ quota, expired uint64 }

// add sums counters of a past incarnation into s.
func (s *edgeStats) add(o edgeStats) {
	s.Refused += o.Refused
	s.DiskFailures += o.DiskFailures
	s.QuotaRejected += o.QuotaRejected
	for c, d := range o.Drops {
		if s.Drops == nil {
			s.Drops = map[uint8]classDrops{}
		}
		x := s.Drops[c]
		x.quota += d.quota
		x.expired += d.expired
		s.Drops[c] = x
	}
}

// logRecord is what the simulator needs of one central-log record.
type logRecord struct {
	Offset uint64
	// Time is when the log appended it.
	Time     time.Time
	Topic    string
	Producer string
	Seq      uint64
	// Data is the event's data (the device's payload).
	Data []byte
	// DLSubscription and DLReason are set on dead letters.
	DLSubscription, DLReason string
}

// decodeLogValue fills r from a log value (a protobuf CloudEvent).
func decodeLogValue(r *logRecord, value []byte) error {
	var ce pb.CloudEvent
	if err := proto.Unmarshal(value, &ce); err != nil {
		return fmt.Errorf("log record %d: %w", r.Offset, err)
	}
	switch d := ce.Data.(type) {
	case *pb.CloudEvent_BinaryData:
		r.Data = d.BinaryData
	case *pb.CloudEvent_TextData:
		r.Data = []byte(d.TextData)
	}
	if a := ce.Attributes[dispatch.ExtDLSubscription]; a != nil {
		r.DLSubscription = a.GetCeString()
	}
	if a := ce.Attributes[dispatch.ExtDLReason]; a != nil {
		r.DLReason = a.GetCeString()
	}
	return nil
}
