package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/tributary-io/tributary/cloud/dispatch"
)

// The dead-letter and replay API:
//
//	GET  /v1/subscriptions/{id}/deadletters?from=&limit=   (read)
//	POST /v1/subscriptions/{id}/deadletters/redrive        (write)
//	POST /v1/subscriptions/{id}/replay                     (write)

// maxControlBody bounds the JSON body of redrive and replay requests.
const maxControlBody = 1 << 20

// dispatchStatus maps a dispatcher error to its HTTP status.
func dispatchStatus(err error) int {
	switch {
	case errors.Is(err, dispatch.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, dispatch.ErrInvalidRequest):
		return http.StatusBadRequest
	case errors.Is(err, dispatch.ErrConflict):
		return http.StatusConflict
	case errors.Is(err, dispatch.ErrNoTopicIndex):
		return http.StatusNotImplemented
	case errors.Is(err, dispatch.ErrStopped):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// decodeControl decodes a small JSON request body into v, refusing unknown
// fields and trailing data.
func decodeControl(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxControlBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("request body: a JSON object is required")
		}
		return fmt.Errorf("request body: %w", err)
	}
	if dec.More() {
		return errors.New("request body: more than one JSON value")
	}
	return nil
}

// handleDeadLetters lists a subscription's dead letters: from (a log
// offset, default the oldest) and limit (default 100, at most 1000).
func (s *Server) handleDeadLetters(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var from uint64
	if v := q.Get("from"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, "query parameter from: want a non-negative integer offset, got %q", v)
			return
		}
		from = n
	}
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > dispatch.MaxDeadLetterPage {
			writeError(w, http.StatusBadRequest, "query parameter limit: want an integer from 1 to %d, got %q", dispatch.MaxDeadLetterPage, v)
			return
		}
		limit = n
	}
	page, err := s.dispatch.DeadLetters(r.PathValue("id"), from, limit)
	if err != nil {
		writeError(w, dispatchStatus(err), "dead letters of %q: %v", r.PathValue("id"), err)
		return
	}
	writeJSON(w, http.StatusOK, page)
}

// handleRedrive queues dead letters for delivery again. The body is a
// dispatch.RedriveRequest: {"all": true}, {"offsets": [..]} or
// {"from": N, "to": M}. The answer, 202, counts what was queued; delivery
// happens in the background (see the subscription's stats).
func (s *Server) handleRedrive(w http.ResponseWriter, r *http.Request) {
	var req dispatch.RedriveRequest
	if err := decodeControl(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	res, err := s.dispatch.Redrive(r.PathValue("id"), req)
	if err != nil {
		writeError(w, dispatchStatus(err), "redrive %q: %v", r.PathValue("id"), err)
		return
	}
	writeJSON(w, http.StatusAccepted, res)
}

// replayAnswer is the answer of POST .../replay.
type replayAnswer struct {
	// Offset is where delivery restarted.
	Offset uint64 `json:"offset"`
}

// handleReplay moves a subscription's cursor: {"from_offset": N} or
// {"from_time": "2025-03-01T08:00:00Z"}. The move is durable when the
// answer (200, with the offset delivery restarted from) is sent.
func (s *Server) handleReplay(w http.ResponseWriter, r *http.Request) {
	var req dispatch.ReplayRequest
	if err := decodeControl(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	off, err := s.dispatch.Replay(r.PathValue("id"), req)
	if err != nil {
		writeError(w, dispatchStatus(err), "replay %q: %v", r.PathValue("id"), err)
		return
	}
	writeJSON(w, http.StatusOK, replayAnswer{Offset: off})
}
