package ingest

import (
	"context"
	"fmt"
	"testing"

	"github.com/cloudevents/sdk-go/binding/format/protobuf/v2/pb"
	"google.golang.org/protobuf/proto"

	"github.com/tributary-io/tributary/cloud/commitlog"
	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
	"github.com/tributary-io/tributary/sync/wire"
)

func records(from, to uint64) []*syncv1.Record {
	var out []*syncv1.Record
	for s := from; s <= to; s++ {
		out = append(out, &syncv1.Record{Seq: s, Event: &pb.CloudEvent{
			Id: fmt.Sprint("gw-", s), Source: "/gateways/gw/devices/d", SpecVersion: "1.0", Type: "t",
			Attributes: map[string]*pb.CloudEventAttributeValue{
				"subject": {Attr: &pb.CloudEventAttributeValue_CeString{CeString: fmt.Sprint("devices/d", s%3)}},
			},
			Data: &pb.CloudEvent_BinaryData{BinaryData: []byte(fmt.Sprint(`{"n":`, s, `}`))},
		}})
	}
	return out
}

// rawBatch is recs as the sync server hands them to the sink.
func rawBatch(t *testing.T, recs []*syncv1.Record) []wire.RawRecord {
	t.Helper()
	b, err := wire.EncodeRecords(recs, 1)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := wire.DecodeBatchRaw(b, 0)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func appendRaw(t *testing.T, s *Sink, gw string, raw []wire.RawRecord) {
	t.Helper()
	done := make(chan error, 1)
	s.AppendAsync(gw, raw, func(err error) { done <- err })
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestSinkAppendsEventsAsSent checks the log record of each wire record:
// producer and seq for dedup, the subject as topic, and a value that
// decodes to the event the gateway sent; a resend is dropped.
func TestSinkAppendsEventsAsSent(t *testing.T) {
	log := commitlog.NewMemory(nil)
	s := &Sink{Log: log}
	in := records(1, 20)
	appendRaw(t, s, "gw", rawBatch(t, in[:12]))
	appendRaw(t, s, "gw", rawBatch(t, in[8:])) // 9..12 again
	if hwm := s.HighWaterMark("gw"); hwm != 20 {
		t.Fatalf("high-water mark %d", hwm)
	}
	got, err := log.Read(0, 100, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 20 {
		t.Fatalf("log holds %d records, want 20", len(got))
	}
	for i, r := range got {
		want := in[i]
		var ev pb.CloudEvent
		if err := proto.Unmarshal(r.Value, &ev); err != nil {
			t.Fatal(err)
		}
		if r.Producer != "gw" || r.ProducerSeq != want.GetSeq() || r.Topic != fmt.Sprint("devices/d", want.GetSeq()%3) || !proto.Equal(&ev, want.GetEvent()) {
			t.Fatalf("log record %d: %+v, event %v; want seq %d, event %v", i, r, &ev, want.GetSeq(), want.GetEvent())
		}
	}
	// The blocking form and the encoding of decoded records agree with
	// the raw path.
	res, err := s.Append(context.Background(), "gw2", in[:3])
	if err != nil || res.Appended != 3 {
		t.Fatalf("Append: %+v, %v", res, err)
	}
	conv, err := Convert("gw2", in[:1])
	if err != nil {
		t.Fatal(err)
	}
	if raw := ConvertRaw("gw2", rawBatch(t, in[:1])); raw[0].Topic != conv[0].Topic || string(raw[0].Value) != string(conv[0].Value) {
		t.Fatalf("ConvertRaw %+v, Convert %+v", raw[0], conv[0])
	}
}
