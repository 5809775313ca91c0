package dispatch

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/tributary-io/tributary/cloud/commitlog"
)

// TestDeadLetterKeepsOrigin: records from a gateway (Producer, ProducerSeq)
// that are dead-lettered, redriven into a sink that still refuses them and
// dead-lettered again keep their origin in every dead letter and in the
// listing, and the final redrive delivers them with their original ids.
func TestDeadLetterKeepsOrigin(t *testing.T) {
	lg := openFileLog(t, t.TempDir())
	const n = 20
	var recs []commitlog.Record
	for i := range n {
		e := makeEvent(i, 3)
		recs = append(recs, commitlog.Record{Topic: e.Subject(), Value: encode(t, e), Producer: "gw-7", ProducerSeq: uint64(100 + i)})
	}
	if _, err := lg.Append(context.Background(), recs); err != nil {
		t.Fatal(err)
	}
	var broken atomic.Bool
	broken.Store(true)
	s := newSink(t, breakable(&broken)) // refuses ev-0, ev-5, ...
	d := mustNew(t, lg, t.TempDir(), Options{})
	if err := d.Add(Subscription{ID: "origin", Sink: s.URL, Parallelism: 2}); err != nil {
		t.Fatal(err)
	}
	started(t, d)
	waitFor(t, "dead letters", func() bool { st, _ := d.Stats("origin"); return st.DeadLettered == 4 })

	check := func(want int) {
		t.Helper()
		page, err := d.DeadLetters("origin", 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(page.DeadLetters) != want {
			t.Fatalf("%d dead letters, want %d", len(page.DeadLetters), want)
		}
		for _, e := range page.DeadLetters {
			if e.OriginalProducer != "gw-7" || e.OriginalProducerSeq != 100+e.OriginalOffset || e.Event.ID() != fmt.Sprintf("ev-%d", e.OriginalOffset) {
				t.Fatalf("dead letter %+v: want origin gw-7/%d and id ev-%d", e, 100+e.OriginalOffset, e.OriginalOffset)
			}
		}
		for _, ev := range deadLetters(t, lg, "$deadletter/origin") {
			if extString(t, ev, ExtDLProducer) != "gw-7" {
				t.Fatalf("dead letter %s: %s = %v", ev.ID(), ExtDLProducer, ev.Extensions()[ExtDLProducer])
			}
		}
	}
	check(4)
	// Redriven into a sink that still refuses: new dead letters, same origin.
	if _, err := d.Redrive("origin", RedriveRequest{All: true}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "redriven into new dead letters", func() bool {
		st, _ := d.Stats("origin")
		return st.RedriveDeadLettered == 4 && !st.RedriveActive
	})
	check(8)
	// Fixed: the redrive delivers them, with their ids and without dl*
	// attributes.
	broken.Store(false)
	if _, err := d.Redrive("origin", RedriveRequest{All: true}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "redrive done", func() bool { st, _ := d.Stats("origin"); return st.Redriven == 4 && !st.RedriveActive })
	for _, r := range s.snapshot() {
		if r.status/100 != 2 {
			continue
		}
		for name := range r.ev.Extensions() {
			if isDLAttribute(name) {
				t.Fatalf("delivered %s carries %s", r.ev.ID(), name)
			}
		}
	}
	for i := 0; i < n; i += 5 {
		if c := s.count(fmt.Sprintf("ev-%d", i)); c != 1 {
			t.Fatalf("ev-%d accepted %d times, want 1", i, c)
		}
	}
}
