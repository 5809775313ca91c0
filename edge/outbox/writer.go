package outbox

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// writerState is owned by the writer goroutine; nothing else touches it
// after Open.
type writerState struct {
	carry *pending // taken from the queue but left for the next group (byte cap)
	// woke is set when carry is the message that woke an idle writer:
	// collect then waits for the rest of its burst (Options.GroupGap).
	woke     bool
	gapTimer *time.Timer // collect's wait; stopped when not in use
	batch    []*pending
	seqs     []uint64
	// inserts, rows and args are insertRows' prepared multi-row statements
	// (by insertSizes index) and reused buffers.
	inserts [len(insertSizes)]*sql.Stmt
	rows    []int
	args    []any

	first, last uint64 // lowest held seq (0 if none), highest committed seq
	acked       uint64 // every seq <= acked is deleted
	ackTarget   uint64 // highest seq an Ack asked for; > acked while deleting
	ackWaiters  []ackReq
	lanes       laneAcks // AckLane's state (lanes.go)
	sizes       ackSizes // records' sizes for Ack's accounting (acksizes.go)

	vacuumCheck bool // Acks freed pages: see whether to reclaim them
	vacuuming   bool // reclaiming until the free list is empty
	idleLong    bool // nothing arrived for vacuumIdle: see vacuumDue

	walEstimate int64 // bytes written to the WAL since the last checkpoint request
	walRetryAt  int64 // after an incomplete restart: the WAL size to try again at (checkpoint.go)
	walStatErr  bool  // the WAL could not be measured (logged once until it can)

	classes [256]classState    // committed records by priority class
	counts  [256]classCounters // per-class counters since Open
	bytes   int64              // sum of classes' bytes: what QuotaBytes limits
	plan    quotaPlan          // the current group's quota decisions
	disk    diskGuard          // the free-space reserve (diskguard.go)
	gone    []classDelta       // scratch for deletions by class

	// expireAt is when, in Unix nanoseconds by Options.Now, the first
	// record of some class is due to expire; 0 when none is. It may be early
	// (the record was acknowledged since), never late.
	expireAt int64
	// expireFloor[c]: every record of class c with seq <= it is gone or has
	// an unknown Received time (see expire.go). floors is scratch for the
	// floors an expiry transaction moves.
	expireFloor [256]uint64
	floors      []classFloor
}

// classCounters are the writer's per-class counters.
type classCounters struct {
	rejected, dropped, expired uint64
}

// classDelta is what a deletion removed from one class.
type classDelta struct {
	class uint8
	classState
}

// classSet is a set of priority classes.
type classSet [4]uint64

func (s *classSet) add(c uint8)      { s[c/64] |= 1 << (c % 64) }
func (s *classSet) has(c uint8) bool { return s[c/64]&(1<<(c%64)) != 0 }
func (s *classSet) addDeltas(d []classDelta) {
	for _, x := range d {
		s.add(x.class)
	}
}

// walPage is SQLite's default page size plus its WAL frame header; every
// commit rewrites at least the table's last leaf and sqlite_sequence.
const walPage = 4096 + 24

// run is the writer goroutine. Each turn it commits one group if anything is
// queued, then takes one bounded step of Ack work, so neither starves the
// other; when there is nothing else it reclaims free pages, and when there is
// not even that it sleeps until an Append or Ack arrives.
//
// Expired records are deleted (one bounded step per turn) before the turn's
// group commits, so the room they free counts for that group's quota.
func (o *Outbox) run() {
	defer close(o.writerDone)
	w := &o.w
	var tick <-chan time.Time // wakes an idle writer to look for expired records
	if o.anyTTL {
		t := time.NewTicker(o.opts.ExpireInterval)
		defer t.Stop()
		tick = t.C
	}
	idleAfter := vacuumIdle
	if h := o.opts.hooks; h != nil && h.vacuumIdle != 0 {
		idleAfter = h.vacuumIdle
	}
	idle := time.NewTimer(idleAfter) // armed while a vacuum waits for idleness
	idle.Stop()
	defer idle.Stop()
	idleArmed := false
	for {
		first, open := o.take()
		if !open {
			o.drain()
			return
		}
		expired := o.expiryDue()
		if expired {
			o.expireStep()
		}
		if first != nil {
			w.idleLong = false
			o.commitGroup(o.collect(first))
		}
		o.takeAcks()
		if w.ackTarget > w.acked {
			w.idleLong = false
			o.ackStep()
			continue
		}
		if l, ok := o.laneAckDue(); ok {
			w.idleLong = false
			o.laneAckStep(l)
			continue
		}
		if first != nil || expired {
			continue
		}
		var idleC <-chan time.Time
		if w.vacuumCheck {
			if o.vacuumDue() {
				o.vacuumStep()
				continue
			}
			if !idleArmed {
				idle.Reset(idleAfter)
				idleArmed = true
			}
			idleC = idle.C
		}
		if h := o.opts.hooks; h != nil && h.beforeIdle != nil {
			h.beforeIdle()
		}
		select {
		case p, ok := <-o.queue:
			if !ok {
				o.drain()
				return
			}
			w.carry, w.woke = p, true
		case a := <-o.ackc:
			o.addAck(a)
		case <-tick:
			continue
		case <-idleC:
			idleArmed = false
			w.idleLong = true
			continue
		}
		// Work arrived: the writer is no longer idle.
		if idleArmed {
			idle.Stop()
			idleArmed = false
		}
		w.idleLong = false
	}
}

// vacuumIdle is how long the writer must have had nothing to do before it
// reclaims free pages while the outbox still holds more than an Ack chunk.
const vacuumIdle = 500 * time.Millisecond

// vacuumDue reports whether the writer, idle now, should take a vacuum step:
// when the outbox is nearly empty (its held seqs span at most one Ack chunk)
// or has been idle for vacuumIdle. During a drain the cloud's Acks arrive
// every few milliseconds and each one frees pages; reclaiming them at once
// was measured costing 0.7 µs of CPU per drained message, and most of those
// pages would be reused by the next appends anyway. Deferring it returns
// the space once the drain ends (the outbox is then nearly empty) or pauses.
func (o *Outbox) vacuumDue() bool {
	w := &o.w
	return w.idleLong || w.first == 0 || w.last-w.first < uint64(o.opts.AckChunkRows)
}

// take returns the next queued message without blocking (nil if none), and
// false once the queue is closed and empty.
func (o *Outbox) take() (*pending, bool) {
	if p := o.w.carry; p != nil {
		o.w.carry = nil
		return p, true
	}
	o.w.woke = false
	select {
	case p, ok := <-o.queue:
		return p, ok
	default:
		return nil, true
	}
}

// collect gathers a group: first, then whatever is queued, up to the row and
// byte caps. A message over the byte cap is carried to the next group. If
// first woke the writer from idle, it waits for more as Options.GroupGap
// says.
func (o *Outbox) collect(first *pending) []*pending {
	if h := o.opts.hooks; h != nil && h.afterFirst != nil {
		h.afterFirst()
	}
	var until time.Time // when waiting for more ends; zero: no waiting
	if o.w.woke && o.opts.GroupGap > 0 {
		until = time.Now().Add(o.opts.GroupWait)
	}
	o.w.woke = false
	batch := append(o.w.batch[:0], first)
	bytes := first.size
	for len(batch) < o.opts.MaxBatchRows {
		var p *pending
		select {
		case q, ok := <-o.queue:
			if !ok {
				return batch
			}
			p = q
		default:
			if p = o.await(until); p == nil {
				return batch
			}
		}
		if bytes+p.size > o.opts.MaxBatchBytes {
			o.w.carry = p
			return batch
		}
		batch = append(batch, p)
		bytes += p.size
	}
	return batch
}

// await waits up to Options.GroupGap, and not past until, for the next
// queued message. It returns nil if none came, if until is zero or past, or
// if the queue was closed (the writer's next take sees that).
func (o *Outbox) await(until time.Time) *pending {
	if until.IsZero() {
		return nil
	}
	d := min(o.opts.GroupGap, time.Until(until))
	if d <= 0 {
		return nil
	}
	t := o.w.gapTimer
	if t == nil {
		t = time.NewTimer(d)
		o.w.gapTimer = t
	} else {
		t.Reset(d)
	}
	select {
	case p := <-o.queue:
		t.Stop()
		return p // nil if closed
	case <-t.C:
		return nil
	}
}

// drain runs after Close closed the queue: it commits what is left and
// finishes the Acks already accepted.
func (o *Outbox) drain() {
	for {
		p, open := o.take()
		if !open || p == nil {
			break
		}
		o.commitGroup(o.collect(p))
	}
	o.takeAcks()
	for o.w.ackTarget > o.w.acked {
		o.ackStep()
	}
	for l, ok := o.laneAckDue(); ok; l, ok = o.laneAckDue() {
		o.laneAckStep(l)
	}
}

// commitGroup commits batch in one transaction and then reports to every
// callback in batch order. If the commit fails, every callback gets the same
// error and nothing of the group is stored (nor dropped). If it succeeds,
// each message either got its seq or, refused by the quota, an error
// wrapping ErrQuotaExceeded.
func (o *Outbox) commitGroup(batch []*pending) {
	defer func() {
		clear(batch) // drop references to payloads
		o.w.batch = batch[:0]
	}()
	start := time.Now()
	g, err := o.insertGroupReclaiming(batch) // diskguard.go
	if err != nil {
		err = fmt.Errorf("outbox: commit %d messages: %w", len(batch), classify(err))
		o.log.Error("group commit failed", "rows", len(batch), "err", err)
		o.diskCommitted(0, err)
		o.mu.Lock()
		o.st.FailedGroups++
		o.st.FailedRows += uint64(len(batch))
		o.mu.Unlock()
		for _, p := range batch {
			if p.done != nil {
				p.done(0, err)
			}
		}
		return
	}
	o.commitTime.observe(time.Since(start))
	w := &o.w
	var (
		touched classSet
		added   classState
		refused uint64
		// refusedDisk and droppedDisk are the refusals and drops of the
		// free-space reserve (w.plan.disk).
		refusedDisk, droppedDisk uint64
	)
	for _, p := range batch {
		c := p.m.Priority
		touched.add(c)
		if p.refused != nil {
			w.counts[c].rejected++
			refused++
			if w.plan.disk {
				w.disk.counts[c].rejected++
				refusedDisk++
			}
			continue
		}
		d := classState{records: 1, bytes: p.stored, payload: int64(len(p.m.Payload))}
		w.classes[c].add(d)
		added.add(d)
		o.scheduleExpiry(c, p.m.Received)
	}
	var dropped classState
	for c, cut := range w.plan.cuts {
		if cut.dropped.records > 0 {
			w.classes[c].sub(cut.dropped)
			if w.plan.disk {
				w.disk.counts[c].dropped += uint64(cut.dropped.records)
				droppedDisk += uint64(cut.dropped.records)
			} else {
				w.counts[c].dropped += uint64(cut.dropped.records)
			}
			dropped.add(cut.dropped)
			touched.add(c)
		}
	}
	clear(w.plan.cuts)
	o.diskCommitted(added.bytes, nil)
	w.bytes += added.bytes - dropped.bytes
	w.sizes.committed(batch, g.seqs, dropped.records > 0) // acksizes.go
	if g.rows > 0 {
		w.last = g.last
	}
	switch {
	case dropped.records > 0:
		w.first = g.first
	case w.first == 0 && g.rows > 0:
		w.first = g.firstInserted
	}
	if dropped.records > 0 {
		o.log.Debug("dropped oldest records for quota", "records", dropped.records, "bytes", dropped.bytes, "disk_full", w.plan.disk)
		w.vacuumCheck = true
	}
	o.mu.Lock()
	o.st.Records = o.st.Records + uint64(added.records) - uint64(dropped.records)
	o.st.PayloadBytes = o.st.PayloadBytes + uint64(added.payload) - uint64(dropped.payload)
	o.st.Rejected += refused
	o.st.DroppedOldest += uint64(dropped.records) - droppedDisk
	o.st.RejectedDiskFull += refusedDisk
	o.st.DroppedDiskFull += droppedDisk
	o.st.FirstSeq = w.first
	o.st.LastSeq = w.last
	for i, p := range batch {
		if p.refused == nil {
			o.laneLast[p.lane] = g.seqs[i] // ascending within the group
		}
	}
	if g.rows > 0 {
		o.st.CommittedGroups++
		o.st.CommittedRows += uint64(g.rows)
		o.st.MaxGroupRows = max(o.st.MaxGroupRows, g.rows)
		close(o.commitc)
		o.commitc = make(chan struct{})
	}
	o.publishLocked(&touched)
	o.mu.Unlock()
	if g.rows > 0 || dropped.records > 0 {
		o.wrote(added.bytes + dropped.records*64 + 2*walPage)
	}
	if h := o.opts.hooks; h != nil && h.afterCommit != nil {
		h.afterCommit()
	}

	for i, p := range batch {
		if p.done == nil {
			continue
		}
		if p.refused != nil {
			p.done(0, p.refused)
		} else {
			p.done(g.seqs[i], nil)
		}
	}
}

// publishLocked copies the writer's state of the touched classes and its
// total bytes into the Stats snapshot. o.mu must be held.
func (o *Outbox) publishLocked(touched *classSet) {
	w := &o.w
	o.st.Bytes = uint64(w.bytes)
	for c := range w.classes {
		if !touched.has(uint8(c)) {
			continue
		}
		o.cls[c] = ClassStats{
			Priority:      uint8(c),
			Records:       uint64(w.classes[c].records),
			Bytes:         uint64(w.classes[c].bytes),
			Rejected:      w.counts[c].rejected,
			DroppedOldest: w.counts[c].dropped,
			Expired:       w.counts[c].expired,

			RejectedDiskFull: w.disk.counts[c].rejected,
			DroppedDiskFull:  w.disk.counts[c].dropped,
		}
	}
}

// groupResult is what insertGroup committed.
type groupResult struct {
	seqs          []uint64 // by batch index; 0 for a refused message
	rows          int      // messages inserted
	firstInserted uint64   // the group's lowest seq
	last          uint64   // the group's highest seq
	first         uint64   // the lowest seq held after the commit, when records were dropped
}

// insertGroup runs the group's transaction: the quota plan (refusals and
// drops), then the inserts. On error the transaction is rolled back.
func (o *Outbox) insertGroup(batch []*pending) (g groupResult, err error) {
	ctx := context.Background()
	if err := o.prepareInserts(ctx); err != nil {
		return g, err
	}
	tx, err := o.wdb.BeginTx(ctx, nil)
	if err != nil {
		return g, fmt.Errorf("begin: %w", err)
	}
	defer func() {
		if err != nil {
			o.rollback(tx)
			clear(o.w.plan.cuts)
		}
	}()
	limit, disk, err := o.groupLimit(ctx, tx)
	if err != nil {
		return g, err
	}
	if limit >= 0 {
		if err := o.planQuota(ctx, tx, batch, limit, disk); err != nil {
			return g, fmt.Errorf("quota: %w", err)
		}
	}
	seqs, prev, err := o.insertRows(ctx, tx, batch, &g)
	if err != nil {
		return g, err
	}
	g.last = prev
	if len(o.w.plan.cuts) > 0 {
		if g.first, err = minSeq(ctx, tx); err != nil {
			return g, err
		}
	}
	if h := o.opts.hooks; h != nil && h.beforeCommit != nil {
		if err := h.beforeCommit(); err != nil {
			return g, err
		}
	}
	if err := tx.Commit(); err != nil {
		return g, fmt.Errorf("commit: %w", err)
	}
	o.w.seqs = seqs
	g.seqs = seqs
	return g, nil
}

// minSeq returns the lowest seq held, 0 if none.
func minSeq(ctx context.Context, tx *sql.Tx) (uint64, error) {
	var seq sql.NullInt64
	if err := tx.QueryRowContext(ctx, `SELECT min(seq) FROM records`).Scan(&seq); err != nil {
		return 0, fmt.Errorf("min seq: %w", err)
	}
	return uint64(seq.Int64), nil
}

// rollback ends a failed transaction. SQLite may already have rolled it
// back itself (it does on SQLITE_FULL and some I/O errors), in which case
// the error says no transaction is active and is only logged.
func (o *Outbox) rollback(tx *sql.Tx) {
	if err := tx.Rollback(); err != nil {
		o.log.Debug("rollback after failed commit", "err", err)
	}
}

// wrote runs after each write transaction of the writer's: it records WAL
// growth, asks the checkpointer to run once the estimate crosses
// Options.CheckpointBytes, and keeps the WAL file within
// Options.JournalSizeLimit (boundWAL). o.mu must not be held.
func (o *Outbox) wrote(walBytes int64) {
	o.dirty.Store(true)
	o.w.walEstimate += walBytes
	if o.w.walEstimate >= o.opts.CheckpointBytes {
		o.w.walEstimate = 0
		select {
		case o.ckSignal <- struct{}{}:
		default:
		}
	}
	o.boundWAL() // checkpoint.go
}

// takeAcks accepts every Ack waiting to be received, without blocking.
func (o *Outbox) takeAcks() {
	for {
		select {
		case a := <-o.ackc:
			o.addAck(a)
		default:
			return
		}
	}
}

func (o *Outbox) addAck(a ackReq) {
	w := &o.w
	if a.lane >= 0 {
		o.addLaneAck(a)
		return
	}
	switch {
	case a.upTo > w.last:
		a.reply <- fmt.Errorf("%w: ack %d, last committed %d", ErrAckAhead, a.upTo, w.last)
	case a.upTo <= w.acked:
		a.reply <- nil
	default:
		w.ackTarget = max(w.ackTarget, a.upTo)
		w.ackWaiters = append(w.ackWaiters, a)
	}
}

// ackStep deletes one chunk (at most Options.AckChunkRows seqs) towards
// ackTarget in its own transaction, then answers the Acks it satisfied. On
// error every waiting Ack gets the error and the target falls back, so a
// retried Ack starts again.
func (o *Outbox) ackStep() {
	w := &o.w
	hi := w.ackTarget
	if w.first != 0 && hi-w.first >= uint64(o.opts.AckChunkRows) {
		hi = w.first + uint64(o.opts.AckChunkRows) - 1
	}
	gone, first, err := o.deleteUpTo(hi)
	if err != nil {
		err = fmt.Errorf("outbox: ack %d: %w", hi, classify(err))
		o.log.Error("ack failed", "err", err)
		for _, a := range w.ackWaiters {
			a.reply <- err
		}
		w.ackWaiters = w.ackWaiters[:0]
		w.ackTarget = w.acked
		return
	}
	w.acked = hi
	w.first = first
	w.sizes.acked(hi, first, w.last) // acksizes.go
	removed := o.removed(gone)
	var touched classSet
	touched.addDeltas(gone)
	o.mu.Lock()
	o.st.Records -= uint64(removed.records)
	o.st.PayloadBytes -= uint64(removed.payload)
	o.st.FirstSeq = first
	o.st.AckedSeq = hi
	o.publishLocked(&touched)
	o.mu.Unlock()
	if removed.records > 0 {
		o.wrote(removed.records*64 + removed.payload + 2*walPage)
		w.vacuumCheck = true
	}
	kept := w.ackWaiters[:0]
	for _, a := range w.ackWaiters {
		if a.upTo <= w.acked {
			a.reply <- nil
		} else {
			kept = append(kept, a)
		}
	}
	clear(w.ackWaiters[len(kept):])
	w.ackWaiters = kept
}

// removed subtracts committed deletions from the writer's class totals and
// returns their sum.
func (o *Outbox) removed(gone []classDelta) classState {
	w := &o.w
	var sum classState
	for _, d := range gone {
		w.classes[d.class].sub(d.classState)
		sum.add(d.classState)
	}
	w.bytes -= sum.bytes
	return sum
}

// deleteUpTo deletes seq <= hi and returns what it removed from each class
// and the lowest seq left (0 if none).
func (o *Outbox) deleteUpTo(hi uint64) (gone []classDelta, first uint64, err error) {
	ctx := context.Background()
	tx, err := o.wdb.BeginTx(ctx, nil)
	if err != nil {
		return nil, 0, fmt.Errorf("begin: %w", err)
	}
	defer func() {
		if err != nil {
			o.rollback(tx)
		}
	}()
	// One pass: the DELETE returns what each row counted, so the range is
	// not scanned a second time to keep the byte accounting exact.
	if gone, err = o.countAcked(ctx, tx, hi); err != nil {
		return nil, 0, err
	}
	if _, err = tx.ExecContext(ctx, `DELETE FROM records WHERE seq <= ?`, int64(hi)); err != nil {
		return nil, 0, fmt.Errorf("delete: %w", err)
	}
	if first, err = minSeq(ctx, tx); err != nil {
		return nil, 0, err
	}
	if err = tx.Commit(); err != nil {
		return nil, 0, fmt.Errorf("commit: %w", err)
	}
	return gone, first, nil
}

// countAcked sums the records with seq <= hi by class, into the writer's
// scratch slice. When the outbox holds one class only (no priorities in use,
// the usual case) one aggregate row is read instead of grouping by priority,
// which would sort the range. Both are one pass over the range inside
// SQLite: measured cheaper than DELETE ... RETURNING, whose per-row results
// cost more to bring into Go than the second pass they save.
//
// NOT INDEXED keeps the planner on the seq range: the class index would
// visit every record to avoid sorting by priority.
func (o *Outbox) countAcked(ctx context.Context, tx *sql.Tx, hi uint64) ([]classDelta, error) {
	if gone, ok := o.w.sizes.sum(o.w.acked, hi, o.w.gone[:0]); ok { // acksizes.go
		o.w.gone = gone
		return gone, nil
	}
	held := -1
	for c := range o.w.classes {
		if o.w.classes[c].records != 0 {
			if held >= 0 {
				return o.countByClass(ctx, tx, ` NOT INDEXED WHERE seq <= ?`, int64(hi))
			}
			held = c
		}
	}
	gone := o.w.gone[:0]
	defer func() { o.w.gone = gone }()
	if held < 0 {
		return gone, nil // nothing held: nothing to delete
	}
	// Every record of the range is of class held: the writer's totals
	// say no other class holds any.
	d := classDelta{class: uint8(held)}
	var payload, bytes sql.NullInt64
	if err := tx.QueryRowContext(ctx, `SELECT count(*), sum(length(payload)), sum(`+sizeSQL+`)
		FROM records NOT INDEXED WHERE seq <= ?`, int64(hi)).Scan(&d.records, &payload, &bytes); err != nil {
		return nil, fmt.Errorf("count: %w", err)
	}
	if d.records > 0 {
		d.payload, d.bytes = payload.Int64, bytes.Int64
		gone = append(gone, d)
	}
	return gone, nil
}

// countByClass sums the records selected by where (appended to
// "FROM records") by class, into the writer's scratch slice.
func (o *Outbox) countByClass(ctx context.Context, q queryer, where string, args ...any) ([]classDelta, error) {
	rows, err := q.QueryContext(ctx, `SELECT priority, count(*), sum(length(payload)), sum(`+sizeSQL+`)
		FROM records`+where+` GROUP BY priority`, args...)
	if err != nil {
		return nil, fmt.Errorf("count: %w", err)
	}
	defer rows.Close()
	gone := o.w.gone[:0]
	for rows.Next() {
		var d classDelta
		var pri int64
		if err := rows.Scan(&pri, &d.records, &d.payload, &d.bytes); err != nil {
			return nil, fmt.Errorf("count: %w", err)
		}
		if pri < 0 || pri > 255 {
			return nil, fmt.Errorf("%w: priority %d", ErrCorrupt, pri)
		}
		d.class = uint8(pri)
		gone = append(gone, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("count: %w", err)
	}
	o.w.gone = gone
	return gone, nil
}

// queryer is what countByClass needs of a *sql.DB or *sql.Tx.
type queryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// vacuumStep returns up to Options.VacuumStepPages free pages to the file
// system. It starts when the free list reaches Options.VacuumFreePages and
// continues, one step per idle turn, until the list is empty.
func (o *Outbox) vacuumStep() {
	w := &o.w
	ctx := context.Background()
	var free int64
	if err := o.wdb.QueryRowContext(ctx, "PRAGMA freelist_count").Scan(&free); err != nil {
		o.log.Warn("read freelist_count", "err", err)
		w.vacuumCheck, w.vacuuming = false, false
		return
	}
	if !w.vacuuming && (o.opts.VacuumFreePages < 0 || free < int64(o.opts.VacuumFreePages)) || free == 0 {
		w.vacuumCheck, w.vacuuming = false, false
		return
	}
	w.vacuuming = true
	step := min(free, int64(o.opts.VacuumStepPages))
	if _, err := o.wdb.ExecContext(ctx, fmt.Sprintf("PRAGMA incremental_vacuum(%d)", step)); err != nil {
		o.log.Warn("incremental_vacuum", "err", err)
		w.vacuumCheck, w.vacuuming = false, false
		return
	}
	o.mu.Lock()
	o.st.VacuumedPages += uint64(step)
	o.mu.Unlock()
	o.wrote(step * walPage)
}
