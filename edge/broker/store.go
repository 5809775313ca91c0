package broker

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"
	_ "modernc.org/sqlite" // database/sql driver "sqlite"
)

// sessionStore keeps what outlives a connection in a SQLite file of its own:
// persistent clients, their subscriptions and in-flight messages, retained
// messages, and the delivery marker (deliveryMarks.floor) that bounds the
// replay of outbox records after a crash.
//
// # Why a file of its own, not tables in the outbox database
//
// SQLite has one writer per database file. Session state changes at message
// rate (a row per QoS 1 delivery to a persistent subscriber, and its delete
// on PUBACK); sharing the file would put those transactions in the queue for
// the outbox's write lock, between the group commits that every PUBACK
// waits for, and mix them into the outbox's checkpoint, vacuum and schema
// version (edge/outbox owns user_version and has a migration that treats an
// unknown version as foreign). A sibling file keeps the durable-ack path as
// fast as it is, and needs no change to edge/outbox.
//
// # Durability
//
// Writes are queued by the hook and group-committed by one goroutine with
// synchronous=NORMAL: a process crash loses nothing committed; a power cut
// may lose the last commits, but the file stays consistent. The marker is
// committed in the same transactions as the rows it covers, after them (see
// run), so after any crash the stored marker never claims a delivery whose
// in-flight row was lost: records past it are replayed from the outbox,
// which commits with synchronous=FULL. A subscription or a local-only
// message queued for a persistent session in the last moments before a
// crash may be lost; forwarded messages are not.
type sessionStore struct {
	db    *sql.DB
	log   *slog.Logger
	ops   chan storeOp
	marks *deliveryMarks // nil: no marker kept
	done  chan struct{}

	// discard is a test seam standing for a writer that never gets to
	// commit (a crash before the commit): changes are taken from the queue
	// and dropped, and the marker is not moved.
	discard atomic.Bool

	mu       sync.RWMutex // enqueue holds it shared, close exclusively
	closed   bool         // guarded by mu
	started  bool         // start was called; set before any concurrent use
	saved    uint64       // the marker last committed; owned by run
	failures atomic.Uint64
}

// storeOp is one queued change.
type storeOp struct {
	kind   storeOpKind
	key    string // client id or retained topic
	filter string // subscription filter
	id     uint16 // in-flight packet id
	data   []byte // JSON of the mochi storage type
}

type storeOpKind uint8

const (
	putClient   storeOpKind = iota + 1
	delClient               // and its subscriptions and in-flight messages
	putSub                  // key client, filter
	delSub                  // key client, filter
	putRetained             // key topic
	delRetained             // key topic
	putInflight             // key client, id
	delInflight             // key client, id
)

const (
	storeSchemaVersion = 1
	storeSchemaV1      = `
CREATE TABLE clients (id TEXT PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE subscriptions (client TEXT NOT NULL, filter TEXT NOT NULL, data BLOB NOT NULL,
	PRIMARY KEY (client, filter)) WITHOUT ROWID;
CREATE TABLE retained (topic TEXT PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE inflight (client TEXT NOT NULL, packet_id INTEGER NOT NULL, data BLOB NOT NULL,
	PRIMARY KEY (client, packet_id)) WITHOUT ROWID;
CREATE TABLE marks (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
PRAGMA user_version = 1;
`
	markDelivered = "delivered_seq"

	// storeQueue bounds the queued changes; a full queue makes the hook
	// (a mochi client goroutine) wait for the writer.
	storeQueue = 1 << 15
	// storeBatch caps the changes of one transaction.
	storeBatch = 2000
	// markInterval is how often a moved marker is committed when no other
	// change is: the replay after a crash may repeat up to this much of the
	// delivered traffic (QoS 1 allows duplicates).
	markInterval = 200 * time.Millisecond
)

// errStoreSchema marks a session database this build cannot use.
var errStoreSchema = errors.New("broker: sessions database has an unknown schema version")

// openSessionStore opens (creating if needed) the session database at path.
func openSessionStore(path string, log *slog.Logger) (*sessionStore, error) {
	if path == "" || strings.Contains(path, "?") || strings.HasPrefix(path, "file:") {
		return nil, fmt.Errorf("broker: sessions file %q: want a plain file name without '?'", path)
	}
	q := url.Values{}
	q.Set("_txlock", "immediate")
	q.Set("_journal_mode", "WAL")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Add("_pragma", "busy_timeout(5000)")
	db, err := sql.Open("sqlite", path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("broker: open sessions %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	db.SetConnMaxIdleTime(0)
	db.SetConnMaxLifetime(0)
	if err := migrateStore(db); err != nil {
		db.Close()
		return nil, fmt.Errorf("broker: sessions %s: %w", path, err)
	}
	return &sessionStore{db: db, log: log, ops: make(chan storeOp, storeQueue), done: make(chan struct{})}, nil
}

func migrateStore(db *sql.DB) error {
	ctx := context.Background()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit
	var v int
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return err
	}
	switch v {
	case storeSchemaVersion:
		return nil
	case 0:
		if _, err := tx.ExecContext(ctx, storeSchemaV1); err != nil {
			return fmt.Errorf("create schema: %w", err)
		}
		return tx.Commit()
	}
	return fmt.Errorf("%w: %d (this build knows %d)", errStoreSchema, v, storeSchemaVersion)
}

// marker returns the stored delivery marker and whether one was stored.
func (s *sessionStore) marker() (uint64, bool, error) {
	var v int64
	err := s.db.QueryRow(`SELECT value FROM marks WHERE name = ?`, markDelivered).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("broker: read delivery marker: %w", err)
	}
	return uint64(v), true, nil
}

// start begins writing; marks, if not nil, is the marker to keep, starting
// from saved (what the file holds, or nothing).
func (s *sessionStore) start(marks *deliveryMarks, saved uint64) {
	s.marks, s.saved, s.started = marks, saved, true
	go s.run()
}

// enqueue queues a change; it waits while the queue is full. A change
// arriving after close (mochi's event loop may still be finishing a sweep
// when the broker closes) is dropped.
func (s *sessionStore) enqueue(op storeOp) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		s.log.Debug("sessions: change after close dropped", "key", op.key)
		return
	}
	s.ops <- op
}

// close commits what is queued (and the marker) and closes the file.
func (s *sessionStore) close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errors.New("broker: sessions closed twice")
	}
	s.closed = true
	close(s.ops) // enqueue no longer sends; the writer drains what is queued
	s.mu.Unlock()
	if s.started {
		<-s.done
	}
	return s.db.Close()
}

// run is the writer goroutine. Each transaction holds the changes queued
// when it began and, if it took every queued change, the marker as read
// before taking them: a delivery counted in that marker queued its rows
// before the marker moved past it, so those rows are in this transaction or
// an earlier one.
func (s *sessionStore) run() {
	defer close(s.done)
	var tick <-chan time.Time
	if s.marks != nil {
		t := time.NewTicker(markInterval)
		defer t.Stop()
		tick = t.C
	}
	batch := make([]storeOp, 0, storeBatch)
	for {
		open := true
		select {
		case op, ok := <-s.ops:
			if ok {
				batch = append(batch, op)
			} else {
				open = false
			}
		case <-tick:
		}
		mark := s.saved
		if s.marks != nil {
			mark = s.marks.floor()
		}
		drained := true
	collect:
		for open && len(batch) < storeBatch {
			select {
			case op, ok := <-s.ops:
				if !ok {
					open = false
					break collect
				}
				batch = append(batch, op)
			default:
				break collect
			}
		}
		if len(batch) == storeBatch && len(s.ops) > 0 {
			drained = false
		}
		if !drained || mark <= s.saved {
			mark = 0
		}
		if s.discard.Load() {
			batch, mark = batch[:0], 0
		}
		if len(batch) > 0 || mark > 0 {
			if err := s.commit(batch, mark); err != nil {
				s.failures.Add(1)
				s.log.Error("sessions: commit failed; these changes are lost", "changes", len(batch), "error", err)
			} else if mark > 0 {
				s.saved = mark
			}
		}
		clear(batch)
		batch = batch[:0]
		if !open {
			if s.marks != nil && !s.discard.Load() {
				// Everything delivered has its rows committed now.
				if m := s.marks.floor(); m > s.saved {
					if err := s.commit(nil, m); err != nil {
						s.log.Error("sessions: final marker not committed", "error", err)
					} else {
						s.saved = m
					}
				}
			}
			return
		}
	}
}

func (s *sessionStore) commit(batch []storeOp, mark uint64) error {
	ctx := context.Background()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit
	for _, op := range batch {
		var err error
		switch op.kind {
		case putClient:
			_, err = tx.ExecContext(ctx, `INSERT OR REPLACE INTO clients (id, data) VALUES (?, ?)`, op.key, op.data)
		case delClient:
			if _, err = tx.ExecContext(ctx, `DELETE FROM clients WHERE id = ?`, op.key); err == nil {
				if _, err = tx.ExecContext(ctx, `DELETE FROM subscriptions WHERE client = ?`, op.key); err == nil {
					_, err = tx.ExecContext(ctx, `DELETE FROM inflight WHERE client = ?`, op.key)
				}
			}
		case putSub:
			_, err = tx.ExecContext(ctx, `INSERT OR REPLACE INTO subscriptions (client, filter, data) VALUES (?, ?, ?)`, op.key, op.filter, op.data)
		case delSub:
			_, err = tx.ExecContext(ctx, `DELETE FROM subscriptions WHERE client = ? AND filter = ?`, op.key, op.filter)
		case putRetained:
			_, err = tx.ExecContext(ctx, `INSERT OR REPLACE INTO retained (topic, data) VALUES (?, ?)`, op.key, op.data)
		case delRetained:
			_, err = tx.ExecContext(ctx, `DELETE FROM retained WHERE topic = ?`, op.key)
		case putInflight:
			_, err = tx.ExecContext(ctx, `INSERT OR REPLACE INTO inflight (client, packet_id, data) VALUES (?, ?, ?)`, op.key, op.id, op.data)
		case delInflight:
			_, err = tx.ExecContext(ctx, `DELETE FROM inflight WHERE client = ? AND packet_id = ?`, op.key, op.id)
		default:
			err = fmt.Errorf("unknown change kind %d", op.kind)
		}
		if err != nil {
			return err
		}
	}
	if mark > 0 {
		if _, err := tx.ExecContext(ctx, `INSERT OR REPLACE INTO marks (name, value) VALUES (?, ?)`, markDelivered, int64(mark)); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// setMarker stores the marker at once (a new file: nothing to replay).
func (s *sessionStore) setMarker(v uint64) error {
	_, err := s.db.Exec(`INSERT OR REPLACE INTO marks (name, value) VALUES (?, ?)`, markDelivered, int64(v))
	return err
}

// loadRows decodes every row of a table's data column with decode,
// skipping (and logging) rows it refuses: mochi restores what a store hands
// it without checking, so a damaged file must not reach it.
func loadRows[T any](s *sessionStore, table string, decode func([]byte) (T, error)) ([]T, error) {
	rows, err := s.db.Query(`SELECT data FROM ` + table)
	if err != nil {
		return nil, fmt.Errorf("broker: load %s: %w", table, err)
	}
	defer rows.Close()
	out := []T{}
	for rows.Next() {
		var data []byte
		if err := rows.Scan(&data); err != nil {
			return nil, fmt.Errorf("broker: load %s: %w", table, err)
		}
		v, err := decode(data)
		if err != nil {
			s.failures.Add(1)
			s.log.Warn("sessions: skipping a stored row", "table", table, "error", err)
			continue
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("broker: load %s: %w", table, err)
	}
	return out, nil
}

// errBadRow wraps every refusal of a stored row.
var errBadRow = errors.New("bad stored row")

func decodeClient(data []byte) (storage.Client, error) {
	var c storage.Client
	if err := json.Unmarshal(data, &c); err != nil {
		return c, fmt.Errorf("%w: client: %w", errBadRow, err)
	}
	if c.ID == "" || c.ProtocolVersion < 3 || c.ProtocolVersion > 5 {
		return c, fmt.Errorf("%w: client %q, protocol version %d", errBadRow, c.ID, c.ProtocolVersion)
	}
	return c, nil
}

func decodeSubscription(data []byte) (storage.Subscription, error) {
	var sub storage.Subscription
	if err := json.Unmarshal(data, &sub); err != nil {
		return sub, fmt.Errorf("%w: subscription: %w", errBadRow, err)
	}
	if sub.Client == "" || sub.Qos > 2 {
		return sub, fmt.Errorf("%w: subscription of %q with QoS %d", errBadRow, sub.Client, sub.Qos)
	}
	if err := ValidateFilter(sub.Filter); err != nil {
		return sub, fmt.Errorf("%w: subscription of %q: %w", errBadRow, sub.Client, err)
	}
	return sub, nil
}

// decodeMessage decodes a retained (client "") or in-flight message.
func decodeMessage(data []byte) (storage.Message, error) {
	var m storage.Message
	if err := json.Unmarshal(data, &m); err != nil {
		return m, fmt.Errorf("%w: message: %w", errBadRow, err)
	}
	t := m.FixedHeader.Type
	switch {
	case t != packets.Publish && t != packets.Pubrel:
		return m, fmt.Errorf("%w: message of packet type %d", errBadRow, t)
	case m.FixedHeader.Qos > 2:
		return m, fmt.Errorf("%w: message with QoS %d", errBadRow, m.FixedHeader.Qos)
	case t == packets.Publish && (m.TopicName == "" || strings.ContainsAny(m.TopicName, "+#")):
		return m, fmt.Errorf("%w: message to topic %q", errBadRow, m.TopicName)
	}
	return m, nil
}
