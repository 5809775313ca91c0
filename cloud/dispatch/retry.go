package dispatch

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// RetryPolicy bounds how a failed delivery is retried. Delays grow
// exponentially with full jitter: before retry n (n = 1 after the first
// failed attempt) the lane waits a uniformly random time in
// [0, min(MaxBackoff, MinBackoff·2^(n-1))], unless the sink sent Retry-After.
type RetryPolicy struct {
	// MaxAttempts counts every attempt, the first included: 1 means never
	// retry. Zero means 10.
	MaxAttempts int `json:"max_attempts,omitempty" yaml:"max_attempts,omitempty"`
	// MinBackoff is the ceiling of the first retry's random delay.
	// Zero means 1 s.
	MinBackoff Duration `json:"min_backoff,omitempty" yaml:"min_backoff,omitempty"`
	// MaxBackoff caps the ceiling as it doubles. Zero means 10 minutes.
	MaxBackoff Duration `json:"max_backoff,omitempty" yaml:"max_backoff,omitempty"`
	// MaxAge is how long an event is retried, counted from its first
	// delivery attempt; the last retry is made at that deadline at the
	// latest. Zero means 1 hour.
	MaxAge Duration `json:"max_age,omitempty" yaml:"max_age,omitempty"`
}

// Retry defaults.
const (
	DefaultMaxAttempts = 10
	DefaultMinBackoff  = time.Second
	DefaultMaxBackoff  = 10 * time.Minute
	DefaultMaxAge      = time.Hour
)

func (p RetryPolicy) withDefaults() (RetryPolicy, error) {
	if p.MaxAttempts < 0 {
		return p, fieldErr("retry.max_attempts", "must not be negative")
	}
	for _, f := range []struct {
		name string
		v    Duration
	}{{"retry.min_backoff", p.MinBackoff}, {"retry.max_backoff", p.MaxBackoff}, {"retry.max_age", p.MaxAge}} {
		if f.v < 0 {
			return p, fieldErr(f.name, "must not be negative")
		}
	}
	if p.MaxAttempts == 0 {
		p.MaxAttempts = DefaultMaxAttempts
	}
	if p.MinBackoff == 0 {
		p.MinBackoff = Duration(DefaultMinBackoff)
	}
	if p.MaxBackoff == 0 {
		p.MaxBackoff = Duration(max(DefaultMaxBackoff, p.MinBackoff.D()))
	}
	if p.MaxAge == 0 {
		p.MaxAge = Duration(DefaultMaxAge)
	}
	if p.MinBackoff > p.MaxBackoff {
		return p, fieldErr("retry.min_backoff", "%v is above max_backoff %v", p.MinBackoff, p.MaxBackoff)
	}
	return p, nil
}

// Answer is what one delivery attempt got back.
type Answer struct {
	// Status is the HTTP status code, 0 if no response arrived.
	Status int
	// Err is the transport error (refused, reset, timeout) when Status is 0.
	Err error
	// RetryAfter is the response's Retry-After header, "" if absent.
	RetryAfter string
	// Body is the start of the response body, for error reports.
	Body string
	// Permanent marks a failure without an HTTP status that retrying
	// cannot fix (a NATS sink's payload too large, no JetStream stream for
	// the subject): the answer is Fatal.
	Permanent bool
}

func (a Answer) String() string {
	if a.Status == 0 {
		if a.Err == nil {
			return "no response"
		}
		return a.Err.Error()
	}
	s := fmt.Sprintf("HTTP %d", a.Status)
	if a.Body != "" {
		s += ": " + a.Body
	}
	return s
}

// Class is how the schedule treats an answer.
type Class int

const (
	// Delivered: a 2xx status.
	Delivered Class = iota
	// Retriable: no response (connection error, timeout), 408, 425, 429
	// or any 5xx.
	Retriable
	// Fatal: every other status (400, 401, 403, 404, 405, 409, 410, 413,
	// 415, 422, an unfollowed 3xx, ...). The request itself is wrong for this
	// sink and sending it again would get the same answer, so the event is
	// dead-lettered at once.
	//
	// 404 and 401/403 are fatal on purpose even though a sink being
	// redeployed or a rotated credential can produce them for a while:
	// retrying them would hold an ordered lane on a misconfiguration for the
	// whole max age. Redrive the dead letters once the sink is fixed.
	// 409 is fatal: webhook receivers use it for "already have it", and a
	// retry cannot change that.
	Fatal
)

// Classify sorts an answer into Delivered, Retriable or Fatal.
func Classify(a Answer) Class {
	switch s := a.Status; {
	case a.Permanent:
		return Fatal
	case s == 0:
		return Retriable
	case s >= 200 && s < 300:
		return Delivered
	case s == http.StatusRequestTimeout, s == http.StatusTooEarly, s == http.StatusTooManyRequests, s >= 500:
		return Retriable
	default:
		return Fatal
	}
}

// Action is what to do with an event after an attempt.
type Action int

const (
	// Done: the sink accepted the event.
	Done Action = iota
	// Retry at Decision.At.
	Retry
	// DeadLetter now, for Decision.Reason.
	DeadLetter
)

// Decision is the schedule's verdict on an attempt.
type Decision struct {
	Action Action
	// At is when to make the next attempt (Action Retry).
	At time.Time
	// Reason explains a DeadLetter.
	Reason string
}

// Schedule is the retry state machine. It does no I/O and reads no clock:
// callers pass the time, which makes it testable without sleeping.
type Schedule struct {
	// Policy must have its defaults applied (the dispatcher does that).
	Policy RetryPolicy
	// Rand returns a uniform value in [0, 1) for the jitter. Nil means
	// no jitter: always the full ceiling (deterministic; used in tests).
	Rand func() float64
}

// Next decides what follows attempt number attempts (1 for the first), made
// first at firstAttempt, which got answer a, given that it is now now.
//
// Retry-After (delta-seconds or HTTP-date) is honoured on 429 and 503: the
// next attempt is not made before it, and if that is past the max-age
// deadline the event is dead-lettered at once rather than retried early.
func (s Schedule) Next(attempts int, firstAttempt time.Time, a Answer, now time.Time) Decision {
	switch Classify(a) {
	case Delivered:
		return Decision{Action: Done}
	case Fatal:
		return Decision{Action: DeadLetter, Reason: "non-retriable answer: " + a.String()}
	}
	p := s.Policy
	if attempts >= p.MaxAttempts {
		return Decision{Action: DeadLetter, Reason: fmt.Sprintf("gave up after %d attempts, last: %s", attempts, a)}
	}
	deadline := firstAttempt.Add(p.MaxAge.D())
	if !now.Before(deadline) {
		return Decision{Action: DeadLetter, Reason: fmt.Sprintf("gave up after %v (max age) and %d attempts, last: %s", p.MaxAge, attempts, a)}
	}
	if a.Status == http.StatusTooManyRequests || a.Status == http.StatusServiceUnavailable {
		if at, ok := retryAfter(a.RetryAfter, now); ok {
			if at.After(deadline) {
				return Decision{Action: DeadLetter, Reason: fmt.Sprintf("sink asked to retry after %s, beyond the max age %v; last: %s", at.Sub(now).Round(time.Second), p.MaxAge, a)}
			}
			return Decision{Action: Retry, At: at}
		}
	}
	return Decision{Action: Retry, At: minTime(now.Add(s.backoff(attempts)), deadline)}
}

// backoff is the jittered delay before retry number n (n >= 1).
func (s Schedule) backoff(n int) time.Duration {
	ceil := s.Policy.MinBackoff.D()
	for i := 1; i < n && ceil < s.Policy.MaxBackoff.D(); i++ {
		ceil *= 2
	}
	ceil = min(ceil, s.Policy.MaxBackoff.D())
	if s.Rand == nil {
		return ceil
	}
	return time.Duration(s.Rand() * float64(ceil))
}

// retryAfter parses a Retry-After value (RFC 9110 10.2.3) into an absolute
// time. Negative or unparseable values are ignored; a date in the past means
// now.
func retryAfter(v string, now time.Time) (time.Time, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return time.Time{}, false
	}
	if secs, err := strconv.ParseUint(v, 10, 32); err == nil {
		return now.Add(time.Duration(secs) * time.Second), true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return time.Time{}, false
	}
	if t.Before(now) {
		return now, true
	}
	return t, true
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
