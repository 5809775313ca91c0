package devicesdk

import (
	"bytes"
	"errors"
	"testing"
)

func TestRecordRoundTrip(t *testing.T) {
	recs := []record{
		{kind: kindData, seq: 1, topic: "a", payload: nil},
		{kind: kindData, seq: 1 << 40, topic: "sensors/t", payload: []byte("hello")},
		{kind: kindAck, seq: 7},
		{kind: kindDrop, seq: 9},
	}
	var b []byte
	for _, r := range recs {
		b = appendRecord(b, r)
	}
	for i, want := range recs {
		got, n, err := decodeRecord(b)
		if err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		if got.kind != want.kind || got.seq != want.seq || got.topic != want.topic || !bytes.Equal(got.payload, want.payload) {
			t.Fatalf("record %d = %+v, want %+v", i, got, want)
		}
		b = b[n:]
	}
	if len(b) != 0 {
		t.Fatalf("%d bytes left", len(b))
	}
}

func TestRecordTruncatedAndCorrupt(t *testing.T) {
	full := appendRecord(nil, record{kind: kindData, seq: 3, topic: "t", payload: []byte("payload")})
	for i := range len(full) {
		if _, _, err := decodeRecord(full[:i]); !errors.Is(err, errTruncated) {
			t.Errorf("prefix of %d bytes: err %v, want errTruncated", i, err)
		}
	}
	for i := range len(full) {
		b := bytes.Clone(full)
		b[i] ^= 0x40
		if _, _, err := decodeRecord(b); err == nil {
			t.Errorf("flipped byte %d decoded without error", i)
		}
	}
}

// FuzzDecodeRecord feeds arbitrary bytes (a damaged buffer file) to the
// decoder: it must not panic, must consume within bounds, and whatever it
// accepts must re-encode to the same bytes.
func FuzzDecodeRecord(f *testing.F) {
	f.Add(appendRecord(nil, record{kind: kindData, seq: 1, topic: "t", payload: []byte("x")}))
	f.Add(appendRecord(nil, record{kind: kindAck, seq: 2}))
	f.Add(appendRecord(nil, record{kind: kindDrop, seq: 3}))
	f.Add([]byte{0, 0, 0, 9, 0, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4, 5})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, n, err := decodeRecord(b)
		if err != nil {
			if n != 0 {
				t.Fatalf("error %v with n=%d", err, n)
			}
			return
		}
		if n <= 0 || n > len(b) {
			t.Fatalf("n=%d of %d bytes", n, len(b))
		}
		if re := appendRecord(nil, r); !bytes.Equal(re, b[:n]) {
			t.Fatalf("re-encoding differs: %x vs %x", re, b[:n])
		}
	})
}
