package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	cetypes "github.com/cloudevents/sdk-go/v2/types"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// natsTarget is a parsed nats:// sink.
type natsTarget struct {
	server    string // nats://[user:pass@]host:port
	subject   string
	jetstream bool
}

// parseNATSSink checks nats://[user:password@]host:port/subject[?jetstream=true].
func parseNATSSink(u *url.URL) (*natsTarget, error) {
	subject := strings.TrimPrefix(u.Path, "/")
	if subject == "" {
		return nil, errors.New("a NATS sink needs a subject: nats://host:port/subject")
	}
	if err := checkSubject(subject); err != nil {
		return nil, err
	}
	t := &natsTarget{subject: subject}
	for k, vs := range u.Query() {
		switch {
		case k == "jetstream" && len(vs) == 1 && (vs[0] == "true" || vs[0] == "false"):
			t.jetstream = vs[0] == "true"
		case k == "jetstream":
			return nil, fmt.Errorf("jetstream must be true or false, not %q", strings.Join(vs, ","))
		default:
			return nil, fmt.Errorf("unknown NATS sink option %q (only jetstream)", k)
		}
	}
	if u.Fragment != "" {
		return nil, errors.New("a NATS sink URL has no fragment")
	}
	server := url.URL{Scheme: "nats", User: u.User, Host: u.Host}
	t.server = server.String()
	return t, nil
}

// checkSubject accepts a subject one may publish to: dot-separated
// non-empty tokens of printable characters, no wildcards.
func checkSubject(s string) error {
	if len(s) > 1024 {
		return errors.New("NATS subject longer than 1024 bytes")
	}
	for _, tok := range strings.Split(s, ".") {
		switch {
		case tok == "":
			return fmt.Errorf("NATS subject %q has an empty token", s)
		case tok == "*" || tok == ">":
			return fmt.Errorf("NATS subject %q: wildcards cannot be published to", s)
		}
		for _, r := range tok {
			if r <= ' ' || r == 0x7f {
				return fmt.Errorf("NATS subject %q contains white space or a control character", s)
			}
		}
	}
	return nil
}

// natsSender publishes a subscription's events to a NATS subject, following
// the CloudEvents NATS protocol binding: in binary mode each attribute is a
// message header "ce-<name>" (datacontenttype is "content-type") and the
// data is the payload; in structured mode the payload is the event in JSON
// with content-type application/cloudevents+json.
//
// What counts as delivered: with core NATS, that the server has the message
// (publish, then a flush round trip): NATS keeps nothing, so an event
// published while no one subscribes is gone, which is the subject's
// contract, not a failure. With ?jetstream=true, that the stream stored it
// (its acknowledgement), with the event id as Nats-Msg-Id so the stream's
// duplicate window drops a redelivery. A lost connection, a timeout or a
// JetStream error is retriable; a payload above the server's limit, or no
// stream for the subject, is not (the event is dead-lettered).
//
// The connection is made on the first attempt (so a subscription can be
// added while NATS is down), reconnects by itself, and is closed when the
// runner stops. While it reconnects, publishes fail at once rather than
// being buffered, so the retry schedule, not a hidden buffer, decides.
type natsSender struct {
	t          *natsTarget
	name       string
	structured bool
	headers    map[string]string
	timeout    time.Duration
	log        *slog.Logger

	mu     sync.Mutex
	nc     *nats.Conn
	js     jetstream.JetStream
	closed bool
}

func newNATSSender(c *compiled, logger *slog.Logger) *natsSender {
	return &natsSender{t: c.nats, name: "tributary/" + c.ID, structured: c.structured,
		headers: c.ProtocolSettings.Headers, timeout: c.timeout, log: logger}
}

// conn returns the connection, connecting if there is none.
func (s *natsSender) conn() (*nats.Conn, jetstream.JetStream, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, nil, errors.New("sender closed")
	}
	if s.nc != nil {
		return s.nc, s.js, nil
	}
	nc, err := nats.Connect(s.t.server,
		nats.Name(s.name),
		nats.Timeout(s.timeout),
		nats.MaxReconnects(-1),
		nats.ReconnectBufSize(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				s.log.Warn("NATS sink disconnected", "err", err)
			}
		}),
	)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to %s: %w", redactURL(s.t.server), err)
	}
	var js jetstream.JetStream
	if s.t.jetstream {
		if js, err = jetstream.New(nc); err != nil {
			nc.Close()
			return nil, nil, err
		}
	}
	s.nc, s.js = nc, js
	return nc, js, nil
}

func (s *natsSender) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.nc != nil {
		s.nc.Close()
		s.nc = nil
	}
}

func (s *natsSender) send(ctx context.Context, e *event.Event) Answer {
	msg, err := s.message(e)
	if err != nil {
		return Answer{Err: err, Permanent: true}
	}
	nc, js, err := s.conn()
	if err != nil {
		return Answer{Err: err}
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if js != nil {
		_, err = js.PublishMsg(ctx, msg, jetstream.WithMsgID(e.ID()))
	} else if err = nc.PublishMsg(msg); err == nil {
		err = nc.FlushWithContext(ctx)
	}
	switch {
	case err == nil:
		return Answer{Status: 200}
	case errors.Is(err, nats.ErrMaxPayload), errors.Is(err, jetstream.ErrNoStreamResponse):
		return Answer{Err: err, Permanent: true}
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil:
		return Answer{Err: fmt.Errorf("no acknowledgement within %v: %w", s.timeout, err)}
	}
	return Answer{Err: err}
}

// message encodes e for the subject.
func (s *natsSender) message(e *event.Event) (*nats.Msg, error) {
	m := nats.NewMsg(s.t.subject)
	for k, v := range s.headers {
		m.Header.Set(k, v)
	}
	if s.structured {
		b, err := json.Marshal(e)
		if err != nil {
			return nil, fmt.Errorf("encode the event as JSON: %w", err)
		}
		m.Header.Set("content-type", event.ApplicationCloudEventsJSON)
		m.Data = b
		return m, nil
	}
	set := func(name, v string) { m.Header.Set("ce-"+name, v) }
	set("specversion", e.SpecVersion())
	set("id", e.ID())
	set("source", e.Source())
	set("type", e.Type())
	if v := e.Subject(); v != "" {
		set("subject", v)
	}
	if t := e.Time(); !t.IsZero() {
		set("time", cetypes.FormatTime(t))
	}
	if v := e.DataSchema(); v != "" {
		set("dataschema", v)
	}
	if v := e.DataContentType(); v != "" {
		m.Header.Set("content-type", v)
	}
	for k, v := range e.Extensions() {
		str, err := cetypes.Format(v)
		if err != nil {
			return nil, fmt.Errorf("extension %s: %w", k, err)
		}
		set(k, str)
	}
	m.Data = e.Data()
	return m, nil
}

// redactURL hides a password in a URL for logs and errors.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "nats://?"
	}
	return u.Redacted()
}
