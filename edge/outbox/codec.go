package outbox

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// User properties are stored in one BLOB column as
//
//	uvarint(count) { uvarint(len(key)) key uvarint(len(value)) value }
//
// and no properties as an empty (or NULL) blob. This is smaller and faster
// than JSON for the common case of a few short pairs, and keeps order and
// duplicate keys, which MQTT 5 allows.

// appendUserProperties appends the encoding of props to dst.
func appendUserProperties(dst []byte, props []UserProperty) []byte {
	if len(props) == 0 {
		return dst
	}
	dst = binary.AppendUvarint(dst, uint64(len(props)))
	for _, p := range props {
		dst = binary.AppendUvarint(dst, uint64(len(p.Key)))
		dst = append(dst, p.Key...)
		dst = binary.AppendUvarint(dst, uint64(len(p.Value)))
		dst = append(dst, p.Value...)
	}
	return dst
}

// decodeUserProperties decodes what appendUserProperties wrote. It never
// panics: any malformed input, including trailing bytes, is an error
// wrapping ErrCorrupt. An empty input decodes to nil.
func decodeUserProperties(b []byte) ([]UserProperty, error) {
	if len(b) == 0 {
		return nil, nil
	}
	n, k := binary.Uvarint(b)
	if k <= 0 {
		return nil, fmt.Errorf("%w: user properties: bad count", ErrCorrupt)
	}
	b = b[k:]
	// Every property takes at least two bytes (two zero lengths), so a
	// count larger than that is corrupt; checking first bounds the
	// allocation by the input size.
	if n == 0 || n > uint64(len(b)/2) {
		return nil, fmt.Errorf("%w: user properties: count %d for %d bytes", ErrCorrupt, n, len(b))
	}
	props := make([]UserProperty, n)
	for i := range props {
		var err error
		if props[i].Key, b, err = decodeString(b); err != nil {
			return nil, fmt.Errorf("%w: user property %d key: %w", ErrCorrupt, i, err)
		}
		if props[i].Value, b, err = decodeString(b); err != nil {
			return nil, fmt.Errorf("%w: user property %d value: %w", ErrCorrupt, i, err)
		}
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%w: user properties: %d trailing bytes", ErrCorrupt, len(b))
	}
	return props, nil
}

func decodeString(b []byte) (string, []byte, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 {
		return "", nil, errors.New("bad length")
	}
	b = b[k:]
	if n > uint64(len(b)) {
		return "", nil, fmt.Errorf("length %d exceeds the %d bytes left", n, len(b))
	}
	return string(b[:n]), b[n:], nil
}
