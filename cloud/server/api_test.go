package server

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/cloudevents/sdk-go/binding/format/protobuf/v2/pb"
	"google.golang.org/protobuf/proto"

	"github.com/tributary-io/tributary/cloud/commitlog"
)

func apiWith(t *testing.T, recs ...commitlog.Record) (*httptest.Server, *commitlog.FileLog) {
	t.Helper()
	l, err := commitlog.Open(t.TempDir(), commitlog.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	if len(recs) > 0 {
		if _, err := l.Append(context.Background(), recs); err != nil {
			t.Fatal(err)
		}
	}
	s := &Server{clog: l, auth: newAuthenticator([]TokenConfig{{Name: "t", Token: testToken, Scopes: []string{ScopeRead}}})}
	mux := http.NewServeMux()
	s.routes(mux)
	ts := httptest.NewServer(mux)
	t.Cleanup(ts.Close)
	return ts, l
}

const testToken = "read-token-0123456789"

// get is an authenticated GET with the read token.
func get(t *testing.T, url string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func eventValue(t *testing.T, id string) []byte {
	t.Helper()
	b, err := proto.Marshal(&pb.CloudEvent{Id: id, Source: "/s", SpecVersion: "1.0", Type: "t",
		Data: &pb.CloudEvent_BinaryData{BinaryData: []byte(`{"x":1}`)},
		Attributes: map[string]*pb.CloudEventAttributeValue{
			"datacontenttype": {Attr: &pb.CloudEventAttributeValue_CeString{CeString: "application/json"}},
		}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestEventsPages(t *testing.T) {
	var recs []commitlog.Record
	for i := range 25 {
		recs = append(recs, commitlog.Record{Topic: "a/b", Producer: "gw", ProducerSeq: uint64(i + 1), Value: eventValue(t, "gw-"+string(rune('a'+i)))})
	}
	ts, _ := apiWith(t, recs...)
	var got []LogEntry
	from := uint64(0)
	for range 10 {
		resp := get(t, ts.URL+"/v1/events?limit=10&from="+itoa(from))
		var page EventsPage
		if err := json.NewDecoder(resp.Body).Decode(&page); err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		got = append(got, page.Events...)
		if page.Next >= page.End {
			break
		}
		from = page.Next
	}
	if len(got) != 25 {
		t.Fatalf("paged %d records, want 25", len(got))
	}
	for i, e := range got {
		if e.Offset != uint64(i) || e.GatewaySeq != uint64(i+1) || e.DecodeError != "" {
			t.Fatalf("record %d: %+v", i, e)
		}
		var ev map[string]any
		if err := json.Unmarshal(e.Event, &ev); err != nil || ev["id"] == nil || ev["data"] == nil {
			t.Fatalf("record %d: event JSON %s (%v)", i, e.Event, err)
		}
	}
}

func TestEventsRejectsBadQueries(t *testing.T) {
	ts, _ := apiWith(t)
	for _, q := range []string{"from=-1", "from=x", "limit=0", "limit=10001", "limit=abc"} {
		resp := get(t, ts.URL+"/v1/events?"+q)
		var body map[string]string
		json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || body["error"] == "" {
			t.Errorf("%s: status %d body %v, want 400 with an error", q, resp.StatusCode, body)
		}
	}
}

func TestEventsUndecodableValueIsReported(t *testing.T) {
	ts, _ := apiWith(t, commitlog.Record{Topic: "x", Value: []byte{0xff, 0xff, 0xff}})
	resp := get(t, ts.URL+"/v1/events")
	defer resp.Body.Close()
	var page EventsPage
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil {
		t.Fatal(err)
	}
	if len(page.Events) != 1 || page.Events[0].DecodeError == "" {
		t.Fatalf("want one record with a decode error, got %+v", page)
	}
}

func itoa(u uint64) string {
	b, _ := json.Marshal(u)
	return string(b)
}

// TestEventsAndGatewayNameLanes: records of a gateway's priority lanes are
// logged under per-lane producers; the API shows the gateway and the lane,
// and the gateway's page lists each lane's high-water mark.
func TestEventsAndGatewayNameLanes(t *testing.T) {
	ts, _ := apiWith(t,
		commitlog.Record{Topic: "t", Producer: "gw-1", ProducerSeq: 7, Value: eventValue(t, "gw-1-7")},
		commitlog.Record{Topic: "alarms/x", Producer: "gw-1/lane-2", ProducerSeq: 9, Value: eventValue(t, "gw-1-9")},
	)
	resp := get(t, ts.URL+"/v1/events?from=0")
	defer resp.Body.Close()
	var page EventsPage
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil {
		t.Fatal(err)
	}
	if len(page.Events) != 2 ||
		page.Events[0].Gateway != "gw-1" || page.Events[0].Lane != 0 || page.Events[0].GatewaySeq != 7 ||
		page.Events[1].Gateway != "gw-1" || page.Events[1].Lane != 2 || page.Events[1].GatewaySeq != 9 {
		t.Fatalf("events %+v", page.Events)
	}
	gresp := get(t, ts.URL+"/v1/gateways/gw-1")
	defer gresp.Body.Close()
	var gw struct {
		HWM   uint64            `json:"high_water_mark"`
		Lanes map[string]uint64 `json:"lanes"`
	}
	if err := json.NewDecoder(gresp.Body).Decode(&gw); err != nil {
		t.Fatal(err)
	}
	if gw.HWM != 7 || len(gw.Lanes) != 1 || gw.Lanes["2"] != 9 {
		t.Fatalf("gateway page %+v", gw)
	}
}
