package outbox

// Stats is a snapshot of the outbox for metrics. Counters count since Open.
type Stats struct {
	// Records and PayloadBytes are what the outbox holds now: committed and
	// not yet acknowledged by the cloud.
	Records      uint64
	PayloadBytes uint64
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
	// VacuumedPages counts pages returned to the file system.
	VacuumedPages uint64
}

// RowsPerCommit is the mean group size, 0 before the first commit.
func (s Stats) RowsPerCommit() float64 {
	if s.CommittedGroups == 0 {
		return 0
	}
	return float64(s.CommittedRows) / float64(s.CommittedGroups)
}
