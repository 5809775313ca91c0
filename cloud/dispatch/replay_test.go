package dispatch

import (
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/tributary-io/tributary/cloud/commitlog"
)

// fillTimed appends n events whose records the log accepted one second
// apart from baseTime.
func fillTimed(t testing.TB, lg commitlog.Log, n, devices int) {
	t.Helper()
	var recs []commitlog.Record
	for i := range n {
		e := makeEvent(i, devices)
		recs = append(recs, commitlog.Record{Topic: e.Subject(), Value: encode(t, e), Time: baseTime.Add(time.Duration(i) * time.Second)})
	}
	if _, err := lg.Append(t.Context(), recs); err != nil {
		t.Fatal(err)
	}
}

// TestReplay moves a subscription back by offset and by time while it runs:
// the events from there are delivered again with their ids, and an event
// that was dead-lettered is dead-lettered again (not dropped as a duplicate
// dead letter).
func TestReplay(t *testing.T) {
	const n = 40
	lg := openFileLog(t, t.TempDir())
	fillTimed(t, lg, n, 4)
	s := newSink(t, func(e *event.Event, _ int) (int, http.Header) {
		if e.ID() == "ev-33" {
			return http.StatusUnprocessableEntity, nil
		}
		return http.StatusOK, nil
	})
	dir := t.TempDir()
	d := mustNew(t, lg, dir, Options{})
	if err := d.Add(Subscription{ID: "rp", Sink: s.URL, Parallelism: 4}); err != nil {
		t.Fatal(err)
	}
	started(t, d)
	waitFor(t, "first pass", func() bool { st, _ := d.Stats("rp"); return st.Delivered == n-1 && st.DeadLettered == 1 })

	off, err := d.Replay("rp", ReplayRequest{FromOffset: u64(25)})
	if err != nil || off != 25 {
		t.Fatalf("Replay(25) = %d, %v", off, err)
	}
	waitFor(t, "replay from 25", func() bool { st, _ := d.Stats("rp"); return st.Delivered == n-1+n-26 && st.DeadLettered == 2 })
	for i := range n {
		want := 1
		switch {
		case i == 33:
			want = 0
		case i >= 25:
			want = 2
		}
		if c := s.count(fmt.Sprintf("ev-%d", i)); c != want {
			t.Fatalf("ev-%d accepted %d times, want %d", i, c, want)
		}
	}
	if got := len(deadLetters(t, lg, "$deadletter/rp")); got != 2 {
		t.Fatalf("%d dead letters of ev-33, want 2 (one per pass)", got)
	}

	from := baseTime.Add(37*time.Second + time.Millisecond) // after ev-37: ev-38 on
	off, err = d.Replay("rp", ReplayRequest{FromTime: &from})
	if err != nil || off != 38 {
		t.Fatalf("Replay(time) = %d, %v; want 38", off, err)
	}
	// Wait on the dispatcher's count (it moves after the sink answered).
	waitFor(t, "replay from a time", func() bool { st, _ := d.Stats("rp"); return st.Delivered == n-1+n-26+2 })
	if s.count("ev-38") != 3 || s.count("ev-39") != 3 || s.count("ev-37") != 2 {
		t.Fatalf("after the replay from a time: ev-37 %d, ev-38 %d, ev-39 %d deliveries; want 2, 3, 3", s.count("ev-37"), s.count("ev-38"), s.count("ev-39"))
	}
}

// TestReplayIsDurable: a replay made while nothing runs is on disk, and the
// next dispatcher resumes there. Bad requests are refused.
func TestReplayIsDurable(t *testing.T) {
	lg := commitlog.NewMemory(nil)
	fillTimed(t, lg, 10, 1)
	dir := t.TempDir()
	s := newSink(t, nil)
	sub := Subscription{ID: "rd", Sink: s.URL}
	d := mustNew(t, lg, dir, Options{})
	if err := d.Add(sub); err != nil {
		t.Fatal(err)
	}
	stop := started(t, d)
	waitFor(t, "all delivered", func() bool { st, _ := d.Stats("rd"); return st.Cursor == 10 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	d2 := mustNew(t, lg, dir, Options{})
	if err := d2.Add(sub); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []ReplayRequest{{}, {FromOffset: u64(11)}, {FromOffset: u64(1), FromTime: &baseTime}} {
		if _, err := d2.Replay("rd", bad); !errors.Is(err, ErrInvalidRequest) {
			t.Errorf("Replay(%+v) = %v, want ErrInvalidRequest", bad, err)
		}
	}
	if _, err := d2.Replay("none", ReplayRequest{FromOffset: u64(1)}); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown subscription: %v", err)
	}
	if off, err := d2.Replay("rd", ReplayRequest{FromOffset: u64(7)}); err != nil || off != 7 {
		t.Fatalf("Replay = %d, %v", off, err)
	}
	cs, ok, err := newCursorFile(dir, "rd").load()
	if err != nil || !ok || cs.Offset != 7 {
		t.Fatalf("cursor on disk after Replay: %+v %v %v", cs, ok, err)
	}

	d3 := mustNew(t, lg, dir, Options{})
	if err := d3.Add(sub); err != nil {
		t.Fatal(err)
	}
	started(t, d3)
	waitFor(t, "replayed", func() bool { st, _ := d3.Stats("rd"); return st.LowWater == 10 })
	for i := range 10 {
		want := 1
		if i >= 7 {
			want = 2
		}
		if c := s.count(fmt.Sprintf("ev-%d", i)); c != want {
			t.Fatalf("ev-%d: %d deliveries, want %d", i, c, want)
		}
	}
}
