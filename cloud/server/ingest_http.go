package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"

	format "github.com/cloudevents/sdk-go/binding/format/protobuf/v2"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"google.golang.org/protobuf/proto"

	"github.com/tributary-io/tributary/cloud/commitlog"
)

// maxIngestBody bounds one POST /v1/events body.
const maxIngestBody = 4 << 20

// IngestResult is the answer of POST /v1/events (all zero for an empty
// batch).
type IngestResult struct {
	Appended    int    `json:"appended"`
	FirstOffset uint64 `json:"first_offset"`
	LastOffset  uint64 `json:"last_offset"`
}

// handleIngest appends CloudEvents POSTed over HTTP to the central log: one
// event in binary or structured mode, or a batch
// (application/cloudevents-batch+json). It answers 200 only once the events
// are durable in the log; a client that got no answer resends (the events
// keep their ids, so consumers deduplicate). Every event is validated first:
// one invalid event refuses the whole request with 400 naming it, and
// nothing is appended.
//
// What it holds a request to (CloudEvents 1.0.2 and its HTTP binding and
// JSON format): a content type of application/cloudevents+json or
// application/cloudevents-batch+json is structured or batch mode, and
// anything else needs the ce-specversion header of binary mode (else 415);
// specversion must be 1.0 (else 400); in the JSON formats every member
// other than data and data_base64 is an attribute, whose name must be
// lower-case ASCII letters and digits (else 400: an SDK that lower-cased
// "myExt" would change the event). In binary mode header names are
// case-insensitive, so ce-MyExt is the attribute myext; ce- values are
// unquoted and percent-decoded (binding 3.1.3.2; malformed or non-UTF-8
// encodings are 400), and ce-datacontenttype is refused (Content-Type is
// datacontenttype there). An empty batch is allowed (200, nothing
// appended). A body over 4 MiB is 413.
func (s *Server) handleIngest(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength > maxIngestBody {
		writeError(w, http.StatusRequestEntityTooLarge, "body of %d bytes is over the %d-byte limit", r.ContentLength, maxIngestBody)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxIngestBody)
	ct := r.Header.Get("Content-Type")
	mt, _, _ := mime.ParseMediaType(ct)
	var events []event.Event
	var err error
	switch {
	case mt == event.ApplicationCloudEventsJSON || mt == event.ApplicationCloudEventsBatchJSON:
		var body []byte
		if body, err = io.ReadAll(r.Body); err == nil {
			events, err = decodeJSONEvents(body, mt == event.ApplicationCloudEventsBatchJSON)
		}
	case strings.HasPrefix(mt, "application/cloudevents"):
		writeError(w, http.StatusUnsupportedMediaType, "content type %q is not supported: use application/cloudevents+json, application/cloudevents-batch+json or binary mode", mt)
		return
	case r.Header.Get("Ce-Specversion") == "":
		writeError(w, http.StatusUnsupportedMediaType, "content type %q without a ce-specversion header is not a CloudEvent: send binary mode (ce-specversion, ce-id, ce-source, ce-type headers and the data as the body), application/cloudevents+json or application/cloudevents-batch+json", ct)
		return
	case r.Header.Get("Ce-Specversion") != event.CloudEventsVersionV1:
		writeError(w, http.StatusBadRequest, "ce-specversion %q is not supported: send 1.0", r.Header.Get("Ce-Specversion"))
		return
	default:
		if err := decodeCEHeaders(r.Header); err != nil {
			writeError(w, http.StatusBadRequest, "%v", err)
			return
		}
		var ev *event.Event
		if ev, err = cehttp.NewEventFromHTTPRequest(r); err == nil {
			events = []event.Event{*ev}
		}
	}
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, "body over the %d-byte limit", maxIngestBody)
			return
		}
		writeError(w, http.StatusBadRequest, "not a CloudEvent: %v", err)
		return
	}
	if len(events) == 0 {
		// "The batch MAY be empty" (HTTP binding 3.3.2): nothing to append.
		writeJSON(w, http.StatusOK, IngestResult{})
		return
	}
	recs := make([]commitlog.Record, 0, len(events))
	for i, ev := range events {
		if err := ev.Validate(); err != nil {
			writeError(w, http.StatusBadRequest, "event %d (id %q): %v", i, ev.ID(), err)
			return
		}
		pe, err := format.ToProto(&ev)
		if err != nil {
			writeError(w, http.StatusBadRequest, "event %d (id %q): %v", i, ev.ID(), err)
			return
		}
		b, err := proto.Marshal(pe)
		if err != nil {
			// What protobuf refuses is the event's content (a string
			// attribute that is not UTF-8): the client's mistake.
			writeError(w, http.StatusBadRequest, "event %d (id %q): %v", i, ev.ID(), err)
			return
		}
		recs = append(recs, commitlog.Record{Topic: ev.Subject(), Value: b})
	}
	res, err := s.clog.Append(r.Context(), recs)
	if err != nil {
		status := http.StatusServiceUnavailable
		if errors.Is(err, commitlog.ErrTooLarge) {
			status = http.StatusRequestEntityTooLarge
		}
		writeError(w, status, "append to the log: %v", err)
		return
	}
	writeJSON(w, http.StatusOK, IngestResult{Appended: res.Appended, FirstOffset: res.FirstOffset, LastOffset: res.LastOffset})
}

// decodeJSONEvents decodes a structured event or a batch in the JSON
// format, refusing what sdk-go would let through: a specversion other than
// 1.0 and attribute names that are not lower-case letters and digits.
func decodeJSONEvents(body []byte, batch bool) ([]event.Event, error) {
	raws := []json.RawMessage{body}
	if batch {
		raws = nil
		if err := json.Unmarshal(body, &raws); err != nil {
			return nil, fmt.Errorf("a batch is a JSON array of events: %w", err)
		}
	}
	events := make([]event.Event, 0, len(raws))
	for i, raw := range raws {
		where := "the event"
		if batch {
			where = fmt.Sprintf("event %d", i)
		}
		var members map[string]json.RawMessage
		if err := json.Unmarshal(raw, &members); err != nil {
			return nil, fmt.Errorf("%s is not a JSON object: %w", where, err)
		}
		for name := range members {
			if name != "data_base64" && !validAttributeName(name) {
				return nil, fmt.Errorf("%s: attribute name %q: CloudEvents attribute names are lower-case ASCII letters and digits", where, name)
			}
		}
		var sv string
		if members["specversion"] == nil {
			return nil, fmt.Errorf("%s: specversion is required (\"1.0\")", where)
		}
		if err := json.Unmarshal(members["specversion"], &sv); err != nil || sv != event.CloudEventsVersionV1 {
			return nil, fmt.Errorf("%s: specversion %s is not supported: send \"1.0\"", where, members["specversion"])
		}
		var ev event.Event
		if err := ev.UnmarshalJSON(raw); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		events = append(events, ev)
	}
	return events, nil
}

func validAttributeName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}
