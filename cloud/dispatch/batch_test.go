package dispatch

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/tributary-io/tributary/cloud/commitlog"
)

// checkOrder checks that each partition's accepted events arrived in
// sequence, each exactly once, and that every partition was seen.
func checkOrder(t *testing.T, got []received, devices, n int) {
	t.Helper()
	next := map[string]int{}
	for _, r := range got {
		if r.status/100 != 2 {
			continue
		}
		var seq int
		fmt.Sscanf(extString(t, r.ev, "seq"), "%d", &seq)
		key := extString(t, r.ev, "partitionkey")
		if seq != next[key] {
			t.Fatalf("%s: accepted seq %d, want %d (order broken or event repeated)", key, seq, next[key])
		}
		next[key]++
	}
	total := 0
	for _, c := range next {
		total += c
	}
	if len(next) != devices || total != n {
		t.Fatalf("accepted %d events over %d partitions, want %d over %d", total, len(next), n, devices)
	}
}

// TestBatchMode delivers a backlog in batch mode through 4 ordered lanes
// while some batches fail with 503: every event arrives once, in order per
// partition, as application/cloudevents-batch+json, and lanes do batch.
func TestBatchMode(t *testing.T) {
	const n, devices = 600, 23
	lg := commitlog.NewMemory(nil)
	fillLog(t, lg, n, devices)
	s := newSink(t, func(e *event.Event, attempt int) (int, http.Header) {
		var i int
		fmt.Sscanf(e.ID(), "ev-%d", &i)
		if i%37 == 0 && attempt == 1 {
			return http.StatusServiceUnavailable, nil
		}
		return http.StatusOK, nil
	})
	waits := &fakeWaits{}
	d := mustNew(t, lg, t.TempDir(), Options{After: waits.after})
	sub := Subscription{ID: "batched", Sink: s.URL, Parallelism: 4,
		ProtocolSettings: HTTPSettings{Mode: ModeBatch, BatchSize: 16, Headers: map[string]string{"Authorization": "Bearer b"}}}
	if err := d.Add(sub); err != nil {
		t.Fatal(err)
	}
	stop := started(t, d)
	waitFor(t, "all delivered", func() bool { return s.delivered() == n })
	waitFor(t, "cursor at the end", func() bool { st, _ := d.Stats(sub.ID); return st.LowWater == n })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	got := s.snapshot()
	checkOrder(t, got, devices, n)
	largest := 0
	for _, r := range got {
		if !r.isBatch || r.header.Get("Authorization") != "Bearer b" {
			t.Fatalf("request for %s: batch format %v, Authorization %q", r.ev.ID(), r.isBatch, r.header.Get("Authorization"))
		}
		if r.batch > 16 {
			t.Fatalf("a request carried %d events, batch size is 16", r.batch)
		}
		largest = max(largest, r.batch)
		var i int
		fmt.Sscanf(r.ev.ID(), "ev-%d", &i)
		checkSameEvent(t, makeEvent(i, devices), r.ev)
	}
	if largest < 2 {
		t.Fatalf("no request carried more than one event (largest %d): lanes did not batch a backlog", largest)
	}
	st, _ := d.Stats(sub.ID)
	if st.Delivered != n || st.DeadLettered != 0 || st.Retries == 0 {
		t.Fatalf("stats: %+v (want every event delivered, some batches retried)", st)
	}
}

// TestBatchRefusedSplits: a sink that refuses (400) any batch holding one
// bad event gets the batch's events one by one, so only that event is
// dead-lettered and the rest are delivered in order.
func TestBatchRefusedSplits(t *testing.T) {
	const n, devices = 300, 7
	for _, ordered := range []bool{true, false} {
		t.Run(fmt.Sprintf("ordered=%v", ordered), func(t *testing.T) {
			lg := commitlog.NewMemory(nil)
			fillLog(t, lg, n, devices)
			s := newSink(t, func(e *event.Event, attempt int) (int, http.Header) {
				if e.ID() == "ev-13" || e.ID() == "ev-200" {
					return http.StatusBadRequest, nil
				}
				return http.StatusOK, nil
			})
			d := mustNew(t, lg, t.TempDir(), Options{After: (&fakeWaits{}).after})
			sub := Subscription{ID: "split", Sink: s.URL, Parallelism: 3, Ordered: &ordered, ProtocolSettings: HTTPSettings{Mode: ModeBatch}}
			if err := d.Add(sub); err != nil {
				t.Fatal(err)
			}
			stop := started(t, d)
			waitFor(t, "cursor at the end", func() bool { st, _ := d.Stats(sub.ID); return st.Delivered+st.DeadLettered == n })
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			st, _ := d.Stats(sub.ID)
			if st.Delivered != n-2 || st.DeadLettered != 2 {
				t.Fatalf("stats: %+v, want %d delivered and 2 dead-lettered", st, n-2)
			}
			dl := deadLetters(t, lg, "$deadletter/split")
			ids := map[string]bool{}
			for _, e := range dl {
				ids[e.ID()] = true
				if got := extString(t, e, ExtDLStatus); got != "400" {
					t.Fatalf("dead letter %s: status %s, want 400", e.ID(), got)
				}
			}
			if len(dl) != 2 || !ids["ev-13"] || !ids["ev-200"] {
				t.Fatalf("dead letters %v, want ev-13 and ev-200", ids)
			}
			if ordered {
				var ok []received
				for _, r := range s.snapshot() {
					if r.ev.ID() != "ev-13" && r.ev.ID() != "ev-200" {
						ok = append(ok, r)
					}
				}
				// The refused events leave a hole in their partition.
				next := map[string]int{}
				for _, r := range ok {
					if r.status/100 != 2 {
						continue
					}
					var seq int
					fmt.Sscanf(extString(t, r.ev, "seq"), "%d", &seq)
					key := extString(t, r.ev, "partitionkey")
					if seq < next[key] {
						t.Fatalf("%s: seq %d after %d", key, seq, next[key]-1)
					}
					next[key] = seq + 1
				}
			}
			for i := range n {
				id := fmt.Sprintf("ev-%d", i)
				if id != "ev-13" && id != "ev-200" && s.count(id) != 1 {
					t.Fatalf("%s accepted %d times, want once", id, s.count(id))
				}
			}
		})
	}
}
