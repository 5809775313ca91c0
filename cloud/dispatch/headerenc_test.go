package dispatch

import (
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/tributary-io/tributary/cloud/commitlog"
)

func TestPercentEncodeHeader(t *testing.T) {
	for in, want := range map[string]string{
		"plant/1/temp":         "plant/1/temp",
		"Euro € 😀":             "Euro%20%E2%82%AC%20%F0%9F%98%80", // the binding's example
		`say "hi"`:             "say%20%22hi%22",
		"100%":                 "100%25",
		"/devices/a%20b":       "/devices/a%2520b",
		"tab\there\x7f":        "tab%09here%7F",
		"bâtiment/salle 1":     "b%C3%A2timent/salle%201",
		"":                     "",
		"!#$&'()*+,-./:;<=>?@": "!#$&'()*+,-./:;<=>?@",
	} {
		got, changed := percentEncodeHeader(in)
		if got != want || changed != (in != want) {
			t.Errorf("%q: %q (changed %v), want %q", in, got, changed, want)
		}
	}
}

// TestBinaryHeadersPercentEncoded: a subject and an extension with space,
// quote, percent and non-ASCII reach the sink percent-encoded, and the
// other headers as they were.
func TestBinaryHeadersPercentEncoded(t *testing.T) {
	lg := commitlog.NewMemory(nil)
	e := makeEvent(0, 1)
	e.SetSubject("bâtiment/salle 1")
	e.SetExtension("note", `50% "off"`)
	if _, err := lg.Append(t.Context(), []commitlog.Record{{Topic: "x", Value: encode(t, e)}}); err != nil {
		t.Fatal(err)
	}
	var hdr http.Header
	got := make(chan struct{})
	s := newRawSink(t, func(h http.Header) { hdr = h.Clone(); close(got) })
	d := mustNew(t, lg, t.TempDir(), Options{})
	if err := d.Add(Subscription{ID: "pct", Sink: s}); err != nil {
		t.Fatal(err)
	}
	started(t, d)
	<-got
	for name, want := range map[string]string{
		"Ce-Subject": "b%C3%A2timent/salle%201",
		"Ce-Note":    "50%25%20%22off%22",
		"Ce-Id":      "ev-0",
		"Ce-Source":  "urn:tributary:gw-1/dev-0",
	} {
		if v := hdr.Get(name); v != want {
			t.Errorf("%s: %q, want %q", name, v, want)
		}
	}
}

// newRawSink serves 200 and hands each request's headers to seen; it
// returns the sink's URL.
func newRawSink(t *testing.T, seen func(http.Header)) string {
	t.Helper()
	var once sync.Once
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		once.Do(func() { seen(r.Header) })
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}
