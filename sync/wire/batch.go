package wire

import (
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/klauspost/compress/zstd"
	"google.golang.org/protobuf/proto"

	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
)

// DefaultMaxDecoded is the decoded-size limit DecodeBatch applies when given
// a limit <= 0: 64 MiB.
const DefaultMaxDecoded = 64 << 20

// maxBatchRecords bounds Batch.count so that a forged count cannot make the
// decoder allocate: no valid batch holds more records than its encoding has
// bytes, and a frame has at most MaxFrameBytes.
const maxBatchRecords = 1 << 20

var (
	// ErrInvalidBatch means a batch that decodes but breaks the protocol's
	// rules: no records, a count that does not match, sequences that do not
	// increase strictly, a last_seq that is not the last record's, a record
	// without an event or whose event lacks id, source or type.
	ErrInvalidBatch = errors.New("wire: invalid batch")
	// ErrDecodedTooLarge means a batch whose records decode to more bytes
	// than the caller's limit (a zip bomb, or a peer ignoring the limits).
	ErrDecodedTooLarge = errors.New("wire: decoded batch too large")
)

// ValidateRecords checks that recs could form a batch following after: at
// least one record, sequences strictly increasing and above after, every
// record holding an event with id, source and type. Errors wrap
// ErrInvalidBatch.
func ValidateRecords(recs []*syncv1.Record, after uint64) error {
	if len(recs) == 0 {
		return fmt.Errorf("%w: no records", ErrInvalidBatch)
	}
	prev := after
	for i, r := range recs {
		if r == nil {
			return fmt.Errorf("%w: record %d is nil", ErrInvalidBatch, i)
		}
		if r.GetSeq() <= prev {
			return fmt.Errorf("%w: record %d has seq %d, not above %d", ErrInvalidBatch, i, r.GetSeq(), prev)
		}
		prev = r.GetSeq()
		ev := r.GetEvent()
		switch {
		case ev == nil:
			return fmt.Errorf("%w: record seq %d has no event", ErrInvalidBatch, r.GetSeq())
		case ev.GetId() == "":
			return fmt.Errorf("%w: record seq %d: event has no id", ErrInvalidBatch, r.GetSeq())
		case ev.GetSource() == "":
			return fmt.Errorf("%w: record seq %d: event has no source", ErrInvalidBatch, r.GetSeq())
		case ev.GetType() == "":
			return fmt.Errorf("%w: record seq %d: event has no type", ErrInvalidBatch, r.GetSeq())
		}
	}
	return nil
}

var encoder = sync.OnceValues(func() (*zstd.Encoder, error) {
	// EncodeAll is safe for concurrent use; one encoder serves everyone.
	return zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
})

// EncodeRecords builds a Batch from recs after validating them (see
// ValidateRecords, with after = 0). The RecordList is zstd-compressed when its
// encoding is longer than compressAbove bytes; compressAbove <= 0 never
// compresses. The batch holds its own copy of the bytes: recs may be reused.
func EncodeRecords(recs []*syncv1.Record, compressAbove int) (*syncv1.Batch, error) {
	b, _, err := EncodeBatch(recs, compressAbove)
	return b, err
}

// EncodeBatch is EncodeRecords that also returns the length of the
// RecordList's encoding before compression (for compression statistics).
func EncodeBatch(recs []*syncv1.Record, compressAbove int) (*syncv1.Batch, int, error) {
	if err := ValidateRecords(recs, 0); err != nil {
		return nil, 0, err
	}
	if len(recs) > maxBatchRecords {
		return nil, 0, fmt.Errorf("%w: %d records, limit %d", ErrInvalidBatch, len(recs), maxBatchRecords)
	}
	compress := compressAbove > 0
	var raw []byte
	if compress {
		buf := rawBuffers.Get().(*[]byte)
		raw = (*buf)[:0]
		defer func() {
			*buf = raw[:0]
			rawBuffers.Put(buf)
		}()
	}
	raw = appendRecordList(raw, recs)
	b := &syncv1.Batch{
		LastSeq:  recs[len(recs)-1].GetSeq(),
		Encoding: syncv1.Encoding_ENCODING_NONE,
		Records:  raw,
		Count:    uint32(len(recs)),
	}
	if compress && len(raw) > compressAbove {
		enc, err := encoder()
		if err != nil {
			return nil, 0, fmt.Errorf("wire: zstd encoder: %w", err)
		}
		b.Encoding = syncv1.Encoding_ENCODING_ZSTD
		b.Records = enc.EncodeAll(raw, make([]byte, 0, len(raw)/2))
	} else if compress {
		b.Records = slices.Clone(raw) // raw goes back to the pool
	}
	return b, len(raw), nil
}

// rawBuffers holds RecordList encodings that are compressed, and so not
// kept: a drain encodes one per batch.
var rawBuffers = sync.Pool{New: func() any { return new([]byte) }}

// decoders holds synchronous (concurrency 1) zstd decoders: they start no
// goroutines, so an idle pooled decoder costs only memory.
var decoders sync.Pool

func getDecoder() (*zstd.Decoder, error) {
	if d, ok := decoders.Get().(*zstd.Decoder); ok {
		return d, nil
	}
	return zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
}

// DecodeBatch decodes and validates b's records. maxDecoded limits the size
// of the decoded RecordList (<= 0 means DefaultMaxDecoded); it is enforced
// while decompressing, so a zip bomb costs at most maxDecoded bytes.
//
// Errors wrap ErrMalformed (undecodable bytes, unknown encoding),
// ErrDecodedTooLarge or ErrInvalidBatch (see ValidateRecords; also a count
// or last_seq that does not match the records).
func DecodeBatch(b *syncv1.Batch, maxDecoded int) ([]*syncv1.Record, error) {
	raw, err := batchBytes(b, maxDecoded)
	if err != nil {
		return nil, err
	}
	var list syncv1.RecordList
	if err := proto.Unmarshal(raw, &list); err != nil {
		return nil, fmt.Errorf("%w: records: %w", ErrMalformed, err)
	}
	recs := list.GetRecords()
	if len(recs) != int(b.GetCount()) {
		return nil, fmt.Errorf("%w: count %d but %d records", ErrInvalidBatch, b.GetCount(), len(recs))
	}
	if err := ValidateRecords(recs, 0); err != nil {
		return nil, err
	}
	if last := recs[len(recs)-1].GetSeq(); last != b.GetLastSeq() {
		return nil, fmt.Errorf("%w: last_seq %d but last record has seq %d", ErrInvalidBatch, b.GetLastSeq(), last)
	}
	return recs, nil
}

// decompress decodes data, a zstd stream, into a new buffer. The size
// limit holds while decoding (zstd checks it per block), so a bomb costs at
// most maxDecoded bytes; a frame that announces its size is decoded into a
// buffer of that size at once.
func decompress(data []byte, maxDecoded int) ([]byte, error) {
	d, err := getDecoder()
	if err != nil {
		return nil, fmt.Errorf("wire: zstd decoder: %w", err)
	}
	defer decoders.Put(d)
	window := uint64(max(maxDecoded, zstd.MinWindowSize))
	if err := d.ResetWithOptions(nil, zstd.WithDecoderMaxWindow(window), zstd.WithDecoderMaxMemory(uint64(maxDecoded))); err != nil {
		return nil, fmt.Errorf("wire: zstd decoder: %w", err)
	}
	out, err := d.DecodeAll(data, nil)
	if err != nil {
		if errors.Is(err, zstd.ErrWindowSizeExceeded) || errors.Is(err, zstd.ErrDecoderSizeExceeded) {
			return nil, fmt.Errorf("%w: %w", ErrDecodedTooLarge, err)
		}
		return nil, fmt.Errorf("%w: zstd: %w", ErrMalformed, err)
	}
	if len(out) > maxDecoded {
		return nil, fmt.Errorf("%w: above %d bytes", ErrDecodedTooLarge, maxDecoded)
	}
	return out, nil
}
