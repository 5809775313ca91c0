package server

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/tributary-io/tributary/cloud/commitlog"
)

func post(t *testing.T, s *Server, token string, headers map[string]string, body []byte) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "http://"+s.APIAddr().String()+"/v1/events", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func TestHTTPIngestAppendsDurably(t *testing.T) {
	s := startServer(t, t.TempDir(), testTokens)
	binary := map[string]string{
		"Content-Type": "application/json", "Ce-Specversion": "1.0", "Ce-Id": "b-1",
		"Ce-Source": "/apps/a", "Ce-Type": "io.example.reading", "Ce-Subject": "rooms/1",
	}
	if st, b := post(t, s, writeTok, binary, []byte(`{"t":21}`)); st != 200 || b["appended"] != 1.0 {
		t.Fatalf("binary: %d %v", st, b)
	}
	structured := []byte(`{"specversion":"1.0","id":"s-1","source":"/apps/a","type":"io.example.reading","subject":"rooms/2","datacontenttype":"application/json","data":{"t":22}}`)
	if st, b := post(t, s, writeTok, map[string]string{"Content-Type": "application/cloudevents+json"}, structured); st != 200 {
		t.Fatalf("structured: %d %v", st, b)
	}
	batch := []byte(`[{"specversion":"1.0","id":"x-1","source":"/a","type":"t"},{"specversion":"1.0","id":"x-2","source":"/a","type":"t","data":"hi"}]`)
	if st, b := post(t, s, writeTok, map[string]string{"Content-Type": "application/cloudevents-batch+json"}, batch); st != 200 || b["appended"] != 2.0 {
		t.Fatalf("batch: %d %v", st, b)
	}
	// Header names are case-insensitive: ce-MyExt is the attribute myext.
	// A long extension name is allowed (20 characters is a SHOULD).
	mixed := map[string]string{"Content-Type": "text/plain", "CE-SPECVERSION": "1.0", "ce-id": "b-2", "Ce-Source": "/a", "Ce-Type": "t", "Ce-MyExt": "v", "Ce-Averyverylongextensionname": "w"}
	if st, b := post(t, s, writeTok, mixed, []byte(`hi`)); st != 200 {
		t.Fatalf("binary with mixed-case headers: %d %v", st, b)
	}
	// Percent-encoded and quoted values are decoded (the binding's example).
	enc := map[string]string{"Content-Type": "text/plain", "Ce-Specversion": "1.0", "Ce-Id": "b-3", "Ce-Source": "/a", "Ce-Type": "t",
		"Ce-Subject": "Euro%20%E2%82%AC%20%F0%9F%98%80", "Ce-Note": `"say \"hi\""`, "Ce-Lower": "%c3%a2"}
	if st, b := post(t, s, writeTok, enc, []byte(`hi`)); st != 200 {
		t.Fatalf("binary with encoded values: %d %v", st, b)
	}
	// "The batch MAY be empty."
	if st, b := post(t, s, writeTok, map[string]string{"Content-Type": "application/cloudevents-batch+json"}, []byte(`[]`)); st != 200 || b["appended"] != 0.0 {
		t.Fatalf("empty batch: %d %v", st, b)
	}
	if n := s.Log().NextOffset(); n != 6 {
		t.Fatalf("log holds %d records, want 6", n)
	}
	recs, err := s.Log().Read(0, 10, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	var ev map[string]any
	raw, err := DecodeEvent(recs[0].Value)
	if err != nil || json.Unmarshal(raw, &ev) != nil || ev["id"] != "b-1" || ev["subject"] != "rooms/1" || recs[0].Topic != "rooms/1" {
		t.Fatalf("first record: %s (%v), topic %q", raw, err, recs[0].Topic)
	}
	if ev["datacontenttype"] != "application/json" {
		t.Fatalf("binary mode: datacontenttype %v, want the Content-Type header", ev["datacontenttype"])
	}
	ev = nil
	if raw, err := DecodeEvent(recs[4].Value); err != nil || json.Unmarshal(raw, &ev) != nil || ev["myext"] != "v" || ev["averyverylongextensionname"] != "w" || ev["datacontenttype"] != "text/plain" {
		t.Fatalf("mixed-case binary record: %s (%v)", raw, err)
	}
	ev = nil
	if raw, err := DecodeEvent(recs[5].Value); err != nil || json.Unmarshal(raw, &ev) != nil || ev["subject"] != "Euro € 😀" || ev["note"] != `say "hi"` || ev["lower"] != "â" || recs[5].Topic != "Euro € 😀" {
		t.Fatalf("percent-encoded binary record: %s (%v), topic %q", raw, err, recs[5].Topic)
	}
}

func TestHTTPIngestRefusesBadInput(t *testing.T) {
	s := startServer(t, t.TempDir(), testTokens)
	for _, tc := range []struct {
		name    string
		headers map[string]string
		body    []byte
		want    int
		mention string
	}{
		{"read scope", map[string]string{"Content-Type": "application/cloudevents+json"}, []byte(`{}`), 403, "write"},
		{"no content type", nil, []byte(`x`), 415, "CloudEvent"},
		{"unsupported format", map[string]string{"Content-Type": "application/cloudevents+protobuf"}, []byte(`x`), 415, "not supported"},
		{"missing id", map[string]string{"Content-Type": "application/cloudevents+json"}, []byte(`{"specversion":"1.0","source":"/a","type":"t"}`), 400, "id"},
		{"garbage", map[string]string{"Content-Type": "application/cloudevents+json"}, []byte(`{{{`), 400, "CloudEvent"},
		// Binary mode: header values are percent-decoded, and must decode.
		{"malformed percent", func() map[string]string { h := binaryHeaders("1.0"); h["Ce-Subject"] = "50%"; return h }(), []byte(`{}`), 400, "ce-subject: malformed percent-encoding"},
		{"overlong percent", func() map[string]string { h := binaryHeaders("1.0"); h["Ce-Subject"] = "%C0%A0"; return h }(), []byte(`{}`), 400, "not UTF-8"},
		{"ce-datacontenttype", func() map[string]string { h := binaryHeaders("1.0"); h["Ce-Datacontenttype"] = "text/plain"; return h }(), []byte(`{}`), 400, "ce-datacontenttype"},
		{"one bad in a batch", map[string]string{"Content-Type": "application/cloudevents-batch+json"},
			[]byte(`[{"specversion":"1.0","id":"ok","source":"/a","type":"t"},{"specversion":"1.0","id":"bad","type":"t"}]`), 400, "event 1"},
		{"too large", map[string]string{"Content-Type": "application/cloudevents+json"}, []byte(`{"specversion":"1.0","id":"big","source":"/a","type":"t","data":"` + strings.Repeat("x", maxIngestBody) + `"}`), 413, "limit"},
		{"too large batch", map[string]string{"Content-Type": "application/cloudevents-batch+json"}, []byte(`[{"specversion":"1.0","id":"big","source":"/a","type":"t","data":"` + strings.Repeat("x", maxIngestBody) + `"}]`), 413, "limit"},
		{"too large binary", binaryHeaders("1.0"), bytes.Repeat([]byte("x"), maxIngestBody+1), 413, "limit"},
		// Binary mode needs ce-specversion; plain JSON is not a CloudEvent.
		{"json without ce headers", map[string]string{"Content-Type": "application/json"}, []byte(`{"t":1}`), 415, "ce-specversion"},
		{"binary without specversion", func() map[string]string { h := binaryHeaders("1.0"); delete(h, "Ce-Specversion"); return h }(), []byte(`{}`), 415, "ce-specversion"},
		// Only CloudEvents 1.0, in every mode (sdk-go alone takes 0.3).
		{"binary 0.3", binaryHeaders("0.3"), []byte(`{}`), 400, `ce-specversion "0.3"`},
		{"binary 2.0", binaryHeaders("2.0"), []byte(`{}`), 400, `ce-specversion "2.0"`},
		{"structured 0.3", map[string]string{"Content-Type": "application/cloudevents+json"}, []byte(`{"specversion":"0.3","id":"a","source":"/a","type":"t"}`), 400, "specversion"},
		{"structured no specversion", map[string]string{"Content-Type": "application/cloudevents+json"}, []byte(`{"id":"a","source":"/a","type":"t"}`), 400, "specversion is required"},
		{"batch 0.3", map[string]string{"Content-Type": "application/cloudevents-batch+json"}, []byte(`[{"specversion":"1.0","id":"a","source":"/a","type":"t"},{"specversion":"0.3","id":"b","source":"/a","type":"t"}]`), 400, "event 1: specversion"},
		// Attribute names: lower-case letters and digits only.
		{"upper-case extension", map[string]string{"Content-Type": "application/cloudevents+json"}, []byte(`{"specversion":"1.0","id":"a","source":"/a","type":"t","myExt":"x"}`), 400, `"myExt"`},
		{"underscore extension", map[string]string{"Content-Type": "application/cloudevents-batch+json"}, []byte(`[{"specversion":"1.0","id":"a","source":"/a","type":"t","my_ext":"x"}]`), 400, `"my_ext"`},
		{"binary underscore extension", func() map[string]string { h := binaryHeaders("1.0"); h["Ce-My_ext"] = "x"; return h }(), []byte(`{}`), 400, "attribute names"},
		{"not UTF-8", map[string]string{"Content-Type": "application/cloudevents-batch+json"}, []byte("[{\"specversion\":\"1.0\",\"id\":\"0\",\"source\":\"0\",\"type\":\"\xdb\"}]"), 400, "UTF-8"},
		{"batch not an array", map[string]string{"Content-Type": "application/cloudevents-batch+json"}, []byte(`{"specversion":"1.0","id":"a","source":"/a","type":"t"}`), 400, "JSON array"},
		{"structured mode, charset", map[string]string{"Content-Type": "application/cloudevents+json; charset=utf-8"}, []byte(`{"specversion":"1.0","id":"a","source":"/a","type":"t","Data":1}`), 400, `"Data"`},
	} {
		tok := writeTok
		if tc.name == "read scope" {
			tok = readTok
		}
		st, b := post(t, s, tok, tc.headers, tc.body)
		msg, _ := b["error"].(string)
		if st != tc.want || !strings.Contains(msg, tc.mention) {
			t.Errorf("%s: %d %q, want %d mentioning %q", tc.name, st, msg, tc.want, tc.mention)
		}
	}
	if n := s.Log().NextOffset(); n != 0 {
		t.Fatalf("refused requests appended %d records", n)
	}
}

// binaryHeaders are a binary-mode event's headers with the given specversion.
func binaryHeaders(specversion string) map[string]string {
	return map[string]string{"Content-Type": "application/json", "Ce-Specversion": specversion, "Ce-Id": "b", "Ce-Source": "/a", "Ce-Type": "t"}
}

func FuzzHTTPIngest(f *testing.F) {
	f.Add(uint8(0), []byte(`{"specversion":"1.0","id":"a","source":"/s","type":"t","data":1}`))
	f.Add(uint8(1), []byte(`[{"specversion":"1.0","id":"a","source":"/s","type":"t"}]`))
	f.Add(uint8(2), []byte(`{"t":1}`))
	f.Add(uint8(0), []byte(`{"specversion":"0.3","id":"","source":":::","type":"t"}`))
	l, err := commitlog.Open(f.TempDir(), commitlog.Options{})
	if err != nil {
		f.Fatal(err)
	}
	defer l.Close()
	s := &Server{clog: l}
	cts := []string{"application/cloudevents+json", "application/cloudevents-batch+json", "application/json"}
	f.Fuzz(func(t *testing.T, kind uint8, body []byte) {
		req := httptest.NewRequest(http.MethodPost, "/v1/events", bytes.NewReader(body))
		req.Header.Set("Content-Type", cts[int(kind)%len(cts)])
		if int(kind)%len(cts) == 2 {
			req.Header.Set("Ce-Specversion", "1.0")
			req.Header.Set("Ce-Id", "x")
			req.Header.Set("Ce-Source", "/s")
			req.Header.Set("Ce-Type", "t")
		}
		before := l.NextOffset()
		rec := httptest.NewRecorder()
		s.handleIngest(rec, req)
		switch rec.Code {
		case http.StatusOK:
		case http.StatusBadRequest, http.StatusRequestEntityTooLarge, http.StatusUnsupportedMediaType:
			if l.NextOffset() != before {
				t.Fatalf("refused with %d but appended", rec.Code)
			}
		default:
			t.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
	})
}

// FuzzDecodeHeaderValue: decoding a ce- header value never panics, and what
// it accepts is UTF-8; a value with nothing to decode comes back as is.
func FuzzDecodeHeaderValue(f *testing.F) {
	for _, s := range []string{"plain", "Euro%20%E2%82%AC", `"a \"b\""`, "%", "%zz", "%C0%A0", `"\`, "\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		d, err := decodeHeaderValue(v)
		if err != nil {
			return
		}
		if !utf8.ValidString(d) {
			t.Fatalf("%q decoded to non-UTF-8 %q", v, d)
		}
		if !strings.ContainsAny(v, "%\"") && d != v {
			t.Fatalf("%q changed to %q", v, d)
		}
	})
}
