// Package outbox is the edge gateway's durable store-and-forward buffer: every
// device message is committed to a SQLite database (modernc.org/sqlite, WAL)
// before the broker acknowledges it, and deleted only after the cloud has
// acknowledged it (DESIGN.md contracts 1 and 2).
//
// # Group commit
//
// One writer goroutine owns every write. Append queues a message and returns;
// the writer takes everything queued (up to Options.MaxBatchRows and
// MaxBatchBytes), inserts it in one transaction, commits, and only then calls
// each message's callback. While one group commits the next one gathers, so
// under load a single fsync covers hundreds of messages from many clients
// without any timer. The callback, not a blocking call, is the primary API
// because mochi reads one packet at a time per client: an OnPublish that
// blocked until commit could never group one client's pipelined messages
// (see /work/shared/notes/edge-durable-ack.md, variant A against B).
//
// Rejected designs: a commit timer (adds latency at low load, and groups
// form without it); a connection pool of writers (SQLite serialises writers
// anyway and they would fight over the lock with SQLITE_BUSY); SQLite's own
// WAL auto-checkpoint (it runs inside the commit that crosses the threshold
// and was measured adding tens of milliseconds to commit p99), so
// checkpoints run PASSIVE on their own connection and goroutine, which WAL
// allows concurrently with the writer.
//
// # Quota, overflow and expiry
//
// Options.QuotaBytes bounds what the outbox holds, counted per record as
// Message.StoredSize. Each priority class (Message.Priority, 0 = highest)
// has an overflow policy. RejectNew, the default, never deletes a record of
// its class to make room: a message that does not fit is refused with
// ErrQuotaExceeded (the broker answers MQTT 5 reason code 0x97), so no
// message acknowledged to a device is ever lost. DropOldest, opt-in, lets
// the class's oldest records be deleted to make room for messages of the same
// or a higher class. To fit a message of class c the writer drops records of
// DropOldest classes numbered c or more, the lowest-priority class first and
// oldest first within it, and never a record of a higher class for a lower
// one. The decision and the deletions happen inside the group's commit
// transaction, so the quota holds exactly at every commit. Options.TTL
// (per class: ClassPolicy.TTL) deletes records that waited longer than it,
// first in first out within a class. Every refusal and deletion is counted
// per class in Stats. The held bytes are recounted from the database at
// Open, so the accounting survives restarts and crashes. policy.go and
// expire.go explain the choices.
//
// Options.MinFreeBytes keeps a free-space reserve on the file system: when
// free space (counting the database's free pages) falls below it, the room
// left acts as a second quota with the same policies, so DropOldest classes
// drop their oldest records and reuse their pages, and RejectNew classes
// refuse with ErrDiskFull, before the disk is really full (diskguard.go).
// A real ENOSPC (no reserve, or one too small) refuses the group being
// committed with ErrDiskFull whatever the policy; SQLite rolls the
// transaction back, so the database is never left half-written, and
// appends succeed again once space returns.
//
// Records deleted before the cloud acknowledged them leave gaps in the
// sequence; Read skips them, and the sync protocol allows gaps (sequences
// strictly increase, they need not be contiguous).
//
// # Goroutines and locks
//
//   - the writer (run): the only user of wdb; commits groups (enforcing the
//     quota inside each group's transaction, see policy.go), deletes acked
//     and expired records in bounded chunks, and when idle returns freed
//     pages to the file system with incremental_vacuum (deferred while a
//     drain is under way, see vacuumDue).
//   - the checkpointer (checkpointLoop): runs PASSIVE checkpoints on cdb.
//     The writer borrows cdb, between its transactions, for the RESTART
//     checkpoint that bounds the WAL (checkpoint.go) and the free-space
//     reserve's TRUNCATE (diskguard.go); cdb's pool of one connection makes
//     it wait for a PASSIVE checkpoint under way.
//   - callers: Append/AppendWait/Ack send to the writer under gate (shared);
//     Read uses the rdb pool; Wait and Stats read mu-guarded state.
//
// Lock order: gate before mu; no lock is held while calling a callback.
// Callbacks run on the writer goroutine and must not call Append, AppendWait,
// Ack or Close (they would wait for the writer that is running them).
package outbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// Outbox is a durable, ordered message buffer. Its methods are safe for
// concurrent use.
type Outbox struct {
	path string
	opts Options
	log  *slog.Logger
	lock *os.File

	wdb    *sql.DB   // one connection, used only by the writer goroutine after Open
	rdb    *sql.DB   // read-only pool for Read
	cdb    *sql.DB   // one connection, used only by the checkpointer
	insert *sql.Stmt // on wdb
	// readStmt is Read's query on rdb; database/sql keeps it prepared on
	// each pooled connection.
	readStmt *sql.Stmt
	// readLaneStmt is ReadLane's query on rdb; readSyncStmt and
	// readSyncLaneStmt are ReadSync's (lanes.go).
	readLaneStmt, readSyncStmt, readSyncLaneStmt *sql.Stmt

	// gate orders senders against Close: Append and Ack hold it shared while
	// they hand work to the writer; Close takes it exclusively to set closed,
	// after which nobody sends and the queue can be closed.
	gate    sync.RWMutex
	closed  bool
	queue   chan *pending
	ackc    chan ackReq
	closing chan struct{} // closed when Close begins

	writerDone chan struct{}
	ckSignal   chan struct{} // capacity 1: "the WAL grew, checkpoint soon"
	ckStop     chan struct{}
	ckDone     chan struct{}
	dirty      atomic.Bool // written since the last checkpoint

	closeOnce sync.Once
	closeErr  error

	commitTime commitTimer // CommitLatency (backlog.go)

	mu      sync.Mutex
	st      Stats
	cls     [256]ClassStats // Stats.Classes, by priority
	commitc chan struct{}   // closed and replaced after every commit (for Wait)
	// laneLast[l] is the highest seq committed to lane l since Open (or
	// held at Open); WaitLane reads it.
	laneLast [MaxLanes]uint64

	policy     [256]classPolicy // Options.Classes resolved
	anyTTL     bool             // some class expires records
	classIndex bool             // a policy reads records_class
	laneIndex  bool             // records_lane exists: ReadLane and AckLane use it
	lanesUsed  bool             // some class is committed to a lane above 0

	w writerState // owned by the writer goroutine
}

// pending is one queued Append.
type pending struct {
	m       Message
	lane    uint8  // the class's lane, fixed at enqueue
	props   []byte // encoded user properties
	size    int    // messageSize: what MaxBatchBytes counts
	stored  int64  // Message.StoredSize: what QuotaBytes counts
	refused error  // set by the writer when the quota refuses m
	done    func(seq uint64, err error)
}

type ackReq struct {
	lane  int // -1: every lane (Ack); else AckLane's lane
	upTo  uint64
	reply chan error // buffered; receives exactly one value
}

// Open creates the outbox database at path, or recovers an existing one
// (SQLite replays the WAL of a crashed process). Only one Outbox may have a
// path open at a time; a second Open fails with ErrLocked. A database with a
// newer schema fails with ErrSchemaVersion and is not modified.
//
// Open also creates path+"-wal", path+"-shm" (SQLite) and path+".lock".
func Open(path string, opts Options) (*Outbox, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	if path == "" || strings.Contains(path, "?") || strings.HasPrefix(path, "file:") || path == ":memory:" {
		return nil, fmt.Errorf("outbox: path %q: want a plain file name without '?'", path)
	}
	lock, err := lockFile(path + ".lock")
	if err != nil {
		return nil, err
	}
	o := &Outbox{
		path:       path,
		opts:       opts,
		log:        opts.Logger.With("component", "outbox"),
		lock:       lock,
		queue:      make(chan *pending, opts.QueueLimit),
		ackc:       make(chan ackReq),
		closing:    make(chan struct{}),
		writerDone: make(chan struct{}),
		ckSignal:   make(chan struct{}, 1),
		ckStop:     make(chan struct{}),
		ckDone:     make(chan struct{}),
		commitc:    make(chan struct{}),
	}
	var anyDrop bool
	o.policy, o.anyTTL, anyDrop = opts.policies()
	o.classIndex = o.anyTTL || anyDrop && (opts.QuotaBytes > 0 || opts.diskOn())
	for _, p := range o.policy {
		o.lanesUsed = o.lanesUsed || p.lane != 0
	}
	if err := o.open(); err != nil {
		o.closeHandles()
		return nil, err
	}
	go o.run()
	go o.checkpointLoop()
	return o, nil
}

func (o *Outbox) dsn(params url.Values) string {
	params.Add("_pragma", "busy_timeout("+strconv.FormatInt(o.opts.BusyTimeout.Milliseconds(), 10)+")")
	return o.path + "?" + params.Encode()
}

func (o *Outbox) open() error {
	ctx := context.Background()
	// The writer connection. auto_vacuum must be set before the first table
	// exists; the driver applies _auto_vacuum before anything else, so a new
	// file gets it and an existing one is unchanged. BEGIN IMMEDIATE takes
	// the write lock up front, so a transaction never fails midway with
	// SQLITE_BUSY on lock upgrade.
	w := url.Values{}
	w.Set("_txlock", "immediate")
	w.Set("_auto_vacuum", "INCREMENTAL")
	w.Set("_journal_mode", "WAL")
	w.Add("_pragma", "synchronous("+o.opts.Synchronous+")")
	w.Add("_pragma", "wal_autocheckpoint(0)")
	w.Add("_pragma", "journal_size_limit("+strconv.FormatInt(o.opts.JournalSizeLimit, 10)+")")
	var err error
	if o.wdb, err = sql.Open("sqlite", o.dsn(w)); err != nil {
		return fmt.Errorf("outbox: open %s: %w", o.path, err)
	}
	o.wdb.SetMaxOpenConns(1)
	o.wdb.SetMaxIdleConns(1)
	o.wdb.SetConnMaxLifetime(0)
	o.wdb.SetConnMaxIdleTime(0)

	var mode string
	if err := o.wdb.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return fmt.Errorf("outbox: open %s: %w", o.path, err)
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("outbox: open %s: journal_mode is %q, want wal (does the file system support shared memory?)", o.path, mode)
	}
	if err := migrate(ctx, o.wdb); err != nil {
		return err
	}
	if err := o.ensureClassIndex(ctx); err != nil {
		return err
	}
	var av int
	if err := o.wdb.QueryRowContext(ctx, "PRAGMA auto_vacuum").Scan(&av); err != nil {
		return fmt.Errorf("outbox: read auto_vacuum: %w", err)
	}
	if av != 2 {
		o.log.Warn("database was created without auto_vacuum=INCREMENTAL; freed space is reused but the file will not shrink", "path", o.path, "auto_vacuum", av)
	}
	if err := o.loadState(ctx); err != nil {
		return err
	}
	if err := o.openLanes(ctx); err != nil {
		return err
	}
	if o.insert, err = o.wdb.PrepareContext(ctx, insertSQL); err != nil {
		return fmt.Errorf("outbox: prepare insert: %w", err)
	}

	r := url.Values{}
	r.Add("_pragma", "query_only(1)")
	if o.rdb, err = sql.Open("sqlite", o.dsn(r)); err != nil {
		return fmt.Errorf("outbox: open readers: %w", err)
	}
	o.rdb.SetMaxOpenConns(4)
	if o.readStmt, err = o.rdb.PrepareContext(ctx, readSQL); err != nil {
		return fmt.Errorf("outbox: prepare read: %w", err)
	}
	if o.readLaneStmt, err = o.rdb.PrepareContext(ctx, o.readLaneSQL()); err != nil {
		return fmt.Errorf("outbox: prepare lane read: %w", err)
	}
	if err := o.prepareSync(ctx); err != nil {
		return err
	}

	c := url.Values{}
	c.Add("_pragma", "wal_autocheckpoint(0)")
	if o.cdb, err = sql.Open("sqlite", o.dsn(c)); err != nil {
		return fmt.Errorf("outbox: open checkpointer: %w", err)
	}
	o.cdb.SetMaxOpenConns(1)
	return nil
}

// ensureClassIndex creates records_class when a policy reads it and drops it
// when none does.
func (o *Outbox) ensureClassIndex(ctx context.Context) error {
	var exists bool
	if err := o.wdb.QueryRowContext(ctx, `SELECT count(*) > 0 FROM sqlite_master
		WHERE type = 'index' AND name = 'records_class'`).Scan(&exists); err != nil {
		return fmt.Errorf("outbox: look for the class index: %w", err)
	}
	switch {
	case o.classIndex && !exists:
		o.log.Info("building the priority class index for the DropOldest and TTL policies", "path", o.path)
		if _, err := o.wdb.ExecContext(ctx, createClassIndex); err != nil {
			return fmt.Errorf("outbox: build the class index: %w", classify(err))
		}
	case !o.classIndex && exists:
		o.log.Info("dropping the priority class index: no DropOldest or TTL policy uses it", "path", o.path)
		if _, err := o.wdb.ExecContext(ctx, dropClassIndex); err != nil {
			return fmt.Errorf("outbox: drop the class index: %w", classify(err))
		}
	}
	return nil
}

// loadState reads the counters the outbox keeps in memory. This is the
// recovery of the byte accounting: it is recounted from the stored columns,
// so it is right after a crash however the previous run ended.
func (o *Outbox) loadState(ctx context.Context) error {
	var first, last int64
	err := o.wdb.QueryRowContext(ctx, `SELECT coalesce(min(seq), 0), coalesce(max(seq), 0) FROM records`).Scan(&first, &last)
	if err != nil {
		return fmt.Errorf("outbox: load state: %w", err)
	}
	// A table scan: the class index would be read in full and every row
	// looked up through it.
	classes, err := o.countByClass(ctx, o.wdb, ` NOT INDEXED`)
	if err != nil {
		return fmt.Errorf("outbox: load state: %w", err)
	}
	// sqlite_sequence holds the high-water mark even when the table is
	// empty; it has no row before the first insert.
	var hw int64
	err = o.wdb.QueryRowContext(ctx, `SELECT seq FROM sqlite_sequence WHERE name = 'records'`).Scan(&hw)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("outbox: load sequence: %w", err)
	}
	last = max(last, hw)
	w := &o.w
	var sum classState
	var touched classSet
	for _, d := range classes {
		w.classes[d.class] = d.classState
		sum.add(d.classState)
		touched.add(d.class)
	}
	w.bytes = sum.bytes
	o.st.Records = uint64(sum.records)
	o.st.PayloadBytes = uint64(sum.payload)
	o.st.FirstSeq = uint64(first)
	o.st.LastSeq = uint64(last)
	if sum.records > 0 {
		o.st.AckedSeq = uint64(first) - 1
	} else {
		o.st.AckedSeq = uint64(last)
	}
	o.publishLocked(&touched) // no other goroutine runs yet
	w.last = o.st.LastSeq
	w.first = o.st.FirstSeq
	w.acked = o.st.AckedSeq
	w.ackTarget = w.acked
	w.vacuumCheck = true // a previous run may have left free pages
	if o.anyTTL {
		if w.expireAt, err = o.nextExpiry(ctx, o.wdb, nil); err != nil {
			return fmt.Errorf("outbox: load state: %w", err)
		}
	}
	return nil
}

// Append queues m for the next group commit. done is called exactly once:
// with m's seq after the transaction holding it has committed (durable as
// Options.Synchronous promises), or with seq 0 and an error if m did not fit
// in Options.QuotaBytes (errors.Is(err, ErrQuotaExceeded)), the commit
// failed (errors.Is(err, ErrDiskFull) for a full disk) or the outbox is
// closed (ErrClosed). With seq 0, nothing of m was stored. Nothing of a
// failed group is committed.
//
// done runs on the writer goroutine, after the commit, in commit order; it
// must return quickly (writing a PUBACK is fine) and must not call Append,
// AppendWait, Ack or Close. Only when Append fails without queuing (the
// outbox is closed) does done run on the caller's goroutine, before Append
// returns. done may be nil.
//
// Messages appended by one goroutine are committed in call order and get
// increasing seqs. Append blocks while Options.QueueLimit messages are
// queued. The outbox keeps m, including its Payload slice, until done is
// called: the caller must not modify them before that.
func (o *Outbox) Append(m Message, done func(seq uint64, err error)) {
	if err := o.enqueue(context.Background(), m, done); err != nil && done != nil {
		done(0, err)
	}
}

// AppendWait appends m and waits for its commit, returning its seq. If ctx
// ends first it returns ctx's error, but a message already queued may still
// be committed (its Payload must then stay unmodified until it is); only an
// error from the commit itself guarantees m was not stored.
func (o *Outbox) AppendWait(ctx context.Context, m Message) (uint64, error) {
	type result struct {
		seq uint64
		err error
	}
	res := make(chan result, 1)
	if err := o.enqueue(ctx, m, func(seq uint64, err error) { res <- result{seq, err} }); err != nil {
		return 0, err
	}
	select {
	case r := <-res:
		return r.seq, r.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

func (o *Outbox) enqueue(ctx context.Context, m Message, done func(uint64, error)) error {
	p := &pending{m: m, props: appendUserProperties(nil, m.UserProperties), done: done}
	p.lane = o.policy[m.Priority].lane
	p.size = messageSize(&p.m)
	p.stored = m.StoredSize()
	o.gate.RLock()
	defer o.gate.RUnlock()
	if o.closed {
		return ErrClosed
	}
	select {
	case o.queue <- p:
		return nil
	case <-o.closing:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Ack deletes every record with seq <= upTo: the cloud holds them durably.
// It returns after the deletion committed. Acks are idempotent: an upTo at
// or below an earlier one returns nil at once. An upTo above the last
// committed seq fails with ErrAckAhead and deletes nothing. Freed space is
// reused by later appends and returned to the file system in bounded steps
// once the outbox holds no more than an Ack chunk (Options.AckChunkRows) of
// seqs or the writer has been idle for half a second, so a drain does not
// pay for reclaiming after every Ack.
func (o *Outbox) Ack(upTo uint64) error {
	return o.ack(ackReq{lane: -1, upTo: upTo, reply: make(chan error, 1)})
}

// ack hands req to the writer and waits for its answer.
func (o *Outbox) ack(req ackReq) error {
	o.gate.RLock()
	if o.closed {
		o.gate.RUnlock()
		return ErrClosed
	}
	select {
	case o.ackc <- req:
	case <-o.closing:
		o.gate.RUnlock()
		return ErrClosed
	}
	o.gate.RUnlock()
	return <-req.reply
}

// Stats returns a snapshot of the outbox's counters.
func (o *Outbox) Stats() Stats {
	o.mu.Lock()
	s := o.st
	for _, c := range o.cls {
		if !c.zero() {
			s.Classes = append(s.Classes, c)
		}
	}
	o.mu.Unlock()
	s.Queued = len(o.queue)
	return s
}

// Close stops accepting messages, commits everything already queued (calling
// its callbacks), finishes pending Acks, and closes the database. Appends
// that have not been queued when Close begins fail with ErrClosed; Wait
// returns ErrClosed. Close returns the first error met while closing; later
// calls return the same.
func (o *Outbox) Close() error {
	o.closeOnce.Do(func() {
		close(o.closing)
		o.gate.Lock()
		o.closed = true
		o.gate.Unlock()
		close(o.queue)
		<-o.writerDone
		close(o.ckStop)
		<-o.ckDone
		o.closeErr = o.closeHandles()
	})
	return o.closeErr
}

// closeHandles closes whatever Open managed to open. The writer connection
// goes last: as the last connection it checkpoints and removes the WAL.
func (o *Outbox) closeHandles() error {
	var errs []error
	for _, st := range append([]*sql.Stmt{o.insert, o.readStmt, o.readLaneStmt, o.readSyncStmt, o.readSyncLaneStmt}, o.w.inserts[:]...) {
		if st != nil {
			errs = append(errs, st.Close())
		}
	}
	for _, db := range []*sql.DB{o.rdb, o.cdb, o.wdb} {
		if db != nil {
			errs = append(errs, db.Close())
		}
	}
	if o.lock != nil {
		errs = append(errs, o.lock.Close())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("outbox: close: %w", err)
	}
	return nil
}

// messageSize approximates the bytes a message takes on the wire: its
// payload and strings. Read's maxBytes and MaxBatchBytes count this.
func messageSize(m *Message) int {
	n := len(m.Payload) + len(m.Topic) + len(m.ClientID) + len(m.Username) + len(m.ContentType) + len(m.EventType)
	for _, p := range m.UserProperties {
		n += len(p.Key) + len(p.Value)
	}
	return n
}

// unixNano stores zero times as 0 (time.Time{}.UnixNano is out of range).
func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNano(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}
