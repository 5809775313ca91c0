package outbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"time"
)

// Free-space reserve (Options.MinFreeBytes).
//
// A quota in bytes says how much the outbox may hold; it does not know how
// much the disk can take. Without a reserve, a disk that fills before the
// quota makes SQLite fail the group's commit with SQLITE_FULL (ErrDiskFull),
// whatever the class's overflow policy: a DropOldest class then refuses new
// messages instead of dropping its oldest ones, and a disk filled to the
// last byte may not even have room for the WAL frames a DELETE needs.
//
// The reserve turns free space into a second quota, enforced by the same
// planner as Options.QuotaBytes (policy.go) inside each group's transaction.
// The writer measures
//
//	avail = free space on the database's file system (statfs, the blocks
//	        available to unprivileged users) + free pages inside the
//	        database (PRAGMA freelist_count × page_size)
//
// and lets the outbox grow, in Message.StoredSize bytes, by at most
// avail - MinFreeBytes from what it held at the measurement. Free pages
// count as available because SQLite reuses them for later inserts without a
// VACUUM: a dropped record's pages go to the free list in the same
// transaction and the next inserts take them, so a DropOldest class keeps
// accepting on a full disk by recycling its oldest records' pages, and the
// file does not grow. (The idle writer's incremental_vacuum moves free pages
// back to the file system, which leaves avail unchanged.) When avail is
// below the reserve the limit is below what the outbox holds, so DropOldest
// classes drop until it is back, and RejectNew classes refuse: the outbox
// behaves as if its quota were reached. A refused message gets an error
// wrapping ErrDiskFull (the broker answers MQTT 5 reason 0x97, as for a real
// ENOSPC); refusals and drops are counted per class (Stats.RejectedDiskFull,
// Stats.DroppedDiskFull, DropReasonDiskFull). When both limits apply, the
// lower one decides a group, and its reason is the one counted.
//
// Measuring costs a statfs and a PRAGMA, so the result is cached and
// refreshed, at the start of a group's transaction, when any of these holds:
// nothing was measured yet; the last commit failed with ErrDiskFull; 64
// groups committed since; diskCheckInterval passed (by Options.Now); or the
// bytes inserted since reached half the room the last measurement left (so
// far from full it is rarely refreshed, and near full at every group, when
// the estimate matters and a commit's fsync dwarfs a statfs). Between
// refreshes the estimate counts StoredSize, which undercounts SQLite's page
// and index overhead; the half-room rule and the reserve absorb that, and
// the next refresh corrects it.
//
// The reserve must hold what SQLite writes beyond the records: the WAL grows
// by up to Options.CheckpointBytes (and more while a reader holds a
// checkpoint back) before it is reset, and a group's transaction needs its
// frames before its drops free anything. An ENOSPC that happens anyway (the
// reserve is too small, or another program filled the disk between two
// measurements) keeps the plain behaviour: the group fails with
// ErrDiskFull, SQLite rolls it back, nothing is dropped, and the next group
// measures again.
//
// Rejected designs: a statfs per group (cheap, but a syscall on every commit
// of a disk that is nowhere near full); free space alone without the free
// list (dropped records' pages stay in the file, so the outbox would see no
// room appear and drop again at every refresh); running VACUUM to return
// space (it rewrites the whole database, needing as much free space again).

// Defaults of the free-space reserve.
const (
	// DefaultMinFreeBytes caps the default reserve; the default is this or
	// DefaultMinFreePercent of the file system, whichever is smaller.
	DefaultMinFreeBytes = 64 << 20
	// DefaultMinFreePercent is the default reserve as a share of the file
	// system's size, for small file systems.
	DefaultMinFreePercent = 5
)

const (
	diskCheckCommits  = 64          // refresh after this many committed groups
	diskCheckInterval = time.Second // refresh after this long (Options.Now)
)

// DropReasonDiskFull is the Stats.DroppedDiskFull reason, for metric labels.
const DropReasonDiskFull = "disk_full"

// errStatfsUnsupported is what statfs returns where the reserve cannot be
// measured.
var errStatfsUnsupported = errors.New("free space cannot be measured on this platform")

// diskGuard is the writer's free-space state; only the writer touches it.
type diskGuard struct {
	off      bool   // statfs is unsupported here: the reserve is not enforced
	dir      string // the database's directory; "" until the first measurement
	reserve  int64  // resolved MinFreeBytes, once resolved
	resolved bool   // reserve is set (at the first measurement)
	pageSize int64

	measured bool      // limit is valid
	stale    bool      // a commit failed with ErrDiskFull: measure again
	failing  bool      // the last measurement failed: measure again
	at       time.Time // when measured, by Options.Now
	commits  int       // groups committed since
	inserted int64     // StoredSize inserted since
	room     int64     // avail - reserve at the measurement
	limit    int64     // what the outbox may hold: bytes held then + room

	counts [256]diskCounters
}

// diskCounters are one class's refusals and drops for the reserve.
type diskCounters struct {
	rejected, dropped uint64
}

// statfsFunc reports the bytes available to unprivileged users and the size
// of the file system holding dir.
type statfsFunc func(dir string) (avail, size int64, err error)

// diskOn reports whether the reserve may limit a group. Open uses it to
// decide whether DropOldest needs the class index.
func (o Options) diskOn() bool { return o.MinFreeBytes >= 0 }

func (o *Outbox) statfs(dir string) (int64, int64, error) {
	if h := o.opts.hooks; h != nil && h.statfs != nil {
		return h.statfs(dir)
	}
	return statfs(dir)
}

// groupLimit returns the limit the quota planner enforces for the group
// whose transaction tx is, and whether it is the reserve's; limit < 0
// means none (no quota, no reserve).
func (o *Outbox) groupLimit(ctx context.Context, tx *sql.Tx) (limit int64, disk bool, err error) {
	limit = -1
	if o.opts.QuotaBytes > 0 {
		limit = o.opts.QuotaBytes
	}
	d := &o.w.disk
	if !o.opts.diskOn() || d.off {
		return limit, false, nil
	}
	if o.diskDue() {
		err := o.measureDisk(ctx, tx)
		switch {
		case errors.Is(err, errStatfsUnsupported):
			o.log.Warn("free-space reserve off", "err", err)
			d.off = true
			return limit, false, nil
		case err != nil:
			// Fail open: refusing every publish because free space cannot
			// be measured would be worse than a reserve not enforced; a
			// real ENOSPC is still refused cleanly. Measured again next
			// group; the last measurement, if any, still applies.
			if !d.failing {
				o.log.Error("free-space reserve: cannot measure free space; not enforced until it can", "err", err)
			}
			d.failing = true
		case d.failing:
			o.log.Info("free-space reserve: measuring again")
			d.failing = false
		}
	}
	if !d.measured {
		return limit, false, nil
	}
	if limit < 0 || d.limit < limit {
		return max(d.limit, 0), true, nil
	}
	return limit, false, nil
}

// diskDue reports whether the cached measurement must be refreshed.
func (o *Outbox) diskDue() bool {
	d := &o.w.disk
	return !d.measured || d.stale || d.failing || d.commits >= diskCheckCommits ||
		d.inserted >= d.room/2 || o.opts.Now().Sub(d.at) >= diskCheckInterval ||
		o.opts.Now().Before(d.at) // the clock stepped back
}

// measureDisk measures avail (see the top of this file) inside tx and sets
// the limit from it.
func (o *Outbox) measureDisk(ctx context.Context, tx *sql.Tx) error {
	d := &o.w.disk
	if d.dir == "" {
		d.dir = filepath.Dir(o.path)
	}
	fsAvail, fsSize, err := o.statfs(d.dir)
	if err != nil {
		return err
	}
	if d.pageSize == 0 {
		if err := tx.QueryRowContext(ctx, "PRAGMA page_size").Scan(&d.pageSize); err != nil {
			return fmt.Errorf("page_size: %w", err)
		}
	}
	var free int64
	if err := tx.QueryRowContext(ctx, "PRAGMA freelist_count").Scan(&free); err != nil {
		return fmt.Errorf("freelist_count: %w", err)
	}
	if !d.resolved {
		d.resolved = true
		d.reserve = o.opts.MinFreeBytes
		if d.reserve == 0 {
			d.reserve = min(DefaultMinFreeBytes, fsSize/100*DefaultMinFreePercent)
		}
		o.log.Info("free-space reserve", "dir", d.dir, "min_free_bytes", d.reserve, "fs_bytes", fsSize, "fs_avail", fsAvail)
	}
	avail := fsAvail + free*d.pageSize
	wasShort := d.measured && d.room < 0
	d.measured, d.stale = true, false
	d.at = o.opts.Now()
	d.commits, d.inserted = 0, 0
	d.room = avail - d.reserve
	d.limit = o.w.bytes + d.room
	if d.room < 0 && !wasShort {
		o.log.Warn("free space below the reserve: drop-oldest classes drop, reject-new classes refuse",
			"dir", d.dir, "avail", avail, "min_free_bytes", d.reserve, "held_bytes", o.w.bytes)
	} else if d.room >= 0 && wasShort {
		o.log.Info("free space back above the reserve", "dir", d.dir, "avail", avail, "min_free_bytes", d.reserve)
	}
	return nil
}

// diskCommitted records a group's outcome: inserted is the StoredSize it
// added; err is the commit's error, nil if it committed.
func (o *Outbox) diskCommitted(inserted int64, err error) {
	d := &o.w.disk
	if err != nil {
		if errors.Is(err, ErrDiskFull) {
			d.stale = true
		}
		return
	}
	d.commits++
	if inserted > math.MaxInt64-d.inserted {
		d.inserted = math.MaxInt64
	} else {
		d.inserted += inserted
	}
}
