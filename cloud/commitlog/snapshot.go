package commitlog

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Segment snapshots make Open fast for big logs.
//
// Recovery derives from every segment its sparse offset/time index, its
// part of the topic index, its end and its running maximum time. Scanning
// a closed segment to rebuild them reads it whole; so when a segment is
// closed the writer saves them beside it in a snapshot file
// (00000000000000001234.idx for segment 00000000000000001234.log), and
// Open loads the snapshots of closed segments and scans only the active
// segment. A gigabyte of closed segments then costs a few small reads
// instead of a gigabyte read and checksummed.
//
// What a snapshot does not carry: the producers' high-water marks, which
// the checkpoint written at the same roll holds for every record below the
// new segment (see checkpoint.go); segments at or above the checkpoint's
// validUpTo are scanned, whatever snapshots they have. And the records'
// checksums are no longer all verified at Open: damage inside a closed
// segment is reported by the read that meets it (ErrCorrupt with the file
// and position), unless Options.VerifyOnOpen asks for the full scan.
//
// A snapshot is used only if it is whole (its own CRC) and agrees with its
// segment: the file holds exactly the snapshot's bytes (or zeros after
// them, a preallocated tail whose truncation a crash lost), and the last
// frame sits where the snapshot says, with the snapshot's checksum and
// offset. Otherwise Open scans the segment, which verifies it, and writes a
// new snapshot. Snapshots are written without fsync: one lost or torn in a
// crash fails those checks and is rebuilt.
//
// Format (little endian):
//
//	magic     8 bytes "TRBIDX01"
//	base, next, size      uint64   offsets [base, next), size bytes of frames
//	runMax    int64    largest record time in the log up to next
//	lastPos   uint64   position of the last frame
//	lastCRC   uint32   its checksum field
//	entries   uvarint count, then count × {rel uint32, pos uint32, maxBefore int64}
//	topics    uvarint count, then count × {name: uvarint length, bytes;
//	          n uvarint; first-base uvarint; n-1 × delta uvarint}
//	crc       uint32   CRC-32C of everything before it
const (
	snapshotExt   = ".idx"
	snapshotMagic = "TRBIDX01"
	snapshotFixed = len(snapshotMagic) + 8*6 + 4
)

func snapshotName(base uint64) string { return fmt.Sprintf("%020d%s", base, snapshotExt) }

var errBadSnapshot = errors.New("malformed segment snapshot")

// snapshot is what Open needs of a closed segment.
type snapshot struct {
	base, next uint64
	size       int64
	runMax     int64
	lastPos    int64
	lastCRC    uint32
	index      []indexEntry
	topics     []snapshotTopic // in the order written
}

type snapshotTopic struct {
	name    string
	offsets []uint64 // ascending, in [base, next)
}

func encodeSnapshot(sn *snapshot) []byte {
	b := append([]byte(nil), snapshotMagic...)
	b = binary.LittleEndian.AppendUint64(b, sn.base)
	b = binary.LittleEndian.AppendUint64(b, sn.next)
	b = binary.LittleEndian.AppendUint64(b, uint64(sn.size))
	b = binary.LittleEndian.AppendUint64(b, uint64(sn.runMax))
	b = binary.LittleEndian.AppendUint64(b, uint64(sn.lastPos))
	b = binary.LittleEndian.AppendUint32(b, sn.lastCRC)
	b = binary.AppendUvarint(b, uint64(len(sn.index)))
	for _, e := range sn.index {
		b = binary.LittleEndian.AppendUint32(b, e.rel)
		b = binary.LittleEndian.AppendUint32(b, e.pos)
		b = binary.LittleEndian.AppendUint64(b, uint64(e.maxBefore))
	}
	b = binary.AppendUvarint(b, uint64(len(sn.topics)))
	for _, t := range sn.topics {
		b = binary.AppendUvarint(b, uint64(len(t.name)))
		b = append(b, t.name...)
		b = binary.AppendUvarint(b, uint64(len(t.offsets)))
		prev := sn.base
		for _, off := range t.offsets {
			b = binary.AppendUvarint(b, off-prev)
			prev = off
		}
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, crcTable))
}

// decodeSnapshot parses and checks a snapshot file. It never panics on bad
// input; what it accepts is internally consistent: offsets ascending inside
// [base, next), every offset of the range in exactly one topic, index
// entries ascending inside the segment.
func decodeSnapshot(b []byte) (*snapshot, error) {
	if len(b) < snapshotFixed+2+4 || !bytes.HasPrefix(b, []byte(snapshotMagic)) {
		return nil, fmt.Errorf("%w: bad header", errBadSnapshot)
	}
	body, sum := b[:len(b)-4], binary.LittleEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, crcTable) != sum {
		return nil, fmt.Errorf("%w: %w", errBadSnapshot, errChecksum)
	}
	r := body[len(snapshotMagic):]
	u64 := func() uint64 { v := binary.LittleEndian.Uint64(r); r = r[8:]; return v }
	sn := &snapshot{base: u64(), next: u64(), size: int64(u64()), runMax: int64(u64()), lastPos: int64(u64())}
	sn.lastCRC = binary.LittleEndian.Uint32(r)
	r = r[4:]
	records := sn.next - sn.base
	if sn.next <= sn.base || sn.size <= 0 || sn.size > maxSegmentFile || records > uint64(sn.size)/(frameHeaderLen+minBodyLen) ||
		sn.lastPos < 0 || sn.lastPos+frameHeaderLen+minBodyLen > sn.size {
		return nil, fmt.Errorf("%w: bad bounds", errBadSnapshot)
	}
	uv := func() (uint64, bool) {
		v, k := binary.Uvarint(r)
		if k <= 0 {
			return 0, false
		}
		r = r[k:]
		return v, true
	}
	n, ok := uv()
	if !ok || n > uint64(len(r))/16 {
		return nil, fmt.Errorf("%w: bad index count", errBadSnapshot)
	}
	sn.index = make([]indexEntry, n)
	for i := range sn.index {
		e := indexEntry{rel: binary.LittleEndian.Uint32(r), pos: binary.LittleEndian.Uint32(r[4:]), maxBefore: int64(binary.LittleEndian.Uint64(r[8:]))}
		r = r[16:]
		if uint64(e.rel) >= records || int64(e.pos) > sn.lastPos || (i > 0 && (e.rel <= sn.index[i-1].rel || e.pos <= sn.index[i-1].pos)) {
			return nil, fmt.Errorf("%w: index entry %d out of order", errBadSnapshot, i)
		}
		sn.index[i] = e
	}
	n, ok = uv()
	if !ok || n > uint64(len(r))/3 || n > records {
		return nil, fmt.Errorf("%w: bad topic count", errBadSnapshot)
	}
	seen := uint64(0)
	owned := make([]uint64, (records+63)/64) // a bit per record: in a topic already
	sn.topics = make([]snapshotTopic, n)
	for i := range sn.topics {
		name, rest, ok := cutString(r)
		if !ok {
			return nil, fmt.Errorf("%w: topic %d truncated", errBadSnapshot, i)
		}
		r = rest
		count, ok := uv()
		if !ok || count == 0 || count > records-seen || count > uint64(len(r)) {
			return nil, fmt.Errorf("%w: topic %d: bad count", errBadSnapshot, i)
		}
		t := snapshotTopic{name: string(name), offsets: make([]uint64, count)}
		prev := sn.base
		for j := range t.offsets {
			d, ok := uv()
			if !ok || (j > 0 && d == 0) || d >= sn.next-prev {
				return nil, fmt.Errorf("%w: topic %d: offset %d out of range", errBadSnapshot, i, j)
			}
			prev += d
			t.offsets[j] = prev
			bit := prev - sn.base
			if owned[bit/64]&(1<<(bit%64)) != 0 {
				return nil, fmt.Errorf("%w: offset %d in two topics", errBadSnapshot, prev)
			}
			owned[bit/64] |= 1 << (bit % 64)
		}
		seen += count
		sn.topics[i] = t
	}
	if len(r) != 0 || seen != records {
		return nil, fmt.Errorf("%w: %d trailing bytes, %d of %d records in topics", errBadSnapshot, len(r), seen, records)
	}
	return sn, nil
}

// maxSegmentFile bounds a segment's size: Options.SegmentBytes plus one
// record of the largest size.
const maxSegmentFile = 1<<30 + maxBodyLen + frameHeaderLen

// takeSnapshot describes the closed segment s from the published state.
// It runs on the writer, the only goroutine that changes what it reads
// (the segment's fields and the topic index), so it needs no lock.
func (l *FileLog) takeSnapshot(s *segment) (*snapshot, error) {
	sn := &snapshot{base: s.base, next: s.next, size: s.size, runMax: s.runMax, index: slices.Clone(s.index)}
	// The last frame: scan from the last index entry.
	pos := int64(0)
	if k := len(s.index); k > 0 {
		pos = int64(s.index[k-1].pos)
	}
	found := false
	err := l.scan(s, pos, s.size, 0, nil, func(m *recordMeta, end int64) bool {
		if end == s.size {
			found = true
			sn.lastPos = end - frameHeaderLen - int64(len(m.value)) - int64(bodyLen(m))
		}
		return true
	})
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("%s: no frame ends at %d", s.path, s.size)
	}
	hdr := make([]byte, frameHeaderLen)
	if _, err := s.f.ReadAt(hdr, sn.lastPos); err != nil {
		return nil, err
	}
	sn.lastCRC = binary.LittleEndian.Uint32(hdr[4:])
	for name, t := range l.topics {
		offs := t.collect(s.base, s.next, int(s.next-s.base), nil)
		if len(offs) > 0 {
			sn.topics = append(sn.topics, snapshotTopic{name: name, offsets: offs})
		}
	}
	slices.SortFunc(sn.topics, func(a, b snapshotTopic) int { return strings.Compare(a.name, b.name) })
	return sn, nil
}

// bodyLen is the length of a parsed body without its value.
func bodyLen(m *recordMeta) int {
	return bodyFixedLen + uvarintLen(uint64(len(m.topic))) + len(m.topic) + uvarintLen(uint64(len(m.producer))) + len(m.producer)
}

// writeSnapshot saves the snapshot of closed segment s. Failures are
// logged: the next Open scans the segment instead.
func (l *FileLog) writeSnapshot(s *segment) {
	if s.next == s.base {
		return // nothing to load: a scan of it is free
	}
	sn, err := l.takeSnapshot(s)
	if err == nil {
		err = writeFile(l.fs, filepath.Join(l.dir, snapshotName(s.base)), encodeSnapshot(sn))
	}
	if err != nil {
		l.log.Warn("commitlog: could not write a segment snapshot; the next Open scans the segment", "file", s.path, "err", err)
	}
}

// writeFile replaces path with b, without fsync.
func writeFile(fsys FS, path string, b []byte) error {
	f, err := fsys.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, err = f.WriteAt(b, 0)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// loadSnapshot reads the snapshot of segment s (whose file is size bytes)
// and checks it against the segment. It returns nil, nil if there is none.
func (l *FileLog) loadSnapshot(s *segment, size int64) (*snapshot, error) {
	f, err := l.fs.OpenFile(filepath.Join(l.dir, snapshotName(s.base)), os.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() > 1<<30 {
		return nil, fmt.Errorf("%w: %d bytes", errBadSnapshot, st.Size())
	}
	b := make([]byte, st.Size())
	if _, err := f.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	sn, err := decodeSnapshot(b)
	if err != nil {
		return nil, err
	}
	if sn.base != s.base {
		return nil, fmt.Errorf("%w: it describes segment %d", errBadSnapshot, sn.base)
	}
	if size < sn.size {
		return nil, fmt.Errorf("the segment is %d bytes, its snapshot says %d", size, sn.size)
	}
	if size > sn.size {
		zeros, err := zeroTail(s.f, sn.size, size, make([]byte, 64<<10))
		if err != nil {
			return nil, err
		}
		if !zeros {
			return nil, fmt.Errorf("the segment has data after the %d bytes its snapshot covers", sn.size)
		}
	}
	last := make([]byte, sn.size-sn.lastPos)
	if _, err := s.f.ReadAt(last, sn.lastPos); err != nil {
		return nil, err
	}
	n, err := checkFrame(last)
	if err != nil || n != len(last) || binary.LittleEndian.Uint32(last[4:]) != sn.lastCRC || bodyOffset(last[frameHeaderLen:]) != sn.next-1 {
		return nil, fmt.Errorf("the segment's last frame is not the one its snapshot names (%v)", err)
	}
	return sn, nil
}
