package commitlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"time"
)

// The read path: readers hold a segment (so retention cannot close its file
// under them), scan it from the nearest index entry, and see only what the
// writer published after fsync.

// Read implements Log.
func (l *FileLog) Read(from uint64, maxRecords, maxBytes int) ([]Record, error) {
	if out, ok, err := l.readCached(from, maxRecords, maxBytes); ok {
		return out, err
	}
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
	l.mu.RLock()
	if l.closed {
		l.mu.RUnlock()
		return nil, ErrClosed
	}
	if from < l.segments[0].base {
		l.mu.RUnlock()
		return nil, ErrOutOfRange
	}
	t := l.topics[topic]
	if t == nil || max <= 0 {
		l.mu.RUnlock()
		return nil, nil
	}
	offs := t.collect(from, l.next, max, nil)
	// The offsets in the tail cache (a suffix of offs) are read from it.
	var cached [][]byte
	var held []*tailChunk
	if first, ok := l.cache.first(); ok {
		k := sort.Search(len(offs), func(i int) bool { return offs[i] >= first })
		cached, held = l.cache.frames(offs[k:], make([][]byte, 0, len(offs)-k), nil)
		offs = offs[:k]
	}
	l.mu.RUnlock()
	defer release(held)

	out := make([]Record, 0, len(offs)+len(cached))
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
			err := l.scan(s, seeks[i-first], limit, seekChunk(l.opts.IndexIntervalBytes), keep, func(m *recordMeta, end int64) bool {
				if m.offset < offs[i] {
					return true
				}
				if m.offset > offs[i] {
					ferr = fmt.Errorf("%w: %s: the topic index lists offset %d, which the segment does not hold", ErrCorrupt, s.path, offs[i])
					return false
				}
				out = append(out, m.record())
				i++
				if i < j && seeks[i-first] > end {
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
	for _, f := range cached {
		m, err := parseBody(f[frameHeaderLen:])
		if err != nil {
			return nil, fmt.Errorf("%w: cached record: %w", ErrCorrupt, err)
		}
		out = append(out, m.record())
	}
	return out, nil
}

// readCached is Read from the tail cache. ok is false if from is not
// cached (or the log is closed or from is out of range: the file path
// reports those).
func (l *FileLog) readCached(from uint64, maxRecords, maxBytes int) (out []Record, ok bool, err error) {
	l.mu.RLock()
	if l.closed || from < l.segments[0].base || !l.cache.holds(from) {
		l.mu.RUnlock()
		return nil, false, nil
	}
	end := l.next
	chunks := l.cache.span(from, end, maxRecords)
	l.mu.RUnlock()
	defer release(chunks)

	size := 0
	for _, c := range chunks {
		for off := max(c.first, from); off < c.next() && off < end; off++ {
			m, err := parseBody(c.frame(off)[frameHeaderLen:])
			if err != nil {
				return nil, true, fmt.Errorf("%w: cached record %d: %w", ErrCorrupt, off, err)
			}
			if len(out) >= maxRecords || (len(out) > 0 && size+len(m.value) > maxBytes) {
				return out, true, nil
			}
			size += len(m.value)
			out = append(out, m.record())
		}
	}
	return out, true, nil
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

// scan calls fn with each record of s in [pos, limit), and the position
// where the record's frame ends, until fn returns false. If keep is set, it is shown each frame's body first, unverified:
// the frames it rejects are skipped without checksum verification (they
// are not returned, so need none; a damaged length shows up as a bad
// checksum of the next frame kept). The record's byte slices are valid only
// during the call. chunk > 0 makes the first read that small (see
// frameReader.chunk).
func (l *FileLog) scan(s *segment, pos, limit int64, chunk int, keep func(body []byte) bool, fn func(m *recordMeta, end int64) bool) error {
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
		if !fn(&m, start+int64(len(frame))) {
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
