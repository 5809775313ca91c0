package fleet

import (
	"testing"

	"github.com/cloudevents/sdk-go/binding/format/protobuf/v2/pb"
	"google.golang.org/protobuf/proto"

	"github.com/tributary-io/tributary/cloud/dispatch"
)

func ceValue(t testing.TB, data []byte, attrs map[string]string) []byte {
	ce := &pb.CloudEvent{Id: "1", Source: "/s", SpecVersion: "1.0", Type: "t",
		Data: &pb.CloudEvent_BinaryData{BinaryData: data}, Attributes: map[string]*pb.CloudEventAttributeValue{}}
	for k, v := range attrs {
		ce.Attributes[k] = &pb.CloudEventAttributeValue{Attr: &pb.CloudEventAttributeValue_CeString{CeString: v}}
	}
	b, err := proto.Marshal(ce)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeLogValue(t *testing.T) {
	var r logRecord
	if err := decodeLogValue(&r, ceValue(t, []byte(`{"d":"x"}`), map[string]string{dispatch.ExtDLSubscription: "s", dispatch.ExtDLReason: "why"})); err != nil {
		t.Fatal(err)
	}
	if string(r.Data) != `{"d":"x"}` || r.DLSubscription != "s" || r.DLReason != "why" {
		t.Fatalf("%+v", r)
	}
	if err := decodeLogValue(&logRecord{}, []byte{0xff, 0xff}); err == nil {
		t.Fatal("garbage decoded")
	}
}

// FuzzDecodeLogValue: a central-log value of any bytes is decoded or
// refused, never a panic.
func FuzzDecodeLogValue(f *testing.F) {
	f.Add(ceValue(f, []byte(`{"d":"dev","n":1}`), nil))
	f.Add(ceValue(f, nil, map[string]string{dispatch.ExtDLSubscription: "s"}))
	f.Add([]byte{0x0a, 0x80})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		var r logRecord
		_ = decodeLogValue(&r, b)
	})
}
