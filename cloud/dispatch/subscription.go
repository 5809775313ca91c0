package dispatch

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/url"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/tributary-io/tributary/cloud/filter"
)

// ErrInvalidSubscription is matched (errors.Is) by every error Validate and
// the Parse functions return.
var ErrInvalidSubscription = errors.New("invalid subscription")

// FieldError is a configuration error pinned to a field, named by its
// JSON/YAML path ("retry.max_backoff", "filters[1].any[0].sql").
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return "subscription field " + e.Field + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrInvalidSubscription) true.
func (e *FieldError) Is(target error) bool { return target == ErrInvalidSubscription }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Err: fmt.Errorf(format, args...)}
}

// Subscription is one push subscription: which events of the central log go
// to which sink, how, and what happens when the sink refuses them. It is plain
// configuration (JSON and YAML tags follow the CloudEvents Subscriptions API
// where it has a name for the thing); the dispatcher keeps only the cursor.
//
// Every field documents its zero-value default; Validate reports the first bad
// field.
type Subscription struct {
	// ID names the subscription: 1-128 characters of A-Z a-z 0-9 . _ -, not
	// starting with a dot. It names the cursor file and the default
	// dead-letter topic. Required.
	ID string `json:"id" yaml:"id"`
	// Sink is where events are sent: an absolute http or https URL, or a
	// NATS subject as nats://[user:password@]host:port/subject (add
	// ?jetstream=true to publish to a JetStream stream and wait for its
	// acknowledgement; see natsSender). Required.
	Sink string `json:"sink" yaml:"sink"`
	// Protocol is the delivery protocol, "HTTP" or "NATS"; it must match
	// the sink's scheme. Empty means the sink's.
	Protocol string `json:"protocol,omitempty" yaml:"protocol,omitempty"`
	// ProtocolSettings tune the binding. The zero value sends (HTTP: POSTs)
	// in binary mode with a 10 s timeout and no extra headers.
	ProtocolSettings HTTPSettings `json:"protocol_settings,omitzero" yaml:"protocol_settings,omitempty"`
	// Filters select events: all must match. Empty means every event.
	// Records whose topic starts with "$" (dead letters, other internal
	// records) are never delivered, whatever the filters say.
	Filters []filter.Filter `json:"filters,omitempty" yaml:"filters,omitempty"`
	// Parallelism is the number of lanes delivering at once. With Ordered,
	// each lane is strictly sequential and an event's lane is chosen by a
	// hash of its "partitionkey" extension, or of its source if it has none,
	// so per-device order is kept. Zero means 1; at most MaxParallelism.
	Parallelism int `json:"parallelism,omitempty" yaml:"parallelism,omitempty"`
	// Ordered keeps per-partition order (see Parallelism). nil means true;
	// false delivers with Parallelism independent workers in no particular
	// order.
	Ordered *bool `json:"ordered,omitempty" yaml:"ordered,omitempty"`
	// Retry says how often and how long a failed delivery is retried before
	// the event is dead-lettered. The zero value uses the defaults listed on
	// RetryPolicy.
	Retry RetryPolicy `json:"retry,omitzero" yaml:"retry,omitempty"`
	// DeadLetter is the log topic dead-lettered events are appended to. It
	// must start with "$" so that ordinary subscriptions never receive dead
	// letters. Empty means "$deadletter/<ID>".
	DeadLetter string `json:"dead_letter,omitempty" yaml:"dead_letter,omitempty"`
	// Delay holds every event back until this long after the log accepted
	// it (the record's time), for consumers that want a settling period.
	// The reader waits, so a delay costs no memory; replayed or late-read
	// events whose time is long past go at once. Zero means no delay; at
	// most 7 days.
	Delay Duration `json:"delay,omitempty" yaml:"delay,omitempty"`
	// MaxDelay bounds the per-event delay of the "deliverat" extension
	// attribute (see ExtDeliverAt): an event whose deliverat lies more than
	// MaxDelay after the log accepted it is dead-lettered at once. A delayed
	// event holds its ordered lane (only its lane: other lanes go on) and
	// the cursor, so the subscription stalls once MaxPending offsets pile up
	// behind it. Zero means 24 hours; at most 7 days.
	MaxDelay Duration `json:"max_delay,omitempty" yaml:"max_delay,omitempty"`
	// RateLimit caps delivery attempts per second across all the
	// subscription's lanes, retries and redrives included (a token bucket;
	// lanes wait their turn). Zero means no limit; at most 1,000,000.
	RateLimit float64 `json:"rate_limit,omitempty" yaml:"rate_limit,omitempty"`
	// RateBurst is how many attempts may go at once after a quiet spell.
	// Only with RateLimit. Zero means RateLimit rounded up (one second's
	// worth), at least 1.
	RateBurst int `json:"rate_burst,omitempty" yaml:"rate_burst,omitempty"`
	// Transform reshapes each event before it is sent (CEL expressions; see
	// Transform). Nil means events are sent as logged.
	Transform *Transform `json:"transform,omitempty" yaml:"transform,omitempty"`
	// From is where a subscription without a cursor starts: "earliest" (the
	// oldest retained record), "latest" (the next record appended) or a
	// decimal log offset. It is ignored once a cursor exists. Empty means
	// "earliest".
	From string `json:"from,omitempty" yaml:"from,omitempty"`
}

// HTTPSettings are the HTTP binding's protocol settings.
type HTTPSettings struct {
	// Mode is the CloudEvents HTTP content mode: "binary" (attributes in
	// ce- headers, data as the body), "structured" (the whole event as
	// application/cloudevents+json) or "batch" (up to BatchSize events per
	// request as a JSON array, application/cloudevents-batch+json). Batch
	// is for sinks that accept it (it is not the binding's default, and a
	// sink answers for the whole batch); a NATS sink takes binary or
	// structured only. Empty means binary.
	Mode string `json:"mode,omitempty" yaml:"mode,omitempty"`
	// BatchSize is the most events one request carries in batch mode. A
	// lane sends what it has queued, up to BatchSize events and about
	// 1 MiB of records, without waiting for more; events keep their lane's
	// order inside the batch. A retriable answer retries the whole batch;
	// a non-retriable one (a 4xx) sends the batch's events one by one, so
	// only the ones the sink refuses are dead-lettered. Only with mode
	// batch. Zero means 100; at most 1000.
	BatchSize int `json:"batch_size,omitempty" yaml:"batch_size,omitempty"`
	// Method is POST or PUT. Empty means POST.
	Method string `json:"method,omitempty" yaml:"method,omitempty"`
	// Headers are added to every request. Names may not start with "ce-"
	// nor be Content-Type, Content-Length, Host or Transfer-Encoding, which
	// belong to the binding. Empty means none.
	Headers map[string]string `json:"headers,omitempty" yaml:"headers,omitempty"`
	// Timeout bounds one delivery attempt, from sending the request to
	// reading the response headers and a bounded part of its body.
	// Zero means 10 s; at most 10 minutes.
	Timeout Duration `json:"timeout,omitempty" yaml:"timeout,omitempty"`
}

// Protocols.
const (
	ProtocolHTTP = "HTTP"
	ProtocolNATS = "NATS"
)

// Content modes.
const (
	ModeBinary     = "binary"
	ModeStructured = "structured"
	ModeBatch      = "batch"
)

// Limits enforced by Validate.
const (
	MaxParallelism = 1024
	maxIDLen       = 128
	maxTimeout     = 10 * time.Minute
	maxRate        = 1e6
	maxBatchSize   = 1000
	// DefaultBatchSize is BatchSize's zero value in batch mode.
	DefaultBatchSize = 100
)

// From values.
const (
	FromEarliest = "earliest"
	FromLatest   = "latest"
)

// Duration is a time.Duration written as a Go duration string ("1.5s",
// "10m") in JSON and YAML.
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// UnmarshalJSON accepts only strings: a bare number would silently mean
// nanoseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string such as \"10s\", got %s", b)
	}
	return d.UnmarshalText([]byte(s))
}

// UnmarshalYAML accepts only duration strings, for the reason given on
// UnmarshalJSON.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: duration must be a string such as 10s", n.Line)
	}
	if err := d.UnmarshalText([]byte(n.Value)); err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	return nil
}

// ParseJSON decodes and validates a subscription. Unknown fields are errors.
func ParseJSON(b []byte) (Subscription, error) {
	var s Subscription
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return Subscription{}, fmt.Errorf("%w: %w", ErrInvalidSubscription, err)
	}
	if dec.More() {
		return Subscription{}, fmt.Errorf("%w: trailing data after the subscription object", ErrInvalidSubscription)
	}
	return s, s.Validate()
}

// ParseYAML decodes and validates a subscription. Unknown fields are errors.
func ParseYAML(b []byte) (Subscription, error) {
	var s Subscription
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&s); err != nil {
		if errors.Is(err, io.EOF) {
			err = errors.New("empty document")
		}
		return Subscription{}, fmt.Errorf("%w: %w", ErrInvalidSubscription, err)
	}
	return s, s.Validate()
}

// IsOrdered reports the effective Ordered setting.
func (s *Subscription) IsOrdered() bool { return s.Ordered == nil || *s.Ordered }

// Validate checks every field and returns a *FieldError for the first bad one.
func (s *Subscription) Validate() error {
	_, err := s.compile()
	return err
}

// compiled is a validated subscription with its defaults applied.
type compiled struct {
	Subscription
	matcher     filter.Matcher
	timeout     time.Duration
	retry       RetryPolicy // defaults applied
	deadLetter  string
	parallelism int
	ordered     bool
	structured  bool
	batch       int // events per request in batch mode; 0 otherwise
	delay       time.Duration
	maxDelay    time.Duration
	rateBurst   int          // with RateLimit > 0
	transform   *transformer // nil: none
	nats        *natsTarget  // a nats:// sink; nil for HTTP
}

func (s *Subscription) compile() (*compiled, error) {
	if err := checkID(s.ID); err != nil {
		return nil, &FieldError{Field: "id", Err: err}
	}
	u, err := url.Parse(s.Sink)
	switch {
	case s.Sink == "":
		return nil, fieldErr("sink", "required")
	case err != nil:
		return nil, &FieldError{Field: "sink", Err: err}
	case u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "nats":
		return nil, fieldErr("sink", "scheme must be http, https or nats, not %q", u.Scheme)
	case u.Host == "":
		return nil, fieldErr("sink", "URL has no host")
	}
	c := &compiled{Subscription: *s}
	isNATS := u.Scheme == "nats"
	switch {
	case s.Protocol == "" || s.Protocol == ProtocolHTTP && !isNATS || s.Protocol == ProtocolNATS && isNATS:
	case s.Protocol == ProtocolHTTP || s.Protocol == ProtocolNATS:
		return nil, fieldErr("protocol", "%s does not match the sink's scheme %q", s.Protocol, u.Scheme)
	default:
		return nil, fieldErr("protocol", "must be HTTP or NATS, not %q", s.Protocol)
	}
	if isNATS {
		if c.nats, err = parseNATSSink(u); err != nil {
			return nil, &FieldError{Field: "sink", Err: err}
		}
	}
	ps := s.ProtocolSettings
	switch ps.Mode {
	case "", ModeBinary:
	case ModeStructured:
		c.structured = true
	case ModeBatch:
		if isNATS {
			return nil, fieldErr("protocol_settings.mode", "a NATS sink takes binary or structured mode, not batch")
		}
		c.batch = ps.BatchSize
		if c.batch == 0 {
			c.batch = DefaultBatchSize
		}
	default:
		return nil, fieldErr("protocol_settings.mode", "must be binary, structured or batch, not %q", ps.Mode)
	}
	switch {
	case ps.BatchSize != 0 && ps.Mode != ModeBatch:
		return nil, fieldErr("protocol_settings.batch_size", "needs mode batch")
	case ps.BatchSize < 0 || ps.BatchSize > maxBatchSize:
		return nil, fieldErr("protocol_settings.batch_size", "must be between 1 and %d", maxBatchSize)
	}
	switch ps.Method {
	case "":
	case "POST", "PUT":
		if isNATS {
			return nil, fieldErr("protocol_settings.method", "a NATS sink has no method")
		}
	default:
		return nil, fieldErr("protocol_settings.method", "must be POST or PUT, not %q", ps.Method)
	}
	for k, v := range ps.Headers {
		if err := checkHeader(k, v); err != nil {
			return nil, &FieldError{Field: "protocol_settings.headers." + k, Err: err}
		}
	}
	c.timeout = ps.Timeout.D()
	switch {
	case c.timeout < 0:
		return nil, fieldErr("protocol_settings.timeout", "must not be negative")
	case c.timeout > maxTimeout:
		return nil, fieldErr("protocol_settings.timeout", "must be at most %v", maxTimeout)
	case c.timeout == 0:
		c.timeout = 10 * time.Second
	}
	m, err := filter.CompileAll(s.Filters)
	if err != nil {
		var fe *filter.Error
		if errors.As(err, &fe) {
			return nil, &FieldError{Field: fe.Path, Err: fe.Err}
		}
		return nil, &FieldError{Field: "filters", Err: err}
	}
	c.matcher = m
	c.parallelism = s.Parallelism
	switch {
	case c.parallelism < 0 || c.parallelism > MaxParallelism:
		return nil, fieldErr("parallelism", "must be between 1 and %d", MaxParallelism)
	case c.parallelism == 0:
		c.parallelism = 1
	}
	c.ordered = s.IsOrdered()
	if c.retry, err = s.Retry.withDefaults(); err != nil {
		return nil, err
	}
	c.deadLetter = s.DeadLetter
	if c.deadLetter == "" {
		c.deadLetter = "$deadletter/" + s.ID
	} else if !strings.HasPrefix(c.deadLetter, "$") {
		return nil, fieldErr("dead_letter", "topic must start with \"$\" (internal topics are never delivered to subscriptions), got %q", c.deadLetter)
	}
	if _, _, err := parseFrom(s.From); err != nil {
		return nil, &FieldError{Field: "from", Err: err}
	}
	if err := c.compileSchedule(); err != nil {
		return nil, err
	}
	if s.Transform != nil {
		if c.transform, err = compileTransform(s.Transform); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// compileSchedule checks the delay and rate-limit settings.
func (c *compiled) compileSchedule() error {
	c.delay, c.maxDelay = c.Delay.D(), c.MaxDelay.D()
	switch {
	case c.delay < 0 || c.delay > maxDelayLimit:
		return fieldErr("delay", "must be between 0 and %v", maxDelayLimit)
	case c.maxDelay < 0 || c.maxDelay > maxDelayLimit:
		return fieldErr("max_delay", "must be between 0 and %v", maxDelayLimit)
	case c.maxDelay == 0:
		c.maxDelay = DefaultMaxDelay
	}
	switch r := c.RateLimit; {
	case math.IsNaN(r) || r < 0 || r > maxRate:
		return fieldErr("rate_limit", "must be between 0 (no limit) and %g events per second", float64(maxRate))
	case c.RateBurst < 0 || c.RateBurst > maxRate:
		return fieldErr("rate_burst", "must be between 0 and %d", int(maxRate))
	case c.RateBurst > 0 && r == 0:
		return fieldErr("rate_burst", "needs rate_limit")
	case r > 0:
		c.rateBurst = c.RateBurst
		if c.rateBurst == 0 {
			c.rateBurst = max(1, int(math.Ceil(r)))
		}
	}
	return nil
}

func checkID(id string) error {
	if id == "" {
		return errors.New("required")
	}
	if len(id) > maxIDLen {
		return fmt.Errorf("longer than %d characters", maxIDLen)
	}
	if id[0] == '.' {
		return errors.New("must not start with a dot")
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("%q: only A-Z a-z 0-9 . _ - are allowed", id)
		}
	}
	return nil
}

func checkHeader(name, value string) error {
	if name == "" {
		return errors.New("empty header name")
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte("\"(),/:;<=>?@[\\]{}", c) >= 0 {
			return fmt.Errorf("invalid character %q in header name", c)
		}
	}
	lower := strings.ToLower(name)
	switch {
	case strings.HasPrefix(lower, "ce-"), lower == "content-type", lower == "content-length", lower == "host", lower == "transfer-encoding":
		return fmt.Errorf("header %q belongs to the CloudEvents binding", name)
	}
	if strings.ContainsAny(value, "\r\n\x00") {
		return errors.New("header value contains CR, LF or NUL")
	}
	return nil
}

// parseFrom returns the start position: latest, or an explicit offset
// (earliest is offset 0 clipped to the log's first offset).
func parseFrom(from string) (latest bool, offset uint64, err error) {
	switch from {
	case "", FromEarliest:
		return false, 0, nil
	case FromLatest:
		return true, 0, nil
	}
	v, err := strconv.ParseUint(from, 10, 64)
	if err != nil {
		return false, 0, fmt.Errorf("must be earliest, latest or a log offset, not %q", from)
	}
	return false, v, nil
}
