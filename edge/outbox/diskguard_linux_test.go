//go:build linux

package outbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
)

// mountTmpfs mounts a tmpfs of size bytes for the test and unmounts it at
// cleanup (registered first, so it runs after the outbox closes). Mounting
// needs root (or CAP_SYS_ADMIN); the test skips without it.
func mountTmpfs(t *testing.T, size int64) string {
	t.Helper()
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, fmt.Sprintf("size=%d,mode=0755", size)); err != nil {
		t.Skipf("cannot mount a tmpfs to fill (%v): needs root or CAP_SYS_ADMIN", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(mnt, 0); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
			syscall.Unmount(mnt, syscall.MNT_DETACH)
		}
	})
	return mnt
}

// diskMsg is message i of class: 1 to 12 KiB of payload derived from i, so
// records of different sizes (most over a page, in overflow pages) free and
// reuse pages of different shapes.
func diskMsg(class uint8, i int) Message {
	return Message{Topic: fmt.Sprintf("fill/%d", class), ClientID: "dev", Priority: class,
		Payload: bytes.Repeat([]byte{byte(i), byte(i >> 8), byte(i >> 16), byte(class)}, 256*(1+i*7%12))}
}

type storedMsg struct {
	seq uint64
	m   Message
}

// TestDiskReserveDropOldestKeepsAccepting fills a real 4 MiB tmpfs with
// three times its size from eight concurrent publishers into a DropOldest
// class. With a 1 MiB reserve every append must succeed: the outbox drops
// its oldest records, counted by reason disk_full, and reuses their pages.
// What it holds afterwards is exactly the newest acknowledged messages, intact
// across a reopen; no commit failed on ENOSPC.
func TestDiskReserveDropOldestKeepsAccepting(t *testing.T) {
	const (
		fsSize  = 4 << 20
		reserve = 1 << 20
		writers = 8
		each    = 240 // 8 × 240 × 6.5 KiB = 12 MiB
	)
	mnt := mountTmpfs(t, fsSize)
	path := filepath.Join(mnt, "outbox.db")
	opts := Options{MinFreeBytes: reserve, Overflow: DropOldest, CheckpointBytes: 64 << 10, JournalSizeLimit: 512 << 10}
	o, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { o.Close() }()

	var (
		mu    sync.Mutex
		acked []storedMsg
		wg    sync.WaitGroup
		errc  = make(chan error, writers)
	)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				m := diskMsg(1, w*each+i)
				seq, err := o.AppendWait(context.Background(), m)
				if err != nil {
					errc <- fmt.Errorf("writer %d append %d: %w (stats %+v)", w, i, err, o.Stats())
					return
				}
				mu.Lock()
				acked = append(acked, storedMsg{seq, m})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	st := o.Stats()
	t.Logf("after %d appends: %+v", len(acked), st)
	if st.FailedRows != 0 || st.Rejected != 0 || st.DroppedOldest != 0 {
		t.Fatalf("failed, rejected or quota-dropped messages with no quota: %+v", st)
	}
	if st.DroppedDiskFull == 0 || st.Records+st.DroppedDiskFull != uint64(len(acked)) {
		t.Fatalf("%d acknowledged: %d held + %d dropped for the disk", len(acked), st.Records, st.DroppedDiskFull)
	}
	if c := classStats(st, 1); c.DroppedDiskFull != st.DroppedDiskFull || c.RejectedDiskFull != 0 {
		t.Fatalf("class 1 stats %+v, total %+v", c, st)
	}
	var fs syscall.Statfs_t
	if err := syscall.Statfs(mnt, &fs); err != nil {
		t.Fatal(err)
	}
	t.Logf("file system: %d of %d bytes available", int64(fs.Bavail)*int64(fs.Frsize), int64(fs.Blocks)*int64(fs.Frsize))

	// Only the oldest were dropped: what is held is the newest acked, by seq.
	slices.SortFunc(acked, func(a, b storedMsg) int { return int(a.seq) - int(b.seq) })
	checkHeld := func(o *Outbox) {
		t.Helper()
		recs := readAll(t, o, 0)
		want := acked[len(acked)-len(recs):]
		if uint64(len(recs)) != st.Records {
			t.Fatalf("%d records readable, stats hold %d", len(recs), st.Records)
		}
		for k, r := range recs {
			if r.Seq != want[k].seq || !equalMessage(r.Message, want[k].m) {
				t.Fatalf("held record %d: seq %d, want seq %d and its message (only the oldest may be dropped)", k, r.Seq, want[k].seq)
			}
		}
	}
	checkHeld(o)
	integrity(t, o)
	checkAccounting(t, o)
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	if o, err = Open(path, opts); err != nil {
		t.Fatal(err)
	}
	integrity(t, o)
	checkHeld(o)
	checkAccounting(t, o)
}

// TestDiskReserveRejectNewDeletesNothing fills a real 4 MiB tmpfs through a
// RejectNew class until the 1 MiB reserve refuses appends: each refusal
// wraps ErrDiskFull, is counted as a reserve refusal (not a failed commit),
// and nothing acknowledged was deleted. After the cloud acknowledges half,
// the freed pages (still inside the database file) are room again: appends
// succeed, and reuse them without a VACUUM. A DropOldest class of lower
// priority then makes room for the RejectNew class, never the reverse.
func TestDiskReserveRejectNewDeletesNothing(t *testing.T) {
	const (
		fsSize  = 4 << 20
		reserve = 1 << 20
	)
	mnt := mountTmpfs(t, fsSize)
	path := filepath.Join(mnt, "outbox.db")
	opts := Options{MinFreeBytes: reserve, CheckpointBytes: 64 << 10, JournalSizeLimit: 512 << 10,
		VacuumFreePages: -1, Classes: map[uint8]ClassPolicy{3: {Overflow: DropOldest}}}
	o, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { o.Close() }()
	ctx := context.Background()

	var acked []storedMsg
	fill := func(class uint8, from int) (int, error) {
		t.Helper()
		i, inARow := from, 0
		var last error
		for ; inARow < 5; i++ {
			if i-from > 4000 {
				t.Fatalf("4 MiB file system not past its reserve after %d appends of 1-12 KiB: %+v", i-from, o.Stats())
			}
			m := diskMsg(class, i)
			seq, err := o.AppendWait(ctx, m)
			switch {
			case err == nil:
				acked = append(acked, storedMsg{seq, m})
				inARow = 0
			case errors.Is(err, ErrDiskFull):
				inARow++
				last = err
			default:
				t.Fatalf("append %d: %v, want nil or ErrDiskFull", i, err)
			}
		}
		return i, last
	}
	i, last := fill(0, 0)
	st := o.Stats()
	t.Logf("reserve reached after %d appends: %d stored; stats %+v; last refusal: %v", i, len(acked), st, last)
	if len(acked) < 50 || st.FailedRows != 0 || st.RejectedDiskFull < 5 || st.Rejected != st.RejectedDiskFull ||
		st.DroppedDiskFull != 0 || st.DroppedOldest != 0 || st.Records != uint64(len(acked)) {
		t.Fatalf("%d stored, stats %+v", len(acked), st)
	}
	if c := classStats(st, 0); c.RejectedDiskFull != st.RejectedDiskFull || c.Rejected != st.Rejected {
		t.Fatalf("class 0 stats %+v, total %+v", c, st)
	}
	checkExact := func() {
		t.Helper()
		recs := readAll(t, o, 0)
		if len(recs) != len(acked) {
			t.Fatalf("%d records held, %d acknowledged and not acked by the cloud", len(recs), len(acked))
		}
		for k, r := range recs {
			if r.Seq != acked[k].seq || !equalMessage(r.Message, acked[k].m) {
				t.Fatalf("record %d: seq %d, want %d and its message", k, r.Seq, acked[k].seq)
			}
		}
	}
	checkExact()
	integrity(t, o)

	// The cloud takes half. Its pages go to the free list, not back to the
	// file system (VacuumFreePages < 0), and count as room.
	half := len(acked) / 2
	if err := o.Ack(acked[half-1].seq); err != nil {
		t.Fatal(err)
	}
	acked = acked[half:]
	// page_count is the database's size as of the last commit, WAL
	// included (the main file's size lags until a checkpoint).
	pages := func() int64 {
		t.Helper()
		var n int64
		if err := o.rdb.QueryRow("PRAGMA page_count").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	pages0 := pages()
	for k := range half / 2 {
		m := diskMsg(0, i+k)
		seq, err := o.AppendWait(ctx, m)
		if err != nil {
			t.Fatalf("append %d of %d after the cloud took %d records: %v (stats %+v)", k, half/2, half, err, o.Stats())
		}
		acked = append(acked, storedMsg{seq, m})
	}
	i += half / 2
	if n := pages(); n > pages0 {
		t.Fatalf("database grew from %d to %d pages: freed pages were not reused", pages0, n)
	}
	checkExact()

	// Lower-priority DropOldest records fill the rest; then class 0, which
	// is RejectNew, displaces them (and never the other way round).
	// Class 3 is DropOldest: it never refuses, it drops its own oldest.
	var low []storedMsg
	for extra := 0; extra < 20; i++ {
		if len(low) > 4000 {
			t.Fatalf("class 3 not dropping after %d appends: %+v", len(low), o.Stats())
		}
		m := diskMsg(3, i)
		seq, err := o.AppendWait(ctx, m)
		if err != nil {
			t.Fatalf("class 3 append %d: %v", len(low), err)
		}
		low = append(low, storedMsg{seq, m})
		if classStats(o.Stats(), 3).DroppedDiskFull > 0 {
			extra++
		}
	}
	if n := len(readAll(t, o, 0)); n != len(acked)+len(low)-int(classStats(o.Stats(), 3).DroppedDiskFull) {
		t.Fatalf("%d records held with %d of class 0 and %d of class 3 acknowledged, %+v", n, len(acked), len(low), o.Stats())
	}
	before := o.Stats()
	for k := range len(low) / 2 {
		m := diskMsg(0, i+k)
		seq, err := o.AppendWait(ctx, m)
		if err != nil {
			t.Fatalf("class 0 append %d with %d class 3 records to displace: %v", k, len(low), err)
		}
		acked = append(acked, storedMsg{seq, m})
	}
	st = o.Stats()
	c0, c3 := classStats(st, 0), classStats(st, 3)
	t.Logf("class 0 %+v, class 3 %+v", c0, c3)
	if c3.DroppedDiskFull == 0 || c0.DroppedDiskFull != 0 || c0.Records != uint64(len(acked)) ||
		st.DroppedDiskFull != c3.DroppedDiskFull || st.FailedRows != 0 {
		t.Fatalf("class 0 %+v, class 3 %+v, stats %+v (before %+v)", c0, c3, st, before)
	}
	// Class 3 keeps its newest records, class 0 all of its own.
	var got0, got3 []uint64
	for _, r := range readAll(t, o, 0) {
		if r.Priority == 0 {
			got0 = append(got0, r.Seq)
		} else {
			got3 = append(got3, r.Seq)
		}
	}
	var want0, want3 []uint64
	for _, s := range acked {
		want0 = append(want0, s.seq)
	}
	for _, s := range low[len(low)-len(got3):] {
		want3 = append(want3, s.seq)
	}
	if !slices.Equal(got0, want0) || !slices.Equal(got3, want3) || uint64(len(got3))+c3.DroppedDiskFull != uint64(len(low)) {
		t.Fatalf("held class 0 %v\nwant %v\nheld class 3 %v\nwant %v (%d dropped of %d)", got0, want0, got3, want3, c3.DroppedDiskFull, len(low))
	}
	integrity(t, o)
	checkAccounting(t, o)
}

// TestDiskReserveExternalFill: another program fills the file system to the
// last byte between two measurements. Appends then fail with ErrDiskFull (a
// real ENOSPC, or a reserve refusal) and nothing else, the database stays
// intact and nothing acknowledged is lost except counted drops. Once the
// other program frees some space, though less than the reserve, the
// DropOldest class accepts again by dropping its oldest records, and a
// reopen finds exactly the newest acknowledged messages.
func TestDiskReserveExternalFill(t *testing.T) {
	const (
		fsSize  = 4 << 20
		reserve = 1536 << 10 // WAL growth between checkpoints must fit in what is given back
	)
	mnt := mountTmpfs(t, fsSize)
	path := filepath.Join(mnt, "outbox.db")
	opts := Options{MinFreeBytes: reserve, Overflow: DropOldest, CheckpointBytes: 64 << 10, JournalSizeLimit: 512 << 10}
	o, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { o.Close() }()
	ctx := context.Background()
	var acked []storedMsg
	i := 0
	appendOne := func() error {
		m := diskMsg(1, i)
		i++
		seq, err := o.AppendWait(ctx, m)
		if err == nil {
			acked = append(acked, storedMsg{seq, m})
		}
		return err
	}
	for range 150 {
		if err := appendOne(); err != nil {
			t.Fatalf("append %d on an empty file system: %v", i, err)
		}
	}

	// The other program takes every byte left.
	ballast, err := os.Create(filepath.Join(mnt, "ballast"))
	if err != nil {
		t.Fatal(err)
	}
	defer ballast.Close()
	chunk := make([]byte, 4096)
	var filled int64
	for {
		n, err := ballast.Write(chunk)
		filled += int64(n)
		if err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling: %v", err)
			}
			break
		}
	}
	failed := 0
	for range 30 {
		switch err := appendOne(); {
		case err == nil:
		case errors.Is(err, ErrDiskFull):
			failed++
		default:
			t.Fatalf("append %d on a full file system: %v, want nil or ErrDiskFull", i, err)
		}
	}
	st := o.Stats()
	t.Logf("file system filled by %d bytes of ballast: %d of 30 appends refused; %+v", filled, failed, st)
	if uint64(failed) != st.FailedRows+st.RejectedDiskFull {
		t.Fatalf("%d refused, stats count %d failed + %d rejected", failed, st.FailedRows, st.RejectedDiskFull)
	}
	integrity(t, o)

	// The other program gives back less than the reserve.
	if err := ballast.Truncate(filled - (reserve - 256<<10)); err != nil {
		t.Fatal(err)
	}
	for range 300 {
		if err := appendOne(); err != nil {
			t.Fatalf("append %d with free space back but below the reserve: %v (stats %+v)", i, err, o.Stats())
		}
	}
	st = o.Stats()
	t.Logf("after 300 more: %+v", st)
	if st.DroppedDiskFull == 0 || st.Records+st.DroppedDiskFull != uint64(len(acked)) {
		t.Fatalf("%d acknowledged: %d held + %d dropped for the disk", len(acked), st.Records, st.DroppedDiskFull)
	}
	checkNewest := func(o *Outbox) {
		t.Helper()
		recs := readAll(t, o, 0)
		want := acked[len(acked)-len(recs):]
		for k, r := range recs {
			if r.Seq != want[k].seq || !equalMessage(r.Message, want[k].m) {
				t.Fatalf("held record %d: seq %d, want seq %d and its message (only the oldest may be dropped)", k, r.Seq, want[k].seq)
			}
		}
	}
	checkNewest(o)
	integrity(t, o)
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	if o, err = Open(path, opts); err != nil {
		t.Fatal(err)
	}
	integrity(t, o)
	checkNewest(o)
	checkAccounting(t, o)
}
