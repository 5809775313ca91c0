package dispatch

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/binding/format/protobuf/v2/pb"
	"google.golang.org/protobuf/proto"

	"github.com/tributary-io/tributary/cloud/commitlog"
)

// FuzzDeadLetterRecord feeds arbitrary record values to what reads dead
// letters back (the listing, the redrive) and to the deliverat reader: a
// producer could write anything into a topic. Nothing may panic, and a
// redrive item is either an event or a reason to refuse it.
func FuzzDeadLetterRecord(f *testing.F) {
	orig := encode(f, makeEvent(3, 2))
	dl, _ := deadLetterValue(orig, deadLetterInfo{sub: "s", offset: 3, attempts: 2, status: 503, reason: "r", at: baseTime}, false)
	f.Add(dl)
	f.Add(orig)
	f.Add([]byte{})
	f.Add([]byte("\x0a\x01"))
	odd, _ := proto.Marshal(&pb.CloudEvent{Id: "i", Source: "s", Type: "t", SpecVersion: "1.0",
		Attributes: map[string]*pb.CloudEventAttributeValue{
			ExtDLOffset:   {Attr: &pb.CloudEventAttributeValue_CeInteger{CeInteger: -4}},
			ExtDLAttempts: {Attr: &pb.CloudEventAttributeValue_CeString{CeString: "many"}},
			ExtDeliverAt:  {Attr: &pb.CloudEventAttributeValue_CeString{CeString: "9999-99-99"}},
		}})
	f.Add(odd)
	f.Fuzz(func(t *testing.T, value []byte) {
		rec := commitlog.Record{Offset: 7, Topic: "$deadletter/s", Value: value, Time: baseTime}
		e := describeDeadLetter(rec, "")
		if (e.Event == nil) == (e.DecodeError == "") {
			t.Fatalf("entry has both or neither of an event and a decode error: %+v", e)
		}
		it := redriveItem(rec)
		if (it.ev == nil) == (it.reject == "") {
			t.Fatalf("redrive item has both or neither of an event and a reason: %+v", it)
		}
		if it.ev != nil {
			for name := range it.ev.Extensions() {
				if isDLAttribute(name) {
					t.Fatalf("redrive item keeps %s", name)
				}
			}
			_, _ = readyAt(it.ev, baseTime, time.Hour)
		}
	})
}

// FuzzRedriveState decodes arbitrary redrive state files: no panic, and
// whatever decodes normalizes into sorted, disjoint, non-empty ranges.
func FuzzRedriveState(f *testing.F) {
	f.Add([]byte(`{"version":1,"topic":"$deadletter/x","pending":[[3,9],[1,4]],"done":[[20,21]]}`))
	f.Add([]byte(`{"version":1,"pending":null}`))
	f.Add([]byte(`{"version":1,"pending":[[5,5]]}`))
	f.Add([]byte(`{"pending":[[18446744073709551614,18446744073709551615]]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var st redriveState
		if json.Unmarshal(b, &st) != nil {
			return
		}
		for _, iv := range []intervals{st.Pending.normalize(), st.Done.normalize()} {
			for i, s := range iv {
				if s.lo >= s.hi || (i > 0 && iv[i-1].hi >= s.lo) {
					t.Fatalf("not normalized: %v", iv)
				}
			}
		}
	})
}
