package outbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
)

// holdWriter returns hooks that stop the writer after it took the first
// message of a group, until the returned release is called. arm makes the
// next group stop; held is closed when it has.
type writerHold struct {
	mu      sync.Mutex
	armed   bool
	held    chan struct{}
	release chan struct{}
}

func (h *writerHold) hooks() *testHooks {
	return &testHooks{afterFirst: func() {
		h.mu.Lock()
		if !h.armed {
			h.mu.Unlock()
			return
		}
		h.armed = false
		held, release := h.held, h.release
		h.mu.Unlock()
		close(held)
		<-release
	}}
}

// arm makes the writer stop at its next group; wait on the returned channel
// to know it stopped, close the other to let it go.
func (h *writerHold) arm() (held <-chan struct{}, release chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.armed = true
	h.held = make(chan struct{})
	h.release = make(chan struct{})
	return h.held, h.release
}

// TestDiskFullFailsWholeGroup simulates a full disk with max_page_count: the
// group's first rows fit, its large ones do not. Every callback of the group
// must get ErrDiskFull, none of its rows may be stored, and once space
// returns the outbox continues with the next seq.
func TestDiskFullFailsWholeGroup(t *testing.T) {
	h := &writerHold{}
	path := dbPath(t)
	o, err := Open(path, Options{hooks: h.hooks()})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	ctx := context.Background()
	for i := range 10 {
		if _, err := o.AppendWait(ctx, testMessage(0, i)); err != nil {
			t.Fatal(err)
		}
	}
	var pages int64
	if err := o.wdb.QueryRow("PRAGMA page_count").Scan(&pages); err != nil {
		t.Fatal(err)
	}
	if _, err := o.wdb.Exec(fmt.Sprintf("PRAGMA max_page_count = %d", pages)); err != nil {
		t.Fatal(err)
	}

	// One group: small messages that fit in the last page, then large ones
	// that need new pages.
	group := []Message{testMessage(1, 0), testMessage(1, 1)}
	for i := range 3 {
		group = append(group, Message{Topic: "big", Payload: bytes.Repeat([]byte{byte(i)}, 20000)})
	}
	held, release := h.arm()
	errs := make([]error, len(group))
	seqs := make([]uint64, len(group))
	var wg sync.WaitGroup
	wg.Add(len(group))
	o.Append(group[0], func(seq uint64, err error) { seqs[0], errs[0] = seq, err; wg.Done() })
	<-held
	for i := 1; i < len(group); i++ {
		o.Append(group[i], func(seq uint64, err error) { seqs[i], errs[i] = seq, err; wg.Done() })
	}
	close(release)
	wg.Wait()
	for i, err := range errs {
		if !errors.Is(err, ErrDiskFull) || seqs[i] != 0 {
			t.Errorf("message %d of the full group: seq %d, err %v; want 0, ErrDiskFull", i, seqs[i], err)
		}
	}
	st := o.Stats()
	if st.FailedGroups != 1 || st.FailedRows != uint64(len(group)) || st.Records != 10 || st.LastSeq != 10 {
		t.Fatalf("stats after the failed group: %+v", st)
	}
	recs := readAll(t, o, 0)
	if len(recs) != 10 {
		t.Fatalf("%d records after the failed group, want the 10 before it", len(recs))
	}

	// Still full: a large message fails alone, the outbox stays usable.
	if _, err := o.AppendWait(ctx, group[2]); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("large append on a full disk = %v, want ErrDiskFull", err)
	}

	// Space returns.
	if _, err := o.wdb.Exec("PRAGMA max_page_count = 1073741823"); err != nil {
		t.Fatal(err)
	}
	for i, m := range group {
		seq, err := o.AppendWait(ctx, m)
		if err != nil || seq != uint64(11+i) {
			t.Fatalf("append after space returned = %d, %v; want %d", seq, err, 11+i)
		}
	}
	var check string
	if err := o.wdb.QueryRow("PRAGMA integrity_check").Scan(&check); err != nil || check != "ok" {
		t.Fatalf("integrity_check = %q, %v", check, err)
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}

	o = openT(t, path, Options{})
	recs = readAll(t, o, 0)
	if len(recs) != 10+len(group) {
		t.Fatalf("%d records after reopen, want %d", len(recs), 10+len(group))
	}
	for i, r := range recs {
		want := testMessage(0, i)
		if i >= 10 {
			want = group[i-10]
		}
		if r.Seq != uint64(i+1) || !equalMessage(r.Message, want) {
			t.Fatalf("record %d after reopen: seq %d, topic %q", i, r.Seq, r.Topic)
		}
	}
}

// TestCorruptRecordIsAnError: a row whose stored fields are out of range
// fails Read with ErrCorrupt instead of panicking or being silently fixed.
func TestCorruptRecordIsAnError(t *testing.T) {
	o := openT(t, dbPath(t), Options{})
	ctx := context.Background()
	for i := range 3 {
		if _, err := o.AppendWait(ctx, testMessage(0, i)); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct{ name, sql string }{
		{"user properties", "UPDATE records SET user_properties = X'05FF' WHERE seq = 2"},
		{"trailing bytes", "UPDATE records SET user_properties = X'0100000000' WHERE seq = 2"},
		{"qos", "UPDATE records SET qos = 3 WHERE seq = 2"},
		{"priority", "UPDATE records SET priority = 256 WHERE seq = 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tx, err := o.wdb.Begin()
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback()
			if _, err := tx.Exec(tc.sql); err != nil {
				t.Fatal(err)
			}
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			if _, err := o.Read(0, 0, 0); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Read over a corrupt row = %v, want ErrCorrupt", err)
			}
			if recs, err := o.Read(2, 0, 0); err != nil || len(recs) != 1 {
				t.Fatalf("Read past the corrupt row = %d records, %v", len(recs), err)
			}
			// Restore the row for the next case.
			m := testMessage(0, 1)
			if _, err := o.wdb.Exec(`UPDATE records SET user_properties = ?, qos = ?, priority = ? WHERE seq = 2`,
				appendUserProperties(nil, m.UserProperties), int(m.QoS), int(m.Priority)); err != nil {
				t.Fatal(err)
			}
			if _, err := o.Read(0, 0, 0); err != nil {
				t.Fatalf("Read after restoring the row: %v", err)
			}
		})
	}
}
