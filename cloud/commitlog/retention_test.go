package commitlog

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestRetentionRacesReaders appends, deletes old segments and reads, all at
// once: every read returns correct records or ErrOutOfRange, never garbage
// or another error. Run it with -race.
func TestRetentionRacesReaders(t *testing.T) {
	c := newClock()
	l := openFile(t, t.TempDir(), Options{SegmentBytes: 2048, IndexIntervalBytes: 256, RetentionBytes: 8192, RetentionAge: time.Hour, Now: c.Now})
	const total = 2000
	var stop atomic.Bool
	var wg sync.WaitGroup
	check := func(r Record) error {
		want := fmt.Sprintf("topic-%d/p/%d", r.ProducerSeq%5, r.ProducerSeq)
		if r.Offset+1 != r.ProducerSeq || string(r.Value) != want || r.Topic != fmt.Sprint("topic-", r.ProducerSeq%5) {
			return fmt.Errorf("garbage record %+v", r)
		}
		return nil
	}
	var reads, outOfRange atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			for i := 0; !stop.Load(); i++ {
				next := l.NextOffset()
				if i%3 == 0 {
					// A few reads per append, not a busy loop that starves
					// the appender.
					if err := l.Wait(ctx, next); err != nil {
						return
					}
				}
				from := rng.Uint64N(next + 1)
				var recs []Record
				var err error
				switch rng.IntN(3) {
				case 0:
					recs, err = l.Read(from, 1+rng.IntN(200), 1<<20)
					for i, r := range recs {
						if r.Offset != from+uint64(i) {
							err = fmt.Errorf("Read(%d) record %d has offset %d", from, i, r.Offset)
						}
					}
				case 1:
					recs, err = l.ReadTopic(fmt.Sprint("topic-", rng.IntN(5)), from, 1+rng.IntN(100))
				default:
					var off uint64
					off, err = l.OffsetForTime(c.Now().Add(-time.Duration(rng.IntN(3000)) * time.Millisecond))
					if err == nil && off > l.NextOffset() {
						err = fmt.Errorf("OffsetForTime beyond the end: %d", off)
					}
				}
				reads.Add(1)
				if errors.Is(err, ErrOutOfRange) {
					outOfRange.Add(1)
					continue
				}
				if err != nil {
					t.Error(err)
					return
				}
				for _, r := range recs {
					if err := check(r); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Add(1)
	go func() { // retention by age, on top of the size limit
		defer wg.Done()
		for next := uint64(0); !stop.Load(); next++ {
			if err := l.Wait(ctx, next); err != nil {
				return
			}
			c.Advance(time.Second)
			if err := l.EnforceRetention(); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for i := uint64(1); i <= total; i++ {
		topic := fmt.Sprint("topic-", i%5)
		if _, err := l.Append(context.Background(), []Record{rec(topic, "p", i)}); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	cancel()
	wg.Wait()
	if l.FirstOffset() == 0 {
		t.Fatal("retention never ran")
	}
	if l.Size() > 8192+2048+100 {
		t.Fatalf("log is %d bytes after retention", l.Size())
	}
	t.Logf("%d reads, %d out of range, first offset %d", reads.Load(), outOfRange.Load(), l.FirstOffset())
}

// TestReaderKeepsDeletedSegment: a reader that holds a segment when
// retention deletes it finishes its read from the open file, which is
// closed once it lets go.
func TestReaderKeepsDeletedSegment(t *testing.T) {
	dir := t.TempDir()
	c := newClock()
	l := openFile(t, dir, Options{SegmentBytes: 500, RetentionAge: time.Hour, Now: c.Now})
	for i := range 20 {
		mustAppend(t, l, rec("t", "p", uint64(i+1)))
	}
	h, err := l.acquire(0, true)
	if err != nil || h.seg == nil {
		t.Fatalf("acquire: %v", err)
	}
	path := h.seg.path
	c.Advance(2 * time.Hour)
	for i := range 20 {
		mustAppend(t, l, rec("t", "p", uint64(21+i)))
	}
	if err := l.EnforceRetention(); err != nil {
		t.Fatal(err)
	}
	if l.FirstOffset() == 0 {
		t.Fatal("the held segment was not deleted")
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("segment file still there: %v", err)
	}
	if _, err := l.Read(0, 1, 1); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("Read(0) after retention: %v", err)
	}
	n := 0
	err = l.scan(h.seg, h.pos, h.limit, 0, nil, func(m *recordMeta, _ int64) bool {
		if m.offset != uint64(n) || m.producerSeq != uint64(n+1) {
			t.Errorf("record %d: offset %d seq %d", n, m.offset, m.producerSeq)
		}
		n++
		return true
	})
	if err != nil || n == 0 {
		t.Fatalf("reading the held, deleted segment: %d records, %v", n, err)
	}
	l.release(h.seg)
	if _, err := h.seg.f.ReadAt(make([]byte, 1), 0); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("file not closed after the last reader let go: %v", err)
	}
}

// TestRetentionByAge deletes segments whose newest record is older than
// RetentionAge, never the active one, with the injected clock.
func TestRetentionByAge(t *testing.T) {
	c := newClock()
	l := openFile(t, t.TempDir(), Options{SegmentBytes: 400, RetentionAge: time.Hour, Now: c.Now})
	for i := range 10 {
		mustAppend(t, l, rec("old", "p", uint64(i+1)))
	}
	c.Advance(30 * time.Minute)
	for i := range 10 {
		mustAppend(t, l, rec("new", "p", uint64(i+11)))
	}
	if err := l.EnforceRetention(); err != nil {
		t.Fatal(err)
	}
	if l.FirstOffset() != 0 {
		t.Fatalf("deleted records younger than RetentionAge: first offset %d", l.FirstOffset())
	}
	c.Advance(45 * time.Minute) // the old records are 75 minutes old, the new 45
	if err := l.EnforceRetention(); err != nil {
		t.Fatal(err)
	}
	recs := readAll(t, l)
	if len(recs) == 0 || recs[0].Offset == 0 {
		t.Fatalf("nothing deleted after RetentionAge: first offset %d", l.FirstOffset())
	}
	// The first retained segment must be one holding a young record: the
	// wholly expired ones before it are gone.
	firstSeg := segmentsOf(l)[0]
	young := false
	for _, r := range recs {
		if r.Offset < firstSeg.next && r.Topic == "new" {
			young = true
		}
	}
	if !young {
		t.Fatalf("segment %d holds only expired records but was kept", firstSeg.base)
	}
	if recs[len(recs)-1].ProducerSeq != 20 || readAllTopic(t, l, "new") != 10 {
		t.Fatal("retention by age deleted young records")
	}
	c.Advance(24 * time.Hour)
	if err := l.EnforceRetention(); err != nil {
		t.Fatal(err)
	}
	if l.NextOffset() != 20 || len(segmentsOf(l)) != 1 {
		t.Fatalf("after everything expired: next %d, %d segments (the active one must stay)", l.NextOffset(), len(segmentsOf(l)))
	}
}

func readAllTopic(t *testing.T, l *FileLog, topic string) int {
	t.Helper()
	recs, err := l.ReadTopic(topic, l.FirstOffset(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	return len(recs)
}

func segmentsOf(l *FileLog) []*segment {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*segment(nil), l.segments...)
}
