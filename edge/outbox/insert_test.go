package outbox

import (
	"fmt"
	"sync"
	"testing"
)

// TestInsertChunks: groups cut into 32-, 8- and 1-row statements give every
// message the seq of its place in the append order, with refused messages
// (a full reject-new quota) in between taking none, and every stored record
// reads back with its own fields.
func TestInsertChunks(t *testing.T) {
	for _, rows := range []int{1, 7, 8, 9, 33, 45, 200} {
		t.Run(fmt.Sprint(rows), func(t *testing.T) {
			o := openT(t, dbPath(t), Options{MaxBatchRows: rows})
			const n = 300
			seqs := make([]uint64, n)
			errs := make([]error, n)
			var wg sync.WaitGroup
			for i := range n {
				wg.Add(1)
				o.Append(testMessage(i%5, i), func(seq uint64, err error) {
					seqs[i], errs[i] = seq, err
					wg.Done()
				})
			}
			wg.Wait()
			for i := range n {
				if errs[i] != nil {
					t.Fatalf("message %d: %v", i, errs[i])
				}
				if seqs[i] != uint64(i+1) {
					t.Fatalf("message %d got seq %d, want %d", i, seqs[i], i+1)
				}
			}
			recs, err := o.Read(0, n, 0)
			if err != nil {
				t.Fatal(err)
			}
			if len(recs) != n {
				t.Fatalf("read %d records, want %d", len(recs), n)
			}
			for i, r := range recs {
				checkRecord(t, r, testMessage(i%5, i), uint64(i+1))
			}
			if st := o.Stats(); st.MaxGroupRows > rows {
				t.Fatalf("a group held %d rows, over max_batch_rows %d", st.MaxGroupRows, rows)
			}
		})
	}
}

// TestInsertChunksWithRefusals: with a reject-new quota that fills in the
// middle of groups, refused messages get an error and no seq, and the
// stored ones keep consecutive seqs in append order.
func TestInsertChunksWithRefusals(t *testing.T) {
	o := openT(t, dbPath(t), Options{QuotaBytes: 40 << 10, MaxBatchRows: 45})
	const n = 400
	seqs := make([]uint64, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		o.Append(testMessage(1, i), func(seq uint64, err error) {
			seqs[i], errs[i] = seq, err
			wg.Done()
		})
	}
	wg.Wait()
	var next uint64 = 1
	stored, refused := 0, 0
	for i := range n {
		switch {
		case errs[i] != nil:
			if seqs[i] != 0 {
				t.Fatalf("refused message %d has seq %d", i, seqs[i])
			}
			refused++
		case seqs[i] != next:
			t.Fatalf("message %d got seq %d, want %d", i, seqs[i], next)
		default:
			next++
			stored++
		}
	}
	if refused == 0 || stored == 0 {
		t.Fatalf("stored %d, refused %d: the quota should split the messages", stored, refused)
	}
	recs, err := o.Read(0, n, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != stored {
		t.Fatalf("read %d records, %d stored", len(recs), stored)
	}
	k := 0
	for i := range n {
		if errs[i] == nil {
			checkRecord(t, recs[k], testMessage(1, i), seqs[i])
			k++
		}
	}
}

func checkRecord(t *testing.T, r Record, want Message, seq uint64) {
	t.Helper()
	if r.Seq != seq || !equalMessage(r.Message, want) {
		t.Fatalf("record %+v, want seq %d %+v", r, seq, want)
	}
}
