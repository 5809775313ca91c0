package server

import (
	"strings"
	"testing"
)

// TestBadSubscriptionIs400WithReason: a bad filter (including CESQL that
// makes sdk-go's parser panic), a bad transformation, a bad sink URL or a
// bad protocol setting is refused with 400 whose error names the field and
// says what is wrong; nothing is created.
func TestBadSubscriptionIs400WithReason(t *testing.T) {
	s := startServer(t, t.TempDir(), testTokens)
	for _, c := range []struct {
		body    map[string]any
		mention []string
	}{
		{map[string]any{"filters": []any{map[string]any{"sql": "type = "}}}, []string{"filters[0].sql", "syntax error"}},
		{map[string]any{"filters": []any{map[string]any{"sql": "1+1"}}}, []string{"filters[0].sql", "syntax error"}}, // parser panics
		{map[string]any{"filters": []any{map[string]any{"exact": map[string]any{"type": "a"}}, map[string]any{"not": map[string]any{"sql": "TRUE AND"}}}}, []string{"filters[1].not.sql"}},
		{map[string]any{"filters": []any{map[string]any{"glob": map[string]any{"type": "a*"}}}}, []string{"filters[0]", "glob"}},
		{map[string]any{"filters": []any{map[string]any{"sql": "TRUE"}, map[string]any{"any": []any{map[string]any{"exact": map[string]any{"type": "a"}}, map[string]any{"all": []any{map[string]any{"suffix": 5}}}}}}}, []string{"filters[1].any[1].all[0].suffix"}},
		{map[string]any{"filters": []any{map[string]any{"exact": map[string]any{"type": "a"}, "prefix": map[string]any{"type": "b"}}}}, []string{"filters[0]"}},
		{map[string]any{"transform": map[string]any{"data": `{"t": data.t`}}, []string{"transform.data", "line 1:"}},
		{map[string]any{"sink": "ftp://127.0.0.1/x"}, []string{"sink", "scheme"}},
		{map[string]any{"sink": "http:///hook"}, []string{"sink", "no host"}},
		{map[string]any{"sink": "/relative"}, []string{"sink", "scheme"}},
		{map[string]any{"protocol_settings": map[string]any{"batch_size": 10}}, []string{"protocol_settings.batch_size", "needs mode batch"}},
		{map[string]any{"protocol_settings": map[string]any{"mode": "batched"}}, []string{"protocol_settings.mode", "binary, structured or batch"}},
	} {
		c.body["id"] = "bad"
		if c.body["sink"] == nil {
			c.body["sink"] = "http://127.0.0.1:9/hook"
		}
		st, b := call(t, s, "POST", "/v1/subscriptions", writeTok, c.body)
		msg, _ := b["error"].(string)
		if st != 400 {
			t.Errorf("create %v: %d %q, want 400", c.body, st, msg)
			continue
		}
		for _, w := range c.mention {
			if !strings.Contains(msg, w) {
				t.Errorf("create %v: error %q does not mention %q", c.body, msg, w)
			}
		}
	}
	if st, _ := call(t, s, "GET", "/v1/subscriptions/bad", readTok, nil); st != 404 {
		t.Fatalf("a refused subscription exists: GET answered %d", st)
	}
}
