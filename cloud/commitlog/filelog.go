package commitlog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
)

// FileLog is the production Log: one commit log for every topic, kept in
// segment files in one directory.
//
// # Layout
//
// Segment files are named by the offset of their first record and hold
// framed records (see record.go): length, CRC-32C, body. A new segment is
// started when the active one reaches Options.SegmentBytes. Beside them,
// hwm.checkpoint keeps the producers' high-water marks for the records that
// retention deletes (see checkpoint.go), and LOCK keeps a second FileLog
// out. Every segment file stays open while it is retained (one descriptor
// per segment).
//
// # Writing: group commit
//
// Append and AppendAsync encode their records on the caller's goroutine and
// put them on a queue in call order (so one goroutine's AppendAsync calls are
// appended in order). One writer goroutine takes as many queued appends as
// fit in Options.MaxGroupBytes, checks each record against its producer's
// high-water mark (inside the writer, so the check is atomic with the
// append), assigns offsets, writes the group with one write and makes it
// durable with one fsync, then publishes it to readers and completes every
// append of the group. Concurrent producers therefore share fsyncs, and a
// producer that pipelines with AppendAsync gets its whole window into one
// fsync. Rejected designs: a mutex around write+fsync (one fsync per
// append, ~2k appends/s on our disks), fsync on a timer (acknowledges
// before durability or adds a fixed delay to every append), and a two-stage
// pipeline that writes the next group while a second goroutine fsyncs the
// last: measured with the log-append benchmark it lowered both throughput
// and latency on our 2-core machines, because groups became tiny (one
// write per append that arrived during an fsync) and every append crossed
// one more goroutine hand-off; an fsync already covers everything queued
// while the previous one ran.
//
// Segments are zero-filled ahead of time (prealloc.go) and synced with
// fdatasync, so an fsync writes the data and flushes the disk cache without
// waiting for a file system journal commit.
//
// After a failed write or fsync the writer fails that group and every later
// append with ErrFailed: once fsync has failed the kernel may have dropped
// the dirty pages, so a retry that succeeds proves nothing.
//
// # Reading
//
// Readers see only published (fsync'd) records. Each segment has a sparse
// index (an entry every Options.IndexIntervalBytes) from offset to file
// position and to the running maximum of record times; a read seeks to the
// nearest entry and scans. A topic index (topicindex.go) maps each topic to
// its offsets. Both live in memory; Open rebuilds them from the snapshots
// saved when segments were closed and a scan of the active segment (see
// snapshot.go). The newest records (Options.TailCacheBytes) are also kept in
// memory as written (tailcache.go): reads near the tail, by offset or by
// topic, copy them from there without a system call.
//
// # Locking
//
// FileLog.mu guards the published state: the segment list and every
// segment's committed size and index, the offsets, the high-water marks, the
// topic index, the tail cache. It is a read-write lock: readers that change
// nothing (reads by topic and of the tail cache, Wait, the offsets) share
// it, and the writer, which takes it once per group to publish, waits only
// for the readers inside (a pending Lock holds new readers back), however
// many readers poll. Holding a segment (refs) takes it exclusively. The
// queue has its own mutex and the two are never held together. The writer goroutine owns writer (the unpublished tail, the
// tentative high-water marks) and is the only one that changes the segment
// list (rolling and retention both run on it). Files of segments removed by
// retention stay open until their last reader releases them.
type FileLog struct {
	dir  string
	opts Options
	fs   FS
	log  *slog.Logger
	lock io.Closer // nil if the FS cannot lock

	q               queue
	w               writer // owned by the writer goroutine after Open
	writerDone      chan struct{}
	stopTicker      chan struct{}
	tickerDone      chan struct{}
	retentionQueued atomic.Bool
	stats           counters
	pre             *preparer // nil when Options.NoPreallocate
	scanned, loaded int       // segments Open scanned, and loaded from snapshots

	mu       sync.RWMutex
	closed   bool
	segments []*segment // ascending base; the last is active
	next     uint64
	bytes    int64 // committed bytes of all segments
	hwm      map[string]uint64
	topics   topicIndex
	cache    tailCache
	changed  chan struct{} // closed and replaced when records are published
}

var (
	_ Log         = (*FileLog)(nil)
	_ TopicReader = (*FileLog)(nil)
)

// Append implements Log. It returns ErrTooLarge without appending anything
// if a record is over Options.MaxRecordBytes, and an error wrapping
// ErrFailed once the log has failed. If ctx ends first it returns the
// context's error and the records may still be appended.
func (l *FileLog) Append(ctx context.Context, recs []Record) (AppendResult, error) {
	if err := ctx.Err(); err != nil {
		return AppendResult{}, err
	}
	req, err := l.newRequest(recs)
	if err != nil {
		return AppendResult{}, err
	}
	if req.wait == nil {
		req.wait = make(chan struct{}, 1)
		req.signal = req.finishSync
	}
	req.done = req.signal
	if !l.q.push(req) {
		return AppendResult{}, ErrClosed
	}
	select {
	case <-req.wait:
		res, err := req.out, req.outErr
		putRequest(req) // the writer is done with it
		return res, err
	case <-ctx.Done():
		return AppendResult{}, ctx.Err() // req stays with the writer (and then the GC)
	}
}

// AppendAsync implements Log. done runs on the writer goroutine: it must not
// block, and must not call Append or Close (AppendAsync is fine). The log
// copies recs before AppendAsync returns. The queue is not bounded: callers
// bound what they have in flight (the sync protocol's window does).
func (l *FileLog) AppendAsync(recs []Record, done func(AppendResult, error)) {
	req, err := l.newRequest(recs)
	if err != nil {
		req = &request{err: err} // still queued, so done keeps call order
	} else {
		req.recycle = true
	}
	req.done = done
	if !l.q.push(req) {
		go done(AppendResult{}, ErrClosed)
	}
}

// newRequest validates and encodes recs for the writer.
func (l *FileLog) newRequest(recs []Record) (*request, error) {
	size := 0
	for i := range recs {
		n := encodedLen(&recs[i])
		if n > l.opts.MaxRecordBytes {
			return nil, fmt.Errorf("%w: record %d of the batch is %d bytes encoded, the limit is %d", ErrTooLarge, i, n, l.opts.MaxRecordBytes)
		}
		size += frameHeaderLen + n
	}
	req := requestPool.Get().(*request)
	req.frames = slices.Grow(req.frames[:0], size)
	req.metas = slices.Grow(req.metas[:0], len(recs))[:len(recs)]
	for i := range recs {
		r := &recs[i]
		m := recordRef{start: len(req.frames), topic: r.Topic, producer: r.Producer, seq: r.ProducerSeq}
		if !r.Time.IsZero() {
			nanos, err := timeNanos(r.Time)
			if err != nil {
				return nil, fmt.Errorf("record %d of the batch: %w", i, err)
			}
			m.nanos, m.hasTime = nanos, true
		}
		req.frames = appendFrame(req.frames, r, 0, 0)
		m.end = len(req.frames)
		req.metas[i] = m
	}
	return req, nil
}

// Wait implements Log.
func (l *FileLog) Wait(ctx context.Context, from uint64) error {
	for {
		l.mu.RLock()
		if l.closed {
			l.mu.RUnlock()
			return ErrClosed
		}
		if l.next > from {
			l.mu.RUnlock()
			return nil
		}
		ch := l.changed
		l.mu.RUnlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// FirstOffset implements Log.
func (l *FileLog) FirstOffset() uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.segments[0].base
}

// NextOffset implements Log.
func (l *FileLog) NextOffset() uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.next
}

// HighWaterMark implements Log.
func (l *FileLog) HighWaterMark(producer string) uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.hwm[producer]
}

// Size returns the committed bytes of the retained segments.
func (l *FileLog) Size() int64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.bytes
}

// EnforceRetention applies RetentionAge and RetentionBytes now and returns
// when it is done. The log also does this by itself every
// RetentionInterval and whenever a segment is closed; this is for tests
// and operators.
func (l *FileLog) EnforceRetention() error {
	ch := make(chan error, 1)
	req := &request{ctl: func() error { return l.w.enforceRetention() }}
	req.done = func(_ AppendResult, err error) { ch <- err }
	if !l.q.push(req) {
		return ErrClosed
	}
	return <-ch
}

// Close implements Log. Appends already taken by the writer complete;
// appends still queued fail with ErrClosed. Readers holding a segment
// finish their read.
func (l *FileLog) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	close(l.changed)
	l.mu.Unlock()

	close(l.stopTicker)
	<-l.tickerDone
	l.q.close()
	<-l.writerDone
	l.pre.close()

	l.mu.Lock()
	var files []File
	for _, s := range l.segments {
		s.gone = true
		if s.refs == 0 {
			files = append(files, s.f)
		}
	}
	l.mu.Unlock()
	var errs []error
	for _, f := range files {
		if err := f.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if l.lock != nil {
		if err := l.lock.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("commitlog: close: %w", err)
	}
	return nil
}
