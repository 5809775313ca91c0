package filter

import (
	"encoding/json"
	"errors"
	"testing"
)

// FuzzFilter decodes untrusted filter JSON (as a subscription API request
// would carry it), compiles it and evaluates it against an event. Nothing may
// panic, and every rejection must be an ErrInvalid or a JSON syntax error.
func FuzzFilter(f *testing.F) {
	for _, s := range []string{
		`[{"exact":{"type":"io.tributary.telemetry"}}]`,
		`[{"prefix":{"subject":"plant/"}},{"suffix":{"subject":"/temp"}}]`,
		`[{"all":[{"exact":{"type":"x"}},{"not":{"sql":"qos = 1"}}]}]`,
		`[{"any":[{"sql":"EXISTS partitionkey"},{"sql":"1+1"}]}]`,
		`[{"sql":"TRUE AND"}]`,
		`[{"sql":"a.b"}]`,
		`[{"sql":"type IN ()"}]`,
		`[{"sql":"UPPER(subject) LIKE 'PLANT/%' OR ABS(-qos) = 1"}]`,
		`[{"not":{"not":{"not":{"exact":{"id":"id-1"}}}}}]`,
		`[{}]`,
		`[{"regex":1}]`,
	} {
		f.Add([]byte(s))
	}
	e := testEvent()
	f.Fuzz(func(t *testing.T, b []byte) {
		var fs []Filter
		if err := json.Unmarshal(b, &fs); err != nil {
			return
		}
		m, err := CompileAll(fs)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("compile error is not ErrInvalid: %v", err)
			}
			return
		}
		m.Match(e)
	})
}

// FuzzSQL feeds raw text to the CESQL compiler, whose parser is known to
// panic on some inputs.
func FuzzSQL(f *testing.F) {
	for _, s := range []string{
		"type = 'x'", "1+1", "EXISTS", "TRUE AND", "-", "a.b", "type IN ()",
		"ABS(", "NOTAFUNC(1)", "'\\", "\x00", "((((((1))))))", "qos / 0 = 1",
		"subject LIKE 'a%b_c' AND NOT (qos > 3 OR id IN ('a', \"b\"))",
		"CONCAT_WS(',', type, subject) = ''", "SUBSTRING(type, 1, 2) = 'io'",
	} {
		f.Add(s)
	}
	e := testEvent()
	f.Fuzz(func(t *testing.T, s string) {
		m, err := Filter{SQL: s}.Compile("sql")
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("compile error is not ErrInvalid: %v", err)
			}
			return
		}
		m.Match(e)
	})
}
