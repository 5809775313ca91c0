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
)

// Sink appends gateway records to a Log. Each record becomes one log record
// with Producer = gateway id, ProducerSeq = outbox seq (the log drops resends
// at or below the gateway's high-water mark), Topic = the event's subject and
// Value = the CloudEvent in protobuf format.
type Sink struct {
	Log commitlog.Log
}

var _ link.Sink = (*Sink)(nil)

// HighWaterMark implements link.Sink.
func (s *Sink) HighWaterMark(gateway string) uint64 { return s.Log.HighWaterMark(gateway) }

// AppendAsync implements link.Sink.
func (s *Sink) AppendAsync(gateway string, recs []*syncv1.Record, done func(error)) {
	out, err := Convert(gateway, recs)
	if err != nil {
		done(err)
		return
	}
	s.Log.AppendAsync(out, func(_ commitlog.AppendResult, err error) { done(err) })
}

// Append is the blocking form of AppendAsync, for callers outside the link.
func (s *Sink) Append(ctx context.Context, gateway string, recs []*syncv1.Record) (commitlog.AppendResult, error) {
	out, err := Convert(gateway, recs)
	if err != nil {
		return commitlog.AppendResult{}, err
	}
	return s.Log.Append(ctx, out)
}

// Convert maps wire records to log records.
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
