package commitlog

import (
	"fmt"
	"testing"
)

// TestTenThousandTopics: the per-topic index stays small and correct with
// ten thousand topics sharing the log.
func TestTenThousandTopics(t *testing.T) {
	const topics, perTopic = 10_000, 3
	l := openFile(t, t.TempDir(), Options{SegmentBytes: 256 << 10})
	batch := make([]Record, 0, 1000)
	for i := range topics * perTopic {
		batch = append(batch, Record{Topic: fmt.Sprint("site/", i%topics), Value: []byte{byte(i)}})
		if len(batch) == cap(batch) {
			mustAppend(t, l, batch...)
			batch = batch[:0]
		}
	}
	for _, topic := range []int{0, 1, 4321, topics - 1} {
		recs, err := l.ReadTopic(fmt.Sprint("site/", topic), 0, 10)
		if err != nil || len(recs) != perTopic {
			t.Fatalf("ReadTopic(site/%d): %d records, %v", topic, len(recs), err)
		}
		for k, r := range recs {
			if want := uint64(topic + k*topics); r.Offset != want || r.Value[0] != byte(want) {
				t.Fatalf("ReadTopic(site/%d) record %d: offset %d, want %d", topic, k, r.Offset, want)
			}
		}
	}
	if recs, err := l.ReadTopic("site/77", topics+78, 10); err != nil || len(recs) != 1 || recs[0].Offset != 2*topics+77 {
		t.Fatalf("ReadTopic from the middle: %v %v", recs, err)
	}
	// ~150 bytes a topic plus a few a record, as documented.
	if n := topicIndexBytes(l); n > topics*200+topics*perTopic*4 {
		t.Fatalf("topic index takes about %d bytes for %d topics", n, topics)
	}
}

func TestTopicOffsetsBlocks(t *testing.T) {
	var to topicOffsets
	var want []uint64
	off := uint64(5)
	for i := range 1000 {
		to.add(off)
		want = append(want, off)
		off += uint64(1 + i%300*1000) // small and large gaps
	}
	if len(to.blocks) != (1000+topicBlockLen-1)/topicBlockLen {
		t.Fatalf("%d blocks", len(to.blocks))
	}
	for _, from := range []int{0, 1, 127, 128, 129, 500, 999} {
		got := to.collect(want[from], want[999]+1, 50, nil)
		if fmt.Sprint(got) != fmt.Sprint(want[from:min(from+50, 1000)]) {
			t.Fatalf("collect from %d: %v", from, got)
		}
	}
	if got := to.collect(want[100], want[103], 50, nil); fmt.Sprint(got) != fmt.Sprint(want[100:103]) {
		t.Fatalf("collect below end: %v", got)
	}
	ti := topicIndex{"a": &to, "b": {}}
	ti["b"].add(3)
	ti.trim(want[300])
	if _, ok := ti["b"]; ok {
		t.Fatal("trim kept a topic with no offsets left")
	}
	if got := ti["a"].collect(0, 1<<62, 1, nil); len(got) != 1 || got[0] > want[300] || got[0] < want[256] {
		t.Fatalf("after trim the first kept offset is %v", got)
	}
}
