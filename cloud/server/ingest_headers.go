package server

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"unicode/utf8"
)

// decodeCEHeaders turns the ce- headers of a binary-mode request into the
// attribute values they carry, in place: a double-quoted value is unquoted
// (RFC 9110 5.6.4, for older senders), then one round of percent-decoding
// is done, as the HTTP binding (1.0.2, 3.1.3.2) requires of receivers.
// sdk-go v2.16.2 does neither. A malformed escape or a result that is not
// UTF-8 (an overlong %C0%A0 included) is an error, and so is a
// ce-datacontenttype header, which binary mode forbids (3.1.1).
func decodeCEHeaders(h http.Header) error {
	for name, vs := range h {
		if len(name) < 3 || !strings.EqualFold(name[:3], "ce-") {
			continue
		}
		if strings.EqualFold(name, "ce-datacontenttype") {
			return errors.New("header ce-datacontenttype must not be sent in binary mode: the Content-Type header is the datacontenttype")
		}
		for i, v := range vs {
			d, err := decodeHeaderValue(v)
			if err != nil {
				return fmt.Errorf("header %s: %w", strings.ToLower(name), err)
			}
			vs[i] = d
		}
	}
	return nil
}

func decodeHeaderValue(v string) (string, error) {
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		var b strings.Builder
		in := v[1 : len(v)-1]
		for i := 0; i < len(in); i++ {
			c := in[i]
			if c == '\\' {
				if i+1 == len(in) {
					return "", errors.New("quoted value ends in a backslash")
				}
				i++
				c = in[i]
			} else if c == '"' {
				return "", errors.New("unescaped double quote inside a quoted value")
			}
			b.WriteByte(c)
		}
		v = b.String()
	}
	if !strings.Contains(v, "%") {
		if !utf8.ValidString(v) {
			return "", errors.New("value is not UTF-8")
		}
		return v, nil
	}
	b := make([]byte, 0, len(v))
	for i := 0; i < len(v); i++ {
		if v[i] != '%' {
			b = append(b, v[i])
			continue
		}
		if i+2 >= len(v) || unhex(v[i+1]) < 0 || unhex(v[i+2]) < 0 {
			return "", fmt.Errorf("malformed percent-encoding at byte %d (write %% as %%25)", i)
		}
		b = append(b, byte(unhex(v[i+1])<<4|unhex(v[i+2])))
		i += 2
	}
	if !utf8.Valid(b) {
		return "", errors.New("percent-encoded bytes are not UTF-8")
	}
	return string(b), nil
}

func unhex(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}
