package gateway

import (
	"encoding/json"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/binding/format/protobuf/v2/pb"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tributary-io/tributary/edge/outbox"
	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
)

// referenceRecord is ToRecord's contract written plainly, with
// encoding/json deciding what is JSON.
func referenceRecord(gw string, r *outbox.Record) *syncv1.Record {
	typ := r.EventType
	if typ == "" {
		typ = DefaultEventType
	}
	ct := r.ContentType
	if ct == "" {
		ct = "application/octet-stream"
		if json.Valid(r.Payload) {
			ct = "application/json"
		}
	}
	str := func(s string) *pb.CloudEventAttributeValue {
		return &pb.CloudEventAttributeValue{Attr: &pb.CloudEventAttributeValue_CeString{CeString: s}}
	}
	return &syncv1.Record{Seq: r.Seq, Priority: uint32(r.Priority), Event: &pb.CloudEvent{
		Id:          gw + "-" + strconv.FormatUint(r.Seq, 10),
		Source:      "/gateways/" + url.PathEscape(gw) + "/devices/" + url.PathEscape(r.ClientID),
		SpecVersion: "1.0",
		Type:        typ,
		Attributes: map[string]*pb.CloudEventAttributeValue{
			"subject":         str(r.Topic),
			"time":            {Attr: &pb.CloudEventAttributeValue_CeTimestamp{CeTimestamp: timestamppb.New(r.Received)}},
			"datacontenttype": str(ct),
			"partitionkey":    str(r.ClientID),
		},
		Data: &pb.CloudEvent_BinaryData{BinaryData: r.Payload},
	}}
}

func TestToRecord(t *testing.T) {
	at := time.Date(2026, 5, 4, 3, 2, 1, 987654321, time.UTC)
	tests := []struct {
		gw string
		r  outbox.Record
	}{
		{"gw-1", outbox.Record{Seq: 1, Message: outbox.Message{ClientID: "d1", Topic: "t/1", Payload: []byte(`{"a":1}`), Received: at}}},
		{"gw 2/x", outbox.Record{Seq: 1 << 62, Message: outbox.Message{ClientID: "dev/ä ?", Topic: "t", Payload: []byte{0xff, 0}, Received: at, Priority: 7}}},
		{"g", outbox.Record{Seq: 9, Message: outbox.Message{ClientID: "d", Topic: "x", Payload: []byte(`[1, "two"]`), ContentType: "text/csv", EventType: "io.x.alarm"}}},
		{"g", outbox.Record{Seq: 10, Message: outbox.Message{ClientID: "", Topic: "", Payload: nil, Received: time.Unix(-5, 7)}}},
		{"g", outbox.Record{Seq: 11, Message: outbox.Message{ClientID: "d", Topic: "x", Payload: []byte(`{"a":1`)}}},
	}
	for i, tt := range tests {
		got, want := ToRecord(tt.gw, &tt.r), referenceRecord(tt.gw, &tt.r)
		if !proto.Equal(got, want) {
			t.Errorf("%d: ToRecord\n got %v\nwant %v", i, got, want)
		}
		if got.GetEvent().GetId() != EventID(tt.gw, tt.r.Seq) || got.GetEvent().GetSource() != EventSource(tt.gw, tt.r.ClientID) {
			t.Errorf("%d: id %q source %q disagree with EventID/EventSource", i, got.GetEvent().GetId(), got.GetEvent().GetSource())
		}
	}
}

func TestValidJSON(t *testing.T) {
	for _, s := range []string{
		``, ` `, `{}`, `[]`, ` {"a" : [1, -2.5e+3, true, false, null, "x\"\\\/\b\f\n\r\t\u00e9"]} `,
		`{"a":1,}`, `[1,]`, `{"a"}`, `{"a":}`, `{1:2}`, `[1 2]`, `01`, `-`, `1.`, `1e`, `.5`, `-0`, `1E+9`,
		`"\u12"`, `"\x"`, "\"\x01\"", "\"\xff\xfe\"", `tru`, `nulls`, `"a" "b"`, `{"a":1}}`, `[[[]]]`, `[[[]]`,
		"\t\r\n[]\n", `{"a":{"b":[{}]}}`, `"`, `"\`, `"\u`, `1 `, ` 1`, `+1`, `NaN`,
		strings.Repeat("[", maxJSONDepth) + strings.Repeat("]", maxJSONDepth),
		strings.Repeat("[", maxJSONDepth+1) + strings.Repeat("]", maxJSONDepth+1),
		strings.Repeat(`{"a":`, maxJSONDepth+1) + "1" + strings.Repeat("}", maxJSONDepth+1),
	} {
		if got, want := validJSON([]byte(s)), json.Valid([]byte(s)); got != want {
			t.Errorf("validJSON(%.40q) = %v, json.Valid says %v", s, got, want)
		}
	}
}

// FuzzValidJSON holds validJSON to json.Valid.
func FuzzValidJSON(f *testing.F) {
	for _, s := range []string{`{"dev":"d-1","n":1,"temp":21.5,"ok":true,"v":[1,2,{"x":null}]}`, `[1e5,-0.5E-3]`, `"\u00e9\n"`, `{"a":}`, "\"\x01\""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := validJSON(b), json.Valid(b); got != want {
			t.Fatalf("validJSON(%q) = %v, json.Valid says %v", b, got, want)
		}
	})
}

func BenchmarkToRecord(b *testing.B) {
	r := &outbox.Record{Seq: 123456, Message: outbox.Message{ClientID: "d-42", Topic: "devices/d-42/telemetry",
		Payload:  []byte(`{"dev":"d-42","n":123456,"ts":1700000001234560,"temp":21.123,"hum":40.456,"pres":1013.112,"volt":3.312,"amp":0.512,"rpm":1200.123,"vib":0.012,"co2":412.123,"x":"0123456789abcdef0123"}`),
		Received: time.Now()}}
	b.Run("ToRecord", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = ToRecord("gw-bench", r)
		}
	})
	b.Run("reference", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = referenceRecord("gw-bench", r)
		}
	})
}
