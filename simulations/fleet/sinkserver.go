package fleet

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
)

// sinkServer is a CloudEvents HTTP receiver on loopback with injectable
// faults: it can answer every request with an error status, or hold every
// request without answering or processing it (a hung consumer). Each subscription pushes to
// its own path, /<subscription id>, so a delivery is attributed to the
// subscription that made it even when several share one sink.
//
// (simulations/sink is the plain receiver the tests and benchmarks use; it
// has neither the hang nor per-path routing.)
type sinkServer struct {
	name    string
	ln      net.Listener
	srv     *http.Server
	routes  map[string]int // path → subscription index
	deliver func(sub int, ev *event.Event, arrived time.Time)
	now     func() time.Time

	mu     sync.Mutex
	status int           // non-zero: answer every request with it
	hang   chan struct{} // non-nil while hanging; closed when the hang ends

	received, rejected, held atomic.Int64
	done                     chan struct{}
}

// startSink listens on a free loopback port. routes maps subscription ids to
// the index deliver is called with; deliver runs on HTTP handler goroutines.
func startSink(name string, routes map[string]int, deliver func(int, *event.Event, time.Time)) (*sinkServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &sinkServer{name: name, ln: ln, routes: map[string]int{}, deliver: deliver, now: time.Now, done: make(chan struct{})}
	for id, i := range routes {
		s.routes["/"+id] = i
	}
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(ln) // returns http.ErrServerClosed after Close
	}()
	return s, nil
}

// URL is where subscription id pushes.
func (s *sinkServer) URL(id string) string { return "http://" + s.ln.Addr().String() + "/" + id }

// FailWith makes every following request answer status; 0 accepts again.
func (s *sinkServer) FailWith(status int) {
	s.mu.Lock()
	s.status = status
	s.mu.Unlock()
}

// Hang holds every following request until Unhang.
func (s *sinkServer) Hang() {
	s.mu.Lock()
	if s.hang == nil {
		s.hang = make(chan struct{})
	}
	s.mu.Unlock()
}

// Unhang ends the hang: held requests whose sender still waits get 503,
// unprocessed; new requests are served.
func (s *sinkServer) Unhang() {
	s.mu.Lock()
	if s.hang != nil {
		close(s.hang)
		s.hang = nil
	}
	s.mu.Unlock()
}

func (s *sinkServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "POST a CloudEvent", http.StatusMethodNotAllowed)
		return
	}
	sub, ok := s.routes[strings.TrimSuffix(r.URL.Path, "/")]
	if !ok {
		s.rejected.Add(1)
		http.Error(w, "no subscription pushes to "+r.URL.Path, http.StatusNotFound)
		return
	}
	s.mu.Lock()
	hang, status := s.hang, s.status
	s.mu.Unlock()
	if hang != nil {
		// A hung consumer: the request is read and never processed. When
		// the hang ends the consumer is back, but what it held is lost to
		// it (as after a restart): it answers 503 without processing, so no
		// held request is processed after its sender gave up and moved on.
		s.held.Add(1)
		select {
		case <-hang:
			s.rejected.Add(1)
			http.Error(w, "sink was hung; request dropped", http.StatusServiceUnavailable)
		case <-r.Context().Done():
		}
		return
	}
	if status != 0 {
		s.rejected.Add(1)
		http.Error(w, "sink told to fail", status)
		return
	}
	ev, err := cehttp.NewEventFromHTTPRequest(r)
	if err != nil {
		s.rejected.Add(1)
		http.Error(w, "not a CloudEvent: "+err.Error(), http.StatusBadRequest)
		return
	}
	if err := ev.Validate(); err != nil {
		s.rejected.Add(1)
		http.Error(w, "invalid CloudEvent: "+err.Error(), http.StatusBadRequest)
		return
	}
	s.received.Add(1)
	s.deliver(sub, ev, s.now())
	w.WriteHeader(http.StatusOK)
}

// Close releases held requests and stops the server.
func (s *sinkServer) Close() error {
	s.Unhang()
	s.FailWith(0)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	<-s.done
	if errors.Is(err, context.DeadlineExceeded) {
		err = s.srv.Close()
	}
	return err
}
