package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/cloudevents/sdk-go/binding/format/protobuf/v2/pb"
	"google.golang.org/protobuf/proto"

	format "github.com/cloudevents/sdk-go/binding/format/protobuf/v2"

	"github.com/tributary-io/tributary/cloud/commitlog"
	"github.com/tributary-io/tributary/sync/link"
)

// maxReadLimit bounds one /v1/events page.
const maxReadLimit = 10000

// LogEntry is one central-log record as the API shows it.
type LogEntry struct {
	Offset  uint64    `json:"offset"`
	Time    time.Time `json:"time"`
	Topic   string    `json:"topic"`
	Gateway string    `json:"gateway,omitempty"`
	// Lane is the gateway's priority lane (0, the default lane, is
	// omitted); GatewaySeq is the record's outbox sequence in its gateway.
	Lane        uint32          `json:"lane,omitempty"`
	GatewaySeq  uint64          `json:"gateway_seq,omitempty"`
	Event       json.RawMessage `json:"event"`
	DecodeError string          `json:"decode_error,omitempty"`
}

// EventsPage is the answer of GET /v1/events.
type EventsPage struct {
	Events []LogEntry `json:"events"`
	// Next is the offset to ask for next; equal to the log's end when the
	// page reached it.
	Next  uint64 `json:"next"`
	First uint64 `json:"first"`
	End   uint64 `json:"end"`
}

// DecodeEvent turns a log value (a protobuf CloudEvent) into its structured
// JSON form.
func DecodeEvent(value []byte) (json.RawMessage, error) {
	var ce pb.CloudEvent
	if err := proto.Unmarshal(value, &ce); err != nil {
		return nil, fmt.Errorf("decode event: %w", err)
	}
	ev, err := format.FromProto(&ce)
	if err != nil {
		return nil, fmt.Errorf("convert event: %w", err)
	}
	b, err := json.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("encode event: %w", err)
	}
	return b, nil
}

func (s *Server) routes(mux *http.ServeMux) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"status": "ok"})
	})
	read := func(h http.HandlerFunc) http.HandlerFunc { return s.auth.require(ScopeRead, h) }
	write := func(h http.HandlerFunc) http.HandlerFunc { return s.auth.require(ScopeWrite, h) }
	mux.HandleFunc("GET /v1/events", read(s.handleEvents))
	mux.HandleFunc("POST /v1/events", write(s.handleIngest))
	mux.HandleFunc("GET /v1/gateways/{id}", read(s.handleGateway))
	mux.HandleFunc("GET /v1/subscriptions", read(s.handleListSubs))
	mux.HandleFunc("GET /v1/subscriptions/{id}", read(s.handleGetSub))
	mux.HandleFunc("POST /v1/subscriptions", write(s.handleCreateSub))
	mux.HandleFunc("PUT /v1/subscriptions/{id}", write(s.handleUpdateSub))
	mux.HandleFunc("DELETE /v1/subscriptions/{id}", write(s.handleDeleteSub))
	mux.HandleFunc("GET /v1/subscriptions/{id}/deadletters", read(s.handleDeadLetters))
	mux.HandleFunc("POST /v1/subscriptions/{id}/deadletters/redrive", write(s.handleRedrive))
	mux.HandleFunc("POST /v1/subscriptions/{id}/replay", write(s.handleReplay))
	s.stream = newStreamHandler(s)
	mux.HandleFunc("GET /v1/stream", read(s.stream.ServeHTTP))
}

// handleEvents pages through the central log: from (default: the first
// retained offset) and limit (default 1000, at most 10000).
func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	from := s.clog.FirstOffset()
	if v := q.Get("from"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, "query parameter from: want a non-negative integer offset, got %q", v)
			return
		}
		from = n
	}
	limit := 1000
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxReadLimit {
			writeError(w, http.StatusBadRequest, "query parameter limit: want an integer from 1 to %d, got %q", maxReadLimit, v)
			return
		}
		limit = n
	}
	recs, err := s.clog.Read(from, limit, 16<<20)
	if err != nil {
		status := http.StatusInternalServerError
		if errors.Is(err, commitlog.ErrOutOfRange) {
			status = http.StatusGone
		}
		writeError(w, status, "read log at offset %d: %v (first retained offset %d)", from, err, s.clog.FirstOffset())
		return
	}
	page := EventsPage{Events: make([]LogEntry, 0, len(recs)), Next: from, First: s.clog.FirstOffset(), End: s.clog.NextOffset()}
	for _, rec := range recs {
		gw, lane := link.ParseLaneProducer(rec.Producer)
		e := LogEntry{Offset: rec.Offset, Time: rec.Time, Topic: rec.Topic, Gateway: gw, Lane: lane, GatewaySeq: rec.ProducerSeq}
		if ev, err := DecodeEvent(rec.Value); err != nil {
			e.DecodeError = err.Error()
		} else {
			e.Event = ev
		}
		page.Events = append(page.Events, e)
		page.Next = rec.Offset + 1
	}
	writeJSON(w, http.StatusOK, page)
}

func (s *Server) handleGateway(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	// Each priority lane is deduplicated on its own: report the marks of
	// the lanes that have any (lane 0's is high_water_mark).
	lanes := map[string]uint64{}
	for lane := uint32(1); lane < link.MaxLanes; lane++ {
		if hwm := s.clog.HighWaterMark(link.LaneProducer(id, lane)); hwm > 0 {
			lanes[strconv.FormatUint(uint64(lane), 10)] = hwm
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"id":              id,
		"high_water_mark": s.clog.HighWaterMark(id),
		"lanes":           lanes,
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, format string, args ...any) {
	writeJSON(w, status, map[string]string{"error": fmt.Sprintf(format, args...)})
}

// EventData returns the data of a log value (a protobuf CloudEvent).
func EventData(value []byte) ([]byte, error) {
	var ce pb.CloudEvent
	if err := proto.Unmarshal(value, &ce); err != nil {
		return nil, fmt.Errorf("decode event: %w", err)
	}
	switch d := ce.Data.(type) {
	case *pb.CloudEvent_BinaryData:
		return d.BinaryData, nil
	case *pb.CloudEvent_TextData:
		return []byte(d.TextData), nil
	case nil:
		return nil, nil
	default:
		return nil, fmt.Errorf("decode event %s: unsupported data kind %T", ce.Id, d)
	}
}
