package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/cloudevents/sdk-go/binding/format/protobuf/v2/pb"
	"github.com/klauspost/compress/zstd"
	"google.golang.org/protobuf/proto"

	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
)

func rec(seq uint64, payload string) *syncv1.Record {
	return &syncv1.Record{Seq: seq, Event: &pb.CloudEvent{
		Id: fmt.Sprintf("id-%d", seq), Source: "/dev/1", SpecVersion: "1.0", Type: "t",
		Data: &pb.CloudEvent_TextData{TextData: payload},
	}}
}

func recs(from, to uint64) []*syncv1.Record {
	var out []*syncv1.Record
	for s := from; s <= to; s++ {
		out = append(out, rec(s, strings.Repeat("x", 100)))
	}
	return out
}

func TestFrameRoundTrip(t *testing.T) {
	frames := []*syncv1.Frame{
		{Body: &syncv1.Frame_Hello{Hello: &syncv1.Hello{ProtocolVersion: syncv1.Version_VERSION_1, GatewayId: "gw-1"}}},
		{Body: &syncv1.Frame_Welcome{Welcome: &syncv1.Welcome{HighWaterMark: 7, Window: 4}}},
		{Body: &syncv1.Frame_Ack{Ack: &syncv1.Ack{}}}, // encodes to 2 bytes: still a body
		{Body: &syncv1.Frame_Error{Error: &syncv1.Error{Code: syncv1.ErrorCode_ERROR_CODE_PROTOCOL, Message: "m"}}},
	}
	var buf bytes.Buffer
	for _, f := range frames {
		if err := WriteFrame(&buf, f); err != nil {
			t.Fatal(err)
		}
	}
	for i, want := range frames {
		got, err := ReadFrame(&buf, 0)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if !proto.Equal(got, want) {
			t.Fatalf("frame %d: got %v want %v", i, got, want)
		}
	}
	if _, err := ReadFrame(&buf, 0); err != io.EOF {
		t.Fatalf("after last frame: got %v, want io.EOF", err)
	}
}

func frameBytes(n uint32, body []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, n)
	return append(b, body...)
}

func TestReadFrameErrors(t *testing.T) {
	ack, _ := proto.Marshal(&syncv1.Frame{Body: &syncv1.Frame_Ack{Ack: &syncv1.Ack{AckedSeq: 3}}})
	tests := []struct {
		name string
		in   []byte
		max  int
		want error
	}{
		{"empty stream", nil, 0, io.EOF},
		{"short header", []byte{0, 0}, 0, io.ErrUnexpectedEOF},
		{"zero length", frameBytes(0, nil), 0, ErrMalformed},
		{"above caller limit", frameBytes(uint32(len(ack)), ack), len(ack) - 1, ErrFrameTooLarge},
		{"above hard cap", frameBytes(MaxFrameBytes+1, nil), 1 << 30, ErrFrameTooLarge},
		{"max length header", frameBytes(0xffffffff, nil), 0, ErrFrameTooLarge},
		{"truncated body", frameBytes(10, []byte{1, 2}), 0, io.ErrUnexpectedEOF},
		{"garbage body", frameBytes(3, []byte{0xff, 0xff, 0xff}), 0, ErrMalformed},
		{"no body set", frameBytes(2, []byte{0x30, 0x01}), 0, ErrMalformed}, // unknown field 6 only
		{"exact limit ok", frameBytes(uint32(len(ack)), ack), len(ack), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ReadFrame(bytes.NewReader(tt.in), tt.max)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

func TestWriteFrameRefuses(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteFrame(&buf, &syncv1.Frame{}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("empty frame: %v", err)
	}
	big := &syncv1.Frame{Body: &syncv1.Frame_Batch{Batch: &syncv1.Batch{Records: make([]byte, MaxFrameBytes)}}}
	if err := WriteFrame(&buf, big); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("oversize frame: %v", err)
	}
	if buf.Len() != 0 {
		t.Fatalf("refused frames wrote %d bytes", buf.Len())
	}
}

func TestBatchRoundTrip(t *testing.T) {
	for _, compressAbove := range []int{0, 1, 1 << 30} {
		t.Run(fmt.Sprint(compressAbove), func(t *testing.T) {
			in := recs(5, 500)
			b, err := EncodeRecords(in, compressAbove)
			if err != nil {
				t.Fatal(err)
			}
			wantEnc := syncv1.Encoding_ENCODING_NONE
			if compressAbove == 1 {
				wantEnc = syncv1.Encoding_ENCODING_ZSTD
			}
			if b.GetEncoding() != wantEnc || b.GetLastSeq() != 500 || b.GetCount() != 496 {
				t.Fatalf("batch header: enc %v last %d count %d", b.GetEncoding(), b.GetLastSeq(), b.GetCount())
			}
			// Through the framing too, as on the wire.
			var buf bytes.Buffer
			if err := WriteFrame(&buf, &syncv1.Frame{Body: &syncv1.Frame_Batch{Batch: b}}); err != nil {
				t.Fatal(err)
			}
			f, err := ReadFrame(&buf, 0)
			if err != nil {
				t.Fatal(err)
			}
			out, err := DecodeBatch(f.GetBatch(), 0)
			if err != nil {
				t.Fatal(err)
			}
			if len(out) != len(in) {
				t.Fatalf("got %d records, want %d", len(out), len(in))
			}
			for i := range in {
				if !proto.Equal(in[i], out[i]) {
					t.Fatalf("record %d differs", i)
				}
			}
		})
	}
}

func TestEncodeRecordsValidates(t *testing.T) {
	noID := rec(2, "")
	noID.Event.Id = ""
	noSource := rec(2, "")
	noSource.Event.Source = ""
	noType := rec(2, "")
	noType.Event.Type = ""
	tests := map[string][]*syncv1.Record{
		"empty":      nil,
		"nil record": {rec(1, ""), nil},
		"seq zero":   {rec(0, "")},
		"equal seqs": {rec(1, ""), rec(1, "")},
		"decreasing": {rec(2, ""), rec(1, "")},
		"no event":   {{Seq: 1}},
		"no id":      {noID},
		"no source":  {noSource},
		"no type":    {noType},
	}
	for name, in := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := EncodeRecords(in, 0); !errors.Is(err, ErrInvalidBatch) {
				t.Fatalf("got %v, want ErrInvalidBatch", err)
			}
		})
	}
}

// rawBatch builds a Batch around records without EncodeRecords' checks.
func rawBatch(t testing.TB, list []*syncv1.Record, last uint64, count uint32) *syncv1.Batch {
	raw, err := proto.Marshal(&syncv1.RecordList{Records: list})
	if err != nil {
		t.Fatal(err)
	}
	return &syncv1.Batch{LastSeq: last, Records: raw, Count: count}
}

func zstdBytes(t testing.TB, b []byte) []byte {
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll(b, nil)
}

// zstdStream compresses b as a stream, whose frame does not announce its
// decoded size.
func zstdStream(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	enc, err := zstd.NewWriter(&buf, zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := enc.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	var h zstd.Header
	if err := h.Decode(buf.Bytes()); err != nil || h.HasFCS {
		t.Fatalf("stream frame header %+v, %v: want no content size", h, err)
	}
	return buf.Bytes()
}

func TestDecodeBatchRejects(t *testing.T) {
	valid := rawBatch(t, recs(1, 3), 3, 3)
	bomb := make([]byte, 8<<20) // zeros: compresses to a few hundred bytes
	list, _ := proto.Marshal(&syncv1.RecordList{Records: []*syncv1.Record{rec(1, string(bomb))}})
	tests := []struct {
		name string
		b    *syncv1.Batch
		max  int
		want error
	}{
		{"nil", nil, 0, ErrMalformed},
		{"count zero", rawBatch(t, recs(1, 3), 3, 0), 0, ErrInvalidBatch},
		{"count too small", rawBatch(t, recs(1, 3), 3, 2), 0, ErrInvalidBatch},
		{"count huge", rawBatch(t, recs(1, 3), 3, 1<<31), 0, ErrInvalidBatch},
		{"wrong last_seq", rawBatch(t, recs(1, 3), 4, 3), 0, ErrInvalidBatch},
		{"not increasing", rawBatch(t, []*syncv1.Record{rec(2, ""), rec(2, "")}, 2, 2), 0, ErrInvalidBatch},
		{"no event", rawBatch(t, []*syncv1.Record{{Seq: 1}}, 1, 1), 0, ErrInvalidBatch},
		{"garbage records", &syncv1.Batch{LastSeq: 1, Count: 1, Records: []byte{0xff, 0xff}}, 0, ErrMalformed},
		{"unknown encoding", &syncv1.Batch{LastSeq: 3, Count: 3, Encoding: 9, Records: valid.Records}, 0, ErrMalformed},
		{"garbage zstd", &syncv1.Batch{LastSeq: 3, Count: 3, Encoding: syncv1.Encoding_ENCODING_ZSTD, Records: []byte("not zstd")}, 0, ErrMalformed},
		{"plain above limit", valid, len(valid.Records) - 1, ErrDecodedTooLarge},
		{"zip bomb", &syncv1.Batch{LastSeq: 1, Count: 1, Encoding: syncv1.Encoding_ENCODING_ZSTD, Records: zstdBytes(t, list)}, 1 << 20, ErrDecodedTooLarge},
		{"zip bomb of unknown size", &syncv1.Batch{LastSeq: 1, Count: 1, Encoding: syncv1.Encoding_ENCODING_ZSTD, Records: zstdStream(t, list)}, 1 << 20, ErrDecodedTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := DecodeBatch(tt.b, tt.max); !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
	// The bomb itself is a valid batch when the limit allows it: the
	// rejection above is the limit's doing.
	if _, err := DecodeBatch(&syncv1.Batch{LastSeq: 1, Count: 1, Encoding: syncv1.Encoding_ENCODING_ZSTD, Records: zstdBytes(t, list)}, 16<<20); err != nil {
		t.Fatalf("bomb under a large limit: %v", err)
	}
	if _, err := DecodeBatch(&syncv1.Batch{LastSeq: 1, Count: 1, Encoding: syncv1.Encoding_ENCODING_ZSTD, Records: zstdStream(t, list)}, 16<<20); err != nil {
		t.Fatalf("bomb of unknown size under a large limit: %v", err)
	}
}
