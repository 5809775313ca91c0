package dispatch

import (
	"context"
	"strings"
	"testing"

	format "github.com/cloudevents/sdk-go/binding/format/protobuf/v2"
	"github.com/cloudevents/sdk-go/binding/format/protobuf/v2/pb"
	"github.com/cloudevents/sdk-go/v2/event"
	"google.golang.org/protobuf/proto"

	"github.com/tributary-io/tributary/cloud/commitlog"
)

func TestLaneKey(t *testing.T) {
	e := makeEvent(3, 2)
	if laneKey(e) != "dev-1" {
		t.Fatalf("partitionkey ignored: %q", laneKey(e))
	}
	f := event.New()
	f.SetSource("urn:dev/9")
	if laneKey(&f) != "urn:dev/9" {
		t.Fatalf("source fallback: %q", laneKey(&f))
	}
	// Stable across calls and spread over lanes.
	used := map[int]bool{}
	for i := range 64 {
		k := makeEvent(i, 64)
		l := laneOf(laneKey(k), 4)
		if l != laneOf(laneKey(k), 4) || l < 0 || l >= 4 {
			t.Fatal("lane not stable or out of range")
		}
		used[l] = true
	}
	if len(used) != 4 {
		t.Fatalf("64 keys used only %d of 4 lanes", len(used))
	}
}

func TestDeadLetterValueKeepsEvent(t *testing.T) {
	orig := makeEvent(9, 3)
	b := encode(t, orig)
	v, err := deadLetterValue(b, deadLetterInfo{sub: "s", offset: 1 << 40, attempts: 3, status: 503, reason: strings.Repeat("x", 5000), at: baseTime}, false)
	if err != nil {
		t.Fatal(err)
	}
	var got event.Event
	if err := format.Protobuf.Unmarshal(v, &got); err != nil {
		t.Fatal(err)
	}
	checkSameEvent(t, orig, &got)
	if extString(t, &got, ExtDLOffset) != "1099511627776" || len(extString(t, &got, ExtDLReason)) != maxReasonLen {
		t.Fatalf("dead letter attributes: %v", got.Extensions())
	}
	v, err = deadLetterValue(b, deadLetterInfo{sub: "s", reason: "r"}, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := format.Protobuf.Unmarshal(v, &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Data()) != 0 || !strings.Contains(extString(t, &got, ExtDLReason), "data dropped") {
		t.Fatalf("dropData kept %d bytes", len(got.Data()))
	}
}

// FuzzDecodeRecord feeds untrusted record values (device payloads wrapped by
// the edge) through everything the dispatcher does with them: decode, lane
// choice, and the dead letter it would write, which must always decode.
func FuzzDecodeRecord(f *testing.F) {
	f.Add(encode(f, makeEvent(1, 1)))
	f.Add([]byte{})
	f.Add([]byte("\xff\xfe not protobuf"))
	noID, _ := proto.Marshal(&pb.CloudEvent{Source: "s", Type: "t", SpecVersion: "1.0"})
	f.Add(noID)
	badAttr, _ := proto.Marshal(&pb.CloudEvent{Id: "i", Source: "s", Type: "t", SpecVersion: "1.0",
		Attributes: map[string]*pb.CloudEventAttributeValue{"Bad Name": {}, "dataschema": {Attr: &pb.CloudEventAttributeValue_CeUri{CeUri: "%zz"}}}})
	f.Add(badAttr)
	protoData, _ := proto.Marshal(&pb.CloudEvent{Id: "i", Source: "s", Type: "t", SpecVersion: "1.0", Data: &pb.CloudEvent_ProtoData{}})
	f.Add(protoData)
	f.Fuzz(func(t *testing.T, b []byte) {
		if e, err := decodeEvent(b); err == nil {
			laneOf(laneKey(e), 7)
			if e.ID() == "" {
				t.Fatal("decoded an event without id")
			}
		}
		v, err := deadLetterValue(b, deadLetterInfo{sub: "f", offset: 3, reason: string(b)}, false)
		if err != nil {
			t.Fatalf("dead letter: %v", err)
		}
		var pe pb.CloudEvent
		if err := proto.Unmarshal(v, &pe); err != nil || pe.Id == "" {
			t.Fatalf("dead letter does not decode: %v", err)
		}
	})
}

func TestTracker(t *testing.T) {
	ctx := context.Background()
	tr := newTracker(10, 4)
	for o := uint64(10); o < 14; o++ {
		if err := tr.issue(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	// Window full: issuing 14 waits until the low-water mark moves.
	short, cancel := context.WithCancel(ctx)
	cancel()
	if err := tr.issue(short, 14); err == nil {
		t.Fatal("issue beyond the window did not wait")
	}
	if m, _ := tr.complete(12); m {
		t.Fatal("completing 12 before 10 moved the mark")
	}
	if m, _ := tr.complete(13); m || tr.lowWater() != 10 {
		t.Fatalf("out-of-order completions moved the mark to %d", tr.lowWater())
	}
	issued := make(chan error)
	go func() { issued <- tr.issue(ctx, 14) }()
	if m, b := tr.complete(10); !m || b != 11 || tr.lowWater() != 11 {
		t.Fatalf("low water %d, want 11", tr.lowWater())
	}
	if err := <-issued; err != nil {
		t.Fatal(err)
	}
	if m, b := tr.complete(11); !m || b != 14 {
		t.Fatalf("low water %d, want 14 (11 then the completed 12, 13)", tr.lowWater())
	}
	m1, _ := tr.complete(11)
	m2, _ := tr.complete(99)
	if m1 || m2 {
		t.Fatal("completing an old or unissued offset moved the mark")
	}
	if tr.idle() {
		t.Fatal("idle with 14 outstanding")
	}
	tr.complete(14)
	if err := tr.waitIdle(ctx); err != nil || tr.lowWater() != 15 {
		t.Fatalf("waitIdle %v, low water %d", err, tr.lowWater())
	}
	tr.reset(100)
	if err := tr.issue(ctx, 100); err != nil || tr.lowWater() != 100 {
		t.Fatal("reset")
	}
}

// TestQueueManyWorkers pushes a burst to one queue popped by several
// workers: every item comes out exactly once and no worker sleeps on a
// non-empty queue (the test would hang).
func TestQueueManyWorkers(t *testing.T) {
	const n, workers = 5000, 6
	q := newQueue()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := make(chan uint64, n)
	for range workers {
		go func() {
			for {
				it, ok := q.pop(ctx)
				if !ok {
					return
				}
				out <- it.rec.Offset
			}
		}()
	}
	for i := range uint64(n) {
		q.push(item{rec: commitlog.Record{Offset: i}})
	}
	seen := make([]bool, n)
	for range n {
		o := <-out
		if seen[o] {
			t.Fatalf("offset %d popped twice", o)
		}
		seen[o] = true
	}
	// A single consumer sees FIFO order, across compactions.
	q2 := newQueue()
	for i := range uint64(3000) {
		q2.push(item{rec: commitlog.Record{Offset: i}})
		if i%2 == 1 {
			if it, _ := q2.pop(ctx); it.rec.Offset != i/2 {
				t.Fatalf("pop %d, want %d", it.rec.Offset, i/2)
			}
		}
	}
	for i := uint64(1500); i < 3000; i++ {
		if it, _ := q2.pop(ctx); it.rec.Offset != i {
			t.Fatalf("pop %d, want %d", it.rec.Offset, i)
		}
	}
}
