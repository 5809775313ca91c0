package outbox

import (
	"bytes"
	"errors"
	"slices"
	"testing"
)

func TestUserPropertiesRoundTrip(t *testing.T) {
	for _, props := range [][]UserProperty{
		nil,
		{{"", ""}},
		{{"k", "v"}},
		{{"k", "v"}, {"k", "v2"}, {"ключ", "значение"}},
		{{string(bytes.Repeat([]byte{'a'}, 300)), string([]byte{0, 0xff})}},
	} {
		b := appendUserProperties(nil, props)
		got, err := decodeUserProperties(b)
		if err != nil {
			t.Fatalf("decode(encode(%q)): %v", props, err)
		}
		if !slices.Equal(got, props) {
			t.Fatalf("round trip of %q = %q", props, got)
		}
	}
}

func TestDecodeUserPropertiesRejects(t *testing.T) {
	for _, b := range [][]byte{
		{0x00},                         // zero count is never written
		{0x80},                         // truncated varint
		{0x01},                         // count without properties
		{0x01, 0x00},                   // key without value
		{0x01, 0x05, 'a'},              // key longer than the input
		{0x01, 0x00, 0x00, 0x00},       // trailing byte
		{0xff, 0xff, 0xff, 0xff, 0x0f}, // huge count
		{0x01, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, // huge length
	} {
		if props, err := decodeUserProperties(b); !errors.Is(err, ErrCorrupt) {
			t.Errorf("decode(% x) = %q, %v; want ErrCorrupt", b, props, err)
		}
	}
}

// FuzzDecodeUserProperties feeds arbitrary stored bytes to the decoder: it
// must not panic, and whatever it accepts must survive a re-encoding.
func FuzzDecodeUserProperties(f *testing.F) {
	f.Add([]byte{})
	f.Add(appendUserProperties(nil, []UserProperty{{"k", "v"}, {"", "x"}}))
	f.Add([]byte{0x01, 0x00, 0x00})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		props, err := decodeUserProperties(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		again, err := decodeUserProperties(appendUserProperties(nil, props))
		if err != nil || !slices.Equal(again, props) {
			t.Fatalf("re-encoding %q decodes to %q, %v", props, again, err)
		}
	})
}

// FuzzUserPropertiesRoundTrip: any properties survive encode and decode.
func FuzzUserPropertiesRoundTrip(f *testing.F) {
	f.Add("k", "v", "", "")
	f.Add("\x00", "\xff\xfe", "key", "value")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 string) {
		props := []UserProperty{{k1, v1}, {k2, v2}}
		got, err := decodeUserProperties(appendUserProperties(nil, props))
		if err != nil || !slices.Equal(got, props) {
			t.Fatalf("round trip of %q = %q, %v", props, got, err)
		}
	})
}
