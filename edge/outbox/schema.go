package outbox

import (
	"context"
	"database/sql"
	"fmt"
)

// schemaVersion is stored in PRAGMA user_version. Version 0 is a new, empty
// database. Bump it with a step in migrations when the schema changes.
const schemaVersion = 2

// The records table. seq uses AUTOINCREMENT so SQLite keeps the high-water
// mark in sqlite_sequence: a plain INTEGER PRIMARY KEY would restart at 1
// once the table is emptied, and the cloud deduplicates by (gateway, seq).
// received is Unix nanoseconds, 0 for an unknown time.
const schemaV1 = `
CREATE TABLE records (
	seq             INTEGER PRIMARY KEY AUTOINCREMENT,
	client_id       TEXT    NOT NULL,
	username        TEXT    NOT NULL,
	topic           TEXT    NOT NULL,
	payload         BLOB    NOT NULL,
	qos             INTEGER NOT NULL,
	retain          INTEGER NOT NULL,
	content_type    TEXT    NOT NULL,
	event_type      TEXT    NOT NULL,
	priority        INTEGER NOT NULL,
	received        INTEGER NOT NULL,
	user_properties BLOB
);
PRAGMA user_version = 1;
`

// schemaV2 adds the priority lane each record was committed to. Records of
// a version 1 database were all sent on the single stream that is now lane
// 0, and the cloud's high-water mark for them is lane 0's: the default
// keeps them there. ADD COLUMN with a constant default does not rewrite the
// table.
const schemaV2 = `
ALTER TABLE records ADD COLUMN lane INTEGER NOT NULL DEFAULT 0;
PRAGMA user_version = 2;
`

// migrations[v] takes a database from version v-1 to v.
var migrations = []string{1: schemaV1, 2: schemaV2}

// records_class finds a class's oldest records: its entries are (priority,
// seq), seq being the rowid. The DropOldest and TTL policies read it; it is
// not part of the schema version but kept only while the options use such a
// policy, because maintaining it was measured adding about a quarter to the
// writer's CPU time per append. It is built at Open when a policy needs it
// (one pass over the table) and dropped at Open when none does.
const (
	createClassIndex = `CREATE INDEX IF NOT EXISTS records_class ON records(priority)`
	dropClassIndex   = `DROP INDEX IF EXISTS records_class`
)

const recordColumns = `seq, client_id, username, topic, payload, qos, retain,
	content_type, event_type, priority, received, user_properties, lane`

const readSQL = `SELECT ` + recordColumns + ` FROM records WHERE seq > ? ORDER BY seq LIMIT ?`

const insertSQL = `INSERT INTO records (client_id, username, topic, payload, qos,
	retain, content_type, event_type, priority, received, user_properties, lane)
	VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`

// migrate brings the database to schemaVersion inside one immediate
// transaction, so two processes racing to create it cannot both succeed.
// A database from a newer build is refused with ErrSchemaVersion.
func migrate(ctx context.Context, db *sql.DB) error {
	tx, err := db.BeginTx(ctx, nil) // BEGIN IMMEDIATE via _txlock
	if err != nil {
		return fmt.Errorf("outbox: begin schema transaction: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit
	var v int
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return fmt.Errorf("outbox: read schema version: %w", err)
	}
	switch {
	case v == schemaVersion:
		return nil
	case v > schemaVersion:
		return fmt.Errorf("%w: database has version %d, this build knows up to %d", ErrSchemaVersion, v, schemaVersion)
	case v < 0:
		return fmt.Errorf("%w: database has version %d", ErrSchemaVersion, v)
	}
	// v == 0 is a new database (or a foreign one, whose conflicting tables
	// make CREATE TABLE fail).
	for ; v < schemaVersion; v++ {
		if _, err := tx.ExecContext(ctx, migrations[v+1]); err != nil {
			return fmt.Errorf("outbox: migrate schema to version %d: %w", v+1, classify(err))
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("outbox: commit schema: %w", classify(err))
	}
	return nil
}
