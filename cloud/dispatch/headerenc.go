package dispatch

import (
	"net/http"
	"strings"
)

// Binary mode puts attributes in ce- headers. The HTTP binding (1.0.2,
// 3.1.3.2) requires every such value to be percent-encoded: space, '"',
// '%' and every byte outside printable ASCII (0x21-0x7E) become %XY of
// their UTF-8 bytes, so a subject taken from an MQTT topic such as
// "bâtiment/salle 1" is sent as "b%C3%A2timent/salle%201". sdk-go v2.16.2
// writes values raw, so the sender's transport encodes them.
//
// Receivers built on sdk-go v2.16.2 do not decode (they see the encoded
// text); values made only of printable ASCII without space, '"' and '%' are
// unchanged, and structured or batch mode carry values as JSON instead.

// percentEncodeHeader returns v encoded as the binding says, and whether
// anything changed.
func percentEncodeHeader(v string) (string, bool) {
	i := 0
	for i < len(v) && !needsPercent(v[i]) {
		i++
	}
	if i == len(v) {
		return v, false
	}
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(v) + 16)
	b.WriteString(v[:i])
	for ; i < len(v); i++ {
		if c := v[i]; needsPercent(c) {
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
		} else {
			b.WriteByte(c)
		}
	}
	return b.String(), true
}

func needsPercent(c byte) bool { return c <= ' ' || c == '"' || c == '%' || c >= 0x7f }

// ceHeaderEncoder percent-encodes the ce- headers of each request. A
// request that needs no encoding (the usual case) goes through untouched;
// one that does is cloned first (a RoundTripper must not change its
// request).
type ceHeaderEncoder struct{ next http.RoundTripper }

func (e ceHeaderEncoder) RoundTrip(req *http.Request) (*http.Response, error) {
	var out *http.Request
	for name, vs := range req.Header {
		if len(name) < 3 || !strings.EqualFold(name[:3], "ce-") {
			continue
		}
		for i, v := range vs {
			enc, changed := percentEncodeHeader(v)
			if !changed {
				continue
			}
			if out == nil {
				out = req.Clone(req.Context()) // copies the header values
			}
			out.Header[name][i] = enc
		}
	}
	if out == nil {
		out = req
	}
	return e.next.RoundTrip(out)
}
