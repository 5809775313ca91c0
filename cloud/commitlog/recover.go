package commitlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Open opens (creating if needed) the log in dir and recovers it.
//
// Recovery rebuilds the offset, time and topic indexes and the producers'
// high-water marks (from the checkpoint plus the records above it). It
// loads closed segments from the snapshots written when they were closed
// and scans the rest, verifying every checksum (see snapshot.go for when a
// snapshot is used; Options.VerifyOnOpen scans everything). A bad frame at
// the end of the last segment is a torn write from a crash (it was never
// acknowledged): it is cut off and the cut fsync'd. Zeros from a bad frame
// to the end of a file are unused preallocated space (prealloc.go). Any
// other bad frame a scan meets means acknowledged data is damaged: Open
// returns an error wrapping ErrCorrupt that names the file and byte
// position, and changes nothing.
//
// How a torn tail is told from damage in the last segment: after the first
// bad frame, Open looks for a later valid frame (the right version byte, an
// offset in the plausible range and a matching CRC). If there is none, the
// bad frame starts the torn tail. If there is one, the bad region is a torn
// write only if it contains an all-zero 512-byte sector (blocks a crash left
// unwritten read as zeros, and a group commit's pages can reach the disk out
// of order); otherwise it is corruption. So a damaged record followed by
// good ones is reported, and a single damaged record at the very end is
// treated as torn, which is the most it can be told apart from one.
//
// Open keeps the files open and the directory locked (see Locker); Close
// releases them. A second Open of the directory fails with ErrLocked.
func Open(dir string, opts Options) (*FileLog, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	l := &FileLog{
		dir:        dir,
		opts:       opts,
		fs:         opts.FS,
		log:        opts.Logger,
		writerDone: make(chan struct{}),
		stopTicker: make(chan struct{}),
		tickerDone: make(chan struct{}),
		hwm:        map[string]uint64{},
		topics:     topicIndex{},
		changed:    make(chan struct{}),
	}
	l.q.wake = make(chan struct{}, 1)
	l.cache.maxBytes, l.cache.maxChunks = max(opts.TailCacheBytes, 0), maxTailChunks
	if !opts.NoPreallocate {
		l.pre = newPreparer(l)
	}
	start := time.Now()
	if err := l.recover(); err != nil {
		for _, s := range l.segments {
			_ = s.f.Close()
		}
		if l.lock != nil {
			_ = l.lock.Close()
		}
		return nil, err
	}
	l.log.Info("commitlog: opened", "dir", dir, "segments", len(l.segments),
		"first_offset", l.segments[0].base, "next_offset", l.next, "bytes", l.bytes,
		"producers", len(l.hwm), "topics", len(l.topics), "segments_scanned", l.scanned, "snapshots_loaded", l.loaded,
		"took", time.Since(start))
	go l.w.run()
	go l.retentionLoop()
	if l.pre != nil {
		go l.pre.run()
	}
	return l, nil
}

// lockName is the lock file in a log's directory.
const lockName = "LOCK"

func (l *FileLog) recover() error {
	if err := l.fs.MkdirAll(l.dir, 0o755); err != nil {
		return fmt.Errorf("commitlog: open: %w", err)
	}
	if lk, ok := l.fs.(Locker); ok {
		lock, err := lk.Lock(filepath.Join(l.dir, lockName))
		if err != nil {
			return err
		}
		l.lock = lock
	}
	if err := adoptSpare(l.fs, l.dir, l.pre); err != nil {
		return err
	}
	entries, err := l.fs.ReadDir(l.dir)
	if err != nil {
		return fmt.Errorf("commitlog: open: %w", err)
	}
	var bases, snapshots []uint64
	for _, e := range entries {
		name := e.Name()
		if name == checkpointName+".tmp" {
			if err := l.fs.Remove(filepath.Join(l.dir, name)); err != nil {
				return fmt.Errorf("commitlog: open: remove stale checkpoint: %w", err)
			}
			continue
		}
		if base, ok := parseSegmentName(name); ok && e.Type().IsRegular() {
			bases = append(bases, base)
		}
		if base, ok := parseBaseName(name, snapshotExt); ok {
			snapshots = append(snapshots, base)
		}
	}
	slices.Sort(bases)
	for _, base := range snapshots {
		if _, found := slices.BinarySearch(bases, base); !found {
			// Its segment is gone (retention removes the segment first).
			if err := l.fs.Remove(filepath.Join(l.dir, snapshotName(base))); err != nil {
				return fmt.Errorf("commitlog: open: remove orphan snapshot: %w", err)
			}
		}
	}

	ckpt, hasCkpt, err := readCheckpoint(l.fs, l.dir)
	if err != nil {
		return err
	}
	for p, seq := range ckpt.hwm {
		l.hwm[p] = seq
	}
	if len(bases) == 0 {
		// A new log, or one whose every segment is gone: never reuse the
		// offsets a checkpoint has seen.
		bases = []uint64{ckpt.validUpTo}
		path := filepath.Join(l.dir, segmentName(ckpt.validUpTo))
		f, err := l.fs.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return fmt.Errorf("commitlog: open: create segment: %w", err)
		}
		_ = f.Close()
		if err := l.fs.SyncDir(l.dir); err != nil {
			return fmt.Errorf("commitlog: open: fsync directory: %w", err)
		}
	}
	if bases[0] > ckpt.validUpTo {
		return fmt.Errorf("%w: %s: the oldest segment starts at offset %d but the high-water-mark checkpoint covers only offsets below %d: segments are missing",
			ErrCorrupt, l.dir, bases[0], ckpt.validUpTo)
	}

	runMax := int64(noTime)
	next := bases[0]
	var buf []byte // shared by the segments' scans
	for i, base := range bases {
		if base != next {
			return fmt.Errorf("%w: %s: segment %s starts at offset %d, want %d (a segment is missing)",
				ErrCorrupt, l.dir, segmentName(base), base, next)
		}
		path := filepath.Join(l.dir, segmentName(base))
		f, err := l.fs.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return fmt.Errorf("commitlog: open: %w", err)
		}
		s := newSegment(l.dir, base, f, runMax)
		l.segments = append(l.segments, s)
		last := i == len(bases)-1
		used, valid := false, false
		if !last {
			used, valid = l.useSnapshot(s, ckpt.validUpTo, &runMax)
		}
		if used {
			l.loaded++
		} else {
			if err := l.recoverSegment(s, last, &runMax, &buf); err != nil {
				return err
			}
			l.scanned++
			if !last && !valid {
				l.writeSnapshot(s)
			}
		}
		l.bytes += s.size
		next = s.next
	}
	if ckpt.validUpTo > next {
		return fmt.Errorf("%w: %s: the high-water-mark checkpoint covers offsets below %d but the log ends at %d",
			ErrCorrupt, l.dir, ckpt.validUpTo, next)
	}
	l.next = next

	active := l.segments[len(l.segments)-1]
	l.w = writer{
		l:      l,
		active: active,
		size:   active.size,
		next:   next,
		hwm:    make(map[string]uint64, len(l.hwm)),
		runMax: runMax,
		idx:    indexer{interval: int64(l.opts.IndexIntervalBytes), lastPos: -1},
		ckpt:   ckpt.validUpTo,
	}
	for p, seq := range l.hwm {
		l.w.hwm[p] = seq
	}
	if n := len(active.index); n > 0 {
		l.w.idx.lastPos = int64(active.index[n-1].pos)
	}
	if !hasCkpt || ckpt.validUpTo < active.base {
		// Every scanned record is durable, so the current marks are valid
		// below the active segment's base (and beyond).
		if err := writeCheckpoint(l.fs, l.dir, active.base, l.hwm); err != nil {
			l.log.Error("commitlog: high-water-mark checkpoint failed; retention is held back", "err", err)
		} else {
			l.w.ckpt = active.base
		}
	}
	return nil
}

// useSnapshot loads closed segment s from its snapshot if it has a valid
// one and the checkpoint covers its records' high-water marks (otherwise
// the segment must be scanned for them). valid reports a valid snapshot,
// used or not.
func (l *FileLog) useSnapshot(s *segment, validUpTo uint64, runMax *int64) (used, valid bool) {
	st, err := s.f.Stat()
	if err != nil {
		return false, false // the scan reports it
	}
	sn, err := l.loadSnapshot(s, st.Size())
	if err != nil {
		l.log.Warn("commitlog: segment snapshot not used; scanning the segment", "file", s.path, "err", err)
		return false, false
	}
	if sn == nil || l.opts.VerifyOnOpen || sn.next > validUpTo {
		return false, sn != nil
	}
	s.size, s.next, s.index = sn.size, sn.next, sn.index
	*runMax = max(*runMax, sn.runMax)
	s.runMax = *runMax
	for _, t := range sn.topics {
		to := l.topics.get(t.name)
		for _, off := range t.offsets {
			to.add(off)
		}
	}
	return true, true
}

// recoverSegment scans s, indexing its records; see Open for how a bad
// frame is handled.
func (l *FileLog) recoverSegment(s *segment, last bool, runMax *int64, buf *[]byte) error {
	st, err := s.f.Stat()
	if err != nil {
		return fmt.Errorf("commitlog: open: %w", err)
	}
	size := st.Size()
	if want := int(min(size, 1<<20)); len(*buf) < want {
		*buf = make([]byte, max(want, 64<<10))
	}
	fr := newFrameReader(s.f, 0, size, *buf)
	defer func() { *buf = fr.buf }()
	idx := indexer{interval: int64(l.opts.IndexIntervalBytes), lastPos: -1}
	var producer string // the last producer seen, to avoid a string per record
	for {
		body, pos, err := fr.next()
		if err == io.EOF {
			break
		}
		var m recordMeta
		if err == nil {
			m, err = parseBody(body)
		}
		if err != nil {
			if !isFrameError(err) {
				return segmentError(s.path, pos, err)
			}
			// Zeros to the end of the file are preallocated space, in any
			// segment (a closed one keeps them if a crash lost its
			// truncation). Damage that reads as zeros in a closed segment
			// shows up as a gap before the next one.
			zeros, zerr := zeroTail(s.f, pos, size, *buf)
			if zerr != nil {
				return segmentError(s.path, pos, zerr)
			}
			if zeros {
				s.prealloc, s.capacity = last && size >= l.opts.SegmentBytes, size
				return nil
			}
			if !last {
				return segmentError(s.path, pos, err)
			}
			return l.cutTail(s, pos, size, err)
		}
		if m.offset != s.next {
			return fmt.Errorf("%w: %s at byte %d: record has offset %d, want %d", ErrCorrupt, s.path, pos, m.offset, s.next)
		}
		if idx.want(pos) {
			s.index = append(s.index, indexEntry{rel: uint32(m.offset - s.base), pos: uint32(pos), maxBefore: *runMax})
			idx.lastPos = pos
		}
		*runMax = max(*runMax, m.nanos)
		s.runMax = *runMax
		if len(m.producer) > 0 {
			if string(m.producer) != producer {
				producer = string(m.producer)
			}
			if m.producerSeq > l.hwm[producer] {
				l.hwm[producer] = m.producerSeq
			}
		}
		l.topics.addBytes(m.topic, m.offset)
		s.next = m.offset + 1
		s.size = pos + frameHeaderLen + int64(len(body))
	}
	if s.size != size {
		// Cannot happen: the reader stops only at a bad frame or the end.
		return fmt.Errorf("%w: %s: scanned %d of %d bytes", ErrCorrupt, s.path, s.size, size)
	}
	return nil
}

// cutTail handles the first bad frame of the last segment, at pos, when
// the rest of the file is not all zeros.
func (l *FileLog) cutTail(s *segment, pos, size int64, cause error) error {
	buf := make([]byte, zeroChunk)
	end, err := zeroEnd(s.f, pos, size, buf)
	if err != nil {
		return fmt.Errorf("commitlog: open: read %s: %w", s.path, err)
	}
	rest := make([]byte, end-pos) // up to the last non-zero byte
	if _, err := s.f.ReadAt(rest, pos); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("commitlog: open: read %s: %w", s.path, err)
	}
	if q := resync(rest, s.next); q > 0 && !hasZeroSector(rest[:q], pos) {
		return fmt.Errorf("%w: %s at byte %d: %w (a valid record follows at byte %d, so this is not a torn write)",
			ErrCorrupt, s.path, pos, cause, pos+int64(q))
	}
	l.log.Warn("commitlog: cutting off a torn tail", "file", s.path, "at", pos, "bytes", end-pos, "cause", cause)
	if size >= l.opts.SegmentBytes && end < size {
		// A preallocated segment: zero the torn bytes and keep its size.
		// They must go: records written later could end before them, and
		// a whole stale frame of the torn group would then follow.
		for p := pos; p < end; p += int64(len(buf)) {
			clear(buf)
			if _, err := s.f.WriteAt(buf[:min(int64(len(buf)), end-p)], p); err != nil {
				return fmt.Errorf("commitlog: open: zero the torn tail of %s: %w", s.path, err)
			}
		}
		s.prealloc, s.capacity = true, size
	} else if err := s.f.Truncate(pos); err != nil {
		return fmt.Errorf("commitlog: open: truncate torn tail of %s: %w", s.path, err)
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("commitlog: open: fsync %s after cutting its torn tail: %w", s.path, err)
	}
	return nil
}

// resync returns the position in b of the first valid frame after b[0]
// whose offset is at least want, or -1.
func resync(b []byte, want uint64) int {
	maxRecs := uint64(len(b)/(frameHeaderLen+minBodyLen)) + 1
	for q := 1; q+frameHeaderLen+minBodyLen <= len(b); q++ {
		body := b[q+frameHeaderLen:]
		if body[0] != recordVersion {
			continue
		}
		if off := binary.LittleEndian.Uint64(body[1:]); off < want || off-want > maxRecs {
			continue
		}
		if _, err := checkFrame(b[q:]); err == nil {
			return q
		}
	}
	return -1
}

// hasZeroSector reports whether b, which starts at file position pos,
// contains a whole 512-byte-aligned sector of zeros.
func hasZeroSector(b []byte, pos int64) bool {
	const sector = 512
	first := (pos + sector - 1) / sector * sector
	for s := first; s+sector <= pos+int64(len(b)); s += sector {
		if isZero(b[s-pos : s-pos+sector]) {
			return true
		}
	}
	return false
}
