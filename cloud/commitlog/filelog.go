package commitlog

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"sort"
	"sync"
	"sync/atomic"
	"time"
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
// retention deletes (see checkpoint.go).
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
// append, ~2k appends/s on our disks) and fsync on a timer (acknowledges
// before durability or adds a fixed delay to every append).
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
// its offsets. Both live in memory and are rebuilt on Open by scanning the
// segments, which also verifies every checksum: Open reads the whole
// retained log.
//
// # Locking
//
// FileLog.mu guards the published state: the segment list and every
// segment's committed size and index, the offsets, the high-water marks, the
// topic index. The queue has its own mutex and the two are never held
// together. The writer goroutine owns writer (the unpublished tail, the
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

	mu       sync.Mutex
	closed   bool
	segments []*segment // ascending base; the last is active
	next     uint64
	bytes    int64 // committed bytes of all segments
	hwm      map[string]uint64
	topics   topicIndex
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
	type result struct {
		res AppendResult
		err error
	}
	ch := make(chan result, 1)
	req.done = func(res AppendResult, err error) { ch <- result{res, err} }
	if !l.q.push(req) {
		return AppendResult{}, ErrClosed
	}
	select {
	case r := <-ch:
		return r.res, r.err
	case <-ctx.Done():
		return AppendResult{}, ctx.Err()
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
	req := &request{frames: make([]byte, 0, size), metas: make([]recordRef, len(recs))}
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

// Read implements Log.
func (l *FileLog) Read(from uint64, maxRecords, maxBytes int) ([]Record, error) {
	var out []Record
	size := 0
	for cur := from; ; {
		h, err := l.acquire(cur, true)
		if err != nil {
			if len(out) > 0 && errors.Is(err, ErrOutOfRange) {
				return out, nil // retention overtook a long read
			}
			return nil, err
		}
		if h.seg == nil || maxRecords <= 0 {
			l.release(h.seg)
			return out, nil
		}
		full := false
		keep := func(body []byte) bool { return bodyOffset(body) >= cur }
		err = l.scan(h.seg, h.pos, h.limit, 0, keep, func(m *recordMeta, _ int64) bool {
			if m.offset < cur {
				return true
			}
			if m.offset >= h.end || len(out) >= maxRecords || (len(out) > 0 && size+len(m.value) > maxBytes) {
				full = true
				return false
			}
			size += len(m.value)
			out = append(out, m.record())
			return true
		})
		l.release(h.seg)
		if err != nil {
			return nil, err
		}
		if full || h.segNext >= h.end {
			return out, nil
		}
		cur = h.segNext
	}
}

// ReadTopic implements TopicReader.
func (l *FileLog) ReadTopic(topic string, from uint64, max int) ([]Record, error) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, ErrClosed
	}
	if from < l.segments[0].base {
		l.mu.Unlock()
		return nil, ErrOutOfRange
	}
	t := l.topics[topic]
	if t == nil || max <= 0 {
		l.mu.Unlock()
		return nil, nil
	}
	offs := t.collect(from, l.next, max, nil)
	l.mu.Unlock()

	out := make([]Record, 0, len(offs))
	var seeks []int64
	for i := 0; i < len(offs); {
		// Hold the segment of offs[i] and find where each of its wanted
		// offsets should be sought.
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return nil, ErrClosed
		}
		if offs[i] < l.segments[0].base {
			l.mu.Unlock()
			if len(out) > 0 {
				return out, nil
			}
			return nil, ErrOutOfRange
		}
		s := l.segments[l.segmentIndex(offs[i])]
		s.refs++
		j := i
		seeks = seeks[:0]
		for j < len(offs) && offs[j] < s.next {
			seeks = append(seeks, s.seek(offs[j]))
			j++
		}
		limit := s.size
		l.mu.Unlock()

		// Scan forward while the next wanted record is near; seek again
		// when the index has an entry between here and it.
		first := i
		for i < j {
			reseek := false
			var ferr error
			keep := func(body []byte) bool { return bodyOffset(body) >= offs[i] }
			err := l.scan(s, seeks[i-first], limit, seekChunk(l.opts.IndexIntervalBytes), keep, func(m *recordMeta, pos int64) bool {
				if m.offset < offs[i] {
					return true
				}
				if m.offset > offs[i] {
					ferr = fmt.Errorf("%w: %s: the topic index lists offset %d, which the segment does not hold", ErrCorrupt, s.path, offs[i])
					return false
				}
				out = append(out, m.record())
				i++
				if i < j && seeks[i-first] > pos {
					reseek = true
					return false
				}
				return i < j
			})
			if err == nil {
				err = ferr
			}
			if err == nil && i < j && !reseek {
				err = fmt.Errorf("%w: %s: the topic index lists offset %d, which the segment does not hold", ErrCorrupt, s.path, offs[i])
			}
			if err != nil {
				l.release(s)
				return nil, err
			}
		}
		l.release(s)
	}
	return out, nil
}

// OffsetForTime implements TopicReader.
func (l *FileLog) OffsetForTime(t time.Time) (uint64, error) {
	nanos := int64(math.MinInt64)
	if t.After(maxTime) {
		nanos = math.MaxInt64
	} else if !t.Before(minTime) {
		nanos = t.UnixNano()
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return 0, ErrClosed
	}
	// Segments whose running maximum is below t hold only older records.
	i := sort.Search(len(l.segments), func(i int) bool { return l.segments[i].runMax >= nanos })
	if i == len(l.segments) {
		next := l.next
		l.mu.Unlock()
		return next, nil
	}
	from, pos := l.segments[i].base, l.segments[i].seekTime(nanos)
	l.mu.Unlock()

	for {
		h, err := l.acquire(from, false)
		if err != nil {
			return 0, err
		}
		if h.seg == nil {
			return h.end, nil
		}
		found, ok := uint64(0), false
		keep := func(body []byte) bool { return bodyNanos(body) >= nanos || bodyOffset(body) >= h.end }
		err = l.scan(h.seg, pos, h.limit, seekChunk(l.opts.IndexIntervalBytes), keep, func(m *recordMeta, _ int64) bool {
			if m.offset >= h.end {
				return false
			}
			if m.nanos >= nanos {
				found, ok = m.offset, true
				return false
			}
			return true
		})
		l.release(h.seg)
		if err != nil || ok {
			return found, err
		}
		if h.segNext >= h.end {
			return h.end, nil
		}
		from, pos = h.segNext, 0
	}
}

// Wait implements Log.
func (l *FileLog) Wait(ctx context.Context, from uint64) error {
	for {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return ErrClosed
		}
		if l.next > from {
			l.mu.Unlock()
			return nil
		}
		ch := l.changed
		l.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// FirstOffset implements Log.
func (l *FileLog) FirstOffset() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.segments[0].base
}

// NextOffset implements Log.
func (l *FileLog) NextOffset() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.next
}

// HighWaterMark implements Log.
func (l *FileLog) HighWaterMark(producer string) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.hwm[producer]
}

// Size returns the committed bytes of the retained segments.
func (l *FileLog) Size() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
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

// segmentIndex returns the index of the segment holding off (mu held; off
// must be retained).
func (l *FileLog) segmentIndex(off uint64) int {
	return sort.Search(len(l.segments), func(i int) bool { return l.segments[i].base > off }) - 1
}

// hold is a reader's grip on one segment.
type hold struct {
	seg     *segment // nil: nothing to read at from
	pos     int64    // where to start scanning
	limit   int64    // committed size of seg
	segNext uint64   // committed next offset of seg
	end     uint64   // the log's committed next offset
}

// acquire holds the segment that contains from. With seek it starts at the
// index entry at or before from, otherwise at 0.
func (l *FileLog) acquire(from uint64, seek bool) (hold, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return hold{}, ErrClosed
	}
	if from < l.segments[0].base {
		return hold{}, ErrOutOfRange
	}
	h := hold{end: l.next}
	if from >= l.next {
		return h, nil
	}
	s := l.segments[l.segmentIndex(from)]
	s.refs++
	h.seg, h.limit, h.segNext = s, s.size, s.next
	if seek {
		h.pos = s.seek(from)
	}
	return h, nil
}

func (l *FileLog) release(s *segment) {
	if s == nil {
		return
	}
	l.mu.Lock()
	s.refs--
	closeNow := s.gone && s.refs == 0
	l.mu.Unlock()
	if closeNow {
		_ = s.f.Close()
	}
}

// scan calls fn with each record of s in [pos, limit) until fn returns
// false. If keep is set, it is shown each frame's body first, unverified:
// the frames it rejects are skipped without checksum verification (they
// are not returned, so need none; a damaged length shows up as a bad
// checksum of the next frame kept). The record's byte slices are valid only
// during the call. chunk > 0 makes the first read that small (see
// frameReader.chunk).
func (l *FileLog) scan(s *segment, pos, limit int64, chunk int, keep func(body []byte) bool, fn func(m *recordMeta, pos int64) bool) error {
	bp := readBufPool.Get().(*[]byte)
	fr := newFrameReader(s.f, pos, limit, *bp)
	fr.chunk = chunk
	defer func() {
		if cap(fr.buf) <= 1<<20 {
			*bp = fr.buf[:cap(fr.buf)]
		}
		readBufPool.Put(bp)
	}()
	for {
		frame, start, err := fr.nextFrame()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return segmentError(s.path, start, err)
		}
		body := frame[frameHeaderLen:]
		if keep != nil && body[0] == recordVersion && !keep(body) {
			continue
		}
		if err := verifyFrame(frame); err != nil {
			return segmentError(s.path, start, err)
		}
		m, err := parseBody(body)
		if err != nil {
			return segmentError(s.path, start, err)
		}
		if !fn(&m, start) {
			return nil
		}
	}
}

// bodyOffset and bodyNanos read a body's offset and time without parsing
// it (the body is at least minBodyLen long).
func bodyOffset(body []byte) uint64 { return binary.LittleEndian.Uint64(body[1:]) }
func bodyNanos(body []byte) int64   { return int64(binary.LittleEndian.Uint64(body[9:])) }

// seekChunk is the first read of a scan that looks for one record near an
// index entry.
func seekChunk(interval int) int { return interval + 4<<10 }

// segmentError wraps a frame error in ErrCorrupt with its place, and an I/O
// error with its place only.
func segmentError(path string, pos int64, err error) error {
	if isFrameError(err) {
		return fmt.Errorf("%w: %s at byte %d: %w", ErrCorrupt, path, pos, err)
	}
	return fmt.Errorf("commitlog: read %s at byte %d: %w", path, pos, err)
}

func isFrameError(err error) bool {
	return errors.Is(err, errShortFrame) || errors.Is(err, errBadLength) ||
		errors.Is(err, errChecksum) || errors.Is(err, errBadBody)
}
