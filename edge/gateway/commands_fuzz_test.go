package gateway

import (
	"encoding/json"
	"testing"
)

// FuzzParseReply: any bytes a device publishes as a reply give a status in
// 100..599 and, if any, a payload that is valid JSON; never a panic.
func FuzzParseReply(f *testing.F) {
	for _, s := range []string{
		`{"status":200,"payload":{"ok":true}}`, `{"status":204}`, `{"status":200,"payload":null}`,
		`{"status":99}`, `{"status":"200"}`, `{"status":1e400}`, `not json`, ``, `[]`, `{"status":500,"payload":"x"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		status, payload, reason := parseReply(b)
		if status < 100 || status > 599 {
			t.Fatalf("status %d", status)
		}
		if payload != nil && !json.Valid(payload) {
			t.Fatalf("payload %q is not JSON", payload)
		}
		if status == 502 && reason == "" && payload == nil {
			var r reply
			if json.Unmarshal(b, &r) != nil {
				t.Fatal("a malformed reply without a reason")
			}
		}
	})
}
