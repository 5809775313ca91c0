package commitlog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// logUnderTest is what the contract tests need of a backend.
type logUnderTest interface {
	Log
	TopicReader
}

type backend struct {
	name string
	open func(t *testing.T, c *clock) logUnderTest
	// trim drops old records as retention would and returns the new
	// first offset (> 0).
	trim func(t *testing.T, l logUnderTest, c *clock) uint64
}

func backends() []backend {
	fileBackend := func(name string, opts Options) backend {
		return backend{
			name: name,
			open: func(t *testing.T, c *clock) logUnderTest {
				o := opts
				o.Now = c.Now
				o.RetentionAge = time.Hour
				return openFile(t, t.TempDir(), o)
			},
			trim: func(t *testing.T, l logUnderTest, c *clock) uint64 {
				c.Advance(2 * time.Hour)
				if err := l.(*FileLog).EnforceRetention(); err != nil {
					t.Fatalf("EnforceRetention: %v", err)
				}
				return l.FirstOffset()
			},
		}
	}
	return []backend{
		{
			name: "memory",
			open: func(t *testing.T, c *clock) logUnderTest { return NewMemory(c.Now) },
			trim: func(t *testing.T, l logUnderTest, c *clock) uint64 {
				l.(*Memory).Truncate(l.NextOffset() / 2)
				return l.FirstOffset()
			},
		},
		fileBackend("file", Options{}),
		fileBackend("file-small-segments", Options{SegmentBytes: 700, IndexIntervalBytes: 100, MaxGroupBytes: 300}),
		fileBackend("file-no-tail-cache", Options{TailCacheBytes: -1}),
		fileBackend("file-tiny-tail-cache", Options{SegmentBytes: 900, IndexIntervalBytes: 100, MaxGroupBytes: 300, TailCacheBytes: 250}),
	}
}

// TestContract runs the Log contract against every implementation.
func TestContract(t *testing.T) {
	tests := []struct {
		name string
		fn   func(t *testing.T, b backend)
	}{
		{"AppendAndRead", testAppendAndRead},
		{"ReadLimits", testReadLimits},
		{"Dedup", testDedup},
		{"AppendAsyncOrder", testAppendAsyncOrder},
		{"ConcurrentAppends", testConcurrentAppends},
		{"Wait", testWait},
		{"OutOfRange", testOutOfRange},
		{"TopicAndTime", testTopicAndTime},
		{"CanceledContext", testCanceledContext},
		{"Close", testClose},
	}
	for _, b := range backends() {
		for _, tc := range tests {
			t.Run(b.name+"/"+tc.name, func(t *testing.T) { tc.fn(t, b) })
		}
	}
}

func testAppendAndRead(t *testing.T, b backend) {
	c := newClock()
	l := b.open(t, c)
	if l.FirstOffset() != 0 || l.NextOffset() != 0 {
		t.Fatalf("empty log: first %d next %d, want 0 0", l.FirstOffset(), l.NextOffset())
	}
	given := time.Date(2025, 5, 6, 7, 8, 9, 10, time.UTC)
	value := []byte("caller's buffer")
	recs := []Record{
		{Topic: "a", Producer: "gw1", ProducerSeq: 1, Value: value},
		{Topic: "b", Producer: "gw1", ProducerSeq: 2, Value: []byte{}, Time: given},
		{Topic: "", Producer: "", Value: bytes.Repeat([]byte{0}, 3000)},
	}
	res := mustAppend(t, l, recs...)
	if res != (AppendResult{Appended: 3, FirstOffset: 0, LastOffset: 2}) {
		t.Fatalf("first Append: %+v", res)
	}
	copy(value, "CLOBBERED")
	res = mustAppend(t, l, rec("a", "gw2", 7))
	if res != (AppendResult{Appended: 1, FirstOffset: 3, LastOffset: 3}) {
		t.Fatalf("second Append: %+v", res)
	}
	if l.NextOffset() != 4 {
		t.Fatalf("NextOffset %d, want 4", l.NextOffset())
	}
	got, err := l.Read(0, 100, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 {
		t.Fatalf("Read returned %d records, want 4", len(got))
	}
	for i, r := range got {
		if r.Offset != uint64(i) {
			t.Errorf("record %d has offset %d", i, r.Offset)
		}
	}
	if string(got[0].Value) != "caller's buffer" {
		t.Errorf("the log kept the caller's slice: value %q", got[0].Value)
	}
	if !got[1].Time.Equal(given) {
		t.Errorf("given time not kept: %v", got[1].Time)
	}
	if got[0].Time.IsZero() || got[3].Time.Before(got[0].Time) {
		t.Errorf("append times not set from the clock: %v, %v", got[0].Time, got[3].Time)
	}
	if got[1].Topic != "b" || got[1].Producer != "gw1" || got[1].ProducerSeq != 2 || len(got[1].Value) != 0 {
		t.Errorf("record 1: %+v", got[1])
	}
	if !bytes.Equal(got[2].Value, recs[2].Value) || got[2].Producer != "" {
		t.Errorf("record 2: %+v", got[2])
	}
	// Read returns copies.
	got[3].Value[0] = 'X'
	again, err := l.Read(3, 1, 1<<20)
	if err != nil || len(again) != 1 || again[0].Value[0] == 'X' {
		t.Fatalf("Read after mutating a returned value: %v %+v", err, again)
	}
	if hw := l.HighWaterMark("gw1"); hw != 2 {
		t.Errorf("HighWaterMark(gw1) = %d, want 2", hw)
	}
	if hw := l.HighWaterMark("nobody"); hw != 0 {
		t.Errorf("HighWaterMark(nobody) = %d, want 0", hw)
	}
	if res := mustAppend(t, l); res != (AppendResult{}) {
		t.Errorf("empty Append: %+v", res)
	}
}

func testReadLimits(t *testing.T, b backend) {
	l := b.open(t, newClock())
	for i := range 50 {
		mustAppend(t, l, Record{Topic: "t", Value: bytes.Repeat([]byte{byte(i)}, 100)})
	}
	cases := []struct {
		from                 uint64
		maxRecords, maxBytes int
		want                 []uint64
	}{
		{0, 3, 1 << 20, []uint64{0, 1, 2}},
		{10, 100, 250, []uint64{10, 11}},
		{10, 100, 1, []uint64{10}}, // at least one
		{48, 100, 1 << 20, []uint64{48, 49}},
		{50, 100, 1 << 20, nil},
		{51, 100, 1 << 20, nil},
		{5, 0, 1 << 20, nil},
		{0, 100, 1 << 20, seq(0, 50)},
	}
	for _, tc := range cases {
		got, err := l.Read(tc.from, tc.maxRecords, tc.maxBytes)
		if err != nil {
			t.Fatalf("Read(%d, %d, %d): %v", tc.from, tc.maxRecords, tc.maxBytes, err)
		}
		var offs []uint64
		for _, r := range got {
			offs = append(offs, r.Offset)
			if len(r.Value) != 100 || r.Value[0] != byte(r.Offset) {
				t.Fatalf("record %d has the wrong value", r.Offset)
			}
		}
		if fmt.Sprint(offs) != fmt.Sprint(tc.want) {
			t.Errorf("Read(%d, %d, %d) offsets %v, want %v", tc.from, tc.maxRecords, tc.maxBytes, offs, tc.want)
		}
	}
}

func seq(from, to uint64) []uint64 {
	var s []uint64
	for i := from; i < to; i++ {
		s = append(s, i)
	}
	return s
}

func testDedup(t *testing.T, b backend) {
	l := b.open(t, newClock())
	steps := []struct {
		recs []Record
		want AppendResult
	}{
		{[]Record{rec("t", "g", 1), rec("t", "g", 2)}, AppendResult{Appended: 2, FirstOffset: 0, LastOffset: 1}},
		{[]Record{rec("t", "g", 1), rec("t", "g", 2)}, AppendResult{Duplicates: 2}}, // resend
		{[]Record{rec("t", "g", 2), rec("t", "g", 3)}, AppendResult{Appended: 1, Duplicates: 1, FirstOffset: 2, LastOffset: 2}},
		{[]Record{rec("t", "g", 10), rec("t", "g", 5)}, AppendResult{Appended: 1, Duplicates: 1, FirstOffset: 3, LastOffset: 3}}, // below the mark inside one batch
		{[]Record{rec("t", "h", 1), rec("t", "h", 1)}, AppendResult{Appended: 1, Duplicates: 1, FirstOffset: 4, LastOffset: 4}},
		{[]Record{rec("t", "", 1), rec("t", "", 1)}, AppendResult{Appended: 2, FirstOffset: 5, LastOffset: 6}}, // no producer: no check
	}
	for i, s := range steps {
		if got := mustAppend(t, l, s.recs...); got != s.want {
			t.Fatalf("step %d: %+v, want %+v", i, got, s.want)
		}
	}
	if l.HighWaterMark("g") != 10 || l.HighWaterMark("h") != 1 || l.HighWaterMark("") != 0 {
		t.Fatalf("marks g=%d h=%d empty=%d", l.HighWaterMark("g"), l.HighWaterMark("h"), l.HighWaterMark(""))
	}
	// Concurrent resends of the same records: exactly one copy lands.
	var wg sync.WaitGroup
	var mu sync.Mutex
	total := AppendResult{}
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := l.Append(context.Background(), []Record{rec("t", "c", 1), rec("t", "c", 2), rec("t", "c", 3)})
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			total.Appended += res.Appended
			total.Duplicates += res.Duplicates
			mu.Unlock()
		}()
	}
	wg.Wait()
	if total.Appended != 3 || total.Duplicates != 21 {
		t.Fatalf("concurrent resends: %d appended, %d duplicates; want 3 and 21", total.Appended, total.Duplicates)
	}
	seen := map[uint64]int{}
	for _, r := range readAll(t, l) {
		if r.Producer == "c" {
			seen[r.ProducerSeq]++
		}
	}
	if len(seen) != 3 || seen[1] != 1 || seen[2] != 1 || seen[3] != 1 {
		t.Fatalf("producer c in the log: %v", seen)
	}
}

func testAppendAsyncOrder(t *testing.T, b backend) {
	l := b.open(t, newClock())
	const n = 300
	type result struct {
		i   int
		res AppendResult
		err error
	}
	results := make(chan result, n)
	for i := range n {
		recs := []Record{rec("t", "p", uint64(i+1))}
		if i%10 == 9 {
			recs = append(recs, rec("t", "p", uint64(i))) // a duplicate in the batch
		}
		l.AppendAsync(recs, func(res AppendResult, err error) { results <- result{i, res, err} })
	}
	offsets := make([]uint64, n)
	for range n {
		r := <-results
		if r.err != nil {
			t.Fatalf("append %d: %v", r.i, r.err)
		}
		if r.res.Appended != 1 || r.res.FirstOffset != r.res.LastOffset {
			t.Fatalf("append %d: %+v", r.i, r.res)
		}
		if wantDup := map[bool]int{true: 1, false: 0}[r.i%10 == 9]; r.res.Duplicates != wantDup {
			t.Fatalf("append %d: %d duplicates, want %d", r.i, r.res.Duplicates, wantDup)
		}
		offsets[r.i] = r.res.FirstOffset
	}
	select {
	case r := <-results:
		t.Fatalf("done called more than once: %+v", r)
	default:
	}
	for i, off := range offsets {
		if off != uint64(i) {
			t.Fatalf("AppendAsync %d got offset %d: call order not kept", i, off)
		}
	}
}

func testConcurrentAppends(t *testing.T, b backend) {
	l := b.open(t, newClock())
	const writers, each = 8, 60
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := fmt.Sprintf("p%d", w)
			for i := range each {
				if _, err := l.Append(context.Background(), []Record{rec("t", p, uint64(i+1))}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	all := readAll(t, l)
	if len(all) != writers*each {
		t.Fatalf("%d records, want %d", len(all), writers*each)
	}
	last := map[string]uint64{}
	for i, r := range all {
		if r.Offset != uint64(i) {
			t.Fatalf("offsets not dense: record %d has %d", i, r.Offset)
		}
		if r.ProducerSeq != last[r.Producer]+1 {
			t.Fatalf("producer %s: seq %d after %d", r.Producer, r.ProducerSeq, last[r.Producer])
		}
		last[r.Producer] = r.ProducerSeq
	}
}

func testWait(t *testing.T, b backend) {
	l := b.open(t, newClock())
	mustAppend(t, l, rec("t", "", 0))
	if err := l.Wait(context.Background(), 0); err != nil {
		t.Fatalf("Wait for an existing record: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := l.Wait(ctx, 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait with a canceled context: %v", err)
	}
	woke := make(chan error, 1)
	go func() { woke <- l.Wait(context.Background(), 1) }()
	mustAppend(t, l, rec("t", "", 0))
	if err := <-woke; err != nil {
		t.Fatalf("Wait woken by an append: %v", err)
	}
	if recs, err := l.Read(1, 10, 1<<20); err != nil || len(recs) != 1 {
		t.Fatalf("after Wait: Read %v %d", err, len(recs))
	}
	go func() { woke <- l.Wait(context.Background(), 100) }()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-woke; !errors.Is(err, ErrClosed) {
		t.Fatalf("Wait across Close: %v", err)
	}
}

func testOutOfRange(t *testing.T, b backend) {
	c := newClock()
	l := b.open(t, c)
	for i := range 40 {
		mustAppend(t, l, Record{Topic: fmt.Sprint("t", i%3), Producer: "gw", ProducerSeq: uint64(i + 1), Value: bytes.Repeat([]byte("v"), 80)})
	}
	c.Advance(time.Minute)
	mustAppend(t, l, Record{Topic: "t0", Producer: "gw", ProducerSeq: 41})
	first := b.trim(t, l, c)
	if first == 0 {
		// The backend's whole log fitted in one segment.
		t.Skip("nothing was trimmed")
	}
	if _, err := l.Read(first-1, 10, 1<<20); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("Read below FirstOffset: %v", err)
	}
	if _, err := l.ReadTopic("t0", 0, 10); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("ReadTopic below FirstOffset: %v", err)
	}
	recs, err := l.Read(first, 1000, 1<<20)
	if err != nil || len(recs) == 0 || recs[0].Offset != first || recs[len(recs)-1].Offset != 40 {
		t.Fatalf("Read(FirstOffset): %v, %d records", err, len(recs))
	}
	if hw := l.HighWaterMark("gw"); hw != 41 {
		t.Fatalf("HighWaterMark after trimming: %d, want 41", hw)
	}
	if res := mustAppend(t, l, Record{Topic: "t0", Producer: "gw", ProducerSeq: 1}); res.Duplicates != 1 {
		t.Fatalf("a resend of a trimmed record was appended: %+v", res)
	}
	if off, err := l.OffsetForTime(time.Time{}); err != nil || off != first {
		t.Fatalf("OffsetForTime(zero) = %d, %v; want %d", off, err, first)
	}
}

func testTopicAndTime(t *testing.T, b backend) {
	c := newClock()
	l := b.open(t, c)
	var times []time.Time
	for i := range 120 {
		topic := fmt.Sprintf("dev/%d", i%7)
		if i%30 == 0 {
			topic = "rare"
		}
		mustAppend(t, l, Record{Topic: topic, Value: bytes.Repeat([]byte{byte(i)}, 40)})
		times = append(times, c.Now())
		c.Advance(time.Second)
	}
	// A record whose producer-given time is older than the ones before it.
	old := times[10].Add(-time.Millisecond)
	mustAppend(t, l, Record{Topic: "late", Time: old})

	all := readAll(t, l)
	for _, topic := range []string{"dev/0", "dev/3", "rare", "late", "missing"} {
		for _, from := range []uint64{0, 1, 31, 60, 119, 121, 500} {
			for _, max := range []int{1, 2, 1000} {
				var want []Record
				for _, r := range all {
					if r.Topic == topic && r.Offset >= from && len(want) < max {
						want = append(want, r)
					}
				}
				got, err := l.ReadTopic(topic, from, max)
				if err != nil {
					t.Fatalf("ReadTopic(%s, %d, %d): %v", topic, from, max, err)
				}
				if d := diffRecords(got, want); d != "" {
					t.Fatalf("ReadTopic(%s, %d, %d): %s", topic, from, max, d)
				}
			}
		}
	}
	probe := []time.Time{{}, all[0].Time, all[0].Time.Add(time.Nanosecond), old, times[10], times[60].Add(-time.Millisecond), all[119].Time, all[119].Time.Add(time.Nanosecond), time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)}
	for _, pt := range probe {
		want := l.NextOffset()
		for _, r := range all {
			if !r.Time.Before(pt) {
				want = r.Offset
				break
			}
		}
		got, err := l.OffsetForTime(pt)
		if err != nil || got != want {
			t.Fatalf("OffsetForTime(%v) = %d, %v; want %d", pt, got, err, want)
		}
	}
}

func testCanceledContext(t *testing.T, b backend) {
	l := b.open(t, newClock())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := l.Append(ctx, []Record{rec("t", "p", 1)}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Append with a canceled context: %v", err)
	}
	if l.NextOffset() != 0 || l.HighWaterMark("p") != 0 {
		t.Fatalf("a canceled Append wrote: next %d", l.NextOffset())
	}
}

func testClose(t *testing.T, b backend) {
	l := b.open(t, newClock())
	mustAppend(t, l, rec("t", "p", 1))
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := l.Append(context.Background(), []Record{rec("t", "p", 2)}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v", err)
	}
	done := make(chan error, 1)
	l.AppendAsync([]Record{rec("t", "p", 3)}, func(_ AppendResult, err error) { done <- err })
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Fatalf("AppendAsync after Close: %v", err)
	}
	if _, err := l.Read(0, 1, 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Read after Close: %v", err)
	}
	if _, err := l.ReadTopic("t", 0, 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("ReadTopic after Close: %v", err)
	}
	if _, err := l.OffsetForTime(time.Time{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("OffsetForTime after Close: %v", err)
	}
	if err := l.Wait(context.Background(), 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("Wait after Close: %v", err)
	}
}
