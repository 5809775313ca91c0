package commitlog

import (
	"errors"
	"io/fs"
	"path/filepath"
	"time"
)

// enforceRetention deletes whole segments from the front of the log while
// the oldest is older than RetentionAge or the log is larger than
// RetentionBytes. It never deletes the active segment, nor one that the
// high-water-mark checkpoint does not cover. It runs on the writer
// goroutine, the only one that changes the segment list.
//
// A reader holding a deleted segment finishes its read from the open file
// (the file is closed when it lets go); a reader asking for an offset
// below the new first offset gets ErrOutOfRange.
func (w *writer) enforceRetention() error {
	if w.failed != nil {
		return w.failed
	}
	l := w.l
	age, limit := l.opts.RetentionAge, l.opts.RetentionBytes
	if age == 0 && limit == 0 {
		return nil
	}
	cutoff := l.opts.Now().Add(-age)
	removed := false
	for {
		l.mu.Lock()
		if len(l.segments) < 2 {
			l.mu.Unlock()
			break
		}
		s := l.segments[0]
		expired := age > 0 && s.next > s.base && time.Unix(0, s.runMax).Before(cutoff)
		over := limit > 0 && l.bytes > limit
		if (!expired && !over) || s.next > w.ckpt {
			l.mu.Unlock()
			break
		}
		l.segments[0] = nil
		l.segments = l.segments[1:]
		l.bytes -= s.size
		l.stats.retSegments.Add(1)
		l.stats.retRecords.Add(s.next - s.base)
		l.stats.retBytes.Add(uint64(s.size))
		s.gone = true
		closeNow := s.refs == 0
		first := l.segments[0].base
		l.mu.Unlock()

		if closeNow {
			_ = s.f.Close()
		}
		// Remove, then fsync the directory before the next removal, so a
		// crash never leaves a gap in the middle of the log. A file that
		// cannot be removed comes back, whole, at the next Open.
		if err := l.fs.Remove(s.path); err != nil {
			l.log.Warn("commitlog: retention could not remove a segment", "file", s.path, "err", err)
		} else if err := l.fs.SyncDir(l.dir); err != nil {
			l.log.Warn("commitlog: retention could not fsync the directory", "dir", l.dir, "err", err)
		}
		// After the segment: a snapshot left alone is removed by Open.
		if err := l.fs.Remove(filepath.Join(l.dir, snapshotName(s.base))); err != nil && !errors.Is(err, fs.ErrNotExist) {
			l.log.Warn("commitlog: retention could not remove a segment snapshot", "base", s.base, "err", err)
		}
		l.log.Info("commitlog: retention removed a segment", "file", s.path, "expired", expired, "over_size", over, "first_offset", first)
		removed = true
	}
	if removed {
		l.mu.Lock()
		l.topics.trim(l.segments[0].base)
		l.cache.trim(l.segments[0].base)
		l.mu.Unlock()
	}
	return nil
}

// retentionLoop queues a retention pass every RetentionInterval until
// Close.
func (l *FileLog) retentionLoop() {
	defer close(l.tickerDone)
	if l.opts.RetentionAge == 0 && l.opts.RetentionBytes == 0 {
		return
	}
	t := time.NewTicker(l.opts.RetentionInterval)
	defer t.Stop()
	for {
		select {
		case <-l.stopTicker:
			return
		case <-t.C:
			if !l.retentionQueued.CompareAndSwap(false, true) {
				continue // the last one has not run yet
			}
			req := &request{ctl: func() error {
				l.retentionQueued.Store(false)
				return l.w.enforceRetention()
			}}
			req.done = func(_ AppendResult, err error) {
				if err != nil && !errors.Is(err, ErrClosed) && !errors.Is(err, ErrFailed) {
					l.log.Warn("commitlog: retention failed", "err", err)
				}
			}
			l.q.push(req)
		}
	}
}
