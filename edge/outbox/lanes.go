package outbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// Priority lanes.
//
// The sync link drains the outbox on up to MaxLanes lanes, each an ordered
// stream of its own with its own high-water mark in the cloud, so that a
// record of an urgent class (an alarm) overtakes a backlog of telemetry
// (sync/link/lanes.go has the protocol's side). Here that means three
// things:
//
//   - The lane is fixed when a record is committed, from its class
//     (ClassPolicy.Lane), and stored with it. A record never changes lanes:
//     had a class moved to another lane with records pending, that lane's
//     high-water mark in the cloud could already be past them, and the
//     cloud would drop them as duplicates.
//   - ReadLane and WaitLane read one lane in seq order.
//   - AckLane deletes one lane's records up to a seq. Ack's cumulative
//     "everything <= upTo" would delete other lanes' records that the cloud
//     does not have yet.
//
// Records of a lane are found through the records_lane index (lane, then
// seq as the rowid). Like records_class it costs every insert, so it exists
// only while some class is committed to a lane above 0 or records of such a
// lane are held; without it ReadLane scans by seq and filters, which is what
// a single-lane outbox (every record in lane 0) needs anyway.

// MaxLanes bounds the lanes: 0 to MaxLanes-1, the urgencies QUIC stream
// priorities have.
const MaxLanes = 8

const (
	createLaneIndex = `CREATE INDEX IF NOT EXISTS records_lane ON records(lane)`
	dropLaneIndex   = `DROP INDEX IF EXISTS records_lane`
)

// laneAcks is the writer's AckLane state.
type laneAcks struct {
	// acked[l]: every record of lane l with seq <= acked[l] is deleted (as
	// is every record <= writerState.acked, whatever its lane).
	acked [MaxLanes]uint64
	// target[l]: the highest seq an AckLane of lane l asked for.
	target  [MaxLanes]uint64
	waiters []ackReq
	next    int // the lane laneAckDue looks at first: lanes take turns
}

// openLanes builds or drops records_lane and loads each lane's last seq.
func (o *Outbox) openLanes(ctx context.Context) error {
	var exists bool
	if err := o.wdb.QueryRowContext(ctx, `SELECT count(*) > 0 FROM sqlite_master
		WHERE type = 'index' AND name = 'records_lane'`).Scan(&exists); err != nil {
		return fmt.Errorf("outbox: look for the lane index: %w", err)
	}
	// Records held in a lane above 0 keep the index even when no class
	// maps there any more: they are still drained on their lane.
	var held bool
	if !o.lanesUsed {
		q := `SELECT count(*) > 0 FROM records NOT INDEXED WHERE lane != 0`
		if exists {
			q = `SELECT count(*) > 0 FROM records INDEXED BY records_lane WHERE lane > 0`
		}
		if err := o.wdb.QueryRowContext(ctx, q).Scan(&held); err != nil {
			return fmt.Errorf("outbox: look for records in lanes: %w", err)
		}
	}
	o.laneIndex = o.lanesUsed || held
	switch {
	case o.laneIndex && !exists:
		o.log.Info("building the priority lane index", "path", o.path)
		if _, err := o.wdb.ExecContext(ctx, createLaneIndex); err != nil {
			return fmt.Errorf("outbox: build the lane index: %w", classify(err))
		}
	case !o.laneIndex && exists:
		o.log.Info("dropping the priority lane index: every record is in lane 0", "path", o.path)
		if _, err := o.wdb.ExecContext(ctx, dropLaneIndex); err != nil {
			return fmt.Errorf("outbox: drop the lane index: %w", classify(err))
		}
	}
	if o.st.Records == 0 {
		o.w.sizes.reset(o.st.LastSeq + 1) // acksizes.go
	}
	if !o.laneIndex {
		// Every record is in lane 0.
		o.laneLast[0] = o.st.LastSeq
		return nil
	}
	rows, err := o.wdb.QueryContext(ctx, `SELECT lane, max(seq) FROM records INDEXED BY records_lane GROUP BY lane`)
	if err != nil {
		return fmt.Errorf("outbox: load lanes: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var lane, last int64
		if err := rows.Scan(&lane, &last); err != nil {
			return fmt.Errorf("outbox: load lanes: %w", err)
		}
		if lane < 0 || lane >= MaxLanes || last < 0 {
			return fmt.Errorf("%w: lane %d (last seq %d)", ErrCorrupt, lane, last)
		}
		o.laneLast[lane] = uint64(last)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("outbox: load lanes: %w", err)
	}
	return nil
}

func (o *Outbox) readLaneSQL() string {
	if o.laneIndex {
		return `SELECT ` + recordColumns + ` FROM records INDEXED BY records_lane
			WHERE lane = ? AND seq > ? ORDER BY seq LIMIT ?`
	}
	return `SELECT ` + recordColumns + ` FROM records WHERE seq > ? AND lane = ? ORDER BY seq LIMIT ?`
}

// Lanes returns the lanes the outbox commits records to (those of
// Options.Classes) and those it holds records of, in ascending order; lane 0
// is always first. A sync client drains each of them.
func (o *Outbox) Lanes() []uint8 {
	var in [MaxLanes]bool
	in[0] = true
	for _, p := range o.policy {
		in[p.lane] = true
	}
	o.mu.Lock()
	for l, last := range o.laneLast {
		// A superset: the lane may have been acknowledged since.
		in[l] = in[l] || o.st.Records > 0 && last > o.st.AckedSeq
	}
	o.mu.Unlock()
	var out []uint8
	for l, ok := range in {
		if ok {
			out = append(out, uint8(l))
		}
	}
	return out
}

// ReadLane is Read restricted to the records of lane: those with seq > after
// in ascending seq order, with Read's limits. A lane at or above MaxLanes
// holds nothing.
func (o *Outbox) ReadLane(lane uint8, after uint64, maxRecords, maxBytes int) ([]Record, error) {
	select {
	case <-o.closing:
		return nil, ErrClosed
	default:
	}
	if lane >= MaxLanes {
		return []Record{}, nil
	}
	if maxRecords <= 0 {
		maxRecords = DefaultReadRecords
	}
	o.mu.Lock()
	last := o.laneLast[lane]
	o.mu.Unlock()
	if last <= after {
		return []Record{}, nil // nothing newer in this lane: no query
	}
	a := int64(min(after, 1<<63-1))
	args := []any{int64(lane), a, maxRecords}
	if !o.laneIndex {
		args[0], args[1] = a, int64(lane)
	}
	rows, err := o.readLaneStmt.QueryContext(context.Background(), args...)
	if err != nil {
		return nil, o.readErr(after, err)
	}
	return o.scanRecords(rows, after, maxRecords, maxBytes)
}

// WaitLane is Wait for one lane: it returns nil once a record of lane with
// seq > after has been committed (at once if one already was), ctx's error
// when ctx ends first, or ErrClosed when the outbox closes first.
func (o *Outbox) WaitLane(ctx context.Context, lane uint8, after uint64) error {
	if lane >= MaxLanes {
		return fmt.Errorf("outbox: lane %d: lanes are 0 to %d", lane, MaxLanes-1)
	}
	for {
		o.mu.Lock()
		last, ch := o.laneLast[lane], o.commitc
		o.mu.Unlock()
		if last > after {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-o.closing:
			return ErrClosed
		}
	}
}

// AckLane deletes every record of lane with seq <= upTo: the cloud holds
// that lane durably up to upTo. Records of other lanes are kept. Like Ack it
// returns after the deletion committed, is idempotent, and fails with
// ErrAckAhead (deleting nothing) for an upTo above the last committed seq.
func (o *Outbox) AckLane(lane uint8, upTo uint64) error {
	if lane >= MaxLanes {
		return fmt.Errorf("outbox: lane %d: lanes are 0 to %d", lane, MaxLanes-1)
	}
	return o.ack(ackReq{lane: int(lane), upTo: upTo, reply: make(chan error, 1)})
}

// addLaneAck is addAck for an AckLane.
func (o *Outbox) addLaneAck(a ackReq) {
	w := &o.w
	la := &w.lanes
	switch {
	case a.upTo > w.last:
		a.reply <- fmt.Errorf("%w: ack %d of lane %d, last committed %d", ErrAckAhead, a.upTo, a.lane, w.last)
	case a.upTo <= max(w.acked, la.acked[a.lane]):
		a.reply <- nil
	default:
		la.target[a.lane] = max(la.target[a.lane], a.upTo)
		la.waiters = append(la.waiters, a)
	}
}

// laneAckDue returns a lane with AckLane work to do, the lanes taking turns.
func (o *Outbox) laneAckDue() (uint8, bool) {
	w := &o.w
	la := &w.lanes
	for i := range MaxLanes {
		l := (la.next + i) % MaxLanes
		if la.target[l] > max(w.acked, la.acked[l]) {
			la.next = (l + 1) % MaxLanes
			return uint8(l), true
		}
	}
	return 0, false
}

// laneAckStep deletes up to Options.AckChunkRows records of lane towards
// its target in one transaction, then answers the AckLanes it satisfied. On
// error the lane's waiting AckLanes get the error and its target falls back.
func (o *Outbox) laneAckStep(lane uint8) {
	w := &o.w
	la := &w.lanes
	lo, hi := max(w.acked, la.acked[lane]), la.target[lane]
	end, gone, first, err := o.deleteLane(lane, lo, hi)
	if err != nil {
		err = fmt.Errorf("outbox: ack %d of lane %d: %w", hi, lane, classify(err))
		o.log.Error("lane ack failed", "err", err)
		kept := la.waiters[:0]
		for _, a := range la.waiters {
			if a.lane == int(lane) {
				a.reply <- err
			} else {
				kept = append(kept, a)
			}
		}
		clear(la.waiters[len(kept):])
		la.waiters = kept
		la.target[lane] = la.acked[lane]
		return
	}
	la.acked[lane] = end
	w.first = first
	if first == 0 {
		w.sizes.reset(w.last + 1) // acksizes.go
	} else {
		w.sizes.invalidate() // records left from the middle of the range
	}
	// Everything below the lowest record held is gone, whatever its lane.
	if first == 0 {
		w.acked = max(w.acked, w.last)
	} else {
		w.acked = max(w.acked, first-1)
	}
	removed := o.removed(gone)
	var touched classSet
	touched.addDeltas(gone)
	o.mu.Lock()
	o.st.Records -= uint64(removed.records)
	o.st.PayloadBytes -= uint64(removed.payload)
	o.st.FirstSeq = first
	o.st.AckedSeq = w.acked
	o.publishLocked(&touched)
	o.mu.Unlock()
	if removed.records > 0 {
		o.wrote(removed.records*64 + removed.payload + 2*walPage)
		w.vacuumCheck = true
	}
	kept := la.waiters[:0]
	for _, a := range la.waiters {
		if a.upTo <= max(w.acked, la.acked[a.lane]) {
			a.reply <- nil
		} else {
			kept = append(kept, a)
		}
	}
	clear(la.waiters[len(kept):])
	la.waiters = kept
}

// deleteLane deletes the records of lane with lo < seq <= end, end being hi
// or less so that at most Options.AckChunkRows records go, and returns end,
// what it removed from each class and the lowest seq left (0 if none).
func (o *Outbox) deleteLane(lane uint8, lo, hi uint64) (end uint64, gone []classDelta, first uint64, err error) {
	ctx := context.Background()
	tx, err := o.wdb.BeginTx(ctx, nil)
	if err != nil {
		return 0, nil, 0, fmt.Errorf("begin: %w", err)
	}
	defer func() {
		if err != nil {
			o.rollback(tx)
		}
	}()
	from := ` NOT INDEXED WHERE seq > ? AND seq <= ? AND lane = ?`
	if o.laneIndex {
		from = ` INDEXED BY records_lane WHERE lane = ? AND seq > ? AND seq <= ?`
	}
	args := func(end uint64) []any {
		if o.laneIndex {
			return []any{int64(lane), int64(lo), int64(end)}
		}
		return []any{int64(lo), int64(end), int64(lane)}
	}
	end = hi
	var last int64
	err = tx.QueryRowContext(ctx, `SELECT seq FROM records`+from+` ORDER BY seq LIMIT 1 OFFSET ?`,
		append(args(hi), o.opts.AckChunkRows-1)...).Scan(&last)
	switch {
	case err == nil:
		end = uint64(last)
	case !errors.Is(err, sql.ErrNoRows):
		return 0, nil, 0, fmt.Errorf("chunk: %w", err)
	}
	err = nil
	if gone, err = o.countByClass(ctx, tx, from, args(end)...); err != nil {
		return 0, nil, 0, err
	}
	if _, err = tx.ExecContext(ctx, `DELETE FROM records WHERE rowid IN (SELECT seq FROM records`+from+`)`, args(end)...); err != nil {
		return 0, nil, 0, fmt.Errorf("delete: %w", err)
	}
	if first, err = minSeq(ctx, tx); err != nil {
		return 0, nil, 0, err
	}
	if err = tx.Commit(); err != nil {
		return 0, nil, 0, fmt.Errorf("commit: %w", err)
	}
	return end, gone, first, nil
}

// syncColumns are the columns ReadSync reads: what the sync link's records
// hold of a message. Every column read costs modernc's SQLite a column
// type, a value and a mutex round trip per row, a good part of a drain's
// read time, so the columns a CloudEvent does not carry (username, QoS,
// retain, user properties) are not read.
const syncColumns = `seq, client_id, topic, payload, content_type, event_type, priority, received`

// ReadSync is Read (lane < 0) or ReadLane(lane) for the sync link: the
// records hold Seq, Lane (when lane >= 0), ClientID, Topic, Payload,
// ContentType, EventType, Priority and Received; Username, QoS, Retain and
// UserProperties are left zero. maxBytes counts the payload and the strings
// read.
func (o *Outbox) ReadSync(lane int, after uint64, maxRecords, maxBytes int) ([]Record, error) {
	select {
	case <-o.closing:
		return nil, ErrClosed
	default:
	}
	if lane >= MaxLanes {
		return []Record{}, nil
	}
	if maxRecords <= 0 {
		maxRecords = DefaultReadRecords
	}
	a := int64(min(after, 1<<63-1))
	stmt, args := o.readSyncStmt, []any{a, maxRecords}
	if lane >= 0 {
		o.mu.Lock()
		last := o.laneLast[lane]
		o.mu.Unlock()
		if last <= after {
			return []Record{}, nil
		}
		stmt, args = o.readSyncLaneStmt, []any{int64(lane), a, maxRecords}
		if !o.laneIndex {
			args[0], args[1] = a, int64(lane)
		}
	}
	rows, err := stmt.QueryContext(context.Background(), args...)
	if err != nil {
		return nil, o.readErr(after, err)
	}
	defer rows.Close()
	var (
		out   []Record
		total int
		ints  [3]any // seq, priority, received
	)
	for rows.Next() {
		var r Record
		m := &r.Message
		if err := rows.Scan(&ints[0], &m.ClientID, &m.Topic, &m.Payload, &m.ContentType, &m.EventType, &ints[1], &ints[2]); err != nil {
			return nil, fmt.Errorf("outbox: read after %d: %w", after, err)
		}
		seq, ok0 := ints[0].(int64)
		pri, ok1 := ints[1].(int64)
		received, ok2 := ints[2].(int64)
		if !ok0 || !ok1 || !ok2 || seq <= 0 || pri < 0 || pri > 255 {
			return nil, fmt.Errorf("%w: after seq %d: seq %v, priority %v, received %T", ErrCorrupt, after, ints[0], ints[1], ints[2])
		}
		r.Seq = uint64(seq)
		if lane >= 0 {
			r.Lane = uint8(lane)
		}
		m.Priority = uint8(pri)
		m.Received = fromUnixNano(received)
		size := messageSize(m)
		if maxBytes > 0 && len(out) > 0 && total+size > maxBytes {
			break
		}
		total += size
		if out == nil {
			// Small first: a live link reads a record or two at a time,
			// and a full-size slice per read was a tenth of the gateway's
			// CPU (garbage) under commands and light traffic; a drain's
			// reads grow it by doubling.
			out = make([]Record, 0, min(maxRecords, 16))
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, o.readErr(after, err)
	}
	if out == nil {
		out = []Record{}
	}
	return out, nil
}

// prepareSync prepares ReadSync's statements on the readers' pool.
func (o *Outbox) prepareSync(ctx context.Context) error {
	var err error
	if o.readSyncStmt, err = o.rdb.PrepareContext(ctx, `SELECT `+syncColumns+` FROM records WHERE seq > ? ORDER BY seq LIMIT ?`); err != nil {
		return fmt.Errorf("outbox: prepare sync read: %w", err)
	}
	q := `SELECT ` + syncColumns + ` FROM records WHERE seq > ? AND lane = ? ORDER BY seq LIMIT ?`
	if o.laneIndex {
		q = `SELECT ` + syncColumns + ` FROM records INDEXED BY records_lane WHERE lane = ? AND seq > ? ORDER BY seq LIMIT ?`
	}
	if o.readSyncLaneStmt, err = o.rdb.PrepareContext(ctx, q); err != nil {
		return fmt.Errorf("outbox: prepare sync lane read: %w", err)
	}
	return nil
}
