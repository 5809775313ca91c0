package outbox

import (
	"testing"
	"time"
)

// groupProbe opens an outbox whose writer signals each time it is about to
// wait for work (idle) and each time it took a group's first message
// (first). Signals are dropped while one is pending.
func groupProbe(t *testing.T, opts Options) (o *Outbox, idle, first chan struct{}) {
	idle, first = make(chan struct{}, 1), make(chan struct{}, 1)
	notify := func(c chan struct{}) func() {
		return func() {
			select {
			case c <- struct{}{}:
			default:
			}
		}
	}
	opts.hooks = &testHooks{beforeIdle: notify(idle), afterFirst: notify(first)}
	return openT(t, dbPath(t), opts), idle, first
}

// TestBurstAfterIdleIsOneGroup: a writer woken from idle by a message waits
// for the messages that follow it (Options.GroupGap) instead of committing it
// alone. The rest of the burst is appended only after the writer took the
// first message, so without the wait it commits that message by itself
// (the test then fails, unless the scheduler delays the writer past all
// nine appends).
func TestBurstAfterIdleIsOneGroup(t *testing.T) {
	o, idle, first := groupProbe(t, Options{MaxBatchRows: 10, GroupGap: time.Hour, GroupWait: time.Hour})
	<-idle // nothing was appended: the writer waits for work until the first Append

	errs := make(chan error, 10)
	done := func(_ uint64, err error) { errs <- err }
	o.Append(testMessage(1, 0), done)
	<-first
	for i := 1; i < 10; i++ {
		o.Append(testMessage(1, i), done)
	}
	for range 10 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	// The burst ended at MaxBatchRows, not at the hour-long gap.
	if st := o.Stats(); st.CommittedGroups != 1 || st.MaxGroupRows != 10 {
		t.Fatalf("%d groups, largest %d rows; want one group of 10", st.CommittedGroups, st.MaxGroupRows)
	}
}

// TestCloseEndsGroupWait: Close does not wait out GroupGap; the message the
// writer was waiting with is committed.
func TestCloseEndsGroupWait(t *testing.T) {
	o, idle, first := groupProbe(t, Options{GroupGap: time.Hour, GroupWait: time.Hour})
	<-idle
	errs := make(chan error, 1)
	o.Append(testMessage(0, 0), func(_ uint64, err error) { errs <- err })
	<-first
	closed := make(chan error, 1)
	go func() { closed <- o.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Close still waiting after a minute: the writer waits out GroupGap")
	}
	if err := <-errs; err != nil {
		t.Fatalf("the waiting message: %v", err)
	}
	if st := o.Stats(); st.CommittedRows != 1 {
		t.Fatalf("%d rows committed, want 1", st.CommittedRows)
	}
}
