package outbox

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
)

// insertSizes are the row counts of the INSERT statements a group commit
// uses, largest first; a group is cut greedily into statements of these
// sizes. Why not one statement per row: every Exec costs database/sql and
// modernc a fixed overhead (argument conversion, locks, a VDBE program
// start) that is larger than the row's own work. Measured with WAL and
// synchronous=off so that only CPU counts, 200-byte payloads: ≈ 6.2 µs of
// CPU a row one per statement, ≈ 4.1 µs with 16 rows a statement, ≈ 3.9 µs
// with 64. 32 stays far below SQLite's 32,766 bound variables whatever the
// column count.
var insertSizes = [...]int{32, 8, 1}

// prepareInserts prepares the multi-row INSERT statements on the writer's
// connection the first time a group is committed; they are closed with it
// (closeHandles). It must run outside a transaction: the writer's pool has
// one connection, which a transaction holds.
func (o *Outbox) prepareInserts(ctx context.Context) error {
	for k, n := range insertSizes {
		switch {
		case o.w.inserts[k] != nil:
		case n == 1:
			o.w.inserts[k] = o.insert
		default:
			tuple := insertSQL[strings.LastIndexByte(insertSQL, '('):]
			st, err := o.wdb.PrepareContext(ctx, insertSQL+strings.Repeat(", "+tuple, n-1))
			if err != nil {
				return fmt.Errorf("prepare %d-row insert: %w", n, err)
			}
			o.w.inserts[k] = st
		}
	}
	return nil
}

// insertRows inserts, in batch order, every message of batch that was not
// refused, and returns the seqs by batch index (0 for a refused message) and
// the highest seq inserted (o.w.last if none). It counts the rows and the
// first inserted seq into g. It runs on the writer goroutine inside tx,
// after prepareInserts.
func (o *Outbox) insertRows(ctx context.Context, tx *sql.Tx, batch []*pending, g *groupResult) ([]uint64, uint64, error) {
	w := &o.w
	seqs := w.seqs[:0]
	rows := w.rows[:0] // batch indexes to insert
	for i, p := range batch {
		seqs = append(seqs, 0)
		if p.refused == nil {
			rows = append(rows, i)
		}
	}
	w.rows = rows
	prev := w.last
	var txStmts [len(insertSizes)]*sql.Stmt
	for len(rows) > 0 {
		k := 0
		for insertSizes[k] > len(rows) {
			k++
		}
		n := insertSizes[k]
		if txStmts[k] == nil {
			txStmts[k] = tx.StmtContext(ctx, o.w.inserts[k])
		}
		args := w.args[:0]
		for _, i := range rows[:n] {
			args = appendInsertArgs(args, batch[i])
		}
		res, err := txStmts[k].ExecContext(ctx, args...)
		clear(args) // drop references to payloads
		w.args = args[:0]
		if err != nil {
			return seqs, prev, fmt.Errorf("insert: %w", err)
		}
		id, err := res.LastInsertId()
		if err != nil {
			return seqs, prev, fmt.Errorf("insert: %w", err)
		}
		// One statement's rows take consecutive seqs ending at id.
		// AUTOINCREMENT and a single writer make a seq at or below the
		// last one impossible; check anyway, since the cloud's dedup
		// depends on it.
		first := uint64(id) - uint64(n) + 1
		if id < int64(n) || first <= prev {
			return seqs, prev, fmt.Errorf("insert: seqs %d..%d do not follow %d", int64(first), id, prev)
		}
		for j, i := range rows[:n] {
			seqs[i] = first + uint64(j)
		}
		if g.rows == 0 {
			g.firstInserted = first
		}
		g.rows += n
		prev = uint64(id)
		rows = rows[n:]
	}
	return seqs, prev, nil
}

// appendInsertArgs appends p's values in insertSQL's column order.
func appendInsertArgs(args []any, p *pending) []any {
	m := &p.m
	payload := m.Payload
	if payload == nil {
		payload = []byte{}
	}
	var props any
	if len(p.props) > 0 {
		props = p.props
	}
	return append(args, m.ClientID, m.Username, m.Topic, payload, int64(m.QoS),
		m.Retain, m.ContentType, m.EventType, int64(m.Priority), unixNano(m.Received), props, int64(p.lane))
}
