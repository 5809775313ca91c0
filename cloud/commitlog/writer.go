package commitlog

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"
)

// request is one queued Append/AppendAsync, or a control action (ctl) that
// the writer runs between groups.
type request struct {
	frames []byte      // encoded frames, offset/time/checksum not set
	metas  []recordRef // one per record, in order
	err    error       // refused when queued: done gets it
	ctl    func() error
	done   func(AppendResult, error)
	res    AppendResult
	queued time.Time // when it was queued

	// Pooling (see putRequest). recycle: an AppendAsync request, which the
	// writer returns to the pool once done has returned. wait, signal, out
	// and outErr serve a blocking Append, which returns its request to the
	// pool itself after it got the result.
	recycle bool
	wait    chan struct{}
	signal  func(AppendResult, error) // finishSync, bound once
	out     AppendResult
	outErr  error
}

// requestPool keeps requests and their buffers between appends: at tens of
// thousands of appends a second their allocations set the pace of garbage
// collection, whose pauses show in the latency tail.
var requestPool = sync.Pool{New: func() any { return new(request) }}

// maxPooledFrames is the largest frames buffer kept in the pool.
const maxPooledFrames = 64 << 10

func (r *request) finishSync(res AppendResult, err error) {
	r.out, r.outErr = res, err
	r.wait <- struct{}{}
}

// putRequest returns r to the pool. Nothing may use r after.
func putRequest(r *request) {
	if cap(r.frames) > maxPooledFrames {
		r.frames = nil
	}
	clear(r.metas) // drop the topic and producer strings
	*r = request{frames: r.frames[:0], metas: r.metas[:0], wait: r.wait, signal: r.signal}
	requestPool.Put(r)
}

// finish completes r: done, then back to the pool if the writer owns it.
// recycle is read first: once done has returned, a blocking Append may have
// reused r already.
func finish(r *request, res AppendResult, err error) {
	recycle := r.recycle
	r.done(res, err)
	if recycle {
		putRequest(r)
	}
}

// recordRef locates one record's frame in request.frames and carries what
// the writer needs without decoding it.
type recordRef struct {
	start, end      int
	topic, producer string
	seq             uint64
	nanos           int64
	hasTime         bool
}

// queue hands requests from the appenders to the writer in call order.
type queue struct {
	mu     sync.Mutex
	items  []*request
	closed bool
	wake   chan struct{} // capacity 1: "items may be waiting"
}

func (q *queue) push(r *request) bool {
	r.queued = time.Now()
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return false
	}
	q.items = append(q.items, r)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return true
}

func (q *queue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// take blocks until requests are queued or the queue is closed. It returns
// either one control request or a group of appends holding at most
// maxBytes of frames (at least one append), appended to buf. Once the
// queue is closed it returns everything left with closed set.
func (q *queue) take(maxBytes int, buf []*request) (group []*request, closed bool) {
	for {
		q.mu.Lock()
		if q.closed {
			group, q.items = q.items, nil
			q.mu.Unlock()
			return group, true
		}
		if len(q.items) > 0 {
			n, size := 1, len(q.items[0].frames)
			if q.items[0].ctl == nil {
				for n < len(q.items) && q.items[n].ctl == nil && size+len(q.items[n].frames) <= maxBytes {
					size += len(q.items[n].frames)
					n++
				}
			}
			group = append(buf, q.items[:n]...)
			clear(q.items[:n])
			q.items = q.items[n:]
			q.mu.Unlock()
			return group, false
		}
		q.mu.Unlock()
		<-q.wake
	}
}

// writer is the state of the writer goroutine: the active segment's
// unpublished tail and the tentative high-water marks. Nothing else touches
// it after Open.
type writer struct {
	l      *FileLog
	active *segment
	size   int64  // bytes of active written to the file (>= active.size)
	next   uint64 // offset of the next record
	hwm    map[string]uint64
	runMax int64 // largest record time so far
	idx    indexer
	ckpt   uint64 // the durable checkpoint is valid below this offset
	failed error  // set once; every later append fails with it

	buf []byte // frames of the current group not yet written
	// bufFirst is the offset of buf's first record and bufStarts where each
	// of its records starts in buf: what a tail-cache chunk needs.
	bufFirst  uint64
	bufStarts []uint32
	dirty     bool  // active has data written since its last fsync
	written   int64 // bytes written since Open

	// What the current group will publish.
	pieces    []piece
	topicAdds []topicAdd
	newTopics map[string]*topicOffsets // topics first seen in the group
	hwmAdds   []hwmAdd
	group     []*request   // the group being committed (its slice is reused)
	chunks    []*tailChunk // for the tail cache
	retired   []*tailChunk // evicted from the tail cache: buffers to reuse
	rolled    bool
	closed    []*segment // closed by rolls, snapshots not yet written
}

// piece is what a group adds to one segment.
type piece struct {
	seg     *segment
	size    int64
	next    uint64
	runMax  int64
	entries []indexEntry
}

type topicAdd struct {
	t   *topicOffsets
	off uint64
}

type hwmAdd struct {
	producer string
	seq      uint64
}

func (w *writer) run() {
	defer close(w.l.writerDone)
	for {
		clear(w.group)
		group, closed := w.l.q.take(w.l.opts.MaxGroupBytes, w.group[:0])
		w.group = group
		if closed {
			for _, r := range group {
				finish(r, AppendResult{}, ErrClosed)
			}
			return
		}
		if len(group) == 1 && group[0].ctl != nil {
			group[0].done(AppendResult{}, group[0].ctl())
			continue
		}
		taken := time.Now()
		for _, r := range group {
			w.l.stats.queue.observe(taken.Sub(r.queued))
		}
		w.commit(group)
		if w.rolled && w.failed == nil {
			// The closed segments are published whole now.
			w.rolled = false
			for _, s := range w.closed {
				w.l.writeSnapshot(s)
			}
			clear(w.closed)
			w.closed = w.closed[:0]
			_ = w.enforceRetention()
		}
	}
}

// commit appends one group: dedup, assign offsets, write, fsync, publish,
// complete.
func (w *writer) commit(group []*request) {
	if w.failed != nil {
		for _, r := range group {
			finish(r, AppendResult{}, w.failed)
		}
		return
	}
	l := w.l
	w.pieces, w.topicAdds, w.hwmAdds = w.pieces[:0], w.topicAdds[:0], w.hwmAdds[:0]
	clear(w.newTopics)
	if !w.active.prealloc && w.size > 0 && l.pre.isReady() {
		// Leave a segment that is not preallocated as soon as one is.
		if err := w.roll(); err != nil {
			w.fail(group, err)
			return
		}
	}
	now := l.opts.Now().UnixNano()
	for _, r := range group {
		if r.err != nil {
			continue
		}
		for i := range r.metas {
			m := &r.metas[i]
			if m.producer != "" && m.seq <= w.hwm[m.producer] {
				r.res.Duplicates++
				continue
			}
			frame := r.frames[m.start:m.end]
			if used := w.size + int64(len(w.buf)); used > 0 && used+int64(len(frame)) > l.opts.SegmentBytes {
				if err := w.roll(); err != nil {
					w.fail(group, err)
					return
				}
			}
			if m.producer != "" {
				w.hwm[m.producer] = m.seq
				w.hwmAdds = append(w.hwmAdds, hwmAdd{m.producer, m.seq})
			}
			off := w.next
			w.next++
			nanos := now
			if m.hasTime {
				nanos = m.nanos
			}
			pos := w.size + int64(len(w.buf))
			if len(w.buf) == 0 {
				w.bufFirst = off
			}
			w.bufStarts = append(w.bufStarts, uint32(len(w.buf)))
			w.buf = append(w.buf, frame...)
			sealFrame(w.buf[len(w.buf)-len(frame):], off, nanos)

			p := w.piece()
			if w.idx.want(pos) {
				p.entries = append(p.entries, indexEntry{rel: uint32(off - w.active.base), pos: uint32(pos), maxBefore: w.runMax})
				w.idx.lastPos = pos
			}
			w.runMax = max(w.runMax, nanos)
			p.size, p.next, p.runMax = pos+int64(len(frame)), off+1, w.runMax
			w.topicAdds = append(w.topicAdds, topicAdd{w.topic(m.topic), off})

			if r.res.Appended == 0 {
				r.res.FirstOffset = off
			}
			r.res.LastOffset = off
			r.res.Appended++
		}
	}
	if err := w.flush(); err != nil {
		w.fail(group, err)
		return
	}
	if w.size >= l.opts.SegmentBytes/2 || (!w.active.prealloc && w.written >= prepareAfterBytes) {
		l.pre.request()
	}
	w.publish()
	st := &l.stats
	if len(w.pieces) > 0 {
		st.groups.Add(1)
		n := 0
		for _, r := range group {
			n += r.res.Appended
		}
		st.groupRecords.observe(n)
	}
	for _, r := range group {
		st.appends.Add(1)
		if r.err != nil {
			st.failures.Add(1)
			finish(r, AppendResult{}, r.err)
		} else {
			st.appended.Add(uint64(r.res.Appended))
			st.duplicates.Add(uint64(r.res.Duplicates))
			finish(r, r.res, nil)
		}
	}
}

// topic resolves a topic's index entry outside FileLog.mu (the writer is
// the only goroutine that changes the topic index, so it may read it
// without the lock); a new topic is added to the index at publish.
func (w *writer) topic(name string) *topicOffsets {
	if t := w.l.topics[name]; t != nil {
		return t
	}
	if w.newTopics == nil {
		w.newTopics = map[string]*topicOffsets{}
	}
	t := w.newTopics[name]
	if t == nil {
		t = &topicOffsets{}
		w.newTopics[name] = t
	}
	return t
}

// reuse returns the buffers of a retired tail-cache chunk that no reader
// holds any more, emptied, or new ones with the given capacities (those of
// the buffers just handed over: the next group is likely as large, and
// growing a buffer by appending to it costs copies and page faults).
func (w *writer) reuse(bufCap, startsCap int) ([]byte, []uint32) {
	for i, c := range w.retired {
		if c.refs.Load() == 0 {
			w.retired = slices.Delete(w.retired, i, i+1)
			return c.data[:0], c.starts[:0]
		}
	}
	return make([]byte, 0, bufCap), make([]uint32, 0, startsCap)
}

// piece returns the current group's piece of the active segment.
func (w *writer) piece() *piece {
	if k := len(w.pieces); k > 0 && w.pieces[k-1].seg == w.active {
		return &w.pieces[k-1]
	}
	w.pieces = append(w.pieces, piece{seg: w.active})
	return &w.pieces[len(w.pieces)-1]
}

// flush writes the buffered frames to the active segment and fsyncs it.
//
// In a preallocated segment the write goes on with the zeros already there
// up to the end of its last page: a write that ends inside a page the page
// cache does not hold makes the kernel read that page from the disk first
// (the spare was zero-filled around the cache), one synchronous read per
// group commit. Writing whole pages avoids it; the next group overwrites
// the zeros.
func (w *writer) flush() error {
	if n := len(w.buf); n > 0 {
		if s := w.active; s.prealloc {
			end := w.size + int64(n)
			pad := min((pageSize-end%pageSize)%pageSize, max(s.capacity-end, 0))
			w.buf = append(w.buf, zeroPage[:pad]...)
		}
		start := time.Now()
		_, err := w.active.f.WriteAt(w.buf, w.size)
		w.l.stats.write.observe(time.Since(start))
		if err != nil {
			return fmt.Errorf("commitlog: write %s at byte %d: %w", w.active.path, w.size, err)
		}
		if w.l.cache.maxBytes > 0 {
			// The buffer goes to the tail cache, published with the group
			// (if the fsync succeeds); the next group is written into the
			// buffer of a chunk the cache no longer holds, which saves
			// copying the group and faulting in new memory for it.
			w.chunks = append(w.chunks, &tailChunk{first: w.bufFirst, data: w.buf[:n], starts: w.bufStarts})
			w.buf, w.bufStarts = w.reuse(cap(w.buf), cap(w.bufStarts))
		}
		w.bufStarts = w.bufStarts[:0]
		w.size += int64(n)
		w.written += int64(n)
		w.buf = w.buf[:0]
		w.dirty = true
	}
	if w.dirty {
		start := time.Now()
		err := w.active.f.Sync()
		w.l.stats.fsync.observe(time.Since(start))
		if err != nil {
			return fmt.Errorf("commitlog: fsync %s: %w", w.active.path, err)
		}
		w.dirty = false
	}
	return nil
}

// roll makes the active segment durable, starts a new one and writes the
// high-water-mark checkpoint for everything before it.
func (w *writer) roll() error {
	if err := w.flush(); err != nil {
		return err
	}
	l := w.l
	base := w.next
	path := filepath.Join(l.dir, segmentName(base))
	f, err := l.pre.take(path)
	if err != nil {
		return err
	}
	prealloc := f != nil
	if f == nil {
		if f, err = l.fs.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644); err != nil {
			return fmt.Errorf("commitlog: create segment: %w", err)
		}
	}
	if err := l.fs.SyncDir(l.dir); err != nil {
		_ = f.Close()
		return fmt.Errorf("commitlog: create segment %s: fsync directory: %w", path, err)
	}
	if old := w.active; old.prealloc {
		// Drop the unused zeros. Not fsync'd: zeros a crash brings back
		// are skipped by recovery.
		if err := old.f.Truncate(w.size); err != nil {
			l.log.Warn("commitlog: could not truncate a closed segment's unused space", "file", old.path, "err", err)
		}
	}
	w.closed = append(w.closed, w.active)
	s := newSegment(l.dir, base, f, w.runMax)
	s.prealloc, s.capacity = prealloc, l.opts.SegmentBytes
	l.stats.rolls.Add(1)
	if prealloc {
		l.stats.preallocRolls.Add(1)
	}
	l.mu.Lock()
	l.segments = append(l.segments, s)
	l.mu.Unlock()
	w.active, w.size, w.idx.lastPos = s, 0, -1
	w.rolled = true

	// A failed checkpoint does not fail appends: retention just keeps the
	// segments the last good checkpoint does not cover, and the next roll
	// tries again.
	if err := writeCheckpoint(l.fs, l.dir, base, w.hwm); err != nil {
		l.log.Error("commitlog: high-water-mark checkpoint failed; retention is held back", "offset", base, "err", err)
	} else {
		w.ckpt = base
	}
	return nil
}

// publish makes the group visible to readers.
func (w *writer) publish() {
	l := w.l
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, p := range w.pieces {
		s := p.seg
		l.stats.bytes.Add(uint64(p.size - s.size))
		l.bytes += p.size - s.size
		s.size, s.next, s.runMax = p.size, p.next, p.runMax
		s.index = append(s.index, p.entries...)
	}
	for name, t := range w.newTopics {
		l.topics[name] = t
	}
	for _, a := range w.topicAdds {
		a.t.add(a.off)
	}
	for _, h := range w.hwmAdds {
		l.hwm[h.producer] = h.seq
	}
	for _, c := range w.chunks {
		w.retired = l.cache.add(c, w.retired)
	}
	clear(w.chunks)
	w.chunks = w.chunks[:0]
	if l.next != w.next {
		l.next = w.next
		if !l.closed {
			close(l.changed)
			l.changed = make(chan struct{})
		}
	}
}

// fail puts the log in the failed state and fails the group.
func (w *writer) fail(group []*request, err error) {
	w.failed = fmt.Errorf("%w: %w", ErrFailed, err)
	w.l.stats.failed.Store(true)
	w.l.log.Error("commitlog: append failed; refusing further appends until reopened", "err", err)
	for _, r := range group {
		w.l.stats.appends.Add(1)
		w.l.stats.failures.Add(1)
		if r.err != nil {
			finish(r, AppendResult{}, r.err)
		} else {
			finish(r, AppendResult{}, w.failed)
		}
	}
}
