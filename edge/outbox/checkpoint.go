package outbox

import (
	"context"
	"time"
)

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

func (o *Outbox) checkpoint() {
	var busy, logFrames, copied int64
	err := o.cdb.QueryRowContext(context.Background(), "PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &logFrames, &copied)
	o.mu.Lock()
	if err != nil {
		o.st.CheckpointErrors++
	} else {
		o.st.Checkpoints++
	}
	o.mu.Unlock()
	if err != nil {
		o.log.Warn("wal checkpoint", "err", err)
		o.dirty.Store(true)
		return
	}
	if copied < logFrames {
		o.dirty.Store(true)
	}
}
