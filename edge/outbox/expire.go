package outbox

import (
	"context"
	"database/sql"
	"fmt"
	"math"
	"time"
)

// TTL expiry. The writer keeps expireAt, the earliest time any held record
// can be due, so most turns cost one clock read. When it is due the writer
// deletes expired records in one bounded transaction per turn (between
// group commits, like Acks), counting them per class, and then either goes
// on next turn (the chunk was full) or reads the next due time from the
// class/received index.

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
	if len(gone) == 0 {
		return
	}
	w.first = first
	var touched classSet
	for _, d := range gone {
		w.counts[d.class].expired += uint64(d.records)
		touched.add(d.class)
	}
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

// deleteExpired deletes, in one transaction, up to ExpireChunkRows records
// whose class has a TTL and whose received time is at least that TTL before
// now (Unix nanoseconds). It returns what it removed by class, the lowest
// seq left, and the next expireAt: now if the chunk filled up, else the
// earliest due time of what is left (0 if nothing is due ever).
func (o *Outbox) deleteExpired(now int64) (gone []classDelta, first uint64, next int64, err error) {
	ctx := context.Background()
	tx, err := o.wdb.BeginTx(ctx, nil)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("begin: %w", err)
	}
	defer func() {
		if err != nil {
			o.rollback(tx)
		}
	}()
	w := &o.w
	gone = w.gone[:0]
	budget := o.opts.ExpireChunkRows
	full := false
	for c := range w.classes {
		ttl := int64(o.policy[c].ttl)
		if ttl <= 0 || w.classes[c].records == 0 || now-1 < ttl {
			continue
		}
		if budget == 0 {
			full = true
			break
		}
		d, err := expireClass(ctx, tx, uint8(c), now-ttl, budget)
		if err != nil {
			return nil, 0, 0, err
		}
		if d.records == 0 {
			continue
		}
		gone = append(gone, d)
		budget -= int(d.records)
		full = full || budget == 0
	}
	w.gone = gone
	if full {
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

// expireClass deletes up to limit records of class received at or before
// cutoff (and after 1970), oldest first.
func expireClass(ctx context.Context, tx *sql.Tx, class uint8, cutoff int64, limit int) (classDelta, error) {
	d := classDelta{class: class}
	rows, err := tx.QueryContext(ctx, `DELETE FROM records WHERE seq IN (
		SELECT seq FROM records INDEXED BY records_class_received
		WHERE priority = ? AND received BETWEEN 1 AND ? ORDER BY received LIMIT ?)
		RETURNING length(payload), `+sizeSQL, int64(class), cutoff, limit)
	if err != nil {
		return d, fmt.Errorf("expire priority %d: %w", class, err)
	}
	defer rows.Close()
	for rows.Next() {
		var payload, bytes int64
		if err := rows.Scan(&payload, &bytes); err != nil {
			return d, fmt.Errorf("expire priority %d: %w", class, err)
		}
		d.add(classState{records: 1, bytes: bytes, payload: payload})
	}
	if err := rows.Err(); err != nil {
		return d, fmt.Errorf("expire priority %d: %w", class, err)
	}
	return d, nil
}

// nextExpiry returns the earliest time (Unix nanoseconds) a held record of a
// class with a TTL is due, 0 if none ever is. gone is what the current
// transaction already deleted, not yet subtracted from the writer's classes.
func (o *Outbox) nextExpiry(ctx context.Context, q queryer, gone []classDelta) (int64, error) {
	w := &o.w
	var held [256]int64
	for c := range w.classes {
		held[c] = w.classes[c].records
	}
	for _, d := range gone {
		held[d.class] -= d.records
	}
	var next int64
	for c := range w.classes {
		ttl := int64(o.policy[c].ttl)
		if ttl <= 0 || held[c] <= 0 {
			continue
		}
		var oldest sql.NullInt64
		if err := q.QueryRowContext(ctx, `SELECT min(received) FROM records INDEXED BY records_class_received
			WHERE priority = ? AND received > 0`, int64(c)).Scan(&oldest); err != nil {
			return 0, fmt.Errorf("next expiry of priority %d: %w", c, err)
		}
		if !oldest.Valid || oldest.Int64 > math.MaxInt64-ttl {
			continue
		}
		if due := oldest.Int64 + ttl; next == 0 || due < next {
			next = due
		}
	}
	return next, nil
}
