package wire

import (
	"errors"
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"

	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
)

// TestEncodeEncodedBatch: a batch of pre-encoded records is byte for byte
// the batch EncodeBatch makes of the same records, compressed or not, and
// decodes to them.
func TestEncodeEncodedBatch(t *testing.T) {
	var recs []*syncv1.Record
	var enc []EncodedRecord
	for i := range 300 {
		r := rec(uint64(10+3*i), fmt.Sprintf("payload %d %0100d", i, i))
		recs = append(recs, r)
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		enc = append(enc, EncodedRecord{Seq: r.GetSeq(), Bytes: b})
	}
	for _, compressAbove := range []int{0, 1 << 30, 512} {
		want, wantRaw, err := EncodeBatch(recs, compressAbove)
		if err != nil {
			t.Fatal(err)
		}
		got, gotRaw, err := EncodeEncodedBatch(enc, compressAbove)
		if err != nil {
			t.Fatal(err)
		}
		if gotRaw != wantRaw || gotRaw != EncodedSize(enc) || !proto.Equal(got, want) {
			t.Fatalf("compressAbove %d: encoded batch differs (raw %d, want %d)", compressAbove, gotRaw, wantRaw)
		}
		dec, err := DecodeBatch(got, 0)
		if err != nil {
			t.Fatal(err)
		}
		for i := range dec {
			if !proto.Equal(dec[i], recs[i]) {
				t.Fatalf("record %d decodes to %v", i, dec[i])
			}
		}
	}
	for name, bad := range map[string][]EncodedRecord{
		"none":       nil,
		"decreasing": {enc[1], enc[0]},
		"repeated":   {enc[0], enc[0]},
		"empty":      {{Seq: 1}},
	} {
		if _, _, err := EncodeEncodedBatch(bad, 0); !errors.Is(err, ErrInvalidBatch) {
			t.Fatalf("%s: %v", name, err)
		}
	}
}
