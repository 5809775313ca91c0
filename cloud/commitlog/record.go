package commitlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"time"
)

// On-disk record framing. Every record is one frame:
//
//	length  uint32 LE   length of body
//	crc     uint32 LE   CRC-32C (Castagnoli) of body
//	body:
//	  version     1 byte  (recordVersion)
//	  offset      uint64 LE
//	  time        int64 LE, Unix nanoseconds
//	  producerSeq uint64 LE
//	  topic       uvarint length, bytes
//	  producer    uvarint length, bytes
//	  value       the rest of the body
//
// The offset is stored in the record (not only implied by its position) so
// that recovery can check that the segments are dense and in order, and so
// that the resynchronising scan of a damaged tail (see recover.go) can tell a
// real record from bytes that only look like one.
const (
	frameHeaderLen = 8
	recordVersion  = 1
	bodyFixedLen   = 1 + 8 + 8 + 8
	// minBodyLen is the smallest valid body: the fixed part and two empty
	// strings.
	minBodyLen = bodyFixedLen + 2
	// maxBodyLen bounds the length field whatever Options.MaxRecordBytes
	// says, so that a damaged length never makes a reader allocate more.
	maxBodyLen = 1 << 30
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Errors of frame decoding. They never reach callers bare: readers wrap them
// in ErrCorrupt with the file and position.
var (
	errShortFrame = errors.New("frame runs past the end of the data")
	errBadLength  = errors.New("frame length out of range")
	errChecksum   = errors.New("checksum mismatch")
	errBadBody    = errors.New("malformed record body")
)

// encodedLen is the body length of r, the size MaxRecordBytes limits.
func encodedLen(r *Record) int {
	return bodyFixedLen + uvarintLen(uint64(len(r.Topic))) + len(r.Topic) +
		uvarintLen(uint64(len(r.Producer))) + len(r.Producer) + len(r.Value)
}

func uvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}

// appendFrame appends the frame of r to dst with the given offset and time.
// The length is filled in; the checksum is not (see sealFrame), because the
// writer patches offset and time later.
func appendFrame(dst []byte, r *Record, offset uint64, nanos int64) []byte {
	n := encodedLen(r)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(n))
	dst = binary.LittleEndian.AppendUint32(dst, 0)
	dst = append(dst, recordVersion)
	dst = binary.LittleEndian.AppendUint64(dst, offset)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(nanos))
	dst = binary.LittleEndian.AppendUint64(dst, r.ProducerSeq)
	dst = binary.AppendUvarint(dst, uint64(len(r.Topic)))
	dst = append(dst, r.Topic...)
	dst = binary.AppendUvarint(dst, uint64(len(r.Producer)))
	dst = append(dst, r.Producer...)
	return append(dst, r.Value...)
}

// sealFrame sets offset and time of the encoded frame and computes its
// checksum.
func sealFrame(frame []byte, offset uint64, nanos int64) {
	body := frame[frameHeaderLen:]
	binary.LittleEndian.PutUint64(body[1:], offset)
	binary.LittleEndian.PutUint64(body[9:], uint64(nanos))
	binary.LittleEndian.PutUint32(frame[4:], crc32.Checksum(body, crcTable))
}

// frameLen returns the length field of a frame header.
func frameLen(hdr []byte) int { return int(binary.LittleEndian.Uint32(hdr)) }

// checkFrame verifies the header and checksum of the frame starting at
// b[0]. It returns the total frame length (header included).
func checkFrame(b []byte) (int, error) {
	if len(b) < frameHeaderLen {
		return 0, errShortFrame
	}
	n := frameLen(b)
	if n < minBodyLen || n > maxBodyLen {
		return 0, fmt.Errorf("%w: %d", errBadLength, n)
	}
	if len(b)-frameHeaderLen < n {
		return 0, errShortFrame
	}
	body := b[frameHeaderLen : frameHeaderLen+n]
	if crc32.Checksum(body, crcTable) != binary.LittleEndian.Uint32(b[4:]) {
		return 0, errChecksum
	}
	return frameHeaderLen + n, nil
}

// recordMeta is what the indexes need of a record, decoded without copying
// the value.
type recordMeta struct {
	offset      uint64
	nanos       int64
	producerSeq uint64
	topic       []byte // aliases the body
	producer    []byte // aliases the body
	value       []byte // aliases the body
}

// parseBody decodes a body whose checksum was verified. It never panics on
// malformed input.
func parseBody(body []byte) (recordMeta, error) {
	var m recordMeta
	if len(body) < minBodyLen || body[0] != recordVersion {
		return m, errBadBody
	}
	m.offset = binary.LittleEndian.Uint64(body[1:])
	m.nanos = int64(binary.LittleEndian.Uint64(body[9:]))
	m.producerSeq = binary.LittleEndian.Uint64(body[17:])
	rest := body[bodyFixedLen:]
	var ok bool
	if m.topic, rest, ok = cutString(rest); !ok {
		return m, errBadBody
	}
	if m.producer, rest, ok = cutString(rest); !ok {
		return m, errBadBody
	}
	m.value = rest
	return m, nil
}

func cutString(b []byte) (s, rest []byte, ok bool) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return nil, nil, false
	}
	return b[k : k+int(n)], b[k+int(n):], true
}

// record converts decoded metadata to a Record that owns its memory.
func (m *recordMeta) record() Record {
	return Record{
		Offset:      m.offset,
		Time:        time.Unix(0, m.nanos).UTC(),
		Topic:       string(m.topic),
		Producer:    string(m.producer),
		ProducerSeq: m.producerSeq,
		Value:       append(make([]byte, 0, len(m.value)), m.value...),
	}
}

// timeNanos converts t to the stored form. Times outside what int64 Unix
// nanoseconds can hold (before 1678 or after 2262) are refused.
func timeNanos(t time.Time) (int64, error) {
	if t.Before(minTime) || t.After(maxTime) {
		return 0, fmt.Errorf("commitlog: record time %v outside the storable range %v..%v", t, minTime, maxTime)
	}
	return t.UnixNano(), nil
}

var (
	minTime = time.Unix(0, math.MinInt64+1)
	maxTime = time.Unix(0, math.MaxInt64)
)
