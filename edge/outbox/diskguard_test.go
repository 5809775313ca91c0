package outbox

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"
)

// fakeDisk is a file system whose free space the test sets, at the statfs
// seam of the free-space reserve; the database itself is a real SQLite file.
type fakeDisk struct {
	mu    sync.Mutex
	avail int64
	calls int
	err   error
}

func (d *fakeDisk) statfs(string) (int64, int64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls++
	return d.avail, 1 << 40, d.err
}

func (d *fakeDisk) set(avail int64) {
	d.mu.Lock()
	d.avail = avail
	d.mu.Unlock()
}

func (d *fakeDisk) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.calls
}

// TestDiskReserveRefresh: free space is measured at the first commit, then
// again after 64 committed groups, after a second (on Options.Now), right
// after a commit failed with ErrDiskFull, and at every group while the
// reserve is short; not at every group otherwise.
func TestDiskReserveRefresh(t *testing.T) {
	disk := &fakeDisk{avail: 1 << 40}
	clock := &fakeClock{now: time.Unix(1e9, 0)}
	var failing bool
	var mu sync.Mutex
	hooks := &testHooks{statfs: disk.statfs, beforeCommit: func() error {
		mu.Lock()
		defer mu.Unlock()
		if failing {
			return fmt.Errorf("injected: %w", ErrDiskFull)
		}
		return nil
	}}
	o := openT(t, dbPath(t), Options{MinFreeBytes: 1 << 20, Now: clock.Now, hooks: hooks})
	step := func(what string, n, want int) {
		t.Helper()
		for i := range n {
			mustAppend(t, o, classMsg(0, i, 200))
		}
		if got := disk.count(); got != want {
			t.Fatalf("%s: %d measurements, want %d", what, got, want)
		}
	}
	step("first commit", 1, 1)
	step("63 more groups", 63, 1)
	step("the 65th group", 1, 2)
	step("a few more", 5, 2)
	clock.Advance(diskCheckInterval)
	step("a second later", 1, 3)

	mu.Lock()
	failing = true
	mu.Unlock()
	if _, err := appendErr(t, o, classMsg(0, 0, 200)); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("append with an injected ENOSPC: %v", err)
	}
	mu.Lock()
	failing = false
	mu.Unlock()
	step("the group after an ENOSPC", 1, 4)
	step("then", 3, 4)

	// Short of the reserve (by less than the records held, so appends
	// drop... none: class 0 is RejectNew and refuses) at every group.
	// A group may measure twice: the WAL holds more than the outbox may, so
	// it is truncated first and measured again (TestDiskReserveReclaimsWAL);
	// this fake disk gives nothing back for it.
	disk.set(1<<20 - 1)
	clock.Advance(diskCheckInterval)
	prev := disk.count()
	for i := range 3 {
		if _, err := appendErr(t, o, classMsg(0, i, 200)); !errors.Is(err, ErrDiskFull) || errors.Is(err, ErrQuotaExceeded) {
			t.Fatalf("append below the reserve: %v, want ErrDiskFull", err)
		}
		if got := disk.count(); got != prev+1 && got != prev+2 {
			t.Fatalf("below the reserve, group %d: %d measurements after %d, want 1 or 2 more", i, got, prev)
		}
		prev = disk.count()
	}
	st := o.Stats()
	if st.RejectedDiskFull != 3 || st.Rejected != 3 || st.FailedRows != 1 || st.DroppedDiskFull != 0 || classStats(st, 0).RejectedDiskFull != 3 {
		t.Fatalf("stats %+v", st)
	}
	checkAccounting(t, o)
}

// TestDiskReserveReasons: with a quota below the disk's room, drops are the
// quota's; once free space is short of the reserve, the same DropOldest
// class drops for the disk, counted apart per class; a RejectNew class of
// higher priority displaces it and is refused with ErrDiskFull only when
// nothing droppable is left, never losing one of its own records.
func TestDiskReserveReasons(t *testing.T) {
	const size = 1000
	disk := &fakeDisk{avail: 1 << 40}
	clock := &fakeClock{now: time.Unix(1e9, 0)}
	o := openT(t, dbPath(t), Options{MinFreeBytes: 1 << 20, QuotaBytes: 20 * size, Now: clock.Now,
		Classes: map[uint8]ClassPolicy{2: {Overflow: DropOldest}}, hooks: &testHooks{statfs: disk.statfs}})
	low := 0
	for range 23 {
		mustAppend(t, o, classMsg(2, low, size))
		low++
	}
	st := o.Stats()
	if st.DroppedOldest != 3 || st.DroppedDiskFull != 0 || classStats(st, 2).DroppedOldest != 3 {
		t.Fatalf("quota drops: %+v", st)
	}

	// Free space falls short of the reserve by ten records: the disk's limit
	// is now below the quota.
	disk.set(1<<20 - 10*size)
	clock.Advance(diskCheckInterval)
	mustAppend(t, o, classMsg(2, low, size))
	low++
	st = o.Stats()
	c2 := classStats(st, 2)
	if st.DroppedDiskFull == 0 || c2.DroppedDiskFull != st.DroppedDiskFull || st.DroppedOldest != 3 || c2.DroppedOldest != 3 {
		t.Fatalf("below the reserve: %+v", st)
	}

	// Class 0 (RejectNew) displaces class 2 until none is left to drop.
	var high []uint64
	var refusal error
	for i := 0; refusal == nil; i++ {
		if i > 100 {
			t.Fatalf("class 0 still accepted below the reserve after %d appends: %+v", i, o.Stats())
		}
		seq, err := appendErr(t, o, classMsg(0, i, size))
		switch {
		case err == nil:
			high = append(high, seq)
		case errors.Is(err, ErrDiskFull) && !errors.Is(err, ErrQuotaExceeded):
			refusal = err
		default:
			t.Fatalf("class 0 append %d: %v", i, err)
		}
	}
	st = o.Stats()
	c0, c2 := classStats(st, 0), classStats(st, 2)
	t.Logf("refused: %v; class 0 %+v, class 2 %+v", refusal, c0, c2)
	if len(high) == 0 || c0.Records != uint64(len(high)) || c0.DroppedDiskFull != 0 || c0.DroppedOldest != 0 ||
		c0.RejectedDiskFull != 1 || c0.Rejected != 1 || st.RejectedDiskFull != 1 || st.DroppedOldest != 3 {
		t.Fatalf("class 0 after its refusal: %d appended, %+v", len(high), c0)
	}
	if c2.DroppedDiskFull == 0 || c2.Records+c2.DroppedOldest+c2.DroppedDiskFull != uint64(low) {
		t.Fatalf("class 2 after class 0's refusal (%d appended): %+v", low, c2)
	}
	// A refusal drops nothing: what class 2 still holds is too little.
	if _, err := appendErr(t, o, classMsg(0, 0, size)); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("class 0 append after a refusal: %v", err)
	}
	if after := classStats(o.Stats(), 2); after != c2 {
		t.Fatalf("a refused class 0 append changed class 2: %+v, before %+v", after, c2)
	}
	var got []uint64
	for _, r := range readAll(t, o, 0) {
		if r.Priority == 0 {
			got = append(got, r.Seq)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(high) {
		t.Fatalf("class 0 holds %v, acknowledged %v", got, high)
	}
	checkAccounting(t, o)

	// Space returns: the next refresh lifts the limit.
	disk.set(1 << 40)
	clock.Advance(diskCheckInterval)
	mustAppend(t, o, classMsg(0, 0, size))
	checkAccounting(t, o)
}

// TestDiskReserveOff: a negative MinFreeBytes never measures. A statfs that
// fails leaves the reserve unenforced (appends still succeed) and is retried
// at every group until it works.
func TestDiskReserveOff(t *testing.T) {
	disk := &fakeDisk{avail: 0}
	o := openT(t, dbPath(t), Options{MinFreeBytes: -1, hooks: &testHooks{statfs: disk.statfs}})
	mustAppend(t, o, classMsg(0, 0, 200))
	if n := disk.count(); n != 0 {
		t.Fatalf("reserve off: %d measurements", n)
	}

	broken := &fakeDisk{avail: 0, err: errors.New("injected statfs failure")}
	o = openT(t, dbPath(t), Options{hooks: &testHooks{statfs: broken.statfs}})
	mustAppend(t, o, classMsg(0, 0, 200))
	mustAppend(t, o, classMsg(0, 1, 200))
	if n := broken.count(); n != 2 {
		t.Fatalf("%d measurements while failing, want 2", n)
	}
	broken.mu.Lock()
	broken.err = nil // and no space at all
	broken.mu.Unlock()
	if _, err := appendErr(t, o, classMsg(0, 2, 200)); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("append once statfs works and reports no space: %v", err)
	}
	if n := broken.count(); n != 3 {
		t.Fatalf("%d measurements, want 3", n)
	}
}

// dirDisk is a small file system of capacity bytes simulated over a real
// directory: what is available is capacity minus the sizes of the files in
// it (the database, its WAL and shared memory), so the WAL's growth eats
// free space as it would on a real small disk.
type dirDisk struct {
	capacity int64
}

func (d dirDisk) statfs(dir string) (int64, int64, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, 0, err
	}
	used := int64(0)
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			return 0, 0, err
		}
		used += fi.Size()
	}
	return max(d.capacity-used, 0), d.capacity, nil
}

// TestDiskReserveReclaimsWAL: with the checkpointer idle (CheckpointBytes
// never reached, CheckpointInterval an hour), the WAL only grows, and a
// DropOldest class would drop every record and still find no room ("may
// hold 0 bytes"). The reserve truncates the WAL instead, before refusing:
// every append succeeds, the oldest are dropped for the disk, the WAL stays
// within the simulated disk, and what is held is the newest messages.
func TestDiskReserveReclaimsWAL(t *testing.T) {
	const (
		capacity = 2 << 20
		reserve  = 512 << 10
		n        = 600 // × 4 KB payload: more than the disk
	)
	path := dbPath(t)
	o := openT(t, path, Options{MinFreeBytes: reserve, Overflow: DropOldest,
		CheckpointBytes: 1 << 40, CheckpointInterval: time.Hour,
		hooks: &testHooks{statfs: dirDisk{capacity}.statfs}})
	var seqs []uint64
	for i := range n {
		seqs = append(seqs, mustAppend(t, o, classMsg(0, i, 4000)))
	}
	st := o.Stats()
	t.Logf("after %d appends: %+v", n, st)
	if st.DroppedDiskFull == 0 || st.RejectedDiskFull != 0 || st.FailedRows != 0 || st.Checkpoints == 0 ||
		st.Records+st.DroppedDiskFull != n {
		t.Fatalf("%d appended: %+v", n, st)
	}
	fi, err := os.Stat(path + "-wal")
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() >= capacity-reserve {
		t.Fatalf("WAL of %d bytes on a %d-byte disk with a %d-byte reserve", fi.Size(), capacity, reserve)
	}
	recs := readAll(t, o, 0)
	want := seqs[len(seqs)-len(recs):]
	for k, r := range recs {
		if r.Seq != want[k] {
			t.Fatalf("held record %d has seq %d, want %d (only the oldest may be dropped)", k, r.Seq, want[k])
		}
	}
	checkAccounting(t, o)
}
