package dispatch

import (
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/tributary-io/tributary/cloud/commitlog"
)

// TestSinkDownThenRecovers: the sink answers 500 to every request for a
// while (an outage), then recovers. Nothing is lost or dead-lettered, each
// event is accepted once, and per-partition order holds, one event per
// request and in batches. Retries wait on a fake clock.
func TestSinkDownThenRecovers(t *testing.T) {
	const n, devices, failing = 400, 13, 80
	for _, mode := range []string{ModeBinary, ModeBatch} {
		t.Run(mode, func(t *testing.T) {
			lg := commitlog.NewMemory(nil)
			fillLog(t, lg, n, devices)
			var refused atomic.Int64
			s := newSink(t, func(*event.Event, int) (int, http.Header) {
				if refused.Add(1) <= failing {
					return http.StatusInternalServerError, nil
				}
				return http.StatusOK, nil
			})
			clock := &fakeClock{t: baseTime}
			waits := &fakeWaits{clock: clock}
			d := mustNew(t, lg, t.TempDir(), Options{After: waits.after, Now: clock.now})
			sub := Subscription{ID: "outage", Sink: s.URL, Parallelism: 4, ProtocolSettings: HTTPSettings{Mode: mode},
				Retry: RetryPolicy{MaxAttempts: 1000, MaxAge: Duration(24 * time.Hour)}}
			if err := d.Add(sub); err != nil {
				t.Fatal(err)
			}
			stop := started(t, d)
			waitFor(t, "cursor at the end", func() bool { st, _ := d.Stats(sub.ID); return st.LowWater == n })
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			checkOrder(t, s.snapshot(), devices, n)
			st, _ := d.Stats(sub.ID)
			if st.Delivered != n || st.DeadLettered != 0 || st.Retries == 0 {
				t.Fatalf("stats %+v: want all delivered after retries, none dead-lettered", st)
			}
			if refused.Load() < failing {
				t.Fatalf("the sink refused only %d requests", refused.Load())
			}
		})
	}
}

// TestHangingSinkTimesOut: a sink that never answers gets its requests cut
// off at the subscription's timeout; once the attempts are spent the
// events are dead-lettered with that reason. Meanwhile a healthy
// subscription over the same log delivers everything.
func TestHangingSinkTimesOut(t *testing.T) {
	const n = 300
	lg := commitlog.NewMemory(nil)
	fillLog(t, lg, n, 6)
	release := make(chan struct{})
	var hungOnce sync.Once
	hung := make(chan struct{})
	dead := newSink(t, func(*event.Event, int) (int, http.Header) {
		hungOnce.Do(func() { close(hung) })
		<-release
		return http.StatusOK, nil
	})
	t.Cleanup(func() { close(release) }) // before the server's Close
	healthy := newSink(t, nil)
	d := mustNew(t, lg, t.TempDir(), Options{After: (&fakeWaits{}).after})
	if err := d.Add(Subscription{ID: "hangs", Sink: dead.URL, ProtocolSettings: HTTPSettings{Timeout: Duration(50 * time.Millisecond)},
		Retry: RetryPolicy{MaxAttempts: 2}}); err != nil {
		t.Fatal(err)
	}
	if err := d.Add(Subscription{ID: "healthy", Sink: healthy.URL, Parallelism: 2}); err != nil {
		t.Fatal(err)
	}
	stop := started(t, d)
	<-hung
	waitFor(t, "healthy subscription complete", func() bool { st, _ := d.Stats("healthy"); return st.LowWater >= n })
	waitFor(t, "the hanging sink's first events dead-lettered", func() bool { st, _ := d.Stats("hangs"); return st.DeadLettered >= 2 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	st, _ := d.Stats("hangs")
	if st.Delivered != 0 || st.Retries == 0 {
		t.Fatalf("hanging sink's stats %+v", st)
	}
	dls := deadLetters(t, lg, "$deadletter/hangs")
	if len(dls) < 2 || !strings.Contains(extString(t, dls[0], ExtDLReason), "no answer within 50ms") || extString(t, dls[0], ExtDLAttempts) != "2" {
		t.Fatalf("dead letters %v", dls)
	}
	if healthy.delivered() != n {
		t.Fatalf("healthy sink got %d of %d", healthy.delivered(), n)
	}
}
