package dispatch

import (
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"time"

	format "github.com/cloudevents/sdk-go/binding/format/protobuf/v2"
	"github.com/cloudevents/sdk-go/binding/format/protobuf/v2/pb"
	"github.com/cloudevents/sdk-go/v2/event"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tributary-io/tributary/cloud/commitlog"
	"github.com/tributary-io/tributary/cloud/filter"
)

// Extension attributes added to a dead-lettered event. Names follow the
// CloudEvents rules (lower-case alphanumerics, at most 20 characters).
const (
	ExtDLSubscription = "dlsubscription" // string: the subscription ID
	ExtDLOffset       = "dloffset"       // string: the record's log offset, decimal
	ExtDLAttempts     = "dlattempts"     // integer: delivery attempts made
	ExtDLStatus       = "dlstatus"       // integer: last HTTP status, 0 if none
	ExtDLReason       = "dlreason"       // string: why it was dead-lettered
	ExtDLTime         = "dltime"         // timestamp: when
	// The origin of the logged record (commitlog.Record Producer and
	// ProducerSeq: for an event from the edge, the gateway id and outbox
	// sequence), absent if it had none. The dead letter's own record has
	// the dispatcher's producer, so without these the origin that order
	// and dedup tooling keys on would be lost; a redrive carries them on
	// to a new dead letter.
	ExtDLProducer    = "dlproducer"    // string
	ExtDLProducerSeq = "dlproducerseq" // string: decimal

	// TypeUndecodable is the type of the wrapper event dead-lettered for a
	// record whose value is not a valid protobuf CloudEvent; its data is the
	// record's raw value.
	TypeUndecodable = "io.tributary.dispatch.undecodable"
)

const maxReasonLen = 1024

// decodeEvent turns a record value into an event. Any failure (not protobuf,
// not a valid CloudEvent) is an error; it never panics.
func decodeEvent(v []byte) (e *event.Event, err error) {
	defer func() {
		if r := recover(); r != nil {
			e, err = nil, fmt.Errorf("decoding the CloudEvent panicked: %v", r)
		}
	}()
	var pe pb.CloudEvent
	if err := proto.Unmarshal(v, &pe); err != nil {
		return nil, fmt.Errorf("not a protobuf CloudEvent: %w", err)
	}
	e, err = format.FromProto(&pe)
	if err != nil {
		return nil, fmt.Errorf("not a valid CloudEvent: %w", err)
	}
	if err := e.Validate(); err != nil {
		return nil, fmt.Errorf("not a valid CloudEvent: %w", err)
	}
	return e, nil
}

// laneKey is what assigns an event to a lane: its partitionkey extension,
// else its source.
func laneKey(e *event.Event) string {
	if k, ok := filter.Attribute(e, "partitionkey"); ok {
		return k
	}
	return e.Source()
}

func laneOf(key string, lanes int) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	return int(h.Sum32() % uint32(lanes))
}

// deadLetterInfo is what a dead letter records about the failure.
type deadLetterInfo struct {
	sub    string
	offset uint64
	// producer and producerSeq are the original record's origin.
	producer    string
	producerSeq uint64
	attempts    int
	status      int
	reason      string
	at          time.Time
}

// deadLetterValue returns the value of the dead-letter record: the original
// protobuf CloudEvent, every attribute and the data kept as they were, with
// the dl* extension attributes added (dropData removes the data, for a
// record the log refused as too large). A value that is not a protobuf
// CloudEvent is wrapped, as data, in a new event of type TypeUndecodable.
func deadLetterValue(orig []byte, info deadLetterInfo, dropData bool) ([]byte, error) {
	var pe pb.CloudEvent
	if err := proto.Unmarshal(orig, &pe); err != nil || pe.Id == "" || pe.Source == "" || pe.Type == "" {
		pe = pb.CloudEvent{
			Id:          fmt.Sprintf("%s/%d", info.sub, info.offset),
			Source:      "/tributary/dispatch/" + info.sub,
			SpecVersion: "1.0",
			Type:        TypeUndecodable,
			Data:        &pb.CloudEvent_BinaryData{BinaryData: orig},
		}
	}
	if pe.Attributes == nil {
		pe.Attributes = map[string]*pb.CloudEventAttributeValue{}
	}
	if dropData {
		pe.Data = nil
		info.reason += " (data dropped: the dead letter was too large for the log)"
	}
	// The reason can quote sink bodies or record bytes: protobuf strings
	// must be valid UTF-8.
	reason := info.reason
	if len(reason) > maxReasonLen {
		reason = reason[:maxReasonLen]
	}
	reason = strings.ToValidUTF8(reason, "\uFFFD")
	str := func(s string) *pb.CloudEventAttributeValue {
		return &pb.CloudEventAttributeValue{Attr: &pb.CloudEventAttributeValue_CeString{CeString: s}}
	}
	num := func(n int) *pb.CloudEventAttributeValue {
		return &pb.CloudEventAttributeValue{Attr: &pb.CloudEventAttributeValue_CeInteger{CeInteger: int32(min(n, 1<<31-1))}}
	}
	pe.Attributes[ExtDLSubscription] = str(info.sub)
	pe.Attributes[ExtDLOffset] = str(strconv.FormatUint(info.offset, 10))
	pe.Attributes[ExtDLAttempts] = num(info.attempts)
	pe.Attributes[ExtDLStatus] = num(info.status)
	pe.Attributes[ExtDLReason] = str(reason)
	pe.Attributes[ExtDLTime] = &pb.CloudEventAttributeValue{Attr: &pb.CloudEventAttributeValue_CeTimestamp{CeTimestamp: timestamppb.New(info.at)}}
	delete(pe.Attributes, ExtDLProducer)
	delete(pe.Attributes, ExtDLProducerSeq)
	if info.producer != "" {
		pe.Attributes[ExtDLProducer] = str(strings.ToValidUTF8(info.producer, "\uFFFD"))
		pe.Attributes[ExtDLProducerSeq] = str(strconv.FormatUint(info.producerSeq, 10))
	}
	return proto.MarshalOptions{Deterministic: true}.Marshal(&pe)
}

// deadLetterRecord builds the record appended to the dead-letter topic.
//
// Producer/ProducerSeq make the append idempotent for ordered lanes: a lane
// completes its offsets in increasing order, so (lane, offset+1) is a valid
// producer sequence, and after a crash the log drops a dead letter the lane
// already wrote. The producer name contains the cursor epoch and a hash of the
// lane layout (parallelism and filters), so a layout change, which maps
// offsets to lanes differently, starts fresh producers instead of dropping
// new dead letters. Unordered workers complete offsets out of order and
// append without a producer: their dead letters are at-least-once.
func deadLetterRecord(topic, producer string, offset uint64, value []byte) commitlog.Record {
	r := commitlog.Record{Topic: topic, Value: value}
	if producer != "" {
		r.Producer = producer
		r.ProducerSeq = offset + 1
	}
	return r
}
