// Package sink is a CloudEvents HTTP receiver for simulations, benchmarks and
// tests: a real HTTP server on loopback that parses every request with sdk-go
// (binary and structured mode, and batches: application/cloudevents-batch+json,
// what a subscription in batch mode sends), answers 200 and hands each event
// to a callback. It can be told to fail, to check retry behaviour. Like
// sdk-go v2.16.2 it does not percent-decode ce- header values (the
// dispatcher encodes space, '"', '%' and non-ASCII in them).
package sink

import (
	"context"
	"errors"
	"fmt"
	"mime"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"github.com/cloudevents/sdk-go/v2/event"
)

// Handler receives each well-formed event with its arrival time. It is called
// concurrently from HTTP handler goroutines and must be safe for that.
type Handler func(ev *event.Event, arrived time.Time)

// Sink is a running receiver.
type Sink struct {
	srv      *http.Server
	ln       net.Listener
	handle   Handler
	now      func() time.Time
	status   atomic.Int32 // answer for every request while non-zero
	received atomic.Int64
	rejected atomic.Int64
	done     chan struct{}
	mu       sync.Mutex
	err      error
}

// Start listens on addr ("127.0.0.1:0" for any free port) and serves until
// Close. now may be nil (time.Now).
func Start(addr string, h Handler, now func() time.Time) (*Sink, error) {
	if now == nil {
		now = time.Now
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &Sink{ln: ln, handle: h, now: now, done: make(chan struct{})}
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.mu.Lock()
			s.err = err
			s.mu.Unlock()
		}
	}()
	return s, nil
}

// URL is the address events are posted to.
func (s *Sink) URL() string { return "http://" + s.ln.Addr().String() + "/" }

// FailWith makes every following request answer status (0 = accept again).
func (s *Sink) FailWith(status int) { s.status.Store(int32(status)) }

// Received counts accepted events (each event of a batch); Rejected counts
// requests that were not a valid CloudEvent or batch or were refused by
// FailWith.
func (s *Sink) Received() int64 { return s.received.Load() }
func (s *Sink) Rejected() int64 { return s.rejected.Load() }

// ServeHTTP implements http.Handler.
func (s *Sink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "POST a CloudEvent", http.StatusMethodNotAllowed)
		return
	}
	if st := s.status.Load(); st != 0 {
		s.rejected.Add(1)
		http.Error(w, "sink told to fail", int(st))
		return
	}
	var evs []*event.Event
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt == event.ApplicationCloudEventsBatchJSON {
		batch, err := cehttp.NewEventsFromHTTPRequest(r) // may be empty (binding 3.3.2)
		if err != nil {
			s.rejected.Add(1)
			http.Error(w, "not a CloudEvents batch: "+err.Error(), http.StatusBadRequest)
			return
		}
		for i := range batch {
			evs = append(evs, &batch[i])
		}
	} else {
		ev, err := cehttp.NewEventFromHTTPRequest(r)
		if err != nil {
			s.rejected.Add(1)
			http.Error(w, "not a CloudEvent: "+err.Error(), http.StatusBadRequest)
			return
		}
		evs = append(evs, ev)
	}
	// A batch is taken whole or refused whole.
	for i, ev := range evs {
		if err := ev.Validate(); err != nil {
			s.rejected.Add(1)
			http.Error(w, fmt.Sprintf("invalid CloudEvent (%d in the request): %v", i, err), http.StatusBadRequest)
			return
		}
	}
	s.received.Add(int64(len(evs)))
	if s.handle != nil {
		now := s.now()
		for _, ev := range evs {
			s.handle(ev, now)
		}
	}
	w.WriteHeader(http.StatusOK)
}

// Close stops the server and waits for it.
func (s *Sink) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return errors.Join(err, s.err)
}
