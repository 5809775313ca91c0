package outbox

import (
	"context"
	"database/sql"
	"fmt"
)

// writerState is owned by the writer goroutine; nothing else touches it
// after Open.
type writerState struct {
	carry *pending // taken from the queue but left for the next group (byte cap)
	batch []*pending
	seqs  []uint64

	first, last uint64 // lowest held seq (0 if none), highest committed seq
	acked       uint64 // every seq <= acked is deleted
	ackTarget   uint64 // highest seq an Ack asked for; > acked while deleting
	ackWaiters  []ackReq

	vacuumCheck bool // Acks freed pages: see whether to reclaim them
	vacuuming   bool // reclaiming until the free list is empty

	walEstimate int64 // bytes written to the WAL since the last checkpoint request
}

// walPage is SQLite's default page size plus its WAL frame header; every
// commit rewrites at least the table's last leaf and sqlite_sequence.
const walPage = 4096 + 24

// run is the writer goroutine. Each turn it commits one group if anything is
// queued, then takes one bounded step of Ack work, so neither starves the
// other; when there is nothing else it reclaims free pages, and when there is
// not even that it sleeps until an Append or Ack arrives.
func (o *Outbox) run() {
	defer close(o.writerDone)
	w := &o.w
	for {
		first, open := o.take()
		if !open {
			o.drain()
			return
		}
		if first != nil {
			o.commitGroup(o.collect(first))
		}
		o.takeAcks()
		if w.ackTarget > w.acked {
			o.ackStep()
			continue
		}
		if first != nil {
			continue
		}
		if w.vacuumCheck {
			o.vacuumStep()
			continue
		}
		select {
		case p, ok := <-o.queue:
			if !ok {
				o.drain()
				return
			}
			w.carry = p
		case a := <-o.ackc:
			o.addAck(a)
		}
	}
}

// take returns the next queued message without blocking (nil if none), and
// false once the queue is closed and empty.
func (o *Outbox) take() (*pending, bool) {
	if p := o.w.carry; p != nil {
		o.w.carry = nil
		return p, true
	}
	select {
	case p, ok := <-o.queue:
		return p, ok
	default:
		return nil, true
	}
}

// collect gathers a group: first, then whatever is queued, up to the row and
// byte caps. A message over the byte cap is carried to the next group.
func (o *Outbox) collect(first *pending) []*pending {
	if h := o.opts.hooks; h != nil && h.afterFirst != nil {
		h.afterFirst()
	}
	batch := append(o.w.batch[:0], first)
	bytes := first.size
	for len(batch) < o.opts.MaxBatchRows {
		select {
		case p, ok := <-o.queue:
			if !ok {
				return batch
			}
			if bytes+p.size > o.opts.MaxBatchBytes {
				o.w.carry = p
				return batch
			}
			batch = append(batch, p)
			bytes += p.size
		default:
			return batch
		}
	}
	return batch
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
}

// commitGroup inserts batch in one transaction and then reports to every
// callback: all succeed with their seqs, or all fail with the same error.
func (o *Outbox) commitGroup(batch []*pending) {
	defer func() {
		clear(batch) // drop references to payloads
		o.w.batch = batch[:0]
	}()
	seqs, bytes, err := o.insertGroup(batch)
	if err != nil {
		err = fmt.Errorf("outbox: commit %d messages: %w", len(batch), classify(err))
		o.log.Error("group commit failed", "rows", len(batch), "err", err)
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
	w := &o.w
	w.last = seqs[len(seqs)-1]
	if w.first == 0 {
		w.first = seqs[0]
	}
	o.mu.Lock()
	o.st.Records += uint64(len(batch))
	o.st.PayloadBytes += uint64(bytes)
	o.st.FirstSeq = w.first
	o.st.LastSeq = w.last
	o.st.CommittedGroups++
	o.st.CommittedRows += uint64(len(batch))
	o.st.MaxGroupRows = max(o.st.MaxGroupRows, len(batch))
	close(o.commitc)
	o.commitc = make(chan struct{})
	o.mu.Unlock()
	o.wrote(int64(bytes) + int64(len(batch))*64 + 2*walPage)

	for i, p := range batch {
		if p.done != nil {
			p.done(seqs[i], nil)
		}
	}
}

// insertGroup runs the group's transaction and returns the assigned seqs and
// the payload bytes inserted. On error the transaction is rolled back.
func (o *Outbox) insertGroup(batch []*pending) (seqs []uint64, payloadBytes int, err error) {
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
	stmt := tx.StmtContext(ctx, o.insert)
	seqs = o.w.seqs[:0]
	prev := o.w.last
	for _, p := range batch {
		m := &p.m
		payload := m.Payload
		if payload == nil {
			payload = []byte{}
		}
		var props any
		if len(p.props) > 0 {
			props = p.props
		}
		res, err := stmt.ExecContext(ctx, m.ClientID, m.Username, m.Topic, payload, int64(m.QoS),
			m.Retain, m.ContentType, m.EventType, int64(m.Priority), unixNano(m.Received), props)
		if err != nil {
			return nil, 0, fmt.Errorf("insert: %w", err)
		}
		id, err := res.LastInsertId()
		if err != nil {
			return nil, 0, fmt.Errorf("insert: %w", err)
		}
		// AUTOINCREMENT and a single writer make this impossible; check
		// anyway, since the cloud's dedup depends on it.
		if id <= 0 || uint64(id) <= prev {
			return nil, 0, fmt.Errorf("insert: seq %d does not follow %d", id, prev)
		}
		prev = uint64(id)
		seqs = append(seqs, prev)
		payloadBytes += len(payload)
	}
	if err := tx.Commit(); err != nil {
		return nil, 0, fmt.Errorf("commit: %w", err)
	}
	o.w.seqs = seqs
	return seqs, payloadBytes, nil
}

// rollback ends a failed transaction. SQLite may already have rolled it
// back itself (it does on SQLITE_FULL and some I/O errors), in which case
// the error says no transaction is active and is only logged.
func (o *Outbox) rollback(tx *sql.Tx) {
	if err := tx.Rollback(); err != nil {
		o.log.Debug("rollback after failed commit", "err", err)
	}
}

// wrote records WAL growth and asks the checkpointer to run once the
// estimate crosses Options.CheckpointBytes.
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
	n, bytes, first, err := o.deleteUpTo(hi)
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
	o.mu.Lock()
	o.st.Records -= uint64(n)
	o.st.PayloadBytes -= uint64(bytes)
	o.st.FirstSeq = first
	o.st.AckedSeq = hi
	o.mu.Unlock()
	if n > 0 {
		o.wrote(n*64 + bytes + 2*walPage)
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

// deleteUpTo deletes seq <= hi and returns the rows and payload bytes
// removed and the lowest seq left (0 if none).
func (o *Outbox) deleteUpTo(hi uint64) (n, bytes int64, first uint64, err error) {
	ctx := context.Background()
	tx, err := o.wdb.BeginTx(ctx, nil)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("begin: %w", err)
	}
	defer func() {
		if err != nil {
			o.rollback(tx)
		}
	}()
	if err = tx.QueryRowContext(ctx, `SELECT count(*), coalesce(sum(length(payload)), 0)
		FROM records WHERE seq <= ?`, int64(hi)).Scan(&n, &bytes); err != nil {
		return 0, 0, 0, fmt.Errorf("count: %w", err)
	}
	if _, err = tx.ExecContext(ctx, `DELETE FROM records WHERE seq <= ?`, int64(hi)); err != nil {
		return 0, 0, 0, fmt.Errorf("delete: %w", err)
	}
	var min sql.NullInt64
	if err = tx.QueryRowContext(ctx, `SELECT min(seq) FROM records`).Scan(&min); err != nil {
		return 0, 0, 0, fmt.Errorf("min: %w", err)
	}
	if err = tx.Commit(); err != nil {
		return 0, 0, 0, fmt.Errorf("commit: %w", err)
	}
	return n, bytes, uint64(min.Int64), nil
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
