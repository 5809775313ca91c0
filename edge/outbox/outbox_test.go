package outbox

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func openT(t testing.TB, path string, opts Options) *Outbox {
	t.Helper()
	o, err := Open(path, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	t.Cleanup(func() { o.Close() })
	return o
}

func dbPath(t testing.TB) string { return filepath.Join(t.TempDir(), "outbox.db") }

// testMessage is a message whose every field derives from (client, i), so a
// record read back can be checked field by field.
func testMessage(client, i int) Message {
	return Message{
		ClientID:    fmt.Sprintf("dev-%d", client),
		Username:    fmt.Sprintf("user-%d", client%3),
		Topic:       fmt.Sprintf("site/%d/temp", client),
		Payload:     []byte(fmt.Sprintf("payload %d/%d %s", client, i, bytes.Repeat([]byte{'x'}, i%50))),
		QoS:         byte(1 + i%2),
		Retain:      i%7 == 0,
		ContentType: "application/json",
		EventType:   "io.tributary.telemetry",
		Priority:    uint8(i % 4),
		Received:    time.Unix(1700000000, int64(client*1000000+i)),
		UserProperties: []UserProperty{
			{Key: "client", Value: fmt.Sprint(client)}, {Key: "i", Value: fmt.Sprint(i)},
		},
	}
}

func equalMessage(a, b Message) bool {
	if len(a.UserProperties) != len(b.UserProperties) {
		return false
	}
	for i := range a.UserProperties {
		if a.UserProperties[i] != b.UserProperties[i] {
			return false
		}
	}
	return a.ClientID == b.ClientID && a.Username == b.Username && a.Topic == b.Topic &&
		bytes.Equal(a.Payload, b.Payload) && a.QoS == b.QoS && a.Retain == b.Retain &&
		a.ContentType == b.ContentType && a.EventType == b.EventType && a.Priority == b.Priority &&
		a.Received.Equal(b.Received)
}

// readAll reads every record after `after` in small pages.
func readAll(t testing.TB, o *Outbox, after uint64) []Record {
	t.Helper()
	var all []Record
	for {
		recs, err := o.Read(after, 97, 0)
		if err != nil {
			t.Fatalf("Read(%d): %v", after, err)
		}
		if len(recs) == 0 {
			return all
		}
		all = append(all, recs...)
		after = recs[len(recs)-1].Seq
	}
}

func TestAppendReadRoundTrip(t *testing.T) {
	o := openT(t, dbPath(t), Options{})
	ctx := context.Background()
	msgs := []Message{
		testMessage(1, 1),
		{Topic: "empty"}, // nil payload, zero time, no properties
		{Topic: "bin", Payload: []byte{0, 0xff, 0}, UserProperties: []UserProperty{{"", ""}, {"k", "v"}, {"k", "dup"}}},
		{Topic: "prio", Priority: 255, QoS: 2, Retain: true},
	}
	for i, m := range msgs {
		seq, err := o.AppendWait(ctx, m)
		if err != nil {
			t.Fatalf("AppendWait: %v", err)
		}
		if seq != uint64(i+1) {
			t.Fatalf("seq = %d, want %d", seq, i+1)
		}
	}
	recs, err := o.Read(0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != len(msgs) {
		t.Fatalf("read %d records, want %d", len(recs), len(msgs))
	}
	for i, r := range recs {
		if r.Seq != uint64(i+1) || !equalMessage(r.Message, msgs[i]) {
			t.Errorf("record %d = %+v, want seq %d %+v", i, r, i+1, msgs[i])
		}
	}
	if !recs[1].Received.IsZero() {
		t.Errorf("zero Received read back as %v", recs[1].Received)
	}
}

// TestGroupCommitConcurrent: many goroutines appending at once are committed
// in groups, each callback runs exactly once, and every goroutine sees its
// own messages committed in call order.
func TestGroupCommitConcurrent(t *testing.T) {
	const clients, perClient = 32, 300
	o := openT(t, dbPath(t), Options{})
	type result struct {
		client, i int
		seq       uint64
	}
	var (
		mu      sync.Mutex
		calls   = map[[2]int]int{}
		results []result
		wg      sync.WaitGroup
	)
	wg.Add(clients * perClient)
	for c := range clients {
		go func() {
			for i := range perClient {
				o.Append(testMessage(c, i), func(seq uint64, err error) {
					defer wg.Done()
					mu.Lock()
					defer mu.Unlock()
					calls[[2]int{c, i}]++
					if err != nil {
						t.Errorf("append %d/%d: %v", c, i, err)
						return
					}
					results = append(results, result{c, i, seq})
				})
			}
		}()
	}
	wg.Wait()

	for k, n := range calls {
		if n != 1 {
			t.Errorf("callback for %v ran %d times", k, n)
		}
	}
	if len(calls) != clients*perClient {
		t.Fatalf("%d callbacks, want %d", len(calls), clients*perClient)
	}
	lastSeq := make([]uint64, clients)
	lastI := make([]int, clients)
	for c := range lastI {
		lastI[c] = -1
	}
	seen := map[uint64]bool{}
	// results are in callback order, which is commit order.
	for _, r := range results {
		if seen[r.seq] {
			t.Fatalf("seq %d reported twice", r.seq)
		}
		seen[r.seq] = true
		if r.seq <= lastSeq[r.client] || r.i != lastI[r.client]+1 {
			t.Fatalf("client %d: message %d got seq %d after message %d with seq %d", r.client, r.i, r.seq, lastI[r.client], lastSeq[r.client])
		}
		lastSeq[r.client], lastI[r.client] = r.seq, r.i
	}
	bySeq := map[uint64]result{}
	for _, r := range results {
		bySeq[r.seq] = r
	}
	for _, rec := range readAll(t, o, 0) {
		r, ok := bySeq[rec.Seq]
		if !ok {
			t.Fatalf("stored seq %d was never reported", rec.Seq)
		}
		if !equalMessage(rec.Message, testMessage(r.client, r.i)) {
			t.Fatalf("seq %d holds %+v, want message %d/%d", rec.Seq, rec.Message, r.client, r.i)
		}
		delete(bySeq, rec.Seq)
	}
	if len(bySeq) != 0 {
		t.Fatalf("%d reported seqs are not stored", len(bySeq))
	}
	st := o.Stats()
	t.Logf("stats: %+v, rows per commit %.1f", st, st.RowsPerCommit())
	if st.CommittedRows != clients*perClient || st.Records != clients*perClient {
		t.Errorf("stats rows = %d, records = %d, want %d", st.CommittedRows, st.Records, clients*perClient)
	}
	// With 32 writers and one fsync at a time, groups must form; one row per
	// commit would mean the writer is not grouping.
	if st.MaxGroupRows <= 1 || st.CommittedGroups >= clients*perClient {
		t.Errorf("no grouping: %d groups for %d rows, max group %d", st.CommittedGroups, st.CommittedRows, st.MaxGroupRows)
	}
}

// TestGroupFormsWhileWriterBusy makes the grouping deterministic: the writer
// is held after taking the first message, everything appended meanwhile goes
// into the next group, capped by MaxBatchRows.
func TestGroupFormsWhileWriterBusy(t *testing.T) {
	held := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	hooks := &testHooks{afterFirst: func() {
		once.Do(func() { close(held); <-release })
	}}
	o := openT(t, dbPath(t), Options{MaxBatchRows: 50, hooks: hooks})
	var wg sync.WaitGroup
	wg.Add(121)
	o.Append(testMessage(0, 0), func(uint64, error) { wg.Done() })
	<-held
	for i := 1; i <= 120; i++ {
		o.Append(testMessage(0, i), func(_ uint64, err error) {
			if err != nil {
				t.Error(err)
			}
			wg.Done()
		})
	}
	close(release)
	wg.Wait()
	st := o.Stats()
	// First group: message 0 plus 49 queued; then 50; then 21.
	if st.CommittedGroups != 3 || st.MaxGroupRows != 50 {
		t.Fatalf("groups = %d, max rows = %d; want 3 groups of at most 50", st.CommittedGroups, st.MaxGroupRows)
	}
}

func TestMaxBatchBytes(t *testing.T) {
	held := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	hooks := &testHooks{afterFirst: func() { once.Do(func() { close(held); <-release }) }}
	o := openT(t, dbPath(t), Options{MaxBatchBytes: 1000, hooks: hooks})
	big := Message{Topic: "t", Payload: make([]byte, 600)}
	var wg sync.WaitGroup
	wg.Add(4)
	done := func(_ uint64, err error) {
		if err != nil {
			t.Error(err)
		}
		wg.Done()
	}
	o.Append(big, done)
	<-held
	o.Append(big, done)
	o.Append(big, done)
	o.Append(Message{Topic: "t", Payload: make([]byte, 5000)}, done) // over the cap alone: its own group
	close(release)
	wg.Wait()
	if st := o.Stats(); st.CommittedGroups != 4 || st.MaxGroupRows != 1 {
		t.Fatalf("groups = %d, max rows %d; want each 600-byte message alone under a 1000-byte cap", st.CommittedGroups, st.MaxGroupRows)
	}
}

func TestReadLimits(t *testing.T) {
	o := openT(t, dbPath(t), Options{})
	ctx := context.Background()
	for i := range 10 {
		if _, err := o.AppendWait(ctx, Message{Topic: "t", Payload: make([]byte, 100*(i+1))}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		after           uint64
		maxRec, maxByte int
		want            []uint64
	}{
		{0, 3, 0, []uint64{1, 2, 3}},
		{7, 0, 0, []uint64{8, 9, 10}},
		{10, 0, 0, []uint64{}},
		{1 << 63, 0, 0, []uint64{}},
		{^uint64(0), 0, 0, []uint64{}},
		{0, 0, 1, []uint64{1}},                     // at least one record, however large
		{4, 0, 501 + 601 + 701, []uint64{5, 6, 7}}, // sizes are payload + topic
		{4, 0, 501 + 601 + 700, []uint64{5, 6}},    // one byte short of the third
		{0, 2, 1 << 20, []uint64{1, 2}},            // record limit before byte limit
		{9, 5, 1, []uint64{10}},
	} {
		recs, err := o.Read(tc.after, tc.maxRec, tc.maxByte)
		if err != nil {
			t.Fatal(err)
		}
		got := []uint64{}
		for _, r := range recs {
			got = append(got, r.Seq)
		}
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("Read(%d, %d, %d) = %v, want %v", tc.after, tc.maxRec, tc.maxByte, got, tc.want)
		}
	}
}

func TestWait(t *testing.T) {
	o := openT(t, dbPath(t), Options{})
	ctx := context.Background()

	// Already satisfied: returns at once.
	if _, err := o.AppendWait(ctx, testMessage(0, 0)); err != nil {
		t.Fatal(err)
	}
	if err := o.Wait(ctx, 0); err != nil {
		t.Fatalf("Wait(0) with seq 1 committed: %v", err)
	}

	// Context ends first.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := o.Wait(cctx, 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait with canceled ctx = %v", err)
	}

	// A commit wakes a waiter.
	woke := make(chan error, 1)
	go func() { woke <- o.Wait(ctx, 1) }()
	select {
	case err := <-woke:
		t.Fatalf("Wait(1) returned %v before seq 2 existed", err)
	default:
	}
	if _, err := o.AppendWait(ctx, testMessage(0, 1)); err != nil {
		t.Fatal(err)
	}
	if err := <-woke; err != nil {
		t.Fatalf("Wait(1) after seq 2: %v", err)
	}

	// Close wakes a waiter.
	go func() { woke <- o.Wait(ctx, 2) }()
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-woke; !errors.Is(err, ErrClosed) {
		t.Fatalf("Wait during Close = %v, want ErrClosed", err)
	}
}

func TestAck(t *testing.T) {
	o := openT(t, dbPath(t), Options{AckChunkRows: 7})
	ctx := context.Background()
	for i := range 50 {
		if _, err := o.AppendWait(ctx, testMessage(1, i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := o.Ack(51); !errors.Is(err, ErrAckAhead) {
		t.Fatalf("Ack(51) with last seq 50 = %v, want ErrAckAhead", err)
	}
	if got := len(readAll(t, o, 0)); got != 50 {
		t.Fatalf("a refused Ack deleted records: %d left", got)
	}
	// 30 spans several 7-row chunks.
	if err := o.Ack(30); err != nil {
		t.Fatal(err)
	}
	recs := readAll(t, o, 0)
	if len(recs) != 20 || recs[0].Seq != 31 || !equalMessage(recs[0].Message, testMessage(1, 30)) {
		t.Fatalf("after Ack(30): %d records, first %d", len(recs), recs[0].Seq)
	}
	st := o.Stats()
	if st.Records != 20 || st.FirstSeq != 31 || st.LastSeq != 50 || st.AckedSeq != 30 {
		t.Fatalf("stats after Ack(30): %+v", st)
	}
	var wantBytes uint64
	for _, r := range recs {
		wantBytes += uint64(len(r.Payload))
	}
	if st.PayloadBytes != wantBytes {
		t.Fatalf("PayloadBytes = %d, want %d", st.PayloadBytes, wantBytes)
	}
	// Idempotent and never going back.
	for _, upTo := range []uint64{30, 10, 0} {
		if err := o.Ack(upTo); err != nil {
			t.Fatalf("repeated Ack(%d): %v", upTo, err)
		}
	}
	if got := len(readAll(t, o, 0)); got != 20 {
		t.Fatalf("repeated acks changed the outbox: %d records", got)
	}
	// Concurrent Acks all return once their part is deleted.
	var wg sync.WaitGroup
	for _, upTo := range []uint64{35, 50, 40, 45} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := o.Ack(upTo); err != nil {
				t.Errorf("Ack(%d): %v", upTo, err)
			}
		}()
	}
	wg.Wait()
	if st := o.Stats(); st.Records != 0 || st.PayloadBytes != 0 || st.FirstSeq != 0 || st.AckedSeq != 50 {
		t.Fatalf("stats after acking all: %+v", st)
	}
	if recs, err := o.Read(0, 0, 0); err != nil || len(recs) != 0 {
		t.Fatalf("Read after acking all = %d records, %v", len(recs), err)
	}
}

// TestSeqMonotonicAfterEmptyAndReopen: a drained outbox never hands out a seq
// again, in the same process or after reopening.
func TestSeqMonotonicAfterEmptyAndReopen(t *testing.T) {
	path := dbPath(t)
	ctx := context.Background()
	o, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := o.AppendWait(ctx, testMessage(0, i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := o.Ack(5); err != nil {
		t.Fatal(err)
	}
	seq, err := o.AppendWait(ctx, testMessage(0, 5))
	if err != nil || seq != 6 {
		t.Fatalf("append after emptying = %d, %v; want 6", seq, err)
	}
	if err := o.Ack(6); err != nil {
		t.Fatal(err)
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}

	o, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if st := o.Stats(); st.Records != 0 || st.LastSeq != 6 || st.AckedSeq != 6 || st.FirstSeq != 0 {
		t.Fatalf("stats after reopening an empty outbox: %+v", st)
	}
	if err := o.Ack(6); err != nil {
		t.Fatalf("re-Ack after reopen: %v", err)
	}
	if err := o.Ack(7); !errors.Is(err, ErrAckAhead) {
		t.Fatalf("Ack(7) after reopen = %v, want ErrAckAhead", err)
	}
	seq, err = o.AppendWait(ctx, testMessage(0, 6))
	if err != nil || seq != 7 {
		t.Fatalf("append after reopen = %d, %v; want 7", seq, err)
	}
	if err := o.Wait(ctx, 6); err != nil {
		t.Fatal(err)
	}
}

func TestReopenKeepsRecords(t *testing.T) {
	path := dbPath(t)
	ctx := context.Background()
	o, err := Open(path, Options{Synchronous: "normal"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if _, err := o.AppendWait(ctx, testMessage(2, i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := o.Ack(4); err != nil {
		t.Fatal(err)
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	o = openT(t, path, Options{})
	st := o.Stats()
	if st.Records != 16 || st.FirstSeq != 5 || st.LastSeq != 20 || st.AckedSeq != 4 {
		t.Fatalf("stats after reopen: %+v", st)
	}
	recs := readAll(t, o, 0)
	for i, r := range recs {
		if r.Seq != uint64(i+5) || !equalMessage(r.Message, testMessage(2, i+4)) {
			t.Fatalf("record %d after reopen: %+v", i, r)
		}
	}
	if err := o.Ack(3); err != nil {
		t.Fatalf("Ack below the reopened ack point: %v", err)
	}
}

func TestCloseCommitsQueuedAndRefusesLater(t *testing.T) {
	held := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	hooks := &testHooks{afterFirst: func() { once.Do(func() { close(held); <-release }) }}
	path := dbPath(t)
	o, err := Open(path, Options{MaxBatchRows: 10, hooks: hooks})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var okSeqs []uint64
	done := func(seq uint64, err error) {
		if err != nil {
			t.Errorf("queued before Close: %v", err)
			return
		}
		mu.Lock()
		okSeqs = append(okSeqs, seq)
		mu.Unlock()
	}
	o.Append(testMessage(0, 0), done)
	<-held
	for i := 1; i < 25; i++ {
		o.Append(testMessage(0, i), done)
	}
	closed := make(chan error)
	go func() { closed <- o.Close() }()
	// Close must wait for the writer, so it cannot finish while held.
	select {
	case err := <-closed:
		t.Fatalf("Close returned %v while the writer was held", err)
	default:
	}
	close(release)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if len(okSeqs) != 25 {
		t.Fatalf("%d of 25 queued messages committed by Close", len(okSeqs))
	}
	var lateErr error
	o.Append(testMessage(0, 99), func(_ uint64, err error) { lateErr = err })
	if !errors.Is(lateErr, ErrClosed) {
		t.Fatalf("Append after Close: %v", lateErr)
	}
	if _, err := o.AppendWait(context.Background(), testMessage(0, 99)); !errors.Is(err, ErrClosed) {
		t.Fatalf("AppendWait after Close: %v", err)
	}
	if err := o.Ack(1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Ack after Close: %v", err)
	}
	if _, err := o.Read(0, 1, 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("Read after Close: %v", err)
	}
	if err := o.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	o = openT(t, path, Options{})
	if got := len(readAll(t, o, 0)); got != 25 {
		t.Fatalf("%d records after reopen, want 25", got)
	}
}

func TestBackpressure(t *testing.T) {
	held := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	hooks := &testHooks{afterFirst: func() { once.Do(func() { close(held); <-release }) }}
	o := openT(t, dbPath(t), Options{QueueLimit: 3, hooks: hooks})
	o.Append(testMessage(0, 0), nil)
	<-held
	for i := 1; i <= 3; i++ {
		o.Append(testMessage(0, i), nil)
	}
	// The queue is full: an AppendWait must block until its context ends.
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error)
	go func() {
		_, err := o.AppendWait(ctx, testMessage(0, 4))
		res <- err
	}()
	select {
	case err := <-res:
		t.Fatalf("AppendWait on a full queue returned %v", err)
	default:
	}
	if st := o.Stats(); st.Queued != 3 {
		t.Fatalf("Queued = %d, want 3", st.Queued)
	}
	cancel()
	if err := <-res; !errors.Is(err, context.Canceled) {
		t.Fatalf("AppendWait on a full queue after cancel = %v", err)
	}
	close(release)
	seq, err := o.AppendWait(context.Background(), testMessage(0, 5))
	if err != nil || seq != 5 {
		t.Fatalf("AppendWait after release = %d, %v; want 5 (the canceled one was never queued)", seq, err)
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "o.db")
	o := openT(t, path, Options{})
	if _, err := Open(path, Options{}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open of the same path = %v, want ErrLocked", err)
	}
	o.Close()

	if _, err := Open(filepath.Join(dir, "a?b.db"), Options{}); err == nil {
		t.Fatal("Open accepted a path with '?'")
	}
	if _, err := Open(filepath.Join(dir, "x.db"), Options{Synchronous: "off"}); err == nil {
		t.Fatal(`Open accepted Synchronous "off"`)
	}
	if _, err := Open(filepath.Join(dir, "y.db"), Options{QueueLimit: -1}); err == nil {
		t.Fatal("Open accepted a negative QueueLimit")
	}
	for _, s := range []string{"FULL", "normal", "Extra"} {
		if err := (Options{Synchronous: s}).Validate(); err != nil {
			t.Errorf("Validate(Synchronous %q): %v", s, err)
		}
	}

	// A database from a newer build is refused and left alone.
	newer := filepath.Join(dir, "newer.db")
	db, err := sql.Open("sqlite", newer)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("PRAGMA user_version = 9"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := Open(newer, Options{}); !errors.Is(err, ErrSchemaVersion) {
		t.Fatalf("Open of a version-9 database = %v, want ErrSchemaVersion", err)
	}
	db, _ = sql.Open("sqlite", newer)
	defer db.Close()
	var v int
	if err := db.QueryRow("PRAGMA user_version").Scan(&v); err != nil || v != 9 {
		t.Fatalf("user_version after refused Open = %d, %v", v, err)
	}

	// A file that is not a database.
	junk := filepath.Join(dir, "junk.db")
	if err := os.WriteFile(junk, bytes.Repeat([]byte("not sqlite"), 100), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(junk, Options{}); err == nil {
		t.Fatal("Open accepted a junk file")
	}
}

// TestPragmas checks the settings the design depends on, as SQLite reports
// them on the writer's connection.
func TestPragmas(t *testing.T) {
	for _, tc := range []struct {
		sync string
		want int
	}{{"", 2}, {"normal", 1}, {"extra", 3}} {
		o := openT(t, dbPath(t), Options{Synchronous: tc.sync})
		for _, p := range []struct {
			pragma string
			want   any
		}{
			{"journal_mode", "wal"},
			{"auto_vacuum", int64(2)},
			{"synchronous", int64(tc.want)},
			{"wal_autocheckpoint", int64(0)},
			{"user_version", int64(schemaVersion)},
		} {
			var got any
			if err := o.wdb.QueryRow("PRAGMA " + p.pragma).Scan(&got); err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(p.want) {
				t.Errorf("sync %q: PRAGMA %s = %v, want %v", tc.sync, p.pragma, got, p.want)
			}
		}
		var sql string
		if err := o.wdb.QueryRow("SELECT sql FROM sqlite_master WHERE name = 'records'").Scan(&sql); err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains([]byte(sql), []byte("AUTOINCREMENT")) {
			t.Errorf("records table lacks AUTOINCREMENT: %s", sql)
		}
	}
}

// TestVacuumShrinksFile: after a large Ack, the idle writer returns freed
// pages to the file system and the file shrinks after a checkpoint.
func TestVacuumShrinksFile(t *testing.T) {
	path := dbPath(t)
	o := openT(t, path, Options{VacuumFreePages: 64, VacuumStepPages: 32})
	var wg sync.WaitGroup
	const n = 2000
	wg.Add(n)
	for i := range n {
		o.Append(Message{Topic: "t", Payload: bytes.Repeat([]byte{byte(i)}, 2000)}, func(_ uint64, err error) {
			if err != nil {
				t.Error(err)
			}
			wg.Done()
		})
	}
	wg.Wait()
	pages := func() (count, free int64) {
		if err := o.wdb.QueryRow("PRAGMA page_count").Scan(&count); err != nil {
			t.Fatal(err)
		}
		if err := o.wdb.QueryRow("PRAGMA freelist_count").Scan(&free); err != nil {
			t.Fatal(err)
		}
		return count, free
	}
	before, _ := pages()
	if err := o.Ack(n); err != nil {
		t.Fatal(err)
	}
	// The writer vacuums in steps while idle: poll with a deadline.
	var count, free int64
	if !pollUntil(30*time.Second, func() bool {
		count, free = pages()
		return free == 0 && count < before/10
	}) {
		t.Fatalf("file not reclaimed: %d pages (was %d), %d free", count, before, free)
	}
	t.Logf("pages %d -> %d, vacuumed %d", before, count, o.Stats().VacuumedPages)
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() > before*4096/10 {
		t.Fatalf("file is %d bytes after vacuum, was %d pages", fi.Size(), before)
	}
}

// pollUntil checks cond every few milliseconds until it holds (true) or the
// deadline passes (false). It is for state with no event to wait on.
func pollUntil(timeout time.Duration, cond func() bool) bool {
	deadline := time.After(timeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline:
			return cond()
		case <-tick.C:
		}
	}
	return true
}

// TestBackgroundCheckpoint: with SQLite's auto-checkpoint off, the outbox's
// own checkpointer must copy the WAL into the database.
func TestBackgroundCheckpoint(t *testing.T) {
	o := openT(t, dbPath(t), Options{CheckpointBytes: 1, CheckpointInterval: time.Hour})
	for i := range 5 {
		if _, err := o.AppendWait(context.Background(), testMessage(0, i)); err != nil {
			t.Fatal(err)
		}
	}
	// The hour-long interval rules out the ticker: the size signal did it.
	if !pollUntil(30*time.Second, func() bool { return o.Stats().Checkpoints > 0 }) {
		t.Fatalf("no checkpoint ran: %+v", o.Stats())
	}
	if st := o.Stats(); st.CheckpointErrors != 0 {
		t.Fatalf("checkpoint errors: %+v", st)
	}
}

// TestVacuumDeferredDuringDrain: while the outbox still holds more than an
// Ack chunk, pages freed by Acks are not reclaimed at once (a drain would pay
// for a vacuum after every Ack) but only once the writer has been idle for
// the idle delay.
func TestVacuumDeferredDuringDrain(t *testing.T) {
	for _, tc := range []struct {
		name string
		idle time.Duration
	}{{"busy", time.Hour}, {"idle", time.Millisecond}} {
		t.Run(tc.name, func(t *testing.T) {
			o := openT(t, dbPath(t), Options{AckChunkRows: 100, VacuumFreePages: 8, VacuumStepPages: 4,
				hooks: &testHooks{vacuumIdle: tc.idle}})
			const n = 1000
			var wg sync.WaitGroup
			wg.Add(n)
			for i := range n {
				o.Append(Message{Topic: "t", Payload: bytes.Repeat([]byte{byte(i)}, 2000)}, func(_ uint64, err error) {
					if err != nil {
						t.Error(err)
					}
					wg.Done()
				})
			}
			wg.Wait()
			if err := o.Ack(n / 2); err != nil {
				t.Fatal(err)
			}
			if tc.idle == time.Hour {
				// The writer goes idle after the Ack; an append and an
				// Ack later it has had every chance to vacuum.
				seq, err := o.AppendWait(context.Background(), Message{Topic: "t"})
				if err != nil {
					t.Fatal(err)
				}
				if err := o.Ack(n/2 + 1); err != nil {
					t.Fatal(err)
				}
				var free int64
				if err := o.wdb.QueryRow("PRAGMA freelist_count").Scan(&free); err != nil {
					t.Fatal(err)
				}
				if v := o.Stats().VacuumedPages; v != 0 || free < 8 {
					t.Fatalf("vacuumed %d pages, %d free, with %d records held (last seq %d)", v, free, o.Stats().Records, seq)
				}
				return
			}
			if !pollUntil(30*time.Second, func() bool { return o.Stats().VacuumedPages > 0 }) {
				t.Fatal("the idle writer never reclaimed the freed pages")
			}
			if st := o.Stats(); st.Records != n/2 {
				t.Fatalf("%d records held, want %d", st.Records, n/2)
			}
		})
	}
}
