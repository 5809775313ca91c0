package commitlog

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// segmentExt is the suffix of segment files, which are named by the offset
// of their first record: 00000000000000000000.log.
const segmentExt = ".log"

func segmentName(base uint64) string { return fmt.Sprintf("%020d%s", base, segmentExt) }

// parseSegmentName returns the base offset of a segment file name.
func parseSegmentName(name string) (uint64, bool) { return parseBaseName(name, segmentExt) }

// parseBaseName returns the base offset of a segment's file with
// extension ext.
func parseBaseName(name, ext string) (uint64, bool) {
	s, ok := strings.CutSuffix(name, ext)
	if !ok || len(s) != 20 {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 64)
	return n, err == nil
}

// indexEntry is one point of a segment's sparse index: the record at
// offset base+rel starts at pos. maxBefore is the largest record time (Unix
// ns) of every record before it in the log, which makes the entries usable
// for OffsetForTime even when times do not grow with offsets.
type indexEntry struct {
	rel       uint32
	pos       uint32
	maxBefore int64
}

// segment is one file of the log. Its mutable fields are guarded by
// FileLog.mu; the writer goroutine writes beyond size without the lock and
// publishes under it.
type segment struct {
	base uint64
	path string
	f    File

	size   int64  // committed bytes: readers never look past this
	next   uint64 // offset after the last committed record
	runMax int64  // largest record time in the log up to this segment's end
	index  []indexEntry
	// prealloc: the file was zero-filled to capacity bytes (at least
	// Options.SegmentBytes) before records were written to it. Set before
	// the writer goroutine starts or by it, and read only by it.
	prealloc bool
	capacity int64
	refs     int  // readers holding f
	gone     bool // removed from the log; f is closed when refs drops to 0
}

func newSegment(dir string, base uint64, f File, runMax int64) *segment {
	return &segment{base: base, path: filepath.Join(dir, segmentName(base)), f: f, next: base, runMax: runMax}
}

// seek returns the position of the last index entry at or before off.
func (s *segment) seek(off uint64) int64 {
	i := sort.Search(len(s.index), func(i int) bool { return s.base+uint64(s.index[i].rel) > off })
	if i == 0 {
		return 0
	}
	return int64(s.index[i-1].pos)
}

// seekTime returns the position of the last index entry before which every
// record is older than nanos.
func (s *segment) seekTime(nanos int64) int64 {
	i := sort.Search(len(s.index), func(i int) bool { return s.index[i].maxBefore >= nanos })
	if i == 0 {
		return 0
	}
	return int64(s.index[i-1].pos)
}

// indexer decides where sparse index entries go as records are added to a
// segment, during recovery and in the writer.
type indexer struct {
	interval int64
	lastPos  int64 // position of the last entry, -1 if none
}

func (x *indexer) want(pos int64) bool {
	return x.lastPos < 0 || pos-x.lastPos >= x.interval
}

var readBufPool = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// frameReader reads the frames of one file region [pos, limit) through a
// buffer.
type frameReader struct {
	f     File
	limit int64
	buf   []byte
	r, w  int   // unread data is buf[r:w]
	pos   int64 // file position of buf[r]
	// chunk, if set, is how much the next fill reads (doubling after each
	// fill up to the buffer): a read that seeks to one record near an index
	// entry does not need a whole buffer.
	chunk int
}

func newFrameReader(f File, pos, limit int64, buf []byte) *frameReader {
	return &frameReader{f: f, limit: limit, buf: buf, pos: pos}
}

// fill makes at least n bytes available if the region holds them and
// reports whether it did.
func (fr *frameReader) fill(n int) (bool, error) {
	if fr.w-fr.r >= n {
		return true, nil
	}
	if int64(n) > fr.limit-fr.pos {
		return false, nil
	}
	if n > len(fr.buf) {
		nb := make([]byte, n)
		copy(nb, fr.buf[fr.r:fr.w])
		fr.buf = nb
	} else {
		copy(fr.buf, fr.buf[fr.r:fr.w])
	}
	fr.w -= fr.r
	fr.r = 0
	want := min(int64(len(fr.buf)-fr.w), fr.limit-fr.pos-int64(fr.w))
	if fr.chunk > 0 {
		want = min(want, int64(max(n-fr.w, fr.chunk)))
		fr.chunk *= 2
	}
	got, err := fr.f.ReadAt(fr.buf[fr.w:fr.w+int(want)], fr.pos+int64(fr.w))
	fr.w += got
	if fr.w >= n {
		return true, nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return false, nil // the file is shorter than the region
	}
	return false, err
}

// nextFrame returns the next frame, header included (valid until the next
// call), and its position, without verifying its checksum. It returns
// io.EOF at the end of the region, errShortFrame or errBadLength for a bad
// frame (the reader then stays at that frame), or an I/O error.
func (fr *frameReader) nextFrame() (frame []byte, start int64, err error) {
	if fr.pos >= fr.limit {
		return nil, fr.pos, io.EOF
	}
	ok, err := fr.fill(frameHeaderLen)
	if err != nil {
		return nil, fr.pos, err
	}
	if !ok {
		return nil, fr.pos, errShortFrame
	}
	n := frameLen(fr.buf[fr.r:])
	if n < minBodyLen || n > maxBodyLen {
		return nil, fr.pos, fmt.Errorf("%w: %d", errBadLength, n)
	}
	if ok, err = fr.fill(frameHeaderLen + n); err != nil {
		return nil, fr.pos, err
	} else if !ok {
		return nil, fr.pos, errShortFrame
	}
	frame = fr.buf[fr.r : fr.r+frameHeaderLen+n]
	start = fr.pos
	fr.r += len(frame)
	fr.pos += int64(len(frame))
	return frame, start, nil
}

// next is nextFrame with the checksum verified; it returns the body. On a
// checksum mismatch (errChecksum) the reader has moved past the frame.
func (fr *frameReader) next() (body []byte, start int64, err error) {
	frame, start, err := fr.nextFrame()
	if err != nil {
		return nil, start, err
	}
	if err := verifyFrame(frame); err != nil {
		return nil, start, err
	}
	return frame[frameHeaderLen:], start, nil
}

// verifyFrame checks the checksum of a whole frame.
func verifyFrame(frame []byte) error {
	if crc32.Checksum(frame[frameHeaderLen:], crcTable) != leUint32(frame[4:]) {
		return errChecksum
	}
	return nil
}

func leUint32(b []byte) uint32 {
	_ = b[3]
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

const noTime = math.MinInt64
