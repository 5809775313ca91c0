package dispatch

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/tributary-io/tributary/cloud/commitlog"
	"github.com/tributary-io/tributary/cloud/filter"
)

var errEnough = errors.New("enough")

// TestTail reads the log as a pull consumer: in order, filtered, skipping
// internal and undecodable records, reporting records lost to retention,
// following appends, and ending when Run stops.
func TestTail(t *testing.T) {
	lg := commitlog.NewMemory(nil)
	fillLog(t, lg, 10, 2)
	if _, err := lg.Append(t.Context(), []commitlog.Record{{Topic: "$deadletter/x", Value: encode(t, makeEvent(99, 1))}, {Topic: "junk", Value: []byte{0xff}}}); err != nil {
		t.Fatal(err)
	}
	fillLogFrom(t, lg, 10, 14, 2)
	lg.Truncate(2)
	d := mustNew(t, lg, t.TempDir(), Options{})

	m, err := filter.CompileAll([]filter.Filter{{Exact: map[string]string{"partitionkey": "dev-0"}}})
	if err != nil {
		t.Fatal(err)
	}
	var gaps [][2]uint64
	var got []uint64
	flushes := 0
	err = d.Tail(t.Context(), TailOptions{Matcher: m, Batch: 3,
		Gap:   func(from, to uint64) error { gaps = append(gaps, [2]uint64{from, to}); return nil },
		Flush: func() error { flushes++; return nil },
	}, func(off uint64, e *event.Event) error {
		if e.ID() != makeEvent(int(off)-2*btoi(off >= 10), 2).ID() {
			t.Fatalf("offset %d carries %s", off, e.ID())
		}
		got = append(got, off)
		if len(got) == 6 {
			return errEnough
		}
		return nil
	})
	if !errors.Is(err, errEnough) {
		t.Fatalf("Tail = %v", err)
	}
	// dev-0 events are the even ones: offsets 2..8, then 12 and 14 (events 10, 12).
	want := []uint64{2, 4, 6, 8, 12, 14}
	if len(gaps) != 1 || gaps[0] != [2]uint64{0, 2} || len(got) != len(want) || flushes < 3 {
		t.Fatalf("gaps %v, offsets %v (want %v), flushes %d", gaps, got, want, flushes)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("offsets %v, want %v", got, want)
		}
	}

	// Following: a heartbeat while idle, then a new event, then Run stops.
	idle := make(chan struct{}, 1)
	arrived := make(chan uint64, 1)
	stop := started(t, d)
	tailDone := make(chan error, 1)
	go func() {
		tailDone <- d.Tail(context.Background(), TailOptions{From: lg.NextOffset(), IdleEvery: 5 * time.Millisecond,
			Idle: func() error {
				select {
				case idle <- struct{}{}:
				default:
				}
				return nil
			}}, func(off uint64, e *event.Event) error { arrived <- off; return nil })
	}()
	<-idle
	fillLogFrom(t, lg, 14, 15, 2)
	if off := <-arrived; off != 16 {
		t.Fatalf("followed offset %d, want 16", off)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if err := <-tailDone; err != nil {
		t.Fatalf("Tail after Run stopped = %v, want nil", err)
	}
	if err := d.Tail(context.Background(), TailOptions{}, nil); !errors.Is(err, ErrStopped) {
		t.Fatalf("Tail on a stopped dispatcher = %v", err)
	}
}

// fillLogFrom appends events [from, to) of the deterministic stream.
func fillLogFrom(t testing.TB, lg commitlog.Log, from, to, devices int) {
	t.Helper()
	var recs []commitlog.Record
	for i := from; i < to; i++ {
		e := makeEvent(i, devices)
		recs = append(recs, commitlog.Record{Topic: e.Subject(), Value: encode(t, e)})
	}
	if _, err := lg.Append(t.Context(), recs); err != nil {
		t.Fatal(err)
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
