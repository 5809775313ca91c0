package outbox

import (
	"errors"
	"fmt"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

var (
	// ErrClosed is returned (or passed to an Append callback) once Close has
	// begun. Messages queued before Close are still committed.
	ErrClosed = errors.New("outbox: closed")

	// ErrDiskFull wraps a commit that failed with SQLITE_FULL: the file
	// system (or max_page_count) has no room. Nothing of the failed group was
	// committed; the outbox keeps working once space returns.
	ErrDiskFull = errors.New("outbox: disk full")

	// ErrQuotaExceeded is passed to the callback of a message that was not
	// stored because it did not fit in Options.QuotaBytes and its class's
	// overflow policy could not make room (see Overflow). Nothing of the
	// message was stored; the broker answers MQTT 5 reason code 0x97 (Quota
	// exceeded). Every refusal is counted in Stats.Rejected and its class.
	ErrQuotaExceeded = errors.New("outbox: quota exceeded")

	// ErrSchemaVersion means the database was written by a newer Tributary
	// with a schema this build does not know. The file is left untouched.
	ErrSchemaVersion = errors.New("outbox: unknown schema version")

	// ErrAckAhead means an Ack named a sequence number that was never
	// committed. The cloud cannot hold a record the edge never wrote, so this
	// is a protocol violation; nothing is deleted.
	ErrAckAhead = errors.New("outbox: ack beyond the last committed sequence")

	// ErrLocked means another process (or another Outbox in this process)
	// holds the outbox open. Two writers would interleave sequence numbers.
	ErrLocked = errors.New("outbox: database in use by another outbox")

	// ErrCorrupt means a stored record could not be decoded.
	ErrCorrupt = errors.New("outbox: corrupt record")
)

// classify wraps SQLite errors that callers must tell apart with a sentinel.
// The original error stays in the chain for logs.
func classify(err error) error {
	if err == nil {
		return nil
	}
	var se *sqlite.Error
	if errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_FULL {
		return fmt.Errorf("%w: %w", ErrDiskFull, err)
	}
	return err
}
