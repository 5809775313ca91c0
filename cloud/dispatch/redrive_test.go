package dispatch

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/tributary-io/tributary/cloud/commitlog"
)

// openFileLog opens a real segmented log in dir, closed at cleanup.
func openFileLog(t testing.TB, dir string) *commitlog.FileLog {
	t.Helper()
	lg, err := commitlog.Open(dir, commitlog.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lg.Close() })
	return lg
}

// breakable answers 400 to every fifth event (ev-0, ev-5, ...) while broken
// is set, 200 otherwise.
func breakable(broken *atomic.Bool) func(e *event.Event, _ int) (int, http.Header) {
	return func(e *event.Event, _ int) (int, http.Header) {
		var i int
		fmt.Sscanf(e.ID(), "ev-%d", &i)
		if broken.Load() && i%5 == 0 {
			return http.StatusBadRequest, nil
		}
		return http.StatusOK, nil
	}
}

func u64(v uint64) *uint64 { return &v }

// TestDeadLettersListAndRedrive: a sink answers 400 to some events, which
// are dead-lettered at once and listed with their reason; once the sink is
// fixed a redrive delivers them with the same ids, exactly once here, and
// asking again redrives nothing.
func TestDeadLettersListAndRedrive(t *testing.T) {
	lg := openFileLog(t, t.TempDir())
	const n = 30
	fillLog(t, lg, n, 3)
	var broken atomic.Bool
	broken.Store(true)
	s := newSink(t, breakable(&broken))
	d := mustNew(t, lg, t.TempDir(), Options{})
	if err := d.Add(Subscription{ID: "dl", Sink: s.URL, Parallelism: 2}); err != nil {
		t.Fatal(err)
	}
	started(t, d)
	waitFor(t, "dead letters", func() bool { st, _ := d.Stats("dl"); return st.DeadLettered == 6 && st.Delivered == n-6 })

	page, err := d.DeadLetters("dl", 0, 4)
	if err != nil {
		t.Fatal(err)
	}
	more, err := d.DeadLetters("dl", page.Next, 100)
	if err != nil {
		t.Fatal(err)
	}
	all := append(page.DeadLetters, more.DeadLetters...)
	if len(page.DeadLetters) != 4 || len(all) != 6 || page.Topic != "$deadletter/dl" {
		t.Fatalf("pages of 4 then 100: %d + %d entries, topic %q", len(page.DeadLetters), len(more.DeadLetters), page.Topic)
	}
	var dlOffsets []uint64
	for _, e := range all {
		if e.Event == nil || e.Event.ID() != fmt.Sprintf("ev-%d", e.OriginalOffset) || e.OriginalOffset%5 != 0 {
			t.Fatalf("entry %+v: want the event of its original offset", e)
		}
		if e.Status != 400 || e.Attempts != 1 || !strings.Contains(e.Reason, "HTTP 400") || e.Redrive != "" || e.Offset < n {
			t.Fatalf("entry %+v", e)
		}
		for name := range e.Event.Extensions() {
			if isDLAttribute(name) {
				t.Fatalf("listed event keeps %s", name)
			}
		}
		checkSameEvent(t, makeEvent(int(e.OriginalOffset), 3), e.Event)
		dlOffsets = append(dlOffsets, e.Offset)
	}

	broken.Store(false)
	res, err := d.Redrive("dl", RedriveRequest{All: true})
	if err != nil || res != (RedriveResult{Queued: 6}) {
		t.Fatalf("Redrive all = %+v, %v", res, err)
	}
	waitFor(t, "redrive done", func() bool { st, _ := d.Stats("dl"); return st.Redriven == 6 && !st.RedriveActive })
	for i := 0; i < n; i += 5 {
		if c := s.count(fmt.Sprintf("ev-%d", i)); c != 1 {
			t.Fatalf("ev-%d accepted %d times, want 1", i, c)
		}
	}
	page, _ = d.DeadLetters("dl", 0, 100)
	for _, e := range page.DeadLetters {
		if e.Redrive != RedriveDone {
			t.Fatalf("after the redrive: %+v", e)
		}
	}

	// Asking again, all or one by one, sends nothing more.
	res, err = d.Redrive("dl", RedriveRequest{All: true})
	if err != nil || res != (RedriveResult{AlreadyRedriven: 6}) {
		t.Fatalf("second Redrive all = %+v, %v", res, err)
	}
	res, err = d.Redrive("dl", RedriveRequest{Offsets: dlOffsets[:2]})
	if err != nil || res != (RedriveResult{AlreadyRedriven: 2}) {
		t.Fatalf("Redrive offsets again = %+v, %v", res, err)
	}
	if st, _ := d.Stats("dl"); st.RedriveActive || st.Redriven != 6 {
		t.Fatalf("stats after repeated requests: %+v", st)
	}

	for _, bad := range []RedriveRequest{
		{},
		{All: true, Offsets: []uint64{dlOffsets[0]}},
		{Offsets: []uint64{3}}, // an ordinary event, not a dead letter
		{Offsets: []uint64{1 << 50}},
		{From: u64(9), To: u64(2)},
		{Offsets: make([]uint64, MaxRedriveOffsets+1)},
	} {
		if _, err := d.Redrive("dl", bad); !errors.Is(err, ErrInvalidRequest) {
			t.Errorf("Redrive(%+v) = %v, want ErrInvalidRequest", bad, err)
		}
	}
	if _, err := d.Redrive("nope", RedriveRequest{All: true}); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown subscription: %v", err)
	}
	if _, err := d.DeadLetters("dl", 0, 0); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("limit 0: %v", err)
	}
}

// TestRedriveFailingAgain: a redriven event the sink still refuses becomes a
// new dead letter; the old one is done, and a later redrive takes only the
// new ones. A range selects part of the dead letters.
func TestRedriveFailingAgain(t *testing.T) {
	lg := openFileLog(t, t.TempDir())
	fillLog(t, lg, 20, 2)
	var broken atomic.Bool
	broken.Store(true)
	s := newSink(t, breakable(&broken))
	d := mustNew(t, lg, t.TempDir(), Options{})
	if err := d.Add(Subscription{ID: "again", Sink: s.URL, Parallelism: 3}); err != nil {
		t.Fatal(err)
	}
	started(t, d)
	waitFor(t, "dead letters", func() bool { st, _ := d.Stats("again"); return st.DeadLettered == 4 })
	page, _ := d.DeadLetters("again", 0, 100)
	first := page.DeadLetters

	// Only the middle two, by range; the sink still refuses them.
	res, err := d.Redrive("again", RedriveRequest{From: &first[1].Offset, To: &first[2].Offset})
	if err != nil || res.Queued != 2 {
		t.Fatalf("Redrive range = %+v, %v", res, err)
	}
	waitFor(t, "redriven into new dead letters", func() bool {
		st, _ := d.Stats("again")
		return st.RedriveDeadLettered == 2 && !st.RedriveActive
	})
	page, _ = d.DeadLetters("again", 0, 100)
	if len(page.DeadLetters) != 6 {
		t.Fatalf("%d dead letters, want 4 old + 2 new", len(page.DeadLetters))
	}
	again := map[uint64]bool{first[1].OriginalOffset: true, first[2].OriginalOffset: true}
	for i, e := range page.DeadLetters {
		want := ""
		switch {
		case i == 1 || i == 2:
			want = RedriveDone
		case i >= 4:
			// The two redriven events, dead-lettered anew (in either order).
			if !again[e.OriginalOffset] || e.Event.ID() != fmt.Sprintf("ev-%d", e.OriginalOffset) {
				t.Fatalf("new dead letter %d: %+v, want one of the redriven events", i, e)
			}
			delete(again, e.OriginalOffset)
		}
		if e.Redrive != want {
			t.Fatalf("dead letter %d: redrive %q, want %q", i, e.Redrive, want)
		}
	}

	broken.Store(false)
	res, err = d.Redrive("again", RedriveRequest{All: true})
	if err != nil || res != (RedriveResult{Queued: 4, AlreadyRedriven: 2}) {
		t.Fatalf("Redrive all = %+v, %v", res, err)
	}
	waitFor(t, "redrive done", func() bool { st, _ := d.Stats("again"); return st.Redriven == 4 && !st.RedriveActive })
	for i := 0; i < 20; i += 5 {
		if c := s.count(fmt.Sprintf("ev-%d", i)); c != 1 {
			t.Fatalf("ev-%d accepted %d times", i, c)
		}
	}
}

// TestRedriveRequestIsDurable: a redrive accepted while delivery is not
// running is carried out by the next dispatcher on the same directory.
func TestRedriveRequestIsDurable(t *testing.T) {
	lg := openFileLog(t, t.TempDir())
	fillLog(t, lg, 10, 1)
	dir := t.TempDir()
	var broken atomic.Bool
	broken.Store(true)
	s := newSink(t, breakable(&broken))
	sub := Subscription{ID: "dur", Sink: s.URL}
	d := mustNew(t, lg, dir, Options{})
	if err := d.Add(sub); err != nil {
		t.Fatal(err)
	}
	stop := started(t, d)
	waitFor(t, "dead letters", func() bool { st, _ := d.Stats("dur"); return st.DeadLettered == 2 && st.LowWater == 12 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	broken.Store(false)

	d2 := mustNew(t, lg, dir, Options{})
	if err := d2.Add(sub); err != nil {
		t.Fatal(err)
	}
	if res, err := d2.Redrive("dur", RedriveRequest{All: true}); err != nil || res.Queued != 2 {
		t.Fatalf("Redrive = %+v, %v", res, err)
	} // d2 never runs: the request must be on disk

	d3 := mustNew(t, lg, dir, Options{})
	if err := d3.Add(sub); err != nil {
		t.Fatal(err)
	}
	if st, _ := d3.Stats("dur"); !st.RedriveActive {
		t.Fatal("the redrive request was not loaded")
	}
	started(t, d3)
	waitFor(t, "redrive done", func() bool { st, _ := d3.Stats("dur"); return st.Redriven == 2 && !st.RedriveActive })
	if s.count("ev-0") != 1 || s.count("ev-5") != 1 {
		t.Fatalf("ev-0 %d, ev-5 %d deliveries", s.count("ev-0"), s.count("ev-5"))
	}
	// Removing the subscription removes its redrive state.
	if err := d3.Remove("dur"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(redrivePath(dir, "dur")); !os.IsNotExist(err) {
		t.Fatalf("redrive state after Remove: %v", err)
	}
}

const redriveChildEnv = "DISPATCH_REDRIVE_CHILD"

const redriveCrashEvents = 600

// TestRedriveCrashChild is the process TestRedriveCrash kills mid-redrive:
// it opens the parent's log, queues a redrive of every dead letter and
// delivers until killed (or its own deadline).
func TestRedriveCrashChild(t *testing.T) {
	if os.Getenv(redriveChildEnv) == "" {
		t.Skip("helper process for TestRedriveCrash")
	}
	lg, err := commitlog.Open(os.Getenv("DISPATCH_LOG"), commitlog.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer lg.Close()
	d := mustNew(t, lg, os.Getenv("DISPATCH_DIR"), Options{FlushInterval: 5 * time.Millisecond, FlushEvery: 10})
	if err := d.Add(Subscription{ID: "rc", Sink: os.Getenv("DISPATCH_SINK"), Parallelism: 4}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Redrive("rc", RedriveRequest{All: true}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_ = d.Run(ctx)
}

// TestRedriveCrash kills a redriving process with SIGKILL and restarts:
// the restart sends exactly the dead letters the state file still had
// pending, so together every dead letter is delivered, and nothing the
// state recorded as done is sent again.
func TestRedriveCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a child process")
	}
	logDir, dir := t.TempDir(), t.TempDir()
	lg := openFileLog(t, logDir)
	fillLog(t, lg, redriveCrashEvents, 8)
	// Dead-letter every event: the sink refuses all.
	refuse := newSink(t, func(*event.Event, int) (int, http.Header) { return http.StatusGone, nil })
	d := mustNew(t, lg, dir, Options{})
	if err := d.Add(Subscription{ID: "rc", Sink: refuse.URL, Parallelism: 4}); err != nil {
		t.Fatal(err)
	}
	stop := started(t, d)
	waitFor(t, "all dead-lettered", func() bool { st, _ := d.Stats("rc"); return st.DeadLettered == redriveCrashEvents })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if err := lg.Close(); err != nil {
		t.Fatal(err)
	}

	enough := make(chan struct{})
	s1 := newSink(t, closeAfter(redriveCrashEvents/3, enough))
	cmd := exec.Command(os.Args[0], "-test.run=^TestRedriveCrashChild$", "-test.v")
	cmd.Env = append(os.Environ(), redriveChildEnv+"=1", "DISPATCH_DIR="+dir, "DISPATCH_LOG="+logDir, "DISPATCH_SINK="+s1.URL)
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case <-enough:
	case err := <-exited:
		t.Fatalf("child exited early: %v\n%s", err, out.String())
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err := <-exited
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child did not die of SIGKILL: %v\n%s", err, out.String())
	}
	rd, err := loadRedriver(dir, "rc")
	if err != nil {
		t.Fatal(err)
	}
	pending := rd.st.Pending.clone()
	if len(pending) == 0 {
		t.Fatalf("the child finished the redrive before it was killed:\n%s", out.String())
	}

	lg2 := openFileLog(t, logDir)
	s2 := newSink(t, nil)
	d2 := mustNew(t, lg2, dir, Options{})
	if err := d2.Add(Subscription{ID: "rc", Sink: s2.URL, Parallelism: 4}); err != nil {
		t.Fatal(err)
	}
	started(t, d2)
	waitFor(t, "resumed redrive done", func() bool { st, _ := d2.Stats("rc"); return !st.RedriveActive })

	// The dead letters, by id, and which were still pending on disk.
	var wantAgain []string
	ids := map[string]uint64{}
	for from := uint64(0); ; {
		page, err := d2.DeadLetters("rc", from, MaxDeadLetterPage)
		if err != nil {
			t.Fatal(err)
		}
		if len(page.DeadLetters) == 0 {
			break
		}
		for _, e := range page.DeadLetters {
			ids[e.Event.ID()] = e.Offset
			if pending.contains(e.Offset) {
				wantAgain = append(wantAgain, e.Event.ID())
			}
		}
		from = page.Next
	}
	if len(ids) != redriveCrashEvents {
		t.Fatalf("%d dead letters listed, want %d", len(ids), redriveCrashEvents)
	}
	for id := range ids {
		if s1.count(id)+s2.count(id) == 0 {
			t.Fatalf("%s was never redriven", id)
		}
	}
	if got := s2.delivered(); got != len(wantAgain) {
		t.Fatalf("the restart sent %d events, want the %d still pending on disk", got, len(wantAgain))
	}
	for _, id := range wantAgain {
		if s2.count(id) != 1 {
			t.Fatalf("pending %s sent %d times after the restart", id, s2.count(id))
		}
	}
	t.Logf("killed after %d accepted; %d still pending on disk (%d sent twice)", s1.delivered(), len(wantAgain), s1.delivered()+len(wantAgain)-redriveCrashEvents)
}
