package server

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/tributary-io/tributary/cloud/commitlog"
	"github.com/tributary-io/tributary/cloud/dispatch"
	"github.com/tributary-io/tributary/cloud/filter"
)

// The streaming endpoint:
//
//	GET /v1/stream?from=N | from_time=RFC3339 &filter=JSON &sql=CESQL   (read)
//
// answers with Server-Sent Events, one per CloudEvent of the central log:
//
//	id: <log offset>
//	data: <the event in structured JSON, on one line>
//
// so a browser's EventSource resumes after a reconnect by itself (it sends
// Last-Event-ID, which takes precedence over from and from_time). Without
// a position the stream starts at the end of the log (new events only).
// filter is a filter expression of the Subscriptions API, or a JSON array
// of them (all must match); sql is a CESQL expression; both may be given.
// Records removed by retention before they were sent are announced as
// "event: gap" with data {"from": a, "to": b}; a comment line is sent when
// the log is idle, to keep proxies from closing the connection.
//
// Each client is served by its own goroutine reading the log (through
// dispatch's Tail), so clients share nothing but the log: memory per client
// is one batch and a write buffer, and a slow client only falls behind.
// A client that does not take a batch within the write timeout (its TCP
// window stays full) is dropped, so it holds no goroutine or buffer for
// long; it may reconnect with Last-Event-ID.

// Stream defaults.
const (
	streamWriteTimeout = 10 * time.Second
	streamHeartbeat    = 15 * time.Second
	streamMaxClients   = 256
	streamBuffer       = 64 << 10
	streamFilterLen    = 8 << 10
)

type streamHandler struct {
	d   *dispatch.Dispatcher
	lg  commitlog.Log
	log *slog.Logger

	// writeTimeout bounds writing one batch to the client; a client slower
	// than that is dropped.
	writeTimeout time.Duration
	heartbeat    time.Duration
	maxClients   int64

	active  atomic.Int64
	dropped atomic.Uint64 // clients dropped for being too slow
}

func newStreamHandler(s *Server) *streamHandler {
	return &streamHandler{d: s.dispatch, lg: s.clog, log: s.log, writeTimeout: streamWriteTimeout, heartbeat: streamHeartbeat, maxClients: streamMaxClients}
}

// streamQuery is a parsed stream request.
type streamQuery struct {
	from    uint64
	matcher filter.Matcher
}

func (h *streamHandler) parse(r *http.Request) (streamQuery, error) {
	q := r.URL.Query()
	var sq streamQuery
	end := h.lg.NextOffset()
	sq.from = end
	last := r.Header.Get("Last-Event-ID")
	switch {
	case last != "":
		n, err := strconv.ParseUint(strings.TrimSpace(last), 10, 64)
		if err != nil {
			return sq, fmt.Errorf("header Last-Event-ID: want the offset of an event this stream sent, got %q", last)
		}
		sq.from = n + 1
	case q.Get("from") != "" && q.Get("from_time") != "":
		return sq, errors.New("query: give from or from_time, not both")
	case q.Get("from") != "":
		n, err := strconv.ParseUint(q.Get("from"), 10, 64)
		if err != nil {
			return sq, fmt.Errorf("query parameter from: want a non-negative integer offset, got %q", q.Get("from"))
		}
		sq.from = n
	case q.Get("from_time") != "":
		t, err := time.Parse(time.RFC3339Nano, q.Get("from_time"))
		if err != nil {
			return sq, fmt.Errorf("query parameter from_time: want an RFC 3339 time such as 2025-03-01T08:00:00Z: %v", err)
		}
		tr, ok := h.lg.(commitlog.TopicReader)
		if !ok {
			return sq, errors.New("query parameter from_time: this log has no time index")
		}
		if sq.from, err = tr.OffsetForTime(t); err != nil {
			return sq, fmt.Errorf("query parameter from_time: %w", err)
		}
	}
	if sq.from > end {
		return sq, fmt.Errorf("position %d is beyond the end of the log (%d)", sq.from, end)
	}
	var filters []filter.Filter
	if f := q.Get("filter"); f != "" {
		if len(f) > streamFilterLen {
			return sq, fmt.Errorf("query parameter filter: longer than %d bytes", streamFilterLen)
		}
		if strings.HasPrefix(strings.TrimSpace(f), "[") {
			if err := json.Unmarshal([]byte(f), &filters); err != nil {
				return sq, fmt.Errorf("query parameter filter: %w", err)
			}
		} else {
			var one filter.Filter
			if err := json.Unmarshal([]byte(f), &one); err != nil {
				return sq, fmt.Errorf("query parameter filter: %w", err)
			}
			filters = append(filters, one)
		}
	}
	if s := q.Get("sql"); s != "" {
		filters = append(filters, filter.Filter{SQL: s})
	}
	m, err := filter.CompileAll(filters)
	if err != nil {
		return sq, fmt.Errorf("query parameters filter/sql: %w", err)
	}
	sq.matcher = m
	return sq, nil
}

func (h *streamHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	sq, err := h.parse(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if h.active.Add(1) > h.maxClients {
		h.active.Add(-1)
		w.Header().Set("Retry-After", "5")
		writeError(w, http.StatusServiceUnavailable, "too many stream clients (%d); retry later", h.maxClients)
		return
	}
	defer h.active.Add(-1)

	rc := http.NewResponseController(w)
	hd := w.Header()
	hd.Set("Content-Type", "text/event-stream")
	hd.Set("Cache-Control", "no-cache")
	hd.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, streamBuffer)
	// flush sends what is buffered, within the write timeout.
	flush := func() error {
		if err := rc.SetWriteDeadline(time.Now().Add(h.writeTimeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return err
		}
		if err := bw.Flush(); err != nil {
			return err
		}
		return rc.Flush()
	}
	fmt.Fprintf(bw, ": tributary stream from offset %d\nretry: 2000\n\n", sq.from)
	if err := flush(); err != nil {
		return
	}
	err = h.d.Tail(r.Context(), dispatch.TailOptions{
		From:    sq.from,
		Matcher: sq.matcher,
		Flush:   flush,
		Gap: func(from, to uint64) error {
			fmt.Fprintf(bw, "event: gap\ndata: {\"from\":%d,\"to\":%d}\n\n", from, to)
			return nil
		},
		IdleEvery: h.heartbeat,
		Idle: func() error {
			_, _ = bw.WriteString(": keepalive\n\n")
			return flush()
		},
	}, func(off uint64, e *event.Event) error {
		b, err := json.Marshal(e)
		if err != nil {
			return nil // not representable as JSON: skip it
		}
		if bw.Available() < len(b)+32 && bw.Buffered() > 0 {
			// Keep the deadline in force for writes the buffer cannot hold.
			if err := rc.SetWriteDeadline(time.Now().Add(h.writeTimeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
				return err
			}
		}
		bw.WriteString("id: ")
		bw.WriteString(strconv.FormatUint(off, 10))
		bw.WriteString("\ndata: ")
		bw.Write(b)
		_, err = bw.WriteString("\n\n")
		return err
	})
	switch {
	case err == nil, errors.Is(err, dispatch.ErrStopped):
	case errors.Is(err, os.ErrDeadlineExceeded):
		// (net/http cancels the request context on a failed write, so
		// this is checked before the context.)
		h.dropped.Add(1)
		h.log.Info("slow stream client dropped", "remote", r.RemoteAddr, "timeout", h.writeTimeout)
	case r.Context().Err() != nil: // the client went away
	default:
		h.log.Warn("stream ended", "remote", r.RemoteAddr, "err", err)
	}
}
