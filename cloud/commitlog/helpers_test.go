package commitlog

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// clock is a manual clock for Options.Now and NewMemory.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(time.Microsecond) // distinct, growing times
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// rec builds a record with a value derived from its identity.
func rec(topic, producer string, seq uint64) Record {
	return Record{Topic: topic, Producer: producer, ProducerSeq: seq, Value: []byte(fmt.Sprintf("%s/%s/%d", topic, producer, seq))}
}

func mustAppend(t testing.TB, l Log, recs ...Record) AppendResult {
	t.Helper()
	res, err := l.Append(context.Background(), recs)
	if err != nil {
		t.Fatalf("Append: %v", err)
	}
	return res
}

// readAll reads every retained record.
func readAll(t testing.TB, l Log) []Record {
	t.Helper()
	var out []Record
	for from := l.FirstOffset(); ; {
		recs, err := l.Read(from, 1000, 1<<20)
		if err != nil {
			t.Fatalf("Read(%d): %v", from, err)
		}
		if len(recs) == 0 {
			return out
		}
		out = append(out, recs...)
		from = recs[len(recs)-1].Offset + 1
	}
}

// sameRecord compares everything a record carries.
func sameRecord(a, b Record) bool {
	return a.Offset == b.Offset && a.Time.Equal(b.Time) && a.Topic == b.Topic &&
		a.Producer == b.Producer && a.ProducerSeq == b.ProducerSeq && bytes.Equal(a.Value, b.Value)
}

func diffRecords(got, want []Record) string {
	if len(got) != len(want) {
		return fmt.Sprintf("got %d records, want %d", len(got), len(want))
	}
	for i := range got {
		if !sameRecord(got[i], want[i]) {
			return fmt.Sprintf("record %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	return ""
}

func openFile(t testing.TB, dir string, opts Options) *FileLog {
	t.Helper()
	l, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}
