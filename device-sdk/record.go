package devicesdk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// The buffer file is a sequence of records, each
//
//	length uint32 (of body) | crc32c uint32 (of body) | body
//
// with a body of
//
//	kind byte | seq uint64 | (kindData only) topicLen uint16 | topic | payload
//
// A kindData record holds one buffered message. A kindAck or kindDrop record
// says that every message with a sequence number <= seq is gone from the
// buffer (acknowledged by the gateway, or dropped by the overflow policy).
// All integers are big-endian.
const (
	kindData byte = 1
	kindAck  byte = 2
	kindDrop byte = 3

	recordHeader = 8
	// maxRecordBody bounds what the decoder accepts, so a corrupt length
	// cannot make it allocate or wait for gigabytes.
	maxRecordBody = 1 + 8 + 2 + 65535 + maxPayload
	// maxPayload is the largest payload the buffer stores (MQTT's own
	// limit is 256 MiB; a device telemetry message is far smaller).
	maxPayload = 16 << 20
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// errTruncated means the bytes end inside a record: a torn write at the
// tail of the file.
var errTruncated = errors.New("devicesdk: truncated record")

// errCorrupt means a record failed its checksum or is malformed.
var errCorrupt = errors.New("devicesdk: corrupt record")

// record is one decoded buffer record.
type record struct {
	kind    byte
	seq     uint64
	topic   string
	payload []byte
}

// appendRecord appends the encoding of r to dst.
func appendRecord(dst []byte, r record) []byte {
	bodyLen := 1 + 8
	if r.kind == kindData {
		bodyLen += 2 + len(r.topic) + len(r.payload)
	}
	start := len(dst)
	dst = binary.BigEndian.AppendUint32(dst, uint32(bodyLen))
	dst = binary.BigEndian.AppendUint32(dst, 0) // crc, filled below
	body := len(dst)
	dst = append(dst, r.kind)
	dst = binary.BigEndian.AppendUint64(dst, r.seq)
	if r.kind == kindData {
		dst = binary.BigEndian.AppendUint16(dst, uint16(len(r.topic)))
		dst = append(dst, r.topic...)
		dst = append(dst, r.payload...)
	}
	binary.BigEndian.PutUint32(dst[start+4:], crc32.Checksum(dst[body:], crcTable))
	return dst
}

// decodeRecord decodes the record at the start of b and returns it with the
// number of bytes it took. The returned payload aliases b. It returns
// errTruncated when b ends inside the record and errCorrupt (wrapped) when
// the record is malformed; it never panics.
func decodeRecord(b []byte) (record, int, error) {
	if len(b) < recordHeader {
		return record{}, 0, errTruncated
	}
	n := binary.BigEndian.Uint32(b)
	if n < 9 || n > maxRecordBody {
		return record{}, 0, fmt.Errorf("%w: body length %d", errCorrupt, n)
	}
	if uint64(len(b)-recordHeader) < uint64(n) {
		return record{}, 0, errTruncated
	}
	body := b[recordHeader : recordHeader+int(n)]
	if crc32.Checksum(body, crcTable) != binary.BigEndian.Uint32(b[4:]) {
		return record{}, 0, fmt.Errorf("%w: checksum mismatch", errCorrupt)
	}
	r := record{kind: body[0], seq: binary.BigEndian.Uint64(body[1:9])}
	switch r.kind {
	case kindAck, kindDrop:
		if n != 9 {
			return record{}, 0, fmt.Errorf("%w: ack record of %d bytes", errCorrupt, n)
		}
	case kindData:
		if n < 11 {
			return record{}, 0, fmt.Errorf("%w: data record of %d bytes", errCorrupt, n)
		}
		tl := int(binary.BigEndian.Uint16(body[9:11]))
		if 11+tl > len(body) {
			return record{}, 0, fmt.Errorf("%w: topic length %d past the record", errCorrupt, tl)
		}
		r.topic = string(body[11 : 11+tl])
		r.payload = body[11+tl:]
		if r.topic == "" {
			return record{}, 0, fmt.Errorf("%w: empty topic", errCorrupt)
		}
	default:
		return record{}, 0, fmt.Errorf("%w: kind %d", errCorrupt, r.kind)
	}
	return r, recordHeader + int(n), nil
}
