package outbox

import (
	"context"
	"database/sql"
	"fmt"
)

// DefaultReadRecords is the record limit Read applies when maxRecords <= 0.
const DefaultReadRecords = 1000

// Read returns committed records with seq > after in ascending seq order: at
// most maxRecords (DefaultReadRecords if <= 0) and, beyond the first record,
// no more than maxBytes in total as counted by payload and string lengths
// (no byte limit if maxBytes <= 0). It returns at least one record whenever
// one exists, however large, and an empty slice when none does. The records
// and their slices belong to the caller.
//
// A stored record that cannot be decoded fails the Read with ErrCorrupt.
func (o *Outbox) Read(after uint64, maxRecords, maxBytes int) ([]Record, error) {
	select {
	case <-o.closing:
		return nil, ErrClosed
	default:
	}
	if maxRecords <= 0 {
		maxRecords = DefaultReadRecords
	}
	rows, err := o.readStmt.QueryContext(context.Background(), int64(min(after, 1<<63-1)), maxRecords)
	if err != nil {
		return nil, o.readErr(after, err)
	}
	return o.scanRecords(rows, after, maxRecords, maxBytes)
}

// scanRecords reads the rows of a query of recordColumns, as Read
// describes, and closes them.
func (o *Outbox) scanRecords(rows *sql.Rows, after uint64, maxRecords, maxBytes int) ([]Record, error) {
	defer rows.Close()
	var (
		out   []Record
		total int
		// The integer columns are scanned into *any: database/sql assigns
		// the driver's int64 there directly, where an *int64 destination
		// goes through reflection.
		ints  [6]any // seq, qos, retain, priority, received, lane
		props []byte
	)
	for rows.Next() {
		var r Record
		m := &r.Message
		props = props[:0]
		if err := rows.Scan(&ints[0], &m.ClientID, &m.Username, &m.Topic, &m.Payload, &ints[1], &ints[2],
			&m.ContentType, &m.EventType, &ints[3], &ints[4], (*sql.RawBytes)(&props), &ints[5]); err != nil {
			return nil, fmt.Errorf("outbox: read after %d: %w", after, err)
		}
		seq, ok0 := ints[0].(int64)
		qos, ok1 := ints[1].(int64)
		retain, ok2 := ints[2].(int64)
		pri, ok3 := ints[3].(int64)
		received, ok4 := ints[4].(int64)
		lane, ok5 := ints[5].(int64)
		if !ok0 || !ok1 || !ok2 || !ok3 || !ok4 || !ok5 {
			return nil, fmt.Errorf("%w: after seq %d: integer columns hold %T, %T, %T, %T, %T, %T",
				ErrCorrupt, after, ints[0], ints[1], ints[2], ints[3], ints[4], ints[5])
		}
		if seq <= 0 || qos < 0 || qos > 2 || retain < 0 || retain > 1 || pri < 0 || pri > 255 || lane < 0 || lane >= MaxLanes {
			return nil, fmt.Errorf("%w: seq %d: qos %d, retain %d, priority %d, lane %d", ErrCorrupt, seq, qos, retain, pri, lane)
		}
		r.Seq = uint64(seq)
		r.Lane = uint8(lane)
		m.QoS = byte(qos)
		m.Retain = retain == 1
		m.Priority = uint8(pri)
		m.Received = fromUnixNano(received)
		var err error
		if m.UserProperties, err = decodeUserProperties(props); err != nil {
			return nil, fmt.Errorf("seq %d: %w", seq, err)
		}
		size := messageSize(m)
		if maxBytes > 0 && len(out) > 0 && total+size > maxBytes {
			break
		}
		total += size
		if out == nil {
			out = make([]Record, 0, min(maxRecords, DefaultReadRecords))
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

// readErr reports a failed query as ErrClosed when Close closed the pool
// under it.
func (o *Outbox) readErr(after uint64, err error) error {
	select {
	case <-o.closing:
		return fmt.Errorf("%w (read after %d: %w)", ErrClosed, after, err)
	default:
		return fmt.Errorf("outbox: read after %d: %w", after, err)
	}
}

// Wait returns nil once a record with seq > after has been committed (at
// once if one already was), ctx's error when ctx ends first, or ErrClosed
// when the outbox closes first. A nil return does not mean the record is
// still held: an Ack may have deleted it since.
func (o *Outbox) Wait(ctx context.Context, after uint64) error {
	for {
		o.mu.Lock()
		last, ch := o.st.LastSeq, o.commitc
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
