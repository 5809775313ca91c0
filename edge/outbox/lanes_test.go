package outbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"testing"
)

// laneOpts puts class 0 in lane 0, class 1 in lane 2 and class 3 in lane 1
// (class 2 stays in lane 0).
func laneOpts() Options {
	return Options{Classes: map[uint8]ClassPolicy{1: {Lane: 2}, 3: {Lane: 1}}}
}

var laneOfClass = [4]uint8{0, 2, 0, 1}

func readLaneAll(t *testing.T, o *Outbox, lane uint8, after uint64) []Record {
	t.Helper()
	var out []Record
	for {
		recs, err := o.ReadLane(lane, after, 7, 0)
		if err != nil {
			t.Fatalf("ReadLane(%d, %d): %v", lane, after, err)
		}
		if len(recs) == 0 {
			return out
		}
		for _, r := range recs {
			if r.Seq <= after {
				t.Fatalf("lane %d: seq %d after %d", lane, r.Seq, after)
			}
			after = r.Seq
		}
		out = append(out, recs...)
	}
}

// TestLanesReadAck: each record is committed to its class's lane; ReadLane
// returns one lane in seq order; AckLane deletes that lane only; all of it
// survives a reopen.
func TestLanesReadAck(t *testing.T) {
	path := dbPath(t)
	o := openT(t, path, laneOpts())
	ctx := context.Background()
	want := map[uint8][]uint64{}
	msgs := map[uint64]Message{}
	for i := range 200 {
		m := testMessage(i%5, i)
		seq, err := o.AppendWait(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		l := laneOfClass[m.Priority]
		want[l] = append(want[l], seq)
		msgs[seq] = m
	}
	if got := o.Lanes(); !slices.Equal(got, []uint8{0, 1, 2}) {
		t.Fatalf("Lanes = %v", got)
	}
	check := func(o *Outbox, lane uint8, seqs []uint64) {
		t.Helper()
		recs := readLaneAll(t, o, lane, 0)
		if len(recs) != len(seqs) {
			t.Fatalf("lane %d: %d records, want %d", lane, len(recs), len(seqs))
		}
		for i, r := range recs {
			if r.Seq != seqs[i] || r.Lane != lane || !equalMessage(r.Message, msgs[r.Seq]) {
				t.Fatalf("lane %d record %d: seq %d lane %d, want seq %d", lane, i, r.Seq, r.Lane, seqs[i])
			}
		}
	}
	for l := range uint8(3) {
		check(o, l, want[l])
	}
	// Acknowledge lane 2 up to the last seq of all: lanes 0 and 1 keep
	// every record, even those below it.
	last := o.Stats().LastSeq
	if err := o.AckLane(2, last); err != nil {
		t.Fatal(err)
	}
	check(o, 2, nil)
	check(o, 0, want[0])
	check(o, 1, want[1])
	if got, wantN := o.Stats().Records, uint64(len(want[0])+len(want[1])); got != wantN {
		t.Fatalf("Records = %d, want %d", got, wantN)
	}
	// Part of lane 1; idempotent repeats; an ack ahead deletes nothing.
	mid := want[1][len(want[1])/2]
	for range 2 {
		if err := o.AckLane(1, mid); err != nil {
			t.Fatal(err)
		}
	}
	if err := o.AckLane(1, last+1); !errors.Is(err, ErrAckAhead) {
		t.Fatalf("AckLane ahead: %v", err)
	}
	rest1 := want[1][len(want[1])/2+1:]
	check(o, 1, rest1)
	// Read (every lane) sees lanes 0 and 1 merged in seq order.
	all := readAll(t, o, 0)
	merged := slices.Sorted(slices.Values(append(slices.Clone(want[0]), rest1...)))
	if len(all) != len(merged) {
		t.Fatalf("Read: %d records, want %d", len(all), len(merged))
	}
	for i, r := range all {
		if r.Seq != merged[i] || r.Lane != laneOfClass[r.Priority] {
			t.Fatalf("Read record %d: seq %d lane %d", i, r.Seq, r.Lane)
		}
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}

	// Reopened, the lanes and their records are as they were.
	o = openT(t, path, laneOpts())
	check(o, 0, want[0])
	check(o, 1, rest1)
	check(o, 2, nil)
	st := o.Stats()
	if st.Records != uint64(len(merged)) {
		t.Fatalf("after reopen Records = %d, want %d", st.Records, len(merged))
	}
	// Lane 0 acknowledged in full, then lane 1: the outbox is empty and
	// AckedSeq covers everything.
	if err := o.AckLane(0, last); err != nil {
		t.Fatal(err)
	}
	if err := o.AckLane(1, last); err != nil {
		t.Fatal(err)
	}
	st = o.Stats()
	if st.Records != 0 || st.Bytes != 0 || st.FirstSeq != 0 || st.AckedSeq != last {
		t.Fatalf("after acking every lane: %+v", st)
	}
}

// TestLaneAckChunks: an AckLane over more records than AckChunkRows
// deletes them in several transactions and still answers once all are gone.
func TestLaneAckChunks(t *testing.T) {
	opts := laneOpts()
	opts.AckChunkRows = 10
	o := openT(t, dbPath(t), opts)
	ctx := context.Background()
	var lane1 int
	for i := range 300 {
		m := testMessage(1, i)
		if _, err := o.AppendWait(ctx, m); err != nil {
			t.Fatal(err)
		}
		if laneOfClass[m.Priority] == 1 {
			lane1++
		}
	}
	before := o.Stats().Records
	if err := o.AckLane(1, o.Stats().LastSeq); err != nil {
		t.Fatal(err)
	}
	if got := readLaneAll(t, o, 1, 0); len(got) != 0 {
		t.Fatalf("lane 1 still holds %d records", len(got))
	}
	if got := o.Stats().Records; got != before-uint64(lane1) {
		t.Fatalf("Records = %d, want %d", got, before-uint64(lane1))
	}
}

// TestLaneFixedAtCommit: a class moved to another lane keeps its records
// where they were committed, and they are still read on that lane.
func TestLaneFixedAtCommit(t *testing.T) {
	path := dbPath(t)
	o := openT(t, path, Options{Classes: map[uint8]ClassPolicy{5: {Lane: 3}}})
	ctx := context.Background()
	m := testMessage(1, 1)
	m.Priority = 5
	seq, err := o.AppendWait(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	// No lanes configured any more.
	o = openT(t, path, Options{})
	if got := o.Lanes(); !slices.Equal(got, []uint8{0, 3}) {
		t.Fatalf("Lanes = %v, want [0 3]", got)
	}
	if recs := readLaneAll(t, o, 3, 0); len(recs) != 1 || recs[0].Seq != seq || recs[0].Lane != 3 {
		t.Fatalf("lane 3: %+v", recs)
	}
	seq2, err := o.AppendWait(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	if recs := readLaneAll(t, o, 0, 0); len(recs) != 1 || recs[0].Seq != seq2 {
		t.Fatalf("lane 0: %+v, want the new record %d", recs, seq2)
	}
	if err := o.AckLane(3, seq2); err != nil {
		t.Fatal(err)
	}
	if recs := readLaneAll(t, o, 3, 0); len(recs) != 0 {
		t.Fatalf("lane 3 after ack: %+v", recs)
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	// Nothing held above lane 0: the index goes.
	o = openT(t, path, Options{})
	if o.laneIndex {
		t.Fatal("lane index kept with every record in lane 0")
	}
	if got := o.Lanes(); !slices.Equal(got, []uint8{0}) {
		t.Fatalf("Lanes = %v", got)
	}
}

// TestWaitLane: WaitLane ignores commits to other lanes.
func TestWaitLane(t *testing.T) {
	o := openT(t, dbPath(t), laneOpts())
	ctx := context.Background()
	m := testMessage(1, 0) // class 0, lane 0
	if _, err := o.AppendWait(ctx, m); err != nil {
		t.Fatal(err)
	}
	done, cancel := context.WithCancel(ctx)
	cancel()
	if err := o.WaitLane(done, 1, 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("WaitLane(1) with only lane 0 records: %v", err)
	}
	if err := o.WaitLane(done, 0, 0); err != nil {
		t.Fatalf("WaitLane(0): %v", err)
	}
	waited := make(chan error, 1)
	go func() { waited <- o.WaitLane(ctx, 1, 0) }()
	m.Priority = 3 // lane 1
	if _, err := o.AppendWait(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Fatalf("WaitLane(1): %v", err)
	}
	if err := o.WaitLane(ctx, MaxLanes, 0); err == nil {
		t.Fatal("WaitLane of a lane out of range succeeded")
	}
	if err := (Options{Classes: map[uint8]ClassPolicy{1: {Lane: MaxLanes}}}).Validate(); err == nil {
		t.Fatal("Validate accepted a lane out of range")
	}
}

// TestMigrateV1: a database written by the version 1 schema opens, its
// records in lane 0, and keeps its sequence.
func TestMigrateV1(t *testing.T) {
	path := dbPath(t)
	db, err := sql.Open("sqlite", path+"?_pragma=journal_mode(wal)")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(schemaV1); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := db.Exec(insertV1SQL, "dev", "", fmt.Sprint("t/", i), []byte("p"), 1, 0, "", "ev", i%2, 0, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.Exec(`DELETE FROM records WHERE seq <= 2`); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	o := openT(t, path, laneOpts())
	var v int
	if err := o.wdb.QueryRow("PRAGMA user_version").Scan(&v); err != nil || v != schemaVersion {
		t.Fatalf("user_version %d (%v), want %d", v, err, schemaVersion)
	}
	recs := readLaneAll(t, o, 0, 0)
	if len(recs) != 3 || recs[0].Seq != 3 || recs[2].Seq != 5 {
		t.Fatalf("lane 0 after migration: %+v", recs)
	}
	if st := o.Stats(); st.Records != 3 || st.LastSeq != 5 || st.AckedSeq != 2 {
		t.Fatalf("stats after migration: %+v", st)
	}
	m := testMessage(1, 1)
	m.Priority = 3 // lane 1
	seq, err := o.AppendWait(context.Background(), m)
	if err != nil || seq != 6 {
		t.Fatalf("append after migration: seq %d, %v", seq, err)
	}
	if err := o.AckLane(0, seq); err != nil {
		t.Fatal(err)
	}
	if recs := readAll(t, o, 0); len(recs) != 1 || recs[0].Seq != 6 || recs[0].Lane != 1 {
		t.Fatalf("after acking lane 0: %+v", recs)
	}
}

// insertV1SQL is the version 1 schema's insert.
const insertV1SQL = `INSERT INTO records (client_id, username, topic, payload, qos,
	retain, content_type, event_type, priority, received, user_properties)
	VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`

// TestReadSync: ReadSync returns Read's and ReadLane's records, with the
// columns the sync link does not send left zero, and the same limits.
func TestReadSync(t *testing.T) {
	for _, opts := range []Options{{}, laneOpts()} {
		o := openT(t, dbPath(t), opts)
		for i := range 60 {
			if _, err := o.AppendWait(context.Background(), testMessage(i%4, i)); err != nil {
				t.Fatal(err)
			}
		}
		strip := func(r Record) Record {
			r.Username, r.QoS, r.Retain, r.UserProperties = "", 0, false, nil
			return r
		}
		for _, lane := range []int{-1, 0, 1, 2, MaxLanes} {
			for _, lim := range [][2]int{{100, 0}, {7, 0}, {100, 300}, {1, 1}} {
				var want []Record
				var err error
				if lane < 0 {
					want, err = o.Read(3, lim[0], 0)
				} else {
					want, err = o.ReadLane(uint8(lane), 3, lim[0], 0)
				}
				if err != nil {
					t.Fatal(err)
				}
				got, err := o.ReadSync(lane, 3, lim[0], lim[1])
				if err != nil {
					t.Fatal(err)
				}
				if lim[1] == 0 && len(got) != len(want) || len(got) > len(want) || len(want) > 0 && len(got) == 0 {
					t.Fatalf("lane %d limits %v: %d records, Read has %d", lane, lim, len(got), len(want))
				}
				for i := range got {
					w := strip(want[i])
					if lane < 0 {
						w.Lane = 0
					}
					if got[i].Seq != w.Seq || got[i].Lane != w.Lane || !equalMessage(got[i].Message, w.Message) {
						t.Fatalf("lane %d record %d: %+v, want %+v", lane, i, got[i], w)
					}
				}
			}
		}
		o.Close()
	}
}
