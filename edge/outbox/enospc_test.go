//go:build linux

package outbox

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestDiskFullENOSPC fills a real, small file system (a 3 MiB tmpfs, so the
// kernel answers ENOSPC) and checks that appends are refused with
// ErrDiskFull and nothing else, the database stays intact while full,
// appends succeed again once space returns, and every message acknowledged
// before, during and after is still there after reopening.
//
// Mounting needs root (or CAP_SYS_ADMIN); the test skips without it.
func TestDiskFullENOSPC(t *testing.T) {
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "size=3m,mode=0755"); err != nil {
		t.Skipf("cannot mount a tmpfs to fill (%v): needs root or CAP_SYS_ADMIN", err)
	}
	// Cleanups run last-registered first: the outbox closes before this.
	t.Cleanup(func() {
		if err := syscall.Unmount(mnt, 0); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
			syscall.Unmount(mnt, syscall.MNT_DETACH)
		}
	})
	// Ballast is the space that "returns" later.
	ballast := filepath.Join(mnt, "ballast")
	if err := os.WriteFile(ballast, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(mnt, "outbox.db")
	o, err := Open(path, Options{CheckpointBytes: 64 << 10, MinFreeBytes: -1}) // the plain ENOSPC path: no reserve
	if err != nil {
		t.Fatal(err)
	}
	defer func() { o.Close() }()
	ctx := context.Background()

	msg := func(i int) Message {
		return Message{Topic: "fill", ClientID: "dev", Payload: bytes.Repeat([]byte{byte(i), byte(i >> 8)}, 2048), Priority: uint8(i % 3)}
	}
	type stored struct {
		seq uint64
		i   int
	}
	var acked []stored
	appendOne := func(i int) error {
		seq, err := o.AppendWait(ctx, msg(i))
		if err == nil {
			acked = append(acked, stored{seq, i})
		}
		return err
	}

	// Fill until the file system refuses five appends in a row (a
	// checkpoint may let the WAL restart and take a few more in between).
	i, full, inARow := 0, 0, 0
	for ; inARow < 5; i++ {
		if i > 5000 {
			t.Fatalf("3 MiB file system not full after %d appends of 4 KiB: %+v", i, o.Stats())
		}
		err := appendOne(i)
		switch {
		case err == nil:
			inARow = 0
		case errors.Is(err, ErrDiskFull):
			full++
			inARow++
		default:
			t.Fatalf("append %d on a filling disk: %v, want nil or ErrDiskFull", i, err)
		}
	}
	st := o.Stats()
	t.Logf("full after %d appends: %d stored, %d refused; stats %+v", i, len(acked), full, st)
	if len(acked) < 10 || st.FailedRows != uint64(full) || st.Records != uint64(len(acked)) {
		t.Fatalf("%d stored, %d refused; stats %+v", len(acked), full, st)
	}
	if got := len(readAll(t, o, 0)); got != len(acked) {
		t.Fatalf("%d records readable while full, %d acknowledged", got, len(acked))
	}
	integrity(t, o)

	// Space returns: appends succeed at once.
	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		if err := appendOne(i); err != nil {
			t.Fatalf("append %d after space returned: %v", i, err)
		}
		i++
	}
	integrity(t, o)
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}

	o, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	integrity(t, o)
	recs := readAll(t, o, 0)
	if len(recs) != len(acked) {
		t.Fatalf("%d records after reopen, %d acknowledged", len(recs), len(acked))
	}
	for k, r := range recs {
		if r.Seq != acked[k].seq || !equalMessage(r.Message, msg(acked[k].i)) {
			t.Fatalf("record %d after reopen: seq %d, want seq %d holding message %d", k, r.Seq, acked[k].seq, acked[k].i)
		}
	}
	checkAccounting(t, o)
}

func integrity(t *testing.T, o *Outbox) {
	t.Helper()
	var check string
	if err := o.rdb.QueryRow("PRAGMA integrity_check").Scan(&check); err != nil || check != "ok" {
		t.Fatalf("integrity_check = %q, %v", check, err)
	}
}
