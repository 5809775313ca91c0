package filter

import (
	"encoding/json"
	"errors"
	"testing"
)

// TestDecodeErrorNamesNestedPosition: an error inside all/any/not says
// where, so the API's 400 points at the element.
func TestDecodeErrorNamesNestedPosition(t *testing.T) {
	for in, want := range map[string]string{
		`{"all":[{"sql":"TRUE"},{"not":{"glob":{}}}]}`:              "all[1].not",
		`{"any":[{"exact":{"a":"b"}},{"prefix":{"a":1}}]}`:          "any[1].prefix",
		`{"not":{"any":[{"all":[{"exact":{"a":"b"},"sql":"x"}]}]}}`: "not.any[0].all[0]",
		`{"all":"x"}`: "all",
	} {
		var f Filter
		err := json.Unmarshal([]byte(in), &f)
		var fe *Error
		if !errors.As(err, &fe) || fe.Path != want || !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v (path %q), want path %q", in, err, pathOf(fe), want)
		}
	}
	var f Filter
	if err := json.Unmarshal([]byte(`{"any":[{"exact":{"a":"b"}},{"not":{"sql":"TRUE"}}]}`), &f); err != nil || len(f.Any) != 2 || f.Any[1].Not.SQL != "TRUE" {
		t.Fatalf("valid nested filter: %+v, %v", f, err)
	}
}

func pathOf(e *Error) string {
	if e == nil {
		return "<no *Error>"
	}
	return e.Path
}
