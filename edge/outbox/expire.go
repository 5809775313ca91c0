package outbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"time"
)

// TTL expiry is first in, first out within a class, like RabbitMQ's
// per-queue message TTL: the writer walks a class's records in seq order
// (records_class) and deletes them while they are due, stopping at the first
// that is not. With the broker stamping Received as messages arrive, seq
// order is received order and this is exactly "older than TTL"; if the clock
// steps back, records behind a later-stamped one wait for it. The rejected
// alternative, an index on (priority, received) to expire in received order,
// costs every append a second index insert for a difference that only a
// clock step shows. Records whose Received is unknown (zero) or before 1970
// never expire and do not hold back those behind them; expireFloor remembers
// how far the walk got, so they are not walked again.
//
// The writer keeps expireAt, the earliest time a class's first record is
// due, so most turns cost one clock read. When it is due the writer deletes
// expired records in one bounded transaction per turn (between group
// commits, like Acks), counting them per class, and then either goes on next
// turn (the chunk was full) or reads the next due time from the classes'
// first records.

// expiryDue reports whether expired records may be waiting.
func (o *Outbox) expiryDue() bool {
	return o.w.expireAt != 0 && o.opts.Now().UnixNano() >= o.w.expireAt
}

// scheduleExpiry moves expireAt earlier if a newly committed record of class
// received at received is due before it.
func (o *Outbox) scheduleExpiry(class uint8, received time.Time) {
	ttl := o.policy[class].ttl
	r := unixNano(received)
	if ttl <= 0 || r <= 0 || r > math.MaxInt64-int64(ttl) {
		return
	}
	if due := r + int64(ttl); o.w.expireAt == 0 || due < o.w.expireAt {
		o.w.expireAt = due
	}
}

// expireStep deletes up to Options.ExpireChunkRows expired records. On error
// it logs and tries again after Options.ExpireInterval.
func (o *Outbox) expireStep() {
	w := &o.w
	now := o.opts.Now().UnixNano()
	gone, first, next, err := o.deleteExpired(now)
	if err != nil {
		err = classify(err)
		o.log.Error("expiring records failed", "err", err)
		w.expireAt = now + int64(o.opts.ExpireInterval)
		return
	}
	w.expireAt = next
	for _, f := range w.floors {
		w.expireFloor[f.class] = f.seq
	}
	if len(gone) == 0 {
		return
	}
	w.first = first
	var touched classSet
	for _, d := range gone {
		w.counts[d.class].expired += uint64(d.records)
		touched.add(d.class)
	}
	o.w.sizes.invalidate() // acksizes.go
	removed := o.removed(gone)
	o.mu.Lock()
	o.st.Records -= uint64(removed.records)
	o.st.PayloadBytes -= uint64(removed.payload)
	o.st.Expired += uint64(removed.records)
	o.st.FirstSeq = first
	o.publishLocked(&touched)
	o.mu.Unlock()
	o.log.Debug("expired records", "records", removed.records, "bytes", removed.bytes)
	o.wrote(removed.records*64 + removed.payload + 2*walPage)
	w.vacuumCheck = true
}

// classFloor is a new expireFloor for a class, applied once its
// transaction committed.
type classFloor struct {
	class uint8
	seq   uint64
}

// deleteExpired deletes, in one transaction, expired records of the classes
// with a TTL, walking at most ExpireChunkRows records. now is Unix
// nanoseconds. It returns what it removed by class, the lowest seq left, and
// the next expireAt: now if the walk was cut short, else the earliest due
// time of the classes' first records (0 if none is ever due). The classes'
// new floors are left in w.floors.
func (o *Outbox) deleteExpired(now int64) (gone []classDelta, first uint64, next int64, err error) {
	ctx := context.Background()
	w := &o.w
	w.floors = w.floors[:0]
	tx, err := o.wdb.BeginTx(ctx, nil)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("begin: %w", err)
	}
	defer func() {
		if err != nil {
			o.rollback(tx)
			w.floors = w.floors[:0]
		}
	}()
	gone = w.gone[:0]
	budget := o.opts.ExpireChunkRows
	more := false
	for c := range w.classes {
		ttl := int64(o.policy[c].ttl)
		if ttl <= 0 || w.classes[c].records == 0 || now-1 < ttl {
			continue
		}
		if budget == 0 {
			more = true
			break
		}
		class := uint8(c)
		d, walked, floor, cut, err := o.expireClass(ctx, tx, class, now-ttl, budget)
		if err != nil {
			return nil, 0, 0, err
		}
		budget -= walked
		more = more || cut
		if floor != w.expireFloor[c] {
			w.floors = append(w.floors, classFloor{class, floor})
		}
		if d.records > 0 {
			gone = append(gone, d)
		}
	}
	w.gone = gone
	if more {
		next = now
	} else if next, err = o.nextExpiry(ctx, tx, gone); err != nil {
		return nil, 0, 0, err
	}
	if len(gone) > 0 {
		if first, err = minSeq(ctx, tx); err != nil {
			return nil, 0, 0, err
		}
	}
	if err = tx.Commit(); err != nil {
		return nil, 0, 0, fmt.Errorf("commit: %w", err)
	}
	return gone, first, next, nil
}

// expireClass walks up to limit records of class in seq order from its
// floor, and deletes those received at or before cutoff up to the first
// that was received later. It returns what it deleted, how many records it
// walked, the class's new floor, and whether the walk was cut short by
// limit (more may be due).
func (o *Outbox) expireClass(ctx context.Context, tx *sql.Tx, class uint8, cutoff int64, limit int) (d classDelta, walked int, floor uint64, cut bool, err error) {
	d.class = class
	start := o.w.expireFloor[class]
	floor = start
	rows, err := tx.QueryContext(ctx, `SELECT seq, received, length(payload), `+sizeSQL+`
		FROM records INDEXED BY records_class WHERE priority = ? AND seq > ? ORDER BY seq LIMIT ?`,
		int64(class), int64(start), limit)
	if err != nil {
		return d, 0, 0, false, fmt.Errorf("expire priority %d: %w", class, err)
	}
	var lastDue uint64
	stopped := false
	for rows.Next() {
		var seq, received, payload, bytes int64
		if err := rows.Scan(&seq, &received, &payload, &bytes); err != nil {
			rows.Close()
			return d, 0, 0, false, fmt.Errorf("expire priority %d: %w", class, err)
		}
		walked++
		if received > cutoff {
			stopped = true
			break
		}
		floor = uint64(seq)
		if received <= 0 {
			continue // unknown: never expires
		}
		lastDue = uint64(seq)
		d.add(classState{records: 1, bytes: bytes, payload: payload})
	}
	err = rows.Err()
	rows.Close()
	if err != nil {
		return d, 0, 0, false, fmt.Errorf("expire priority %d: %w", class, err)
	}
	if d.records > 0 {
		// Every known-time record of the class in (start, lastDue] was
		// walked and is due; the unknown-time ones stay.
		res, err := tx.ExecContext(ctx, `DELETE FROM records INDEXED BY records_class
			WHERE priority = ? AND seq > ? AND seq <= ? AND received > 0`, int64(class), int64(start), int64(lastDue))
		if err != nil {
			return d, 0, 0, false, fmt.Errorf("expire priority %d: %w", class, err)
		}
		if n, err := res.RowsAffected(); err != nil || n != d.records {
			return d, 0, 0, false, fmt.Errorf("expire priority %d up to seq %d: deleted %d rows, walked %d due (%v)",
				class, lastDue, n, d.records, err)
		}
	}
	return d, walked, floor, !stopped && walked == limit, nil
}

// nextExpiry returns the earliest time (Unix nanoseconds) the first
// known-time record of a class with a TTL is due, 0 if none ever is. gone is
// what the current transaction already deleted and w.floors the floors it
// moved, neither yet applied to the writer's state.
func (o *Outbox) nextExpiry(ctx context.Context, q queryer, gone []classDelta) (int64, error) {
	w := &o.w
	held := w.classes
	for _, d := range gone {
		held[d.class].sub(d.classState)
	}
	floors := w.expireFloor
	for _, f := range w.floors {
		floors[f.class] = f.seq
	}
	var next int64
	for c := range held {
		ttl := int64(o.policy[c].ttl)
		if ttl <= 0 || held[c].records <= 0 {
			continue
		}
		var received int64
		err := q.QueryRowContext(ctx, `SELECT received FROM records INDEXED BY records_class
			WHERE priority = ? AND seq > ? AND received > 0 ORDER BY seq LIMIT 1`, int64(c), int64(floors[c])).Scan(&received)
		if errors.Is(err, sql.ErrNoRows) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("next expiry of priority %d: %w", c, err)
		}
		if received > math.MaxInt64-ttl {
			continue
		}
		if due := received + ttl; next == 0 || due < next {
			next = due
		}
	}
	return next, nil
}
