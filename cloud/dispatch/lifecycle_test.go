package dispatch

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/tributary-io/tributary/cloud/commitlog"
	"github.com/tributary-io/tributary/cloud/filter"
)

func indexOf(t testing.TB, e *event.Event) int {
	t.Helper()
	i, err := strconv.Atoi(e.ID()[len("ev-"):])
	if err != nil {
		t.Fatalf("id %q", e.ID())
	}
	return i
}

// checkResumed verifies a restart: every offset below the cursor was
// accepted before the stop (the cursor only moves after a 2xx), and the
// second run sent exactly the offsets from the cursor on: nothing skipped,
// nothing before the cursor sent again.
func checkResumed(t *testing.T, first, second *sink, cursor uint64, n int) {
	t.Helper()
	for i := range int(cursor) {
		if first.count(fmt.Sprintf("ev-%d", i)) == 0 {
			t.Fatalf("offset %d is below the cursor %d but was never accepted", i, cursor)
		}
	}
	seen := map[int]bool{}
	for _, r := range second.snapshot() {
		i := indexOf(t, r.ev)
		if uint64(i) < cursor {
			t.Fatalf("second run re-sent offset %d below the cursor %d", i, cursor)
		}
		seen[i] = true
	}
	for i := int(cursor); i < n; i++ {
		if !seen[i] {
			t.Fatalf("offset %d (cursor %d) never delivered after the restart", i, cursor)
		}
	}
}

// TestRestartResumesFromCursor stops a dispatcher mid-stream and starts a
// new one on the same directory.
func TestRestartResumesFromCursor(t *testing.T) {
	const n = 1500
	lg := commitlog.NewMemory(nil)
	fillLog(t, lg, n, 10)
	dir := t.TempDir()
	sub := Subscription{ID: "r", Parallelism: 3}

	half := make(chan struct{})
	s1 := newSink(t, closeAfter(n/3, half))
	d1 := mustNew(t, lg, dir, Options{FlushInterval: time.Hour, FlushEvery: 1 << 30}) // only the shutdown write
	sub.Sink = s1.URL
	if err := d1.Add(sub); err != nil {
		t.Fatal(err)
	}
	stop := started(t, d1)
	<-half
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	st, _ := d1.Stats("r")
	cs, ok, err := newCursorFile(dir, "r").load()
	if err != nil || !ok {
		t.Fatalf("cursor after stop: ok=%v err=%v", ok, err)
	}
	if cs.Offset != st.LowWater || cs.Offset == 0 || cs.Offset >= n {
		t.Fatalf("cursor %d, low water %d: want the shutdown write of a mid-stream position", cs.Offset, st.LowWater)
	}

	s2 := newSink(t, nil)
	d2 := mustNew(t, lg, dir, Options{})
	sub.Sink = s2.URL
	if err := d2.Add(sub); err != nil {
		t.Fatal(err)
	}
	stop2 := started(t, d2)
	waitFor(t, "resumed run complete", func() bool { st, _ := d2.Stats("r"); return st.LowWater == n })
	if err := stop2(); err != nil {
		t.Fatal(err)
	}
	checkResumed(t, s1, s2, cs.Offset, n)
}

// closeAfter is a sink policy accepting everything that closes ch once n
// distinct events were seen.
func closeAfter(n int, ch chan struct{}) func(*event.Event, int) (int, http.Header) {
	var mu sync.Mutex
	seen := map[string]bool{}
	return func(e *event.Event, _ int) (int, http.Header) {
		mu.Lock()
		defer mu.Unlock()
		seen[e.ID()] = true
		if len(seen) == n {
			close(ch)
		}
		return http.StatusOK, nil
	}
}

const crashChildEnv = "DISPATCH_CRASH_CHILD"

// TestCrashChild is the dispatcher process killed by TestCrashResumes. It
// rebuilds the same deterministic log in memory and delivers until killed (or
// until its own deadline, so it never outlives a failed parent).
func TestCrashChild(t *testing.T) {
	if os.Getenv(crashChildEnv) == "" {
		t.Skip("helper process for TestCrashResumes")
	}
	lg := commitlog.NewMemory(nil)
	fillLog(t, lg, crashEvents, 8)
	d := mustNew(t, lg, os.Getenv("DISPATCH_DIR"), Options{FlushInterval: 5 * time.Millisecond, FlushEvery: 20})
	if err := d.Add(Subscription{ID: "crash", Sink: os.Getenv("DISPATCH_SINK"), Parallelism: 4}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_ = d.Run(ctx)
}

const crashEvents = 2000

// TestCrashResumes kills a dispatcher process with SIGKILL mid-stream and
// resumes from the cursor it left on disk.
func TestCrashResumes(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a child process")
	}
	dir := t.TempDir()
	enough := make(chan struct{})
	s1 := newSink(t, closeAfter(crashEvents/3, enough))
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.v")
	cmd.Env = append(os.Environ(), crashChildEnv+"=1", "DISPATCH_DIR="+dir, "DISPATCH_SINK="+s1.URL)
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
	cs, ok, err := newCursorFile(dir, "crash").load()
	if err != nil || !ok {
		t.Fatalf("cursor after kill: ok=%v err=%v\n%s", ok, err, out.String())
	}
	if cs.Offset >= crashEvents {
		t.Fatalf("cursor %d: the child finished before it was killed", cs.Offset)
	}

	// The cloud restarts: the same log (rebuilt deterministically), the same dir.
	lg := commitlog.NewMemory(nil)
	fillLog(t, lg, crashEvents, 8)
	s2 := newSink(t, nil)
	d := mustNew(t, lg, dir, Options{})
	if err := d.Add(Subscription{ID: "crash", Sink: s2.URL, Parallelism: 4}); err != nil {
		t.Fatal(err)
	}
	stop := started(t, d)
	waitFor(t, "resumed run complete", func() bool { st, _ := d.Stats("crash"); return st.LowWater == crashEvents })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	checkResumed(t, s1, s2, cs.Offset, crashEvents)
	t.Logf("killed after %d accepted; cursor on disk %d; redelivered %d", s1.delivered(), cs.Offset, s1.delivered()-int(cs.Offset))
}

type lockedBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, p...)
	return len(p), nil
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.b)
}

// TestDeadLetterNotDuplicatedAfterCrash: when the cursor on disk is behind
// a dead letter already written (a crash before the flush), the redelivery
// dead-letters the event again and the log drops the duplicate.
func TestDeadLetterNotDuplicatedAfterCrash(t *testing.T) {
	lg := commitlog.NewMemory(nil)
	fillLog(t, lg, 20, 3)
	policy := func(e *event.Event, _ int) (int, http.Header) {
		if e.ID() == "ev-5" || e.ID() == "ev-13" {
			return http.StatusUnprocessableEntity, nil
		}
		return http.StatusOK, nil
	}
	dir := t.TempDir()
	sub := Subscription{ID: "dd", Sink: newSink(t, policy).URL, Parallelism: 2}
	for run := range 2 {
		d := mustNew(t, lg, dir, Options{})
		if err := d.Add(sub); err != nil {
			t.Fatal(err)
		}
		stop := started(t, d)
		waitFor(t, "run complete", func() bool { st, _ := d.Stats("dd"); return st.DeadLettered == 2 && st.LowWater == lg.NextOffset() })
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		if got := len(deadLetters(t, lg, "$deadletter/dd")); got != 2 {
			t.Fatalf("run %d: %d dead letters in the log, want 2", run, got)
		}
		// Simulate a crash before any cursor write: back to the start.
		cf := newCursorFile(dir, "dd")
		cs, _, err := cf.load()
		if err != nil {
			t.Fatal(err)
		}
		cs.Offset = 0
		if err := cf.store(cs); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCorruptCursorRefused(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "c.cursor"), []byte("{half"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := mustNew(t, commitlog.NewMemory(nil), dir, Options{})
	err := d.Add(Subscription{ID: "c", Sink: "http://127.0.0.1:9/"})
	if !errors.Is(err, ErrCorruptCursor) {
		t.Fatalf("Add = %v, want ErrCorruptCursor", err)
	}
}

func TestStartPositions(t *testing.T) {
	lg := commitlog.NewMemory(nil)
	fillLog(t, lg, 10, 1)
	dir := t.TempDir()
	s := newSink(t, nil)

	d := mustNew(t, lg, dir, Options{})
	if err := d.Add(Subscription{ID: "latest", Sink: s.URL, From: FromLatest}); err != nil {
		t.Fatal(err)
	}
	if err := d.Add(Subscription{ID: "at7", Sink: s.URL, From: "7", Filters: []filter.Filter{{Exact: map[string]string{"id": "ev-8"}}}}); err != nil {
		t.Fatal(err)
	}
	stop := started(t, d)
	waitFor(t, "at7 done", func() bool { st, _ := d.Stats("at7"); return st.LowWater == 10 })
	if st, _ := d.Stats("at7"); st.Delivered != 1 || st.Filtered != 2 {
		t.Fatalf("from offset 7: %+v", st)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if st, _ := d.Stats("latest"); st.Delivered != 0 || st.Cursor != 10 {
		t.Fatalf("latest before appends: %+v", st)
	}
	// Appended while no dispatcher runs: a restarted "latest" subscription
	// must still get them (its start was pinned on disk).
	var recs []commitlog.Record
	for i := 10; i < 13; i++ {
		recs = append(recs, commitlog.Record{Topic: "t", Value: encode(t, makeEvent(i, 1))})
	}
	if _, err := lg.Append(t.Context(), recs); err != nil {
		t.Fatal(err)
	}
	d2 := mustNew(t, lg, dir, Options{})
	if err := d2.Add(Subscription{ID: "latest", Sink: s.URL, From: FromLatest}); err != nil {
		t.Fatal(err)
	}
	stop2 := started(t, d2)
	waitFor(t, "latest got the new events", func() bool { st, _ := d2.Stats("latest"); return st.LowWater == 13 })
	if err := stop2(); err != nil {
		t.Fatal(err)
	}
	if st, _ := d2.Stats("latest"); st.Delivered != 3 {
		t.Fatalf("latest: %+v", st)
	}
}

func TestRetentionBelowCursor(t *testing.T) {
	lg := commitlog.NewMemory(nil)
	fillLog(t, lg, 10, 1)
	dir := t.TempDir()
	if err := newCursorFile(dir, "old").store(cursorState{Offset: 2, Epoch: "e"}); err != nil {
		t.Fatal(err)
	}
	lg.Truncate(6)
	s := newSink(t, nil)
	d := mustNew(t, lg, dir, Options{})
	if err := d.Add(Subscription{ID: "old", Sink: s.URL}); err != nil {
		t.Fatal(err)
	}
	if err := d.Add(Subscription{ID: "new", Sink: s.URL}); err != nil {
		t.Fatal(err)
	}
	stop := started(t, d)
	waitFor(t, "both done", func() bool {
		a, _ := d.Stats("old")
		b, _ := d.Stats("new")
		return a.LowWater == 10 && b.LowWater == 10
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if st, _ := d.Stats("old"); st.SkippedByRetention != 4 || st.Delivered != 4 {
		t.Fatalf("old: %+v", st)
	}
	if st, _ := d.Stats("new"); st.SkippedByRetention != 0 || st.Delivered != 4 {
		t.Fatalf("new (earliest is the first retained): %+v", st)
	}
}

// truncatingLog removes records the reader has not reached yet, at the
// moment it asks for them: retention overtaking a running subscription.
type truncatingLog struct {
	*commitlog.Memory
	at, below uint64
	once      sync.Once
}

func (l *truncatingLog) Read(from uint64, maxRecords, maxBytes int) ([]commitlog.Record, error) {
	if from >= l.at {
		l.once.Do(func() { l.Truncate(l.below) })
	}
	return l.Memory.Read(from, maxRecords, maxBytes)
}

func TestRetentionOvertakesReader(t *testing.T) {
	mem := commitlog.NewMemory(nil)
	fillLog(t, mem, 10, 1)
	lg := &truncatingLog{Memory: mem, at: 5, below: 8}
	s := newSink(t, nil)
	d := mustNew(t, lg, t.TempDir(), Options{ReadBatch: 5})
	if err := d.Add(Subscription{ID: "x", Sink: s.URL}); err != nil {
		t.Fatal(err)
	}
	stop := started(t, d)
	waitFor(t, "done", func() bool { st, _ := d.Stats("x"); return st.LowWater == 10 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	st, _ := d.Stats("x")
	if st.SkippedByRetention != 3 || st.Delivered != 7 {
		t.Fatalf("stats %+v", st)
	}
	for _, id := range []string{"ev-5", "ev-6", "ev-7"} {
		if s.count(id) != 0 {
			t.Fatalf("%s was removed by retention but delivered", id)
		}
	}
}

// TestUpdateAndRemoveAtRuntime: Update keeps the cursor and applies the new
// filters from there; Remove deletes the cursor, so re-adding starts over.
func TestUpdateAndRemoveAtRuntime(t *testing.T) {
	lg := commitlog.NewMemory(nil)
	fillLog(t, lg, 40, 2) // even ids: plant/0, odd: plant/1
	dir := t.TempDir()
	s := newSink(t, nil)
	d := mustNew(t, lg, dir, Options{})
	stop := started(t, d)
	sub := Subscription{ID: "u", Sink: s.URL, Filters: []filter.Filter{{Prefix: map[string]string{"subject": "plant/0/"}}}}
	if err := d.Add(sub); err != nil {
		t.Fatal(err)
	}
	if err := d.Add(sub); !errors.Is(err, ErrExists) {
		t.Fatalf("second Add = %v", err)
	}
	waitFor(t, "first config done", func() bool { st, _ := d.Stats("u"); return st.LowWater == 40 })
	if s.delivered() != 20 {
		t.Fatalf("delivered %d, want the 20 plant/0 events", s.delivered())
	}

	sub.Filters = []filter.Filter{{Prefix: map[string]string{"subject": "plant/1/"}}}
	if err := d.Update(sub); err != nil {
		t.Fatal(err)
	}
	if got, _ := d.Get("u"); got.Filters[0].Prefix["subject"] != "plant/1/" {
		t.Fatalf("Get after Update: %+v", got)
	}
	var recs []commitlog.Record
	for i := 40; i < 44; i++ {
		recs = append(recs, commitlog.Record{Topic: "t", Value: encode(t, makeEvent(i, 2))})
	}
	if _, err := lg.Append(t.Context(), recs); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "updated config done", func() bool { st, _ := d.Stats("u"); return st.LowWater == 44 })
	// Only the two new plant/1 events: the cursor was kept.
	if s.delivered() != 22 || s.count("ev-41") != 1 || s.count("ev-43") != 1 || s.count("ev-1") != 0 {
		t.Fatalf("after update: %d delivered", s.delivered())
	}
	if st, _ := d.Stats("u"); st.Delivered != 22 {
		t.Fatalf("stats not carried over: %+v", st)
	}
	if err := d.Update(Subscription{ID: "nope", Sink: s.URL}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Update unknown = %v", err)
	}
	if err := d.Update(Subscription{ID: "u", Sink: "gopher://x"}); err == nil {
		t.Fatal("invalid update accepted")
	}

	if err := d.Remove("u"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "u.cursor")); !os.IsNotExist(err) {
		t.Fatalf("cursor file after Remove: %v", err)
	}
	if _, err := d.Stats("u"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Stats after Remove = %v", err)
	}
	if len(d.List()) != 0 {
		t.Fatalf("List after Remove: %v", d.List())
	}
	// Re-added: starts over from earliest.
	if err := d.Add(sub); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "re-added done", func() bool { st, _ := d.Stats("u"); return st.LowWater == 44 })
	if s.count("ev-1") != 1 || s.count("ev-41") != 2 {
		t.Fatalf("re-added subscription did not start over: ev-1 %d, ev-41 %d", s.count("ev-1"), s.count("ev-41"))
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if err := d.Run(t.Context()); !errors.Is(err, ErrStopped) {
		t.Fatalf("second Run = %v", err)
	}
}

// flakyLog fails the first appends with a transient error and refuses large
// records, like a file log would.
type flakyLog struct {
	*commitlog.Memory
	mu       sync.Mutex
	failures int // appends still to fail
	maxValue int
}

func (l *flakyLog) Append(ctx context.Context, recs []commitlog.Record) (commitlog.AppendResult, error) {
	l.mu.Lock()
	if l.failures > 0 {
		l.failures--
		l.mu.Unlock()
		return commitlog.AppendResult{}, errors.New("disk hiccup")
	}
	l.mu.Unlock()
	for _, r := range recs {
		if len(r.Value) > l.maxValue {
			return commitlog.AppendResult{}, fmt.Errorf("record of %d bytes: %w", len(r.Value), commitlog.ErrTooLarge)
		}
	}
	return l.Memory.Append(ctx, recs)
}

// TestDeadLetterAppendFailures: a failing dead-letter append is retried
// (the cursor waits), and a dead letter too large for the log is written
// without its data.
func TestDeadLetterAppendFailures(t *testing.T) {
	mem := commitlog.NewMemory(nil)
	big := makeEvent(0, 1)
	big.DataEncoded = make([]byte, 4000)
	if _, err := mem.Append(t.Context(), []commitlog.Record{{Topic: "t", Value: encode(t, big)}}); err != nil {
		t.Fatal(err)
	}
	lg := &flakyLog{Memory: mem, failures: 2, maxValue: 1000}
	s := newSink(t, func(*event.Event, int) (int, http.Header) { return http.StatusBadRequest, nil })
	waits := &fakeWaits{}
	d := mustNew(t, lg, t.TempDir(), Options{After: waits.after})
	if err := d.Add(Subscription{ID: "fl", Sink: s.URL}); err != nil {
		t.Fatal(err)
	}
	stop := started(t, d)
	waitFor(t, "dead-lettered", func() bool { st, _ := d.Stats("fl"); return st.DeadLettered == 1 && st.LowWater == 2 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if len(waits.list()) != 2 {
		t.Fatalf("append retries waited %v, want 2 waits", waits.list())
	}
	dls := deadLetters(t, mem, "$deadletter/fl")
	if len(dls) != 1 || len(dls[0].Data()) != 0 || !strings.Contains(extString(t, dls[0], ExtDLReason), "data dropped") {
		t.Fatalf("dead letters %v", dls)
	}
	if dls[0].ID() != "ev-0" {
		t.Fatalf("dead letter id %q", dls[0].ID())
	}
}

func TestNewRemovesStaleTempFiles(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, "s.cursor.tmp123")
	keep := filepath.Join(dir, "s.cursor")
	for _, p := range []string{stale, keep} {
		if err := os.WriteFile(p, []byte(`{"version":1,"offset":3,"epoch":"e"}`), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mustNew(t, commitlog.NewMemory(nil), dir, Options{})
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("stale temp file kept: %v", err)
	}
	if _, err := os.Stat(keep); err != nil {
		t.Fatalf("cursor removed: %v", err)
	}
}
