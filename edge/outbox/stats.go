package outbox

import "time"

// Stats is a snapshot of the outbox for metrics. Counters count since Open.
type Stats struct {
	// Records and PayloadBytes are what the outbox holds now: committed and
	// not yet acknowledged by the cloud (nor dropped or expired). Bytes is
	// what those records count against Options.QuotaBytes: the sum of their
	// Message.StoredSize.
	Records      uint64
	PayloadBytes uint64
	Bytes        uint64
	// FirstSeq is the lowest seq held (0 when empty). LastSeq is the highest
	// seq ever committed, kept across restarts even when the outbox is
	// empty. AckedSeq is the highest seq acknowledged so far.
	FirstSeq, LastSeq, AckedSeq uint64
	// Queued is how many appended messages wait for the writer.
	Queued int

	// CommittedGroups is the count of successful group commits and
	// CommittedRows the rows they held; MaxGroupRows is the largest group.
	CommittedGroups uint64
	CommittedRows   uint64
	MaxGroupRows    int
	// FailedGroups and FailedRows count commits that failed (each failed
	// row's Append callback got the error).
	FailedGroups uint64
	FailedRows   uint64

	// Checkpoints counts background WAL checkpoints that ran, and
	// CheckpointErrors those that failed.
	Checkpoints      uint64
	CheckpointErrors uint64
	// WALBytes is the size of the WAL file (path+"-wal") after the writer's
	// last write transaction (0 before the first). WALRestarts counts the
	// RESTART checkpoints the writer ran because the file had grown past
	// Options.JournalSizeLimit (see checkpoint.go), WALRestartsIncomplete
	// those of them that failed or that a reader kept from completing
	// within Options.BusyTimeout, and WALRestartTime the time they took:
	// commits were paused that long (it is not in CommitLatency). The
	// restarts are also counted in Checkpoints or CheckpointErrors.
	WALBytes              uint64
	WALRestarts           uint64
	WALRestartsIncomplete uint64
	WALRestartTime        time.Duration
	// VacuumedPages counts pages returned to the file system.
	VacuumedPages uint64

	// Rejected counts messages refused by an overflow policy: with
	// ErrQuotaExceeded (Options.QuotaBytes) or, RejectedDiskFull of them,
	// with ErrDiskFull by the free-space reserve (Options.MinFreeBytes); a
	// commit that failed on a real ENOSPC counts in FailedRows instead. The
	// records the outbox deleted before the cloud had them are counted by
	// reason: DroppedOldest (DropReasonQuota) by a DropOldest class's
	// overflow policy for QuotaBytes, DroppedDiskFull (DropReasonDiskFull)
	// by the same policy for the free-space reserve, Expired
	// (DropReasonExpired) by TTL. Classes breaks them down by priority
	// class.
	Rejected         uint64
	RejectedDiskFull uint64
	DroppedOldest    uint64
	DroppedDiskFull  uint64
	Expired          uint64

	// Classes holds, in ascending Priority, every class that holds records
	// or has a non-zero counter. The slice belongs to the caller.
	Classes []ClassStats
}

// Reasons for deleting a record before the cloud had it, for metric labels.
const (
	DropReasonQuota   = "quota-drop-oldest" // Stats.DroppedOldest
	DropReasonExpired = "expired"           // Stats.Expired
)

// ClassStats are one priority class's share of Stats.
type ClassStats struct {
	Priority uint8
	// Records and Bytes (Message.StoredSize) held now.
	Records, Bytes uint64
	// Rejected, DroppedOldest and Expired count since Open as in Stats.
	Rejected, DroppedOldest, Expired uint64
	// RejectedDiskFull (part of Rejected) and DroppedDiskFull count the
	// free-space reserve's refusals and drops since Open as in Stats.
	RejectedDiskFull, DroppedDiskFull uint64
}

func (c ClassStats) zero() bool {
	return c.Records == 0 && c.Bytes == 0 && c.Rejected == 0 && c.DroppedOldest == 0 && c.Expired == 0 &&
		c.DroppedDiskFull == 0
}

// RowsPerCommit is the mean group size, 0 before the first commit.
func (s Stats) RowsPerCommit() float64 {
	if s.CommittedGroups == 0 {
		return 0
	}
	return float64(s.CommittedRows) / float64(s.CommittedGroups)
}
