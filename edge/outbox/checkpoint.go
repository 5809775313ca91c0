package outbox

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"time"
)

// WAL checkpoints and the WAL's size.
//
// SQLite's auto-checkpoint is off (it runs inside the commit that crosses
// its threshold). The checkpointer goroutine runs PASSIVE checkpoints on
// its own connection instead, off the commit path: PASSIVE never takes the
// write lock and never waits, so commits go on while it copies frames into
// the database.
//
// A PASSIVE checkpoint copies frames; it never makes the WAL file smaller.
// SQLite starts writing the WAL from its beginning again (and truncates the
// file to journal_size_limit at that commit) only when a write transaction
// begins after a checkpoint has copied every frame and while no reader
// still reads from the WAL. Under continuous writing that moment does not
// come: the writer begins its next transaction before the PASSIVE
// checkpoint, which started with fewer frames, has finished, and the drain
// keeps a reader on the WAL much of the time. The file then grows for as
// long as devices write: 6 to 33 MB with a 256 KiB journal_size_limit while
// 8 MB of records were written and drained (TestWALBoundedUnderLoad before
// this fix), disk the free-space reserve and the quota never counted.
//
// So the writer bounds it (boundWAL): after each of its write transactions
// it stats the WAL file (a syscall, no I/O), and when the file is larger
// than Options.JournalSizeLimit it runs a RESTART checkpoint on the
// checkpointer's connection before its next transaction. RESTART copies
// the frames the PASSIVE checkpoints have not yet copied and waits (up to
// Options.BusyTimeout, through the connection's busy handler) until no
// reader reads from the WAL; the writer's next transaction then writes
// from the WAL's beginning and truncates the file to JournalSizeLimit. The
// WAL file therefore stays within JournalSizeLimit plus what one write
// transaction adds. The cost is a pause of the commits, only when the limit
// is crossed: the writer waits for a PASSIVE checkpoint under way on that
// connection, then for the frames left to copy, an fsync of the database,
// and for readers to finish their current query. Reads hold a read
// transaction only while their query runs (Read, ReadLane and ReadSync
// close their rows before returning), so this wait is short; a reader that
// held one open for longer than BusyTimeout would make the checkpoint
// incomplete, and the writer then tries again only after the WAL grew by
// another JournalSizeLimit, so that a stuck reader costs one BusyTimeout
// pause per JournalSizeLimit written rather than one per commit. With a
// JournalSizeLimit below what one transaction writes (a group of
// MaxBatchBytes, an Ack chunk), the file exceeds the limit after nearly
// every transaction, and the writer checkpoints that often.
//
// Rejected designs: running RESTART from the checkpointer goroutine (it
// needs the write lock, which the writer holds for most of each commit
// cycle under load: SQLite's busy handler would poll for it with sleeps of
// up to 100 ms, might not catch it before BusyTimeout, and would then fall
// back to PASSIVE; the writer, waiting for the checkpointer in turn, would
// oversleep the same way; reasoned from SQLite's wal.c, not measured); TRUNCATE rather than RESTART (it returns the
// file to zero bytes, which the next transactions must allocate again;
// journal_size_limit keeps what is reused); counting WAL bytes by
// estimate (wrote's estimate ignores index and free-list pages and is off
// by a factor that depends on the schema and the workload; the file's size
// is exact and as cheap).

// checkpointLoop runs PASSIVE WAL checkpoints on its own connection, off the
// commit path: when the writer signals that the WAL grew by
// Options.CheckpointBytes, and every Options.CheckpointInterval while
// anything was written. PASSIVE never waits for locks; frames it could not
// copy (a reader still needs them) are left for the next round.
func (o *Outbox) checkpointLoop() {
	defer close(o.ckDone)
	t := time.NewTicker(o.opts.CheckpointInterval)
	defer t.Stop()
	for {
		select {
		case <-o.ckStop:
			return
		case <-o.ckSignal:
		case <-t.C:
		}
		if !o.dirty.Swap(false) {
			continue
		}
		o.checkpoint()
	}
}

// runCheckpoint runs a WAL checkpoint of the given mode (PASSIVE, RESTART,
// TRUNCATE) on the checkpointer's connection, counts it in Stats, and
// returns SQLite's answer: whether it could not complete (busy), the WAL's
// frames and how many of them are copied into the database.
func (o *Outbox) runCheckpoint(mode string) (busy, logFrames, copied int64, err error) {
	err = o.cdb.QueryRowContext(context.Background(), "PRAGMA wal_checkpoint("+mode+")").Scan(&busy, &logFrames, &copied)
	o.mu.Lock()
	if err != nil {
		o.st.CheckpointErrors++
	} else {
		o.st.Checkpoints++
	}
	o.mu.Unlock()
	return busy, logFrames, copied, err
}

func (o *Outbox) checkpoint() {
	_, logFrames, copied, err := o.runCheckpoint("PASSIVE")
	if err != nil {
		o.log.Warn("wal checkpoint", "err", err)
		o.dirty.Store(true)
		return
	}
	if copied < logFrames {
		o.dirty.Store(true)
	}
}

// boundWAL runs on the writer after each of its write transactions: it
// measures the WAL file and, when it is larger than Options.JournalSizeLimit,
// restarts it (see the top of this file).
func (o *Outbox) boundWAL() {
	w := &o.w
	fi, err := os.Stat(o.path + "-wal")
	if err != nil {
		// The WAL exists while a connection is open; if it cannot be
		// measured there is nothing to bound by.
		if !errors.Is(err, fs.ErrNotExist) && !w.walStatErr {
			o.log.Warn("cannot measure the wal; it is not bounded until it can", "err", err)
			w.walStatErr = true
		}
		return
	}
	w.walStatErr = false
	size := fi.Size()
	if h := o.opts.hooks; h != nil && h.walSize != nil {
		h.walSize(size)
	}
	o.mu.Lock()
	o.st.WALBytes = uint64(size)
	o.mu.Unlock()
	if size <= o.opts.JournalSizeLimit || size < w.walRetryAt {
		return
	}
	o.restartWAL(size)
}

// restartWAL runs a RESTART checkpoint on the checkpointer's connection
// (waiting for a PASSIVE checkpoint under way there). It blocks the writer,
// and so every commit, until every frame is copied and no reader reads from
// the WAL, or Options.BusyTimeout passed. size is the WAL file's size.
func (o *Outbox) restartWAL(size int64) {
	w := &o.w
	start := time.Now()
	busy, logFrames, copied, err := o.runCheckpoint("RESTART")
	took := time.Since(start)
	done := err == nil && busy == 0
	o.mu.Lock()
	o.st.WALRestartTime += took
	o.st.WALRestarts++
	if !done {
		o.st.WALRestartsIncomplete++
	}
	o.mu.Unlock()
	if done {
		w.walRetryAt = 0
		o.log.Debug("wal over journal_size_limit: restarted", "wal_bytes", size, "frames", logFrames, "took", took)
		return
	}
	// Try again once the WAL grew by another JournalSizeLimit.
	w.walRetryAt = size + o.opts.JournalSizeLimit
	if err != nil {
		o.log.Warn("wal over journal_size_limit: restart checkpoint failed", "err", err, "wal_bytes", size,
			"journal_size_limit", o.opts.JournalSizeLimit)
		return
	}
	o.log.Warn("wal over journal_size_limit: a reader kept the restart checkpoint from completing within the busy timeout",
		"wal_bytes", size, "frames", logFrames, "copied", copied, "journal_size_limit", o.opts.JournalSizeLimit,
		"busy_timeout", o.opts.BusyTimeout)
}
