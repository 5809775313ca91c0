// Package ingest connects the sync link to the central log: it is the
// link.Sink that turns wire records into log records.
package ingest

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/tributary-io/tributary/cloud/commitlog"
	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
	"github.com/tributary-io/tributary/sync/link"
	"github.com/tributary-io/tributary/sync/wire"
)

// Sink appends gateway records to a Log. Each record becomes one log record
// with Producer = the name the link passes (the gateway id for lane 0 and
// link.LaneProducer(gateway, lane) for a priority lane above it, so that
// each lane has its own high-water mark: exactly once per gateway, lane and
// seq), ProducerSeq = outbox seq (the log drops resends at or below the
// producer's high-water mark), Topic = the event's subject and Value = the
// CloudEvent in protobuf format. link.ParseLaneProducer recovers the
// gateway from a producer name.
type Sink struct {
	Log commitlog.Log
}

var _ link.Sink = (*Sink)(nil)

// HighWaterMark implements link.Sink.
func (s *Sink) HighWaterMark(gateway string) uint64 { return s.Log.HighWaterMark(gateway) }

// AppendAsync implements link.Sink. The events go into the log as the
// gateway encoded them (wire.DecodeBatchRaw checked them): no decoding and
// re-encoding on the way.
func (s *Sink) AppendAsync(gateway string, recs []wire.RawRecord, done func(error)) {
	s.Log.AppendAsync(ConvertRaw(gateway, recs), func(_ commitlog.AppendResult, err error) { done(err) })
}

// ConvertRaw maps records as the link decodes them to log records. Values
// alias the records' event bytes.
func ConvertRaw(gateway string, recs []wire.RawRecord) []commitlog.Record {
	out := make([]commitlog.Record, len(recs))
	for i := range recs {
		r := &recs[i]
		out[i] = commitlog.Record{Topic: r.Subject, Producer: gateway, ProducerSeq: r.Seq, Value: r.Event}
	}
	return out
}

// Append is the blocking form of AppendAsync, for callers outside the link.
func (s *Sink) Append(ctx context.Context, gateway string, recs []*syncv1.Record) (commitlog.AppendResult, error) {
	out, err := Convert(gateway, recs)
	if err != nil {
		return commitlog.AppendResult{}, err
	}
	return s.Log.Append(ctx, out)
}

// Convert maps wire records to log records, encoding each event.
func Convert(gateway string, recs []*syncv1.Record) ([]commitlog.Record, error) {
	out := make([]commitlog.Record, len(recs))
	var opts proto.MarshalOptions
	for i, r := range recs {
		ev := r.GetEvent()
		if ev == nil {
			return nil, fmt.Errorf("ingest: record %d of gateway %s has no event", r.GetSeq(), gateway)
		}
		b, err := opts.Marshal(ev)
		if err != nil {
			return nil, fmt.Errorf("ingest: encode record %d of gateway %s: %w", r.GetSeq(), gateway, err)
		}
		out[i] = commitlog.Record{
			Topic:       ev.GetAttributes()["subject"].GetCeString(),
			Producer:    gateway,
			ProducerSeq: r.GetSeq(),
			Value:       b,
		}
	}
	return out, nil
}
