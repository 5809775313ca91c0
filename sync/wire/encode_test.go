package wire

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/cloudevents/sdk-go/binding/format/protobuf/v2/pb"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
)

// checkEncoding asserts that appendRecordList produces the library's
// deterministic encoding of recs.
func checkEncoding(t testing.TB, recs []*syncv1.Record) {
	t.Helper()
	want, err := proto.MarshalOptions{Deterministic: true}.Marshal(&syncv1.RecordList{Records: recs})
	if err != nil {
		t.Fatal(err)
	}
	prefix := []byte("keep")
	got := appendRecordList(append([]byte(nil), prefix...), recs)
	if !bytes.HasPrefix(got, prefix) || !bytes.Equal(got[len(prefix):], want) {
		t.Fatalf("appendRecordList:\n got %x\nwant %x", got[len(prefix):], want)
	}
}

// withUnknown sets unknown fields (field 99, a varint) on m.
func withUnknown[M proto.Message](m M) M {
	m.ProtoReflect().SetUnknown([]byte{0x98, 0x06, 0x2a})
	return m
}

func TestAppendRecordListMatchesProto(t *testing.T) {
	tests := map[string][]*syncv1.Record{
		"none":     nil,
		"simple":   recs(1, 20),
		"rich":     richRecords(),
		"no event": {{Seq: 1}, {Priority: 4}, {}},
		"zero and empty oneof values": {{Seq: 1, Event: &pb.CloudEvent{
			Attributes: map[string]*pb.CloudEventAttributeValue{
				"f":    {Attr: &pb.CloudEventAttributeValue_CeBoolean{}},
				"i":    {Attr: &pb.CloudEventAttributeValue_CeInteger{}},
				"neg":  {Attr: &pb.CloudEventAttributeValue_CeInteger{CeInteger: -1 << 31}},
				"s":    {Attr: &pb.CloudEventAttributeValue_CeString{}},
				"b":    {Attr: &pb.CloudEventAttributeValue_CeBytes{}},
				"u":    {Attr: &pb.CloudEventAttributeValue_CeUri{}},
				"r":    {Attr: &pb.CloudEventAttributeValue_CeUriRef{}},
				"t0":   {Attr: &pb.CloudEventAttributeValue_CeTimestamp{CeTimestamp: &timestamppb.Timestamp{}}},
				"tn":   {Attr: &pb.CloudEventAttributeValue_CeTimestamp{}},
				"tneg": {Attr: &pb.CloudEventAttributeValue_CeTimestamp{CeTimestamp: &timestamppb.Timestamp{Seconds: -5, Nanos: -1}}},
				"nil":  nil,
				"":     {},
			},
			Data: &pb.CloudEvent_BinaryData{},
		}}},
		"empty text data": {{Seq: 2, Event: &pb.CloudEvent{Data: &pb.CloudEvent_TextData{}}}},
		"unknown fields everywhere": {withUnknown(&syncv1.Record{Seq: 1 << 60, Priority: 1 << 31, Event: withUnknown(&pb.CloudEvent{
			Id: "x", Attributes: map[string]*pb.CloudEventAttributeValue{
				"a": withUnknown(ceStr("v")),
				"t": {Attr: &pb.CloudEventAttributeValue_CeTimestamp{CeTimestamp: withUnknown(timestamppb.Now())}},
			}})})},
	}
	for name, in := range tests {
		t.Run(name, func(t *testing.T) { checkEncoding(t, in) })
	}
}

// FuzzAppendRecordList decodes arbitrary bytes as a RecordList and checks
// that appendRecordList encodes whatever the library decoded exactly as the
// library would.
func FuzzAppendRecordList(f *testing.F) {
	for _, in := range [][]*syncv1.Record{recs(1, 3), richRecords()} {
		b, _ := proto.Marshal(&syncv1.RecordList{Records: in})
		f.Add(b)
	}
	f.Add(listOf(recordBytes(1, eventBytes(attrEntry("subject", nil), fVarint(nil, 77, 1)))))
	f.Fuzz(func(t *testing.T, data []byte) {
		var list syncv1.RecordList
		if proto.Unmarshal(data, &list) != nil {
			return
		}
		checkEncoding(t, list.GetRecords())
	})
}

func BenchmarkEncodeRecords(b *testing.B) {
	in := make([]*syncv1.Record, 4096)
	for i := range in {
		r := richRecords()[0]
		r.Seq = uint64(i + 1)
		r.Event.Id = fmt.Sprint("gw-", i+1)
		in[i] = r
	}
	b.Run("proto", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := proto.Marshal(&syncv1.RecordList{Records: in}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("appendRecordList", func(b *testing.B) {
		b.ReportAllocs()
		var buf []byte
		for b.Loop() {
			buf = appendRecordList(buf[:0], in)
		}
	})
}
