package dispatch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
)

// DefaultTransport returns the transport the dispatcher uses when Options
// gives none. Unlike http.DefaultTransport (2 idle connections per host,
// which made sdk-go open thousands of connections a second at 64 in flight),
// it keeps enough idle connections for every lane of every subscription to
// the same host.
func DefaultTransport() *http.Transport {
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          4096,
		MaxIdleConnsPerHost:   MaxParallelism,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
}

// deliverer makes delivery attempts to one subscription's sink. send never
// returns an error: a failure is an Answer. close releases what the
// deliverer holds; the runner calls it when it stops.
type deliverer interface {
	send(ctx context.Context, e *event.Event) Answer
	close()
}

// Interface guards.
var (
	_ deliverer = (*sender)(nil)
	_ deliverer = (*natsSender)(nil)
	_ deliverer = (*batchSender)(nil)
)

// newDeliverer returns the deliverer for c's sink.
func newDeliverer(c *compiled, rt http.RoundTripper, logger *slog.Logger) (deliverer, error) {
	if c.nats != nil {
		return newNATSSender(c, logger), nil
	}
	if c.batch > 0 {
		return newBatchSender(c, rt), nil
	}
	return newSender(c, rt)
}

// sender posts events to one subscription's sink over sdk-go's HTTP binding.
type sender struct {
	proto      *cehttp.Protocol
	timeout    time.Duration
	structured bool
}

const (
	keepBody  = 512     // bytes of an error response kept for reports
	drainBody = 1 << 16 // bytes read (and dropped) so the connection can be reused
)

func newSender(c *compiled, rt http.RoundTripper) (*sender, error) {
	rt = ceHeaderEncoder{rt} // see headerenc.go
	client := http.Client{
		Transport: rt,
		// A redirected POST would be replayed as a GET without its body and
		// could "succeed"; a 3xx is returned as is and treated as fatal.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	opts := []cehttp.Option{cehttp.WithClient(client), cehttp.WithRoundTripper(rt), cehttp.WithTarget(c.Sink)}
	if c.ProtocolSettings.Method != "" {
		opts = append(opts, cehttp.WithMethod(c.ProtocolSettings.Method))
	}
	for k, v := range c.ProtocolSettings.Headers {
		opts = append(opts, cehttp.WithHeader(k, v))
	}
	p, err := cehttp.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("dispatch: sink %s: %w", c.Sink, err)
	}
	return &sender{proto: p, timeout: c.timeout, structured: c.structured}, nil
}

func (s *sender) close() {} // the transport is the dispatcher's

// send makes one delivery attempt. It never returns an error: a failure to
// reach the sink is an Answer with Status 0.
func (s *sender) send(ctx context.Context, e *event.Event) Answer {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if s.structured {
		ctx = binding.WithForceStructured(ctx)
	} else {
		ctx = binding.WithForceBinary(ctx)
	}
	msg, result := s.proto.Request(ctx, binding.ToMessage(e))
	var a Answer
	var hr *cehttp.Result
	if errors.As(result, &hr) {
		a.Status = hr.StatusCode
	} else if result != nil {
		a.Err = result
		if ctx.Err() != nil && errors.Is(result, context.DeadlineExceeded) {
			a.Err = fmt.Errorf("no answer within %v: %w", s.timeout, result)
		}
	}
	if m, ok := msg.(*cehttp.Message); ok && m != nil {
		a.RetryAfter = m.Header.Get("Retry-After")
		if m.BodyReader != nil {
			if a.Status < 200 || a.Status >= 300 {
				a.Body = readSnippet(m.BodyReader)
			}
			_, _ = io.Copy(io.Discard, io.LimitReader(m.BodyReader, drainBody))
		}
		_ = m.Finish(nil)
	} else if msg != nil {
		_ = msg.Finish(nil)
	}
	if a.Status == 0 && a.Err == nil {
		a.Err = errors.New("no response")
	}
	return a
}

// readSnippet returns the start of an error body as printable text.
func readSnippet(r io.Reader) string {
	b, _ := io.ReadAll(io.LimitReader(r, keepBody))
	s := strings.TrimSpace(strings.ToValidUTF8(string(b), "\uFFFD"))
	s = strings.Map(func(r rune) rune {
		if r < ' ' && r != '\t' || r == utf8.RuneError {
			return ' '
		}
		return r
	}, s)
	return s
}
