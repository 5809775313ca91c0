package gateway

import (
	"encoding/json"
	"net/url"
	"strconv"

	"github.com/cloudevents/sdk-go/binding/format/protobuf/v2/pb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tributary-io/tributary/edge/outbox"
	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
)

// DefaultEventType is the CloudEvent type of a message no rule typed.
const DefaultEventType = "io.tributary.telemetry"

// EventID is the CloudEvent id of outbox record seq of gateway gw. It is fixed
// when the record is committed at the edge, so it is the same on every resend
// and every delivery: consumers deduplicate by it.
func EventID(gw string, seq uint64) string {
	return gw + "-" + strconv.FormatUint(seq, 10)
}

// EventSource is the CloudEvent source of a device behind gateway gw.
func EventSource(gw, device string) string {
	return "/gateways/" + url.PathEscape(gw) + "/devices/" + url.PathEscape(device)
}

// ToRecord turns a committed outbox record into the wire record: a CloudEvent
// in the protobuf format with
//
//	id              <gateway>-<outbox seq>
//	source          /gateways/<gateway>/devices/<client id>
//	subject         the MQTT topic
//	type            the forwarding rule's type (DefaultEventType if none)
//	time            when the broker received the publish
//	datacontenttype the MQTT 5 content type, else application/json for a
//	                valid JSON payload, else application/octet-stream
//	partitionkey    the client id (per-device order downstream)
//
// The payload is not copied.
func ToRecord(gw string, r *outbox.Record) *syncv1.Record {
	typ := r.EventType
	if typ == "" {
		typ = DefaultEventType
	}
	ct := r.ContentType
	if ct == "" {
		if json.Valid(r.Payload) {
			ct = "application/json"
		} else {
			ct = "application/octet-stream"
		}
	}
	attrs := map[string]*pb.CloudEventAttributeValue{
		"subject":         ceString(r.Topic),
		"time":            {Attr: &pb.CloudEventAttributeValue_CeTimestamp{CeTimestamp: timestamppb.New(r.Received)}},
		"datacontenttype": ceString(ct),
		"partitionkey":    ceString(r.ClientID),
	}
	return &syncv1.Record{
		Seq:      r.Seq,
		Priority: uint32(r.Priority),
		Event: &pb.CloudEvent{
			Id:          EventID(gw, r.Seq),
			Source:      EventSource(gw, r.ClientID),
			SpecVersion: "1.0",
			Type:        typ,
			Attributes:  attrs,
			Data:        &pb.CloudEvent_BinaryData{BinaryData: r.Payload},
		},
	}
}

func ceString(s string) *pb.CloudEventAttributeValue {
	return &pb.CloudEventAttributeValue{Attr: &pb.CloudEventAttributeValue_CeString{CeString: s}}
}
