package wire

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"google.golang.org/protobuf/proto"

	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
)

// FuzzReadFrame feeds arbitrary bytes to ReadFrame: it must never panic,
// must return only the documented errors, and a frame it accepts must
// survive a write/read round trip.
func FuzzReadFrame(f *testing.F) {
	var buf bytes.Buffer
	b, _ := EncodeRecords(recs(1, 3), 0)
	for _, fr := range []*syncv1.Frame{
		{Body: &syncv1.Frame_Hello{Hello: &syncv1.Hello{ProtocolVersion: 1, GatewayId: "gw"}}},
		{Body: &syncv1.Frame_Batch{Batch: b}},
		{Body: &syncv1.Frame_Ack{Ack: &syncv1.Ack{AckedSeq: 9}}},
		{Body: &syncv1.Frame_Ack{Ack: &syncv1.Ack{AckedSeq: 9, Credit: &syncv1.Credit{Window: 0, WindowBytes: 1 << 20}}}},
		{Body: &syncv1.Frame_Welcome{Welcome: &syncv1.Welcome{HighWaterMark: 3, Window: 8, Credit: &syncv1.Credit{Window: 4}}}},
	} {
		buf.Reset()
		_ = WriteFrame(&buf, fr)
		f.Add(append([]byte(nil), buf.Bytes()...))
	}
	f.Add([]byte{0, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, err := ReadFrame(bytes.NewReader(data), 1<<16)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrFrameTooLarge) &&
				err != io.EOF && err != io.ErrUnexpectedEOF {
				t.Fatalf("undocumented error: %v", err)
			}
			return
		}
		var out bytes.Buffer
		if err := WriteFrame(&out, fr); err != nil {
			t.Fatalf("rewrite accepted frame: %v", err)
		}
		again, err := ReadFrame(&out, 1<<16)
		if err != nil || !proto.Equal(fr, again) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

// FuzzDecodeBatch feeds arbitrary batches (encoding, count, last_seq and
// bytes) to DecodeBatch: no panic, only documented errors, and accepted
// records always satisfy the batch rules.
func FuzzDecodeBatch(f *testing.F) {
	for _, c := range []int{0, 1} {
		b, _ := EncodeRecords(recs(1, 5), c)
		f.Add(uint8(b.Encoding), b.Count, b.LastSeq, b.Records)
	}
	f.Add(uint8(1), uint32(1), uint64(1), zstdBytes(f, make([]byte, 1<<20)))
	f.Add(uint8(0), uint32(1), uint64(1), []byte{})
	f.Fuzz(func(t *testing.T, enc uint8, count uint32, last uint64, data []byte) {
		b := &syncv1.Batch{Encoding: syncv1.Encoding(enc), Count: count, LastSeq: last, Records: data}
		out, err := DecodeBatch(b, 1<<18)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrInvalidBatch) && !errors.Is(err, ErrDecodedTooLarge) {
				t.Fatalf("undocumented error: %v", err)
			}
			return
		}
		if len(out) != int(count) || out[len(out)-1].GetSeq() != last {
			t.Fatalf("accepted a batch that does not match its header")
		}
		if err := ValidateRecords(out, 0); err != nil {
			t.Fatalf("accepted invalid records: %v", err)
		}
	})
}

// FuzzDecodeBatchRaw checks DecodeBatchRaw against DecodeBatch, which
// decodes with the protobuf library: whatever the raw decoder accepts, the
// library accepts with the same records, and the raw decoder accepts every
// canonical encoding of what the library accepts.
func FuzzDecodeBatchRaw(f *testing.F) {
	for _, in := range [][]*syncv1.Record{recs(1, 3), richRecords()} {
		for _, c := range []int{0, 1} {
			b, _ := EncodeRecords(in, c)
			f.Add(uint8(b.Encoding), b.Count, b.LastSeq, b.Records)
		}
	}
	f.Add(uint8(0), uint32(1), uint64(1), listOf(recordBytes(1, eventBytes(attrEntry("subject", fBytes(nil, fieldAttrString, []byte("a")))))))
	f.Add(uint8(0), uint32(1), uint64(1), listOf(recordBytes(1, eventBytes(fBytes(nil, fieldEvID, []byte("again"))))))
	f.Add(uint8(1), uint32(1), uint64(1), zstdBytes(f, make([]byte, 1<<20)))
	f.Fuzz(func(t *testing.T, enc uint8, count uint32, last uint64, data []byte) {
		b := &syncv1.Batch{Encoding: syncv1.Encoding(enc), Count: count, LastSeq: last, Records: data}
		raw, err := DecodeBatchRaw(b, 1<<18)
		full, ferr := DecodeBatch(b, 1<<18)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrInvalidBatch) && !errors.Is(err, ErrDecodedTooLarge) {
				t.Fatalf("undocumented error: %v", err)
			}
			if ferr != nil {
				return
			}
			// Refused what the library accepts: allowed only for the
			// non-canonical encodings the raw decoder is strict about.
			canon, cerr := EncodeRecords(full, 0)
			if cerr != nil {
				t.Fatalf("re-encode accepted records: %v", cerr)
			}
			again, err := DecodeBatchRaw(canon, 0)
			if err != nil {
				t.Fatalf("refused the canonical encoding of accepted records: %v", err)
			}
			checkRawAgainst(t, again, full)
			return
		}
		if ferr != nil {
			t.Fatalf("raw accepted a batch the library refuses: %v", ferr)
		}
		checkRawAgainst(t, raw, full)
	})
}
