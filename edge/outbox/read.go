package outbox

import (
	"context"
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
	rows, err := o.rdb.QueryContext(context.Background(),
		`SELECT `+recordColumns+` FROM records WHERE seq > ? ORDER BY seq LIMIT ?`,
		int64(min(after, 1<<63-1)), maxRecords)
	if err != nil {
		return nil, o.readErr(after, err)
	}
	defer rows.Close()
	var (
		out   []Record
		total int
	)
	for rows.Next() {
		var (
			r                     Record
			seq, qos, retain, pri int64
			received              int64
			props                 []byte
		)
		m := &r.Message
		if err := rows.Scan(&seq, &m.ClientID, &m.Username, &m.Topic, &m.Payload, &qos, &retain,
			&m.ContentType, &m.EventType, &pri, &received, &props); err != nil {
			return nil, fmt.Errorf("outbox: read after %d: %w", after, err)
		}
		if seq <= 0 || qos < 0 || qos > 2 || retain < 0 || retain > 1 || pri < 0 || pri > 255 {
			return nil, fmt.Errorf("%w: seq %d: qos %d, retain %d, priority %d", ErrCorrupt, seq, qos, retain, pri)
		}
		r.Seq = uint64(seq)
		m.QoS = byte(qos)
		m.Retain = retain == 1
		m.Priority = uint8(pri)
		m.Received = fromUnixNano(received)
		if m.UserProperties, err = decodeUserProperties(props); err != nil {
			return nil, fmt.Errorf("seq %d: %w", seq, err)
		}
		size := messageSize(m)
		if maxBytes > 0 && len(out) > 0 && total+size > maxBytes {
			break
		}
		total += size
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
