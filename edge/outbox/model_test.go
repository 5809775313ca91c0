package outbox

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
)

// TestAgainstModel drives the outbox with a random sequence of appends
// (single and concurrent), reads, acks (valid, stale and ahead) and
// close/reopen cycles, and checks every answer against a plain slice.
func TestAgainstModel(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		t.Run("", func(t *testing.T) { runModel(t, seed) })
	}
}

func runModel(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, seed))
	path := dbPath(t)
	opts := Options{MaxBatchRows: 1 + rng.IntN(20), AckChunkRows: 1 + rng.IntN(10), VacuumFreePages: 8, VacuumStepPages: 4}
	o, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { o.Close() }()
	ctx := context.Background()

	// Odd seeds use one priority class only: Ack's count of what it
	// deletes takes a different path then.
	oneClass := seed%2 == 1
	var (
		model []Record // held records in seq order
		last  uint64   // highest seq ever committed
		acked uint64
		n     int // messages made so far
	)
	for step := range 300 {
		switch op := rng.IntN(10); {
		case op < 4: // a burst of concurrent appends
			k := 1 + rng.IntN(30)
			msgs := make([]Message, k)
			seqs := make([]uint64, k)
			var wg sync.WaitGroup
			wg.Add(k)
			for j := range k {
				msgs[j] = testMessage(n%17, n)
				if oneClass {
					msgs[j].Priority = 0
				}
				n++
				o.Append(msgs[j], func(seq uint64, err error) {
					if err != nil {
						t.Errorf("append: %v", err)
					}
					seqs[j] = seq
					wg.Done()
				})
			}
			wg.Wait()
			// One goroutine appended them: seqs follow call order.
			for j := range k {
				if seqs[j] != last+1 {
					t.Fatalf("step %d: message %d of the burst got seq %d, want %d", step, j, seqs[j], last+1)
				}
				last++
				model = append(model, Record{Seq: last, Message: msgs[j]})
			}
		case op < 6: // read a page
			after := acked
			if len(model) > 0 {
				after = model[rng.IntN(len(model))].Seq - 1
			}
			maxRec := 1 + rng.IntN(10)
			got, err := o.Read(after, maxRec, 0)
			if err != nil {
				t.Fatal(err)
			}
			var want []Record
			for _, r := range model {
				if r.Seq > after && len(want) < maxRec {
					want = append(want, r)
				}
			}
			if len(got) != len(want) {
				t.Fatalf("step %d: Read(%d, %d) = %d records, want %d", step, after, maxRec, len(got), len(want))
			}
			for i := range got {
				if got[i].Seq != want[i].Seq || !equalMessage(got[i].Message, want[i].Message) {
					t.Fatalf("step %d: Read(%d) record %d = seq %d, want %d", step, after, i, got[i].Seq, want[i].Seq)
				}
			}
		case op < 8: // ack: usually forward, sometimes stale or ahead
			upTo := acked
			switch r := rng.IntN(10); {
			case r == 0:
				upTo = last + 1 + uint64(rng.IntN(5))
			case r == 1 && acked > 0:
				upTo = uint64(rng.IntN(int(acked)))
			case last > acked:
				upTo = acked + 1 + uint64(rng.IntN(int(last-acked)))
			}
			err := o.Ack(upTo)
			if upTo > last {
				if !errors.Is(err, ErrAckAhead) {
					t.Fatalf("step %d: Ack(%d) with last %d = %v, want ErrAckAhead", step, upTo, last, err)
				}
				break
			}
			if err != nil {
				t.Fatalf("step %d: Ack(%d): %v", step, upTo, err)
			}
			acked = max(acked, upTo)
			for len(model) > 0 && model[0].Seq <= acked {
				model = model[1:]
			}
		case op < 9: // close and reopen
			if err := o.Close(); err != nil {
				t.Fatal(err)
			}
			if o, err = Open(path, opts); err != nil {
				t.Fatal(err)
			}
		default: // Wait must not block when a record is past `after`
			if last > 0 {
				if err := o.Wait(ctx, last-1); err != nil {
					t.Fatal(err)
				}
			}
		}
		st := o.Stats()
		var bytes, stored uint64
		classes := map[uint8]ClassStats{}
		for _, r := range model {
			bytes += uint64(len(r.Payload))
			stored += uint64(r.StoredSize())
			c := classes[r.Priority]
			c.Priority = r.Priority
			c.Records++
			c.Bytes += uint64(r.StoredSize())
			classes[r.Priority] = c
		}
		if st.Bytes != stored {
			t.Fatalf("step %d: Stats.Bytes %d, model holds %d stored bytes", step, st.Bytes, stored)
		}
		for _, c := range st.Classes {
			if w := classes[c.Priority]; c.Records != w.Records || c.Bytes != w.Bytes {
				t.Fatalf("step %d: class %d holds %d records, %d bytes; model %d, %d", step, c.Priority, c.Records, c.Bytes, w.Records, w.Bytes)
			}
			delete(classes, c.Priority)
		}
		if len(classes) > 0 {
			t.Fatalf("step %d: classes %v held in the model are missing from Stats", step, classes)
		}
		first := uint64(0)
		if len(model) > 0 {
			first = model[0].Seq
		}
		if st.Records != uint64(len(model)) || st.PayloadBytes != bytes || st.LastSeq != last || st.FirstSeq != first {
			t.Fatalf("step %d: stats %+v; model holds %d records, %d bytes, first %d, last %d", step, st, len(model), bytes, first, last)
		}
	}
	all := readAll(t, o, 0)
	if len(all) != len(model) {
		t.Fatalf("end: %d records, model %d", len(all), len(model))
	}
}
