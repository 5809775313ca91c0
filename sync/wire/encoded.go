package wire

import (
	"fmt"
	"slices"

	"google.golang.org/protobuf/encoding/protowire"

	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
)

// EncodedRecord is a Record already in its protobuf encoding, as a source
// that builds the encoding straight from its storage produces it (see
// link.EncodedSource): sending it costs a copy, not the building and
// encoding of a protobuf message per record.
type EncodedRecord struct {
	// Seq is the record's seq, also encoded in Bytes.
	Seq uint64
	// Bytes is the encoding of a syncv1.Record whose seq is Seq.
	Bytes []byte
}

// EncodeEncodedBatch is EncodeBatch for records already encoded: it checks
// that there is at least one, that seqs increase strictly and that none is
// empty (the cloud validates the rest, as it does for every batch), then
// builds the RecordList from the bytes as they are.
func EncodeEncodedBatch(recs []EncodedRecord, compressAbove int) (*syncv1.Batch, int, error) {
	if len(recs) == 0 {
		return nil, 0, fmt.Errorf("%w: no records", ErrInvalidBatch)
	}
	if len(recs) > maxBatchRecords {
		return nil, 0, fmt.Errorf("%w: %d records, limit %d", ErrInvalidBatch, len(recs), maxBatchRecords)
	}
	size := 0
	var prev uint64
	for i, r := range recs {
		if r.Seq <= prev {
			return nil, 0, fmt.Errorf("%w: record %d has seq %d, not above %d", ErrInvalidBatch, i, r.Seq, prev)
		}
		if len(r.Bytes) == 0 {
			return nil, 0, fmt.Errorf("%w: record seq %d is empty", ErrInvalidBatch, r.Seq)
		}
		prev = r.Seq
		size += sizeBytesField(fieldListRecords, len(r.Bytes))
	}
	compress := compressAbove > 0 && size > compressAbove
	var raw []byte
	if compress {
		buf := rawBuffers.Get().(*[]byte)
		raw = slices.Grow((*buf)[:0], size)
		defer func() {
			*buf = raw[:0]
			rawBuffers.Put(buf)
		}()
	} else {
		raw = make([]byte, 0, size)
	}
	for _, r := range recs {
		raw = protowire.AppendTag(raw, fieldListRecords, protowire.BytesType)
		raw = protowire.AppendBytes(raw, r.Bytes)
	}
	b := &syncv1.Batch{
		LastSeq:  prev,
		Encoding: syncv1.Encoding_ENCODING_NONE,
		Records:  raw,
		Count:    uint32(len(recs)),
	}
	if compress {
		enc, err := encoder()
		if err != nil {
			return nil, 0, fmt.Errorf("wire: zstd encoder: %w", err)
		}
		b.Encoding = syncv1.Encoding_ENCODING_ZSTD
		b.Records = enc.EncodeAll(raw, make([]byte, 0, len(raw)/2))
	}
	return b, len(raw), nil
}

// EncodedSize is the bytes recs take in a RecordList.
func EncodedSize(recs []EncodedRecord) int {
	n := 0
	for _, r := range recs {
		n += sizeBytesField(fieldListRecords, len(r.Bytes))
	}
	return n
}
