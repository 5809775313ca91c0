package dispatch

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tributary-io/tributary/cloud/filter"
)

func TestValidate(t *testing.T) {
	ok := func() Subscription { return Subscription{ID: "s-1", Sink: "http://127.0.0.1:9/x"} }
	cases := []struct {
		name  string
		edit  func(*Subscription)
		field string // "" = valid
		msg   string
	}{
		{"minimal", func(*Subscription) {}, "", ""},
		{"full", func(s *Subscription) {
			s.Protocol = "HTTP"
			s.ProtocolSettings = HTTPSettings{Mode: ModeStructured, Method: "PUT", Headers: map[string]string{"X-Api-Key": "k"}, Timeout: Duration(time.Second)}
			s.Filters = []filter.Filter{{SQL: "type = 'x'"}}
			s.Parallelism = 16
			s.DeadLetter = "$dl/custom"
			s.From = "42"
		}, "", ""},
		{"no id", func(s *Subscription) { s.ID = "" }, "id", "required"},
		{"bad id", func(s *Subscription) { s.ID = "a/b" }, "id", "only"},
		{"dot id", func(s *Subscription) { s.ID = ".hidden" }, "id", "dot"},
		{"long id", func(s *Subscription) { s.ID = strings.Repeat("a", 129) }, "id", "longer"},
		{"no sink", func(s *Subscription) { s.Sink = "" }, "sink", "required"},
		{"sink scheme", func(s *Subscription) { s.Sink = "ftp://x/y" }, "sink", "scheme"},
		{"sink relative", func(s *Subscription) { s.Sink = "/hook" }, "sink", "scheme"},
		{"sink no host", func(s *Subscription) { s.Sink = "http:///hook" }, "sink", "no host"},
		{"sink unparsable", func(s *Subscription) { s.Sink = "http://[::1" }, "sink", ""},
		{"protocol", func(s *Subscription) { s.Protocol = "MQTT5" }, "protocol", "must be HTTP or NATS"},
		{"mode", func(s *Subscription) { s.ProtocolSettings.Mode = "batched" }, "protocol_settings.mode", "binary, structured or batch"},
		{"batch size without batch mode", func(s *Subscription) { s.ProtocolSettings.BatchSize = 10 }, "protocol_settings.batch_size", "needs mode batch"},
		{"batch size too large", func(s *Subscription) { s.ProtocolSettings.Mode, s.ProtocolSettings.BatchSize = ModeBatch, 1001 }, "protocol_settings.batch_size", "between 1 and 1000"},
		{"batch size negative", func(s *Subscription) { s.ProtocolSettings.Mode, s.ProtocolSettings.BatchSize = ModeBatch, -1 }, "protocol_settings.batch_size", "between 1 and 1000"},
		{"batch to NATS", func(s *Subscription) { s.Sink, s.ProtocolSettings.Mode = "nats://127.0.0.1:4222/x", ModeBatch }, "protocol_settings.mode", "NATS sink"},
		{"method", func(s *Subscription) { s.ProtocolSettings.Method = "GET" }, "protocol_settings.method", "POST or PUT"},
		{"ce header", func(s *Subscription) { s.ProtocolSettings.Headers = map[string]string{"Ce-Id": "x"} }, "protocol_settings.headers.Ce-Id", "binding"},
		{"content-type header", func(s *Subscription) { s.ProtocolSettings.Headers = map[string]string{"content-type": "x"} }, "protocol_settings.headers.content-type", "binding"},
		{"header CRLF", func(s *Subscription) { s.ProtocolSettings.Headers = map[string]string{"X-A": "a\r\nB: c"} }, "protocol_settings.headers.X-A", "CR"},
		{"header name", func(s *Subscription) { s.ProtocolSettings.Headers = map[string]string{"X A": "a"} }, "protocol_settings.headers.X A", "invalid character"},
		{"negative timeout", func(s *Subscription) { s.ProtocolSettings.Timeout = -1 }, "protocol_settings.timeout", "negative"},
		{"huge timeout", func(s *Subscription) { s.ProtocolSettings.Timeout = Duration(time.Hour) }, "protocol_settings.timeout", "at most"},
		{"bad filter", func(s *Subscription) {
			s.Filters = []filter.Filter{{Exact: map[string]string{"type": "x"}}, {Not: &filter.Filter{SQL: "TRUE AND"}}}
		}, "filters[1].not.sql", "syntax error"},
		{"parallelism", func(s *Subscription) { s.Parallelism = MaxParallelism + 1 }, "parallelism", "between"},
		{"negative parallelism", func(s *Subscription) { s.Parallelism = -1 }, "parallelism", "between"},
		{"attempts", func(s *Subscription) { s.Retry.MaxAttempts = -1 }, "retry.max_attempts", "negative"},
		{"backoff order", func(s *Subscription) {
			s.Retry.MinBackoff, s.Retry.MaxBackoff = Duration(time.Minute), Duration(time.Second)
		}, "retry.min_backoff", "above"},
		{"negative age", func(s *Subscription) { s.Retry.MaxAge = -1 }, "retry.max_age", "negative"},
		{"dead letter topic", func(s *Subscription) { s.DeadLetter = "plant/dl" }, "dead_letter", "must start with"},
		{"from", func(s *Subscription) { s.From = "yesterday" }, "from", "earliest, latest"},
		{"from negative", func(s *Subscription) { s.From = "-1" }, "from", "earliest, latest"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := ok()
			c.edit(&s)
			err := s.Validate()
			if c.field == "" {
				if err != nil {
					t.Fatalf("valid subscription rejected: %v", err)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("err = %v, want a *FieldError", err)
			}
			if fe.Field != c.field || !strings.Contains(err.Error(), c.msg) || !errors.Is(err, ErrInvalidSubscription) {
				t.Fatalf("err = %q (field %q), want field %q containing %q", err, fe.Field, c.field, c.msg)
			}
		})
	}
}

func TestParseJSONAndYAML(t *testing.T) {
	js := `{"id":"hooks","sink":"https://example.test/in","protocol":"HTTP",
	  "protocol_settings":{"mode":"structured","headers":{"X-Key":"k"},"timeout":"2.5s"},
	  "filters":[{"prefix":{"subject":"plant/"}},{"any":[{"exact":{"type":"a"}},{"sql":"qos > 0"}]}],
	  "parallelism":4,"ordered":false,
	  "retry":{"max_attempts":3,"min_backoff":"100ms","max_backoff":"1s","max_age":"1m"},
	  "dead_letter":"$dl/hooks","from":"latest"}`
	yml := `
id: hooks
sink: https://example.test/in
protocol: HTTP
protocol_settings:
  mode: structured
  headers: {X-Key: k}
  timeout: 2.5s
filters:
  - prefix: {subject: "plant/"}
  - any:
      - exact: {type: a}
      - sql: "qos > 0"
parallelism: 4
ordered: false
retry: {max_attempts: 3, min_backoff: 100ms, max_backoff: 1s, max_age: 1m}
dead_letter: $dl/hooks
from: latest
`
	a, err := ParseJSON([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	b, err := ParseYAML([]byte(yml))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []Subscription{a, b} {
		if s.ID != "hooks" || s.ProtocolSettings.Timeout.D() != 2500*time.Millisecond || s.IsOrdered() ||
			s.Retry.MinBackoff.D() != 100*time.Millisecond || len(s.Filters) != 2 || len(s.Filters[1].Any) != 2 ||
			s.From != FromLatest || s.DeadLetter != "$dl/hooks" || s.ProtocolSettings.Headers["X-Key"] != "k" {
			t.Fatalf("decoded %+v", s)
		}
	}

	bad := []struct{ in, msg string }{
		{`{"id":"x","sink":"http://h/","sinc":"typo"}`, `unknown field "sinc"`},
		{`{"id":"x","sink":"http://h/","protocol_settings":{"timeout":10}}`, "duration must be a string"},
		{`{"id":"x","sink":"http://h/","retry":{"max_age":"forever"}}`, "invalid duration"},
		{`{"id":"x","sink":"http://h/","filters":[{"glob":"*"}]}`, "unsupported filter dialect"},
		{`{"id":"x","sink":"http://h/","filters":[{"sql":"1+1"}]}`, "filters[0].sql: syntax error"},
		{`{"id":"x","sink":"http://h/"} {}`, "trailing data"},
		{`[]`, "cannot unmarshal"},
	}
	for _, c := range bad {
		_, err := ParseJSON([]byte(c.in))
		if err == nil || !strings.Contains(err.Error(), c.msg) || !errors.Is(err, ErrInvalidSubscription) {
			t.Errorf("ParseJSON(%s) = %v, want ErrInvalidSubscription containing %q", c.in, err, c.msg)
		}
	}
	badYAML := []struct{ in, msg string }{
		{"id: x\nsink: http://h/\nparalelism: 2\n", "field paralelism not found"},
		{"id: x\nsink: http://h/\nprotocol_settings: {timeout: [1]}\n", "duration must be a string"},
		{"", "empty document"},
		{"id: x\nsink: http://h/\nfilters: [{exact: {type: a}, sql: b}]\n", "exactly one dialect key"},
	}
	for _, c := range badYAML {
		_, err := ParseYAML([]byte(c.in))
		if err == nil || !strings.Contains(err.Error(), c.msg) || !errors.Is(err, ErrInvalidSubscription) {
			t.Errorf("ParseYAML(%q) = %v, want ErrInvalidSubscription containing %q", c.in, err, c.msg)
		}
	}
}

// FuzzParseSubscription feeds untrusted API bodies and config files to the
// JSON and YAML decoders and the validator: errors are fine, panics are not,
// and whatever validates must compile.
func FuzzParseSubscription(f *testing.F) {
	for _, s := range []string{
		`{"id":"a","sink":"http://127.0.0.1/"}`,
		`{"id":"a","sink":"http://h/","filters":[{"not":{"sql":"EXISTS"}}],"retry":{"max_backoff":"1h"}}`,
		`{"id":"a","sink":"http://h/","protocol_settings":{"headers":{"A":"b"},"timeout":"1s"},"from":"18446744073709551615"}`,
		`{"id":"a","sink":"http://h/","parallelism":1025}`,
	} {
		f.Add([]byte(s))
	}
	f.Add([]byte("id: a\nsink: http://h/\nfilters:\n  - not: {sql: 'a.b'}\nretry: {max_age: 1h}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, parse := range []func([]byte) (Subscription, error){ParseJSON, ParseYAML} {
			s, err := parse(b)
			if err != nil {
				if !errors.Is(err, ErrInvalidSubscription) {
					t.Fatalf("error not ErrInvalidSubscription: %v", err)
				}
				continue
			}
			if _, err := s.compile(); err != nil {
				t.Fatalf("validated but does not compile: %v", err)
			}
		}
	})
}
