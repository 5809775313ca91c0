package outbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
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
// disk the groups since may have taken reached half the room the last
// measurement left (so far from full it is rarely refreshed, and near full
// at every group, when the estimate matters and a commit's fsync dwarfs a
// statfs). Between refreshes the estimate charges each group its StoredSize
// plus the WAL frames of the pages it wrote (diskGroupCost): counting
// StoredSize alone missed the WAL, which takes about three times the
// records' size in groups of a few records, and let a fast writer run a
// 4 MiB file system from 1.3 MiB free into ENOSPC between two refreshes.
// The half-room rule and the reserve absorb what the estimate still misses,
// and the next refresh corrects it.
//
// The reserve must hold what SQLite writes beyond the records: the WAL grows
// by up to Options.CheckpointBytes before it is reset, and a group's
// transaction needs its frames before its drops free anything.
//
// The WAL is only reset when a write transaction begins after a checkpoint
// copied every frame. A writer that commits group after group begins its
// next transaction before the checkpointer's PASSIVE checkpoint ends, so the
// WAL may never be reset and grows far past CheckpointBytes (measured on a
// 4 MiB tmpfs: 1.3 MB of WAL with 40 KB of records held). The writer's
// restart checkpoint (checkpoint.go) keeps it within about
// Options.JournalSizeLimit, which may still be more than a small disk can
// spare. Its size is free space lost to the reserve, and a DropOldest class could drop every record
// and still not fit ("may hold 0 bytes"). So when a fresh measurement finds
// the free space below the reserve plus the WAL's size while the WAL holds
// at least CheckpointBytes (or less, when it holds more than the outbox may
// and truncating it would leave some room), the group's transaction is rolled back before it wrote anything,
// a TRUNCATE checkpoint copies the WAL into the database and truncates it to
// zero bytes, and the group runs again with a fresh measurement (at most once
// per group). The checkpoint runs on the checkpointer's connection, so it
// never overlaps the checkpointer's own, and waits up to
// Options.BusyTimeout for readers. If it cannot complete (a reader holds a
// snapshot, or the copy itself hits ENOSPC), the group proceeds with what the
// second measurement finds: drops, refusals or a clean ErrDiskFull, as
// without it. An ENOSPC that happens anyway (the
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

// errReclaimWAL is what groupLimit returns, before the group wrote anything,
// to have the WAL truncated and the group run again (insertGroupReclaiming).
var errReclaimWAL = errors.New("free space below the reserve: truncate the WAL and run the group again")

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
	inserted int64     // disk the groups committed since may have taken (diskGroupCost)
	room     int64     // avail - reserve at the measurement
	limit    int64     // what the outbox may hold: bytes held then + room

	wal        int64 // the WAL file's size at the measurement
	reclaimed  bool  // the WAL was just truncated for this group: do not ask again
	reclaimErr bool  // the last truncation failed (logged once until one works)

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
	retried := d.reclaimed
	d.reclaimed = false
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
		if err == nil && !retried && o.walReclaimable() {
			return limit, false, errReclaimWAL
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
	d.wal = 0
	if fi, err := os.Stat(o.path + "-wal"); err == nil {
		d.wal = fi.Size()
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("wal size: %w", err)
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
	o.log.Debug("free space measured", "fs_avail", fsAvail, "free_pages", free, "page_size", d.pageSize,
		"wal_bytes", d.wal, "held_bytes", o.w.bytes, "room", d.room)
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
	cost := diskGroupCost(inserted, d.pageSize)
	if cost > math.MaxInt64-d.inserted {
		d.inserted = math.MaxInt64
	} else {
		d.inserted += cost
	}
}

// diskGroupPages is the pages a group's transaction writes to the WAL besides
// its records' own: page 1, the table's and the class index's leaves and
// interior pages, free-list trunks.
const diskGroupPages = 6

// diskGroupCost estimates, from the StoredSize a group inserted, the disk it
// may have taken until the next measurement: its records in the database
// file, and the WAL frames of every page it wrote (a page plus a 24-byte
// frame header each), which stay on disk until the WAL is reset.
func diskGroupCost(inserted, pageSize int64) int64 {
	if pageSize <= 0 {
		pageSize = 4096
	}
	if inserted > math.MaxInt64/4 {
		return math.MaxInt64
	}
	return inserted + (inserted/pageSize+diskGroupPages)*(pageSize+24)
}

// walReclaimable reports whether the fresh measurement asks for the WAL to
// be truncated before the group runs: the free space is below the reserve
// plus the WAL's size (the WAL is what stands between the outbox and its
// reserve), and the WAL holds at least Options.CheckpointBytes, or more
// than the outbox may hold (when truncating it would leave room at all).
func (o *Outbox) walReclaimable() bool {
	d := &o.w.disk
	if d.wal <= 0 || d.room >= d.wal {
		return false
	}
	return d.wal >= o.opts.CheckpointBytes || (d.limit < d.wal && d.limit+d.wal > 0)
}

// insertGroupReclaiming runs insertGroup, and when the reserve asks for it
// (errReclaimWAL), truncates the WAL and runs it once more.
func (o *Outbox) insertGroupReclaiming(batch []*pending) (groupResult, error) {
	g, err := o.insertGroup(batch)
	if errors.Is(err, errReclaimWAL) {
		o.reclaimWAL()
		g, err = o.insertGroup(batch)
	}
	return g, err
}

// reclaimWAL copies the WAL into the database and truncates it (a TRUNCATE
// checkpoint, on the checkpointer's connection so that it waits for the
// checkpointer's PASSIVE one rather than failing with SQLITE_BUSY). The
// next group measures again. A checkpoint that fails or cannot complete is
// logged and counted; the group then proceeds with what it measures.
func (o *Outbox) reclaimWAL() {
	d := &o.w.disk
	d.reclaimed, d.stale = true, true
	busy, logFrames, copied, err := o.runCheckpoint("TRUNCATE")
	if err != nil {
		if !d.reclaimErr {
			o.log.Warn("free-space reserve: cannot truncate the wal", "err", err, "wal_bytes", d.wal)
		}
		d.reclaimErr = true
		return
	}
	d.reclaimErr = false
	switch {
	case busy != 0:
		o.log.Debug("free-space reserve: wal checkpoint could not complete (a reader holds it back)",
			"wal_frames", logFrames, "copied", copied, "wal_bytes", d.wal)
	default:
		o.log.Debug("free-space reserve: wal truncated", "wal_bytes", d.wal, "frames", logFrames)
	}
}
