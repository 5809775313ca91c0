package wire

import (
	"errors"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/binding/format/protobuf/v2/pb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
)

func ceStr(s string) *pb.CloudEventAttributeValue {
	return &pb.CloudEventAttributeValue{Attr: &pb.CloudEventAttributeValue_CeString{CeString: s}}
}

// richRecords covers every kind of attribute value and data.
func richRecords() []*syncv1.Record {
	ts := timestamppb.New(time.Unix(1700000000, 123))
	anyData, _ := anypb.New(ts)
	return []*syncv1.Record{
		{Seq: 3, Priority: 2, Event: &pb.CloudEvent{Id: "a", Source: "/s", SpecVersion: "1.0", Type: "t",
			Attributes: map[string]*pb.CloudEventAttributeValue{
				"subject":   ceStr("devices/d1/temp"),
				"time":      {Attr: &pb.CloudEventAttributeValue_CeTimestamp{CeTimestamp: ts}},
				"flag":      {Attr: &pb.CloudEventAttributeValue_CeBoolean{CeBoolean: true}},
				"n":         {Attr: &pb.CloudEventAttributeValue_CeInteger{CeInteger: -5}},
				"blob":      {Attr: &pb.CloudEventAttributeValue_CeBytes{CeBytes: []byte{0, 1}}},
				"dataref":   {Attr: &pb.CloudEventAttributeValue_CeUri{CeUri: "https://x/y"}},
				"schemaref": {Attr: &pb.CloudEventAttributeValue_CeUriRef{CeUriRef: "/y"}},
				"empty":     {},
			},
			Data: &pb.CloudEvent_BinaryData{BinaryData: []byte(`{"t":21.5}`)}}},
		{Seq: 9, Event: &pb.CloudEvent{Id: "b", Source: "/s", SpecVersion: "1.0", Type: "t",
			Attributes: map[string]*pb.CloudEventAttributeValue{"subject": {Attr: &pb.CloudEventAttributeValue_CeInteger{CeInteger: 1}}},
			Data:       &pb.CloudEvent_ProtoData{ProtoData: anyData}}},
		{Seq: 10, Event: &pb.CloudEvent{Id: "c", Source: "/s", Type: "t", Data: &pb.CloudEvent_TextData{TextData: "héllo"}}},
		{Seq: 11, Event: &pb.CloudEvent{Id: "d", Source: "/s", Type: "t"}},
	}
}

// checkRawAgainst asserts that raw holds what the fully decoded records
// hold.
func checkRawAgainst(t testing.TB, raw []RawRecord, full []*syncv1.Record) {
	t.Helper()
	if len(raw) != len(full) {
		t.Fatalf("raw decoded %d records, full %d", len(raw), len(full))
	}
	for i, r := range raw {
		f := full[i]
		var ev pb.CloudEvent
		if err := proto.Unmarshal(r.Event, &ev); err != nil {
			t.Fatalf("record %d: raw event does not decode: %v", i, err)
		}
		switch {
		case r.Seq != f.GetSeq() || r.Priority != f.GetPriority():
			t.Fatalf("record %d: seq/priority %d/%d, want %d/%d", i, r.Seq, r.Priority, f.GetSeq(), f.GetPriority())
		case !proto.Equal(&ev, f.GetEvent()):
			t.Fatalf("record %d: event %v, want %v", i, &ev, f.GetEvent())
		case string(r.ID) != f.GetEvent().GetId() || string(r.Source) != f.GetEvent().GetSource() || string(r.Type) != f.GetEvent().GetType():
			t.Fatalf("record %d: id/source/type %q %q %q, want %v", i, r.ID, r.Source, r.Type, f.GetEvent())
		case r.Subject != f.GetEvent().GetAttributes()["subject"].GetCeString():
			t.Fatalf("record %d: subject %q, want %q", i, r.Subject, f.GetEvent().GetAttributes()["subject"].GetCeString())
		}
	}
}

func TestDecodeBatchRawMatchesDecodeBatch(t *testing.T) {
	for _, in := range [][]*syncv1.Record{richRecords(), recs(1, 300)} {
		for _, compressAbove := range []int{0, 1} {
			b, err := EncodeRecords(in, compressAbove)
			if err != nil {
				t.Fatal(err)
			}
			full, err := DecodeBatch(b, 0)
			if err != nil {
				t.Fatal(err)
			}
			raw, err := DecodeBatchRaw(b, 0)
			if err != nil {
				t.Fatal(err)
			}
			checkRawAgainst(t, raw, full)
		}
	}
}

// Hand-built encodings: protowire appenders for one field.
func fBytes(b []byte, num protowire.Number, v []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

func fVarint(b []byte, num protowire.Number, v uint64) []byte {
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

// listOf wraps encoded records in a RecordList.
func listOf(records ...[]byte) []byte {
	var b []byte
	for _, r := range records {
		b = fBytes(b, fieldListRecords, r)
	}
	return b
}

func eventBytes(extra ...[]byte) []byte {
	b := fBytes(nil, fieldEvID, []byte("id"))
	b = fBytes(b, fieldEvSource, []byte("/s"))
	b = fBytes(b, fieldEvType, []byte("t"))
	for _, e := range extra {
		b = append(b, e...)
	}
	return b
}

func recordBytes(seq uint64, event []byte, extra ...[]byte) []byte {
	b := fVarint(nil, fieldRecSeq, seq)
	if event != nil {
		b = fBytes(b, fieldRecEvent, event)
	}
	for _, e := range extra {
		b = append(b, e...)
	}
	return b
}

func attrEntry(key string, value []byte) []byte {
	e := fBytes(nil, fieldEntryKey, []byte(key))
	if value != nil {
		e = fBytes(e, fieldEntryValue, value)
	}
	return fBytes(nil, fieldEvAttributes, e)
}

func TestDecodeBatchRawEdgeCases(t *testing.T) {
	unknown := fVarint(nil, 99, 7)
	group := protowire.AppendTag(nil, 50, protowire.StartGroupType)
	group = fVarint(group, 1, 1)
	group = protowire.AppendTag(group, 50, protowire.EndGroupType)
	str := func(s string) []byte { return fBytes(nil, fieldAttrString, []byte(s)) }
	tests := []struct {
		name string
		list []byte
		want error // nil: accepted and equal to DecodeBatch's result
	}{
		{"unknown fields everywhere", listOf(recordBytes(1, eventBytes(unknown, group, attrEntry("subject", append(str("x"), unknown...))), unknown)), nil},
		{"unknown field in the list", append(listOf(recordBytes(1, eventBytes())), unknown...), nil},
		{"later subject entry wins", listOf(recordBytes(1, eventBytes(attrEntry("subject", str("a")), attrEntry("subject", str("b"))))), nil},
		{"subject without value", listOf(recordBytes(1, eventBytes(attrEntry("subject", nil)))), nil},
		{"no event", listOf(recordBytes(1, nil)), ErrInvalidBatch},
		{"empty event", listOf(recordBytes(1, []byte{})), ErrInvalidBatch},
		{"seq zero", listOf(recordBytes(0, eventBytes())), ErrInvalidBatch},
		{"repeated id", listOf(recordBytes(1, eventBytes(fBytes(nil, fieldEvID, []byte("again"))))), ErrMalformed},
		{"repeated event", listOf(recordBytes(1, eventBytes(), fBytes(nil, fieldRecEvent, eventBytes()))), ErrMalformed},
		{"two data fields", listOf(recordBytes(1, eventBytes(fBytes(nil, fieldEvBinaryData, nil), fBytes(nil, fieldEvTextData, nil)))), ErrMalformed},
		{"two attribute values", listOf(recordBytes(1, eventBytes(attrEntry("k", append(str("a"), fVarint(nil, fieldAttrInteger, 1)...))))), ErrMalformed},
		{"priority above 32 bits truncates", listOf(recordBytes(1, eventBytes(), fVarint(nil, fieldRecPriority, 1<<40|7))), nil},
		{"known field with wrong wire type", listOf(recordBytes(1, eventBytes(fVarint(nil, fieldEvSpecVersion, 1)))), ErrMalformed},
		{"seq as bytes", listOf(fBytes(fBytes(nil, fieldRecSeq, []byte{1}), fieldRecEvent, eventBytes())), ErrMalformed},
		{"invalid UTF-8 id", listOf(recordBytes(1, append(fBytes(nil, fieldEvID, []byte{0xff}), eventBytes()[4:]...))), ErrMalformed},
		{"invalid UTF-8 key", listOf(recordBytes(1, eventBytes(attrEntry("\xff", str("a"))))), ErrMalformed},
		{"invalid UTF-8 subject", listOf(recordBytes(1, eventBytes(attrEntry("subject", str("\xc3"))))), ErrMalformed},
		{"bad timestamp", listOf(recordBytes(1, eventBytes(attrEntry("time", fBytes(nil, fieldAttrTimestamp, []byte{0x08, 0xff}))))), ErrMalformed},
		{"truncated event", listOf(recordBytes(1, eventBytes()[:5])), ErrMalformed},
		{"stray end group", listOf(recordBytes(1, append(eventBytes(), protowire.AppendTag(nil, 50, protowire.EndGroupType)...))), ErrMalformed},
		{"field number zero", listOf(recordBytes(1, append(eventBytes(), 0x00, 0x01))), ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var recs []*syncv1.Record
			var list syncv1.RecordList
			if err := proto.Unmarshal(tt.list, &list); err == nil {
				recs = list.GetRecords()
			}
			if len(recs) == 0 {
				recs = []*syncv1.Record{{Seq: 1}}
			}
			b := &syncv1.Batch{Records: tt.list, Count: uint32(len(recs)), LastSeq: recs[len(recs)-1].GetSeq()}
			raw, err := DecodeBatchRaw(b, 0)
			if tt.want != nil {
				if !errors.Is(err, tt.want) {
					t.Fatalf("got %v, want %v", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			full, err := DecodeBatch(b, 0)
			if err != nil {
				t.Fatalf("raw accepted what DecodeBatch refuses: %v", err)
			}
			checkRawAgainst(t, raw, full)
		})
	}
}

func TestDecodeBatchRawRejects(t *testing.T) {
	// The same refusals as DecodeBatch (see TestDecodeBatchRejects).
	valid := rawBatch(t, recs(1, 3), 3, 3)
	for name, b := range map[string]*syncv1.Batch{
		"nil":             nil,
		"count zero":      rawBatch(t, recs(1, 3), 3, 0),
		"count too small": rawBatch(t, recs(1, 3), 3, 2),
		"count too large": rawBatch(t, recs(1, 3), 3, 4),
		"wrong last_seq":  rawBatch(t, recs(1, 3), 4, 3),
		"not increasing":  rawBatch(t, []*syncv1.Record{rec(2, ""), rec(2, "")}, 2, 2),
		"garbage":         {LastSeq: 1, Count: 1, Records: []byte{0xff, 0xff}},
		"unknown enc":     {LastSeq: 3, Count: 3, Encoding: 9, Records: valid.Records},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := DecodeBatchRaw(b, 0)
			_, ferr := DecodeBatch(b, 0)
			if err == nil || ferr == nil {
				t.Fatalf("raw %v, full %v: both must refuse", err, ferr)
			}
			for _, s := range []error{ErrMalformed, ErrInvalidBatch, ErrDecodedTooLarge} {
				if errors.Is(ferr, s) != errors.Is(err, s) {
					t.Fatalf("raw %v, full %v: different sentinels", err, ferr)
				}
			}
		})
	}
	if _, err := DecodeBatchRaw(valid, len(valid.Records)-1); !errors.Is(err, ErrDecodedTooLarge) {
		t.Fatalf("above limit: %v", err)
	}
}
