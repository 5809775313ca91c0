package outbox

import (
	"context"
	"database/sql"
	"errors"
	"sync"
	"testing"
	"time"
)

// walWatch records, through the walSize hook, the WAL file's size after
// every write transaction: the file only grows inside write transactions
// (checkpoints write the database file, and only ever shrink the WAL), so
// the largest of these sizes is the largest the file ever was.
type walWatch struct {
	mu    sync.Mutex
	max   int64 // largest size seen
	grow  int64 // largest growth of one transaction
	prev  int64
	count int
}

func (w *walWatch) size(n int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.max = max(w.max, n)
	w.grow = max(w.grow, n-w.prev)
	w.prev = n
	w.count++
}

func (w *walWatch) get() (maxSize, grow int64, count int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.max, w.grow, w.count
}

// loadWithDrain appends perAppender 200-byte messages from each of
// `appenders` goroutines through Append with callbacks, each keeping
// `window` in flight (as the broker's async PUBACK path does), while one
// goroutine drains the outbox as the sync link does: ReadSync a batch,
// Ack it, Wait when nothing is left. It returns once every message was
// committed and acknowledged.
func loadWithDrain(t *testing.T, o *Outbox, appenders, window, perAppender int) {
	t.Helper()
	total := uint64(appenders * perAppender)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	drained := make(chan error, 1)
	go func() {
		var after uint64
		for after < total {
			recs, err := o.ReadSync(-1, after, 200, 0)
			if err != nil {
				drained <- err
				return
			}
			if len(recs) == 0 {
				if err := o.Wait(ctx, after); err != nil {
					drained <- err
					return
				}
				continue
			}
			after = recs[len(recs)-1].Seq
			if err := o.Ack(after); err != nil {
				drained <- err
				return
			}
		}
		drained <- nil
	}()
	payload := make([]byte, 200)
	for i := range payload {
		payload[i] = byte('a' + i%26)
	}
	var wg sync.WaitGroup
	for a := range appenders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := Message{ClientID: "dev", Topic: "site/t", Payload: payload, QoS: 1}
			m.ClientID = m.ClientID + string(rune('a'+a))
			slots := make(chan struct{}, window)
			var inflight sync.WaitGroup
			inflight.Add(perAppender)
			for range perAppender {
				select {
				case slots <- struct{}{}:
				case <-ctx.Done():
					t.Error("appends did not complete in time")
					return
				}
				o.Append(m, func(_ uint64, err error) {
					if err != nil {
						t.Error(err)
					}
					<-slots
					inflight.Done()
				})
			}
			inflight.Wait()
		}()
	}
	wg.Wait()
	if err := <-drained; err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("drain did not finish: %+v", o.Stats())
		}
		t.Fatalf("drain: %v", err)
	}
}

// TestWALBoundedUnderLoad: devices write continuously and the link drains
// concurrently, so the writer begins a transaction before every PASSIVE
// checkpoint has finished and a reader often holds a snapshot: SQLite then
// never restarts the WAL by itself. The WAL file must still stay within
// Options.JournalSizeLimit plus what one write transaction adds (the writer
// restarts it once it outgrew the limit).
func TestWALBoundedUnderLoad(t *testing.T) {
	const (
		journalLimit = 256 << 10
		appenders    = 8
		window       = 50
		perAppender  = 3000 // 24,000 × 200 B: about 8 MB of records
	)
	var watch walWatch
	o := openT(t, dbPath(t), Options{
		JournalSizeLimit: journalLimit,
		CheckpointBytes:  32 << 10,
		MaxBatchRows:     50,
		VacuumStepPages:  16,
		hooks:            &testHooks{walSize: watch.size},
	})
	loadWithDrain(t, o, appenders, window, perAppender)
	maxWAL, grow, txns := watch.get()
	st := o.Stats()
	t.Logf("WAL: max %d bytes (limit %d), largest growth of one transaction %d, %d write transactions; %d groups, %d checkpoints, %d of them restarts (%d incomplete) taking %v",
		maxWAL, journalLimit, grow, txns, st.CommittedGroups, st.Checkpoints, st.WALRestarts, st.WALRestartsIncomplete, st.WALRestartTime)
	if st.Records != 0 || st.CommittedRows != appenders*perAppender {
		t.Fatalf("after the drain: %+v", st)
	}
	if maxWAL > journalLimit+grow {
		t.Fatalf("the WAL grew to %d bytes: more than JournalSizeLimit (%d) plus one transaction (%d)", maxWAL, journalLimit, grow)
	}
	if st.WALRestarts == 0 {
		t.Fatalf("the WAL never outgrew JournalSizeLimit: the test did not load the outbox enough: %+v", st)
	}
}

// TestWALRestartStuckReader: a reader that keeps a read transaction open on
// a snapshot that needs the WAL makes every restart checkpoint incomplete.
// The writer must then not pause every commit for BusyTimeout: it tries
// again only after the WAL grew by another JournalSizeLimit. Once the
// reader lets go, the next attempt completes and the WAL is bounded again.
func TestWALRestartStuckReader(t *testing.T) {
	const journalLimit = 64 << 10
	var watch walWatch
	path := dbPath(t)
	// No PASSIVE checkpoint runs (the size signal and the ticker are out of
	// reach), nor the free-space reserve's TRUNCATE: the restarts are the
	// only checkpoints.
	o := openT(t, path, Options{JournalSizeLimit: journalLimit, BusyTimeout: 20 * time.Millisecond,
		CheckpointBytes: 1 << 40, CheckpointInterval: time.Hour, MinFreeBytes: -1,
		hooks: &testHooks{walSize: watch.size}})
	i := 0
	appendOne := func() {
		t.Helper()
		mustAppend(t, o, classMsg(0, i, 4000))
		i++
	}
	appendOne() // the WAL holds frames no checkpoint copied

	// The stuck reader: its own connection, a read transaction whose
	// snapshot ends in the WAL.
	rdb, err := sql.Open("sqlite", path+"?_pragma=query_only(1)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	tx, err := rdb.BeginTx(context.Background(), &sql.TxOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := tx.QueryRow("SELECT count(*) FROM records").Scan(&n); err != nil || n != 1 {
		t.Fatalf("reader: %d records, %v", n, err)
	}
	for o.Stats().WALBytes <= 4*journalLimit {
		appendOne()
	}
	held, _, _ := watch.get()
	st := o.Stats()
	t.Logf("with the reader: WAL %d bytes after %d appends, %d restarts, %d incomplete", held, i, st.WALRestarts, st.WALRestartsIncomplete)
	// Attempt k happens at a size above k × JournalSizeLimit.
	if st.WALRestarts == 0 || st.WALRestartsIncomplete != st.WALRestarts || int64(st.WALRestarts) > held/journalLimit {
		t.Fatalf("WAL of %d bytes with a stuck reader: %d restart checkpoints, %d incomplete; want 1 to %d, all incomplete",
			held, st.WALRestarts, st.WALRestartsIncomplete, held/journalLimit)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}

	// The next attempt is at most JournalSizeLimit of growth away.
	for o.Stats().WALRestarts == o.Stats().WALRestartsIncomplete {
		if w := int64(o.Stats().WALBytes); w > held+2*journalLimit {
			t.Fatalf("the WAL grew from %d to %d bytes after the reader let go, without a complete restart: %+v", held, w, o.Stats())
		}
		appendOne()
	}
	appendOne() // writes from the WAL's beginning and truncates it
	_, grow, _ := watch.get()
	if w := int64(o.Stats().WALBytes); w > journalLimit+grow {
		t.Fatalf("after a complete restart the WAL is %d bytes, want at most JournalSizeLimit (%d) plus one transaction (%d)", w, journalLimit, grow)
	}
	checkAccounting(t, o)
}

// BenchmarkAppendWALRestart is BenchmarkAppendPolicy/off (50 appenders, 100
// in flight each) with JournalSizeLimit 4 MiB instead of the default
// 64 MiB, which appends alone rarely reach within a benchmark run: the
// writer then pauses for a RESTART checkpoint every 4 MiB or so of WAL
// (wal-restarts/Mmsg). Compare its msg/s with BenchmarkAppendPolicy/off run
// at the same time.
func BenchmarkAppendWALRestart(b *testing.B) {
	benchAppend(b, 50, 100, Options{JournalSizeLimit: 4 << 20}, 0)
}
