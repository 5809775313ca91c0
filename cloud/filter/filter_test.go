package filter

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"gopkg.in/yaml.v3"
)

func testEvent() *event.Event {
	e := event.New()
	e.SetID("id-1")
	e.SetSource("urn:gw:7/dev/42")
	e.SetType("io.tributary.telemetry")
	e.SetSubject("plant/3/temp")
	e.SetTime(time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC))
	e.SetExtension("partitionkey", "dev-42")
	e.SetExtension("qos", int32(1))
	_ = e.SetData("application/json", map[string]int{"t": 21})
	return &e
}

func mustJSON(t *testing.T, s string) []Filter {
	t.Helper()
	var fs []Filter
	if err := json.Unmarshal([]byte(s), &fs); err != nil {
		t.Fatalf("decode %s: %v", s, err)
	}
	return fs
}

func TestMatchTable(t *testing.T) {
	e := testEvent()
	cases := []struct {
		name    string
		filters string
		want    bool
	}{
		{"no filters", `[]`, true},
		{"exact type", `[{"exact":{"type":"io.tributary.telemetry"}}]`, true},
		{"exact case sensitive", `[{"exact":{"type":"IO.tributary.telemetry"}}]`, false},
		{"exact two attributes", `[{"exact":{"type":"io.tributary.telemetry","subject":"plant/3/temp"}}]`, true},
		{"exact one of two wrong", `[{"exact":{"type":"io.tributary.telemetry","subject":"plant/4/temp"}}]`, false},
		{"exact extension", `[{"exact":{"partitionkey":"dev-42"}}]`, true},
		{"exact integer extension", `[{"exact":{"qos":"1"}}]`, true},
		{"exact time canonical", `[{"exact":{"time":"2024-05-01T12:00:00Z"}}]`, true},
		{"exact specversion", `[{"exact":{"specversion":"1.0"}}]`, true},
		{"exact missing attribute", `[{"exact":{"dataschema":"x"}}]`, false},
		{"exact missing extension", `[{"exact":{"nope":"x"}}]`, false},
		{"prefix", `[{"prefix":{"subject":"plant/3/"}}]`, true},
		{"prefix miss", `[{"prefix":{"subject":"plant/4/"}}]`, false},
		{"suffix", `[{"suffix":{"subject":"/temp","type":".telemetry"}}]`, true},
		{"suffix miss", `[{"suffix":{"subject":"/humidity"}}]`, false},
		{"all true", `[{"all":[{"prefix":{"type":"io."}},{"suffix":{"subject":"temp"}}]}]`, true},
		{"all one false", `[{"all":[{"prefix":{"type":"io."}},{"suffix":{"subject":"x"}}]}]`, false},
		{"any one true", `[{"any":[{"exact":{"type":"x"}},{"exact":{"type":"io.tributary.telemetry"}}]}]`, true},
		{"any none", `[{"any":[{"exact":{"type":"x"}},{"exact":{"type":"y"}}]}]`, false},
		{"not", `[{"not":{"exact":{"type":"x"}}}]`, true},
		{"not not", `[{"not":{"not":{"exact":{"type":"x"}}}}]`, false},
		{"list is conjunction", `[{"exact":{"type":"io.tributary.telemetry"}},{"exact":{"subject":"nope"}}]`, false},
		{"sql true", `[{"sql":"type = 'io.tributary.telemetry' AND subject LIKE 'plant/%'"}]`, true},
		{"sql false", `[{"sql":"subject LIKE 'office/%'"}]`, false},
		{"sql extension int", `[{"sql":"qos = 1"}]`, true},
		{"sql missing attribute is false", `[{"sql":"nope = 'x'"}]`, false},
		{"sql not of missing attribute is still false", `[{"sql":"NOT (nope = 'x')"}]`, false},
		{"sql exists", `[{"sql":"EXISTS partitionkey"}]`, true},
		{"sql division by zero is false", `[{"sql":"1/0 = 0"}]`, false},
		{"sql integer coerced to true", `[{"sql":"qos"}]`, true},
		{"sql string not boolean is false", `[{"sql":"type"}]`, false},
		{"sql string 'true' coerced", `[{"sql":"'TRUE'"}]`, true},
		{"sql function", `[{"sql":"UPPER(subject) = 'PLANT/3/TEMP'"}]`, true},
		{"sql inside not", `[{"not":{"sql":"qos = 2"}}]`, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, err := CompileAll(mustJSON(t, c.filters))
			if err != nil {
				t.Fatalf("compile: %v", err)
			}
			if got := m.Match(e); got != c.want {
				t.Fatalf("Match = %v, want %v", got, c.want)
			}
		})
	}
}

func TestCompileErrors(t *testing.T) {
	cases := []struct {
		name    string
		filters []Filter
		path    string // expected prefix of the error
		msg     string // expected substring
	}{
		{"empty filter", []Filter{{}}, "filters[0]", "no filter dialect"},
		{"two dialects", []Filter{{SQL: "true", Exact: map[string]string{"type": "x"}}}, "filters[0]", "more than one"},
		{"exact empty map", []Filter{{Exact: map[string]string{}}}, "filters[0].exact", "at least one attribute"},
		{"exact empty value", []Filter{{Exact: map[string]string{"type": ""}}}, "filters[0].exact.type", "must not be empty"},
		{"exact empty name", []Filter{{Prefix: map[string]string{"": "x"}}}, "filters[0].prefix", "name must not be empty"},
		{"upper-case name", []Filter{{Suffix: map[string]string{"Type": "x"}}}, "filters[0].suffix", "lower-case"},
		{"all empty", []Filter{{All: []Filter{}}}, "filters[0].all", "at least one"},
		{"any nested bad", []Filter{{Exact: map[string]string{"type": "x"}}, {Any: []Filter{{SQL: "true"}, {SQL: "("}}}}, "filters[1].any[1].sql", "syntax error: line 1:2"},
		{"not nested empty", []Filter{{Not: &Filter{}}}, "filters[0].not", "no filter dialect"},
		{"sql blank", []Filter{{SQL: "  "}}, "filters[0].sql", "empty expression"},
		{"sql too long", []Filter{{SQL: strings.Repeat("a", MaxSQLLen+1)}}, "filters[0].sql", "longer than"},
		{"sql unknown function", []Filter{{SQL: "FOO(type)"}}, "filters[0].sql", "unknown function FOO"},
		{"sql wrong arity", []Filter{{SQL: "ABS(1, 2) = 1"}}, "filters[0].sql", "unknown function ABS with 2"},
		// Each of these made sdk-go's CESQL parser panic (v2.16.2).
		{"sql parser panic 1+1", []Filter{{SQL: "1+1"}}, "filters[0].sql", "syntax error"},
		{"sql parser panic EXISTS", []Filter{{SQL: "EXISTS"}}, "filters[0].sql", "syntax error"},
		{"sql parser panic TRUE AND", []Filter{{SQL: "TRUE AND"}}, "filters[0].sql", "syntax error"},
		{"sql parser panic dash", []Filter{{SQL: "-"}}, "filters[0].sql", "syntax error"},
		{"sql parser panic empty IN", []Filter{{SQL: "type IN ()"}}, "filters[0].sql", "syntax error"},
		{"sql parser panic a.b", []Filter{{SQL: "a.b"}}, "filters[0].sql", "syntax error"},
		{"sql trailing garbage", []Filter{{SQL: "a b c"}}, "filters[0].sql", "line 1:3"},
		{"sql bad token", []Filter{{SQL: "'\\"}}, "filters[0].sql", "token recognition error"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := CompileAll(c.filters)
			if err == nil {
				t.Fatal("compiled, want error")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("errors.Is(err, ErrInvalid) = false for %v", err)
			}
			var fe *Error
			if !errors.As(err, &fe) || fe.Path != c.path {
				t.Errorf("path: got error %q, want path %q", err, c.path)
			}
			if !strings.Contains(err.Error(), c.msg) {
				t.Errorf("error %q does not contain %q", err, c.msg)
			}
		})
	}
}

func TestDepthLimit(t *testing.T) {
	f := Filter{Exact: map[string]string{"type": "x"}}
	for range MaxDepth + 1 {
		inner := f
		f = Filter{Not: &inner}
	}
	if _, err := CompileAll([]Filter{f}); err == nil || !strings.Contains(err.Error(), "nested deeper") {
		t.Fatalf("err = %v, want depth error", err)
	}
}

func TestDecodeErrors(t *testing.T) {
	cases := []struct{ in, msg string }{
		{`[{"exact":{"type":"x"},"prefix":{"type":"y"}}]`, "exactly one dialect key"},
		{`[{}]`, "exactly one dialect key"},
		{`[{"regex":{"type":"x"}}]`, `unsupported filter dialect "regex"`},
		{`[{"all":null}]`, "all: needs at least one"},
		{`[{"sql":""}]`, "sql: empty expression"},
		{`[{"not":null}]`, "not: needs a filter"},
		{`[{"exact":{"type":1}}]`, "exact"},
		{`[{"sql":1}]`, "sql"},
		{`[null]`, "not null"},
		{`["x"]`, "must be an object"},
		{`[{"all":[{"nope":{}}]}]`, `unsupported filter dialect "nope"`},
	}
	for _, c := range cases {
		var fs []Filter
		err := json.Unmarshal([]byte(c.in), &fs)
		if err == nil {
			t.Errorf("%s: decoded, want error", c.in)
			continue
		}
		if !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: error %q does not contain %q", c.in, err, c.msg)
		}
		if !errors.Is(err, ErrInvalid) && !strings.Contains(c.msg, "exact") && !strings.Contains(c.msg, "sql") {
			t.Errorf("%s: errors.Is(ErrInvalid) false for %v", c.in, err)
		}
	}
}

func TestYAMLRoundTrip(t *testing.T) {
	src := `
- prefix: {subject: "plant/"}
- any:
    - exact: {type: io.tributary.telemetry}
    - sql: "qos = 2"
- not:
    suffix: {subject: "/humidity"}
`
	var fs []Filter
	if err := yaml.Unmarshal([]byte(src), &fs); err != nil {
		t.Fatal(err)
	}
	m, err := CompileAll(fs)
	if err != nil {
		t.Fatal(err)
	}
	if !m.Match(testEvent()) {
		t.Fatal("YAML filters do not match the test event")
	}
	// JSON round trip keeps the meaning.
	b, err := json.Marshal(fs)
	if err != nil {
		t.Fatal(err)
	}
	var back []Filter
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("re-decode %s: %v", b, err)
	}
	if _, err := CompileAll(back); err != nil {
		t.Fatal(err)
	}

	var bad []Filter
	err = yaml.Unmarshal([]byte("- exact: {type: x}\n  sql: 'true'\n"), &bad)
	if err == nil || !strings.Contains(err.Error(), "exactly one dialect key") {
		t.Fatalf("two-key YAML filter: err = %v", err)
	}
	err = yaml.Unmarshal([]byte("- glob: {type: x}\n"), &bad)
	if err == nil || !strings.Contains(err.Error(), `unsupported filter dialect "glob"`) {
		t.Fatalf("unknown YAML dialect: err = %v", err)
	}
	err = yaml.Unmarshal([]byte("- just a string\n"), &bad)
	if err == nil || !strings.Contains(err.Error(), "must be a mapping") {
		t.Fatalf("scalar YAML filter: err = %v", err)
	}
}

// TestConcurrentCompileAndMatch runs compiles and matches from many
// goroutines; with -race it checks the parse lock and that matchers share
// nothing mutable.
func TestConcurrentCompileAndMatch(t *testing.T) {
	done := make(chan error)
	for i := range 8 {
		go func() {
			var err error
			for j := range 20 {
				var m Matcher
				m, err = CompileAll([]Filter{{SQL: "subject LIKE 'plant/%' AND qos = 1"}, {Not: &Filter{SQL: "type = 'x'"}}})
				if err != nil {
					break
				}
				if !m.Match(testEvent()) {
					err = errors.New("no match")
					break
				}
				_, _ = CompileAll([]Filter{{SQL: "TRUE AND"}})
				_ = i + j
			}
			done <- err
		}()
	}
	for range 8 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}
