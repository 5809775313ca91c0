package outbox

import (
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// Options configure an Outbox. The zero value is ready to use: every field
// documents the default its zero value stands for.
type Options struct {
	// Synchronous is SQLite's synchronous level for commits, which decides
	// what "committed" means when Append reports success:
	//   "full" (default for ""): the WAL is fsync'd at every commit; a
	//          committed message survives a process crash and a power loss.
	//   "extra": as full, and the directory is synced when the WAL is created
	//          or deleted.
	//   "normal": the WAL is fsync'd only at checkpoints; a committed message
	//          survives a process crash but may be lost with power.
	// Other values are rejected by Validate.
	Synchronous string

	// MaxBatchRows caps the rows of one group commit so commit latency stays
	// bounded under load. 0 means 1000.
	MaxBatchRows int

	// MaxBatchBytes caps the payload bytes of one group commit (a group
	// always holds at least one message). 0 means 8 MiB.
	MaxBatchBytes int

	// GroupGap and GroupWait shape the group a writer that was idle commits
	// next. Woken by a message, the writer keeps collecting while messages
	// keep coming: it commits once none arrived for GroupGap, or GroupWait
	// after the first, or at MaxBatchRows. A device sends its window of QoS 1
	// publishes as a burst, one message at a time, when its PUBACKs arrive;
	// committing the burst's first message the moment it arrives costs a
	// commit (an fsync) for a few rows and keeps the rest of the burst
	// waiting for that whole commit: measured with one publisher keeping 100
	// in flight, over a third of all commits held fewer than 8 rows. A writer
	// that was busy committing does not wait: what queued meanwhile is its
	// next group. Only when a commit happens changes: every callback still
	// runs after its message's commit. The wait uses Go timers, which can
	// fire up to a millisecond late on an idle machine. GroupGap 0 means
	// 200µs; a negative GroupGap commits at once. GroupWait 0 means 2ms.
	GroupGap, GroupWait time.Duration

	// QueueLimit is how many messages may wait for the writer; Append blocks
	// when the queue is full, which is the outbox's backpressure. 0 means
	// 10000.
	QueueLimit int

	// BusyTimeout is how long a connection waits on a lock held by another
	// connection before failing with SQLITE_BUSY; it is also the longest a
	// RESTART or TRUNCATE checkpoint waits for readers, with commits paused
	// (see JournalSizeLimit). 0 means 5s.
	BusyTimeout time.Duration

	// CheckpointBytes is the estimated WAL growth after which a PASSIVE
	// checkpoint is started in the background. SQLite's own auto-checkpoint
	// is disabled so a checkpoint never runs inside a commit. 0 means 4 MiB.
	CheckpointBytes int64

	// CheckpointInterval is how often a background PASSIVE checkpoint runs
	// while anything was written since the last one. 0 means 1s.
	CheckpointInterval time.Duration

	// JournalSizeLimit bounds the WAL file (path+"-wal"): SQLite truncates
	// the file to it when it restarts the WAL after a complete checkpoint,
	// and once the file has grown past it (continuous writing with a
	// concurrent drain never leaves SQLite that moment) the writer runs a
	// RESTART checkpoint, which pauses commits while it copies the frames
	// left and waits up to BusyTimeout for readers (see checkpoint.go). The
	// file then stays within JournalSizeLimit plus one write transaction's
	// frames; it should be well above one transaction (a group of
	// MaxBatchBytes, an Ack chunk), or the writer checkpoints after nearly
	// every one. 0 means 64 MiB.
	JournalSizeLimit int64

	// AckChunkRows bounds how many records one delete transaction of an Ack
	// removes, so a large Ack does not hold back group commits. 0 means
	// 10000.
	AckChunkRows int

	// VacuumFreePages is the count of free pages (left by Acks) at which the
	// writer, when idle, starts returning them to the file system with
	// incremental_vacuum; it then continues until none are left. While the
	// outbox holds more than AckChunkRows seqs, the writer waits until it has
	// been idle for half a second (a drain's Acks keep it busy). 0 means
	// 1024 pages; a negative value disables reclaiming (freed pages are
	// still reused by later appends).
	VacuumFreePages int

	// VacuumStepPages is how many pages one incremental_vacuum step frees;
	// the writer checks for queued appends between steps. 0 means 256.
	VacuumStepPages int

	// QuotaBytes caps what the outbox holds, counted as the sum of
	// Message.StoredSize over the records not yet acknowledged by the cloud.
	// A message that does not fit is handled by its class's overflow policy
	// (see Overflow). 0 means no quota. Open does not delete anything when the
	// outbox already holds more than QuotaBytes (the quota was lowered): the
	// next appends make room or are refused.
	QuotaBytes int64

	// Overflow is the overflow policy of every priority class that Classes
	// does not name. "" means RejectNew, the policy that never loses an
	// acknowledged message.
	Overflow Overflow

	// Classes sets the policy of individual priority classes
	// (Message.Priority, 0 = highest). nil: every class uses Overflow and
	// TTL.
	Classes map[uint8]ClassPolicy

	// TTL is how long a record may wait for the cloud, measured from its
	// Message.Received against Now: once Now - Received >= TTL the writer
	// deletes it (in chunks of ExpireChunkRows) and counts it in
	// Stats.Expired, whether or not it was already sent. Expiry is first in,
	// first out within a class: a record also waits for the records of its
	// class committed before it, which only matters if the clock stepped
	// back (see expire.go). Records whose Received is zero (unknown) or
	// before 1970 never expire. 0 means no expiry; ClassPolicy.TTL overrides
	// it per class.
	TTL time.Duration

	// ExpireInterval is how often the idle writer looks for expired records
	// when any class has a TTL (a busy writer looks at every turn). Looking
	// costs a clock read until the oldest record is due. 0 means 1s.
	ExpireInterval time.Duration

	// ExpireChunkRows bounds how many records one expiry transaction
	// deletes, so expiring a large backlog does not hold back group
	// commits. 0 means 1000.
	ExpireChunkRows int

	// MinFreeBytes is the free-space reserve: the outbox keeps at least this
	// many bytes free on its file system (counting the database's own free
	// pages as free) by treating the room above it as a second quota. When
	// free space falls below it, a message that does not fit is handled by
	// its class's overflow policy as for QuotaBytes, with drops and
	// refusals counted by reason DropReasonDiskFull and refusals wrapping
	// ErrDiskFull (see diskguard.go). 0 means the default: DefaultMinFreeBytes
	// (64 MiB) or DefaultMinFreePercent (5%) of the file system, whichever is
	// smaller. A negative value turns the reserve off: only a real ENOSPC
	// then stops appends (every class refuses, nothing is dropped). Linux
	// only; elsewhere it is off.
	MinFreeBytes int64

	// Now is the clock TTL is measured against, and the free-space reserve's
	// refresh interval. nil means time.Now.
	Now func() time.Time

	// Logger receives operational logs. nil discards them.
	Logger *slog.Logger

	// hooks are test seams; nil in production.
	hooks *testHooks
}

// testHooks let tests in this package stop the writer at chosen points.
type testHooks struct {
	// afterFirst is called by the writer after it took the first message of
	// a group and before it collects the rest.
	afterFirst func()
	// beforeIdle is called by the writer each time it is about to wait for
	// work with nothing to do.
	beforeIdle func()
	// afterCommit is called by the writer after a group committed and Stats
	// were updated, before the group's callbacks run.
	afterCommit func()
	// beforeCommit is called by the writer with a group's transaction
	// complete but not committed; an error it returns fails the commit (the
	// transaction is rolled back).
	beforeCommit func() error
	// vacuumIdle, when non-zero, replaces the const vacuumIdle.
	vacuumIdle time.Duration
	// statfs, when non-nil, replaces the file system's free space
	// measurement of the free-space reserve.
	statfs statfsFunc
	// walSize, when non-nil, is called by the writer with the WAL file's
	// size after every write transaction (walbound_test.go).
	walSize func(bytes int64)
}

// Validate reports the first invalid field.
func (o Options) Validate() error {
	switch strings.ToLower(o.Synchronous) {
	case "", "full", "normal", "extra":
	default:
		return fmt.Errorf("outbox: Options.Synchronous %q: want full, normal or extra", o.Synchronous)
	}
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"MaxBatchRows", int64(o.MaxBatchRows)},
		{"MaxBatchBytes", int64(o.MaxBatchBytes)},
		{"QueueLimit", int64(o.QueueLimit)},
		{"GroupWait", int64(o.GroupWait)},
		{"BusyTimeout", int64(o.BusyTimeout)},
		{"CheckpointBytes", o.CheckpointBytes},
		{"CheckpointInterval", int64(o.CheckpointInterval)},
		{"JournalSizeLimit", o.JournalSizeLimit},
		{"AckChunkRows", int64(o.AckChunkRows)},
		{"VacuumStepPages", int64(o.VacuumStepPages)},
		{"QuotaBytes", o.QuotaBytes},
		{"TTL", int64(o.TTL)},
		{"ExpireInterval", int64(o.ExpireInterval)},
		{"ExpireChunkRows", int64(o.ExpireChunkRows)},
	} {
		if f.v < 0 {
			return fmt.Errorf("outbox: Options.%s is negative (%d)", f.name, f.v)
		}
	}
	if err := o.Overflow.validate(); err != nil {
		return fmt.Errorf("outbox: Options.Overflow: %w", err)
	}
	for class, p := range o.Classes {
		if err := p.Overflow.validate(); err != nil {
			return fmt.Errorf("outbox: Options.Classes[%d].Overflow: %w", class, err)
		}
		if p.Lane >= MaxLanes {
			return fmt.Errorf("outbox: Options.Classes[%d].Lane %d: lanes are 0 to %d", class, p.Lane, MaxLanes-1)
		}
	}
	return nil
}

// withDefaults returns o with every zero field replaced by its default.
func (o Options) withDefaults() Options {
	if o.Synchronous == "" {
		o.Synchronous = "full"
	}
	o.Synchronous = strings.ToUpper(o.Synchronous)
	if o.MaxBatchRows == 0 {
		o.MaxBatchRows = 1000
	}
	if o.MaxBatchBytes == 0 {
		o.MaxBatchBytes = 8 << 20
	}
	if o.QueueLimit == 0 {
		o.QueueLimit = 10000
	}
	if o.GroupGap == 0 {
		o.GroupGap = 200 * time.Microsecond
	}
	if o.GroupWait == 0 {
		o.GroupWait = 2 * time.Millisecond
	}
	if o.BusyTimeout == 0 {
		o.BusyTimeout = 5 * time.Second
	}
	if o.CheckpointBytes == 0 {
		o.CheckpointBytes = 4 << 20
	}
	if o.CheckpointInterval == 0 {
		o.CheckpointInterval = time.Second
	}
	if o.JournalSizeLimit == 0 {
		o.JournalSizeLimit = 64 << 20
	}
	if o.AckChunkRows == 0 {
		o.AckChunkRows = 10000
	}
	if o.VacuumFreePages == 0 {
		o.VacuumFreePages = 1024
	}
	if o.VacuumStepPages == 0 {
		o.VacuumStepPages = 256
	}
	if o.Overflow == "" {
		o.Overflow = RejectNew
	}
	if o.ExpireInterval == 0 {
		o.ExpireInterval = time.Second
	}
	if o.ExpireChunkRows == 0 {
		o.ExpireChunkRows = 1000
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}
