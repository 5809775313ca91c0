package server

import (
	"errors"
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

// IngestResult is the answer of POST /v1/events.
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
func (s *Server) handleIngest(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength > maxIngestBody {
		writeError(w, http.StatusRequestEntityTooLarge, "body of %d bytes is over the %d-byte limit", r.ContentLength, maxIngestBody)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxIngestBody)
	if ct := r.Header.Get("Content-Type"); ct == "" && r.Header.Get("Ce-Specversion") == "" {
		writeError(w, http.StatusUnsupportedMediaType, "send a CloudEvent: binary mode (ce-* headers), application/cloudevents+json or application/cloudevents-batch+json")
		return
	} else if mt, _, _ := mime.ParseMediaType(ct); strings.HasPrefix(mt, "application/cloudevents") &&
		mt != "application/cloudevents+json" && mt != "application/cloudevents-batch+json" {
		writeError(w, http.StatusUnsupportedMediaType, "content type %q is not supported: use application/cloudevents+json, application/cloudevents-batch+json or binary mode", mt)
		return
	}
	var events []event.Event
	var err error
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt == "application/cloudevents-batch+json" {
		events, err = cehttp.NewEventsFromHTTPRequest(r)
	} else {
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
		writeError(w, http.StatusBadRequest, "the batch holds no event")
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
			writeError(w, http.StatusInternalServerError, "encode event %d: %v", i, err)
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
