package dispatch

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestClassify(t *testing.T) {
	want := map[int]Class{
		0: Retriable, 200: Delivered, 201: Delivered, 202: Delivered, 204: Delivered,
		301: Fatal, 304: Fatal, 400: Fatal, 401: Fatal, 403: Fatal, 404: Fatal, 405: Fatal,
		408: Retriable, 409: Fatal, 410: Fatal, 413: Fatal, 415: Fatal, 422: Fatal,
		425: Retriable, 429: Retriable, 500: Retriable, 501: Retriable, 502: Retriable,
		503: Retriable, 504: Retriable,
	}
	for status, c := range want {
		if got := Classify(Answer{Status: status}); got != c {
			t.Errorf("Classify(%d) = %v, want %v", status, got, c)
		}
	}
}

func TestScheduleBackoff(t *testing.T) {
	pol, err := RetryPolicy{MaxAttempts: 10, MinBackoff: Duration(time.Second), MaxBackoff: Duration(30 * time.Second), MaxAge: Duration(time.Hour)}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	now := baseTime
	fail := Answer{Status: 500}
	// Without jitter the delay is the ceiling: 1, 2, 4, 8, 16, 30, 30 s.
	s := Schedule{Policy: pol}
	for i, want := range []time.Duration{1, 2, 4, 8, 16, 30, 30} {
		d := s.Next(i+1, now, fail, now)
		if d.Action != Retry || d.At.Sub(now) != want*time.Second {
			t.Fatalf("attempt %d: %+v, want retry in %v", i+1, d, want*time.Second)
		}
	}
	// Full jitter scales the ceiling by Rand.
	s.Rand = func() float64 { return 0.25 }
	if d := s.Next(3, now, fail, now); d.At.Sub(now) != time.Second {
		t.Fatalf("jittered: %v", d.At.Sub(now))
	}
	s.Rand = func() float64 { return 0 }
	if d := s.Next(1, now, fail, now); d.Action != Retry || !d.At.Equal(now) {
		t.Fatalf("zero jitter: %+v", d)
	}
	// Huge attempt numbers do not overflow the doubling.
	s.Rand = nil
	s.Policy.MaxAttempts = 1 << 30
	if d := s.Next(1<<20, now, fail, now); d.Action != Retry || d.At.Sub(now) != 30*time.Second {
		t.Fatalf("attempt 2^20: %+v", d)
	}
}

func TestScheduleDecisions(t *testing.T) {
	pol, _ := RetryPolicy{MaxAttempts: 5, MinBackoff: Duration(10 * time.Second), MaxBackoff: Duration(time.Minute), MaxAge: Duration(10 * time.Minute)}.withDefaults()
	s := Schedule{Policy: pol}
	first := baseTime
	cases := []struct {
		name     string
		attempts int
		a        Answer
		now      time.Time
		action   Action
		delay    time.Duration // from now, for Retry
		reason   string        // substring, for DeadLetter
	}{
		{"2xx done", 1, Answer{Status: 204}, first, Done, 0, ""},
		{"400 at once", 1, Answer{Status: 400, Body: "bad field x"}, first, DeadLetter, 0, "non-retriable answer: HTTP 400: bad field x"},
		{"404 at once", 1, Answer{Status: 404}, first, DeadLetter, 0, "HTTP 404"},
		{"network error retried", 1, Answer{Err: errors.New("connection refused")}, first, Retry, 10 * time.Second, ""},
		{"408 retried", 2, Answer{Status: 408}, first, Retry, 20 * time.Second, ""},
		{"attempts exhausted", 5, Answer{Status: 502}, first, DeadLetter, 0, "gave up after 5 attempts, last: HTTP 502"},
		{"429 retry-after seconds", 1, Answer{Status: 429, RetryAfter: "120"}, first, Retry, 2 * time.Minute, ""},
		{"503 retry-after date", 1, Answer{Status: 503, RetryAfter: first.Add(95 * time.Second).Format(http.TimeFormat)}, first, Retry, 95 * time.Second, ""},
		{"503 retry-after past date", 1, Answer{Status: 503, RetryAfter: first.Add(-time.Hour).Format(http.TimeFormat)}, first, Retry, 0, ""},
		{"503 retry-after garbage uses backoff", 1, Answer{Status: 503, RetryAfter: "soon"}, first, Retry, 10 * time.Second, ""},
		{"503 retry-after negative uses backoff", 1, Answer{Status: 503, RetryAfter: "-5"}, first, Retry, 10 * time.Second, ""},
		{"500 ignores retry-after", 1, Answer{Status: 500, RetryAfter: "300"}, first, Retry, 10 * time.Second, ""},
		{"retry-after beyond max age", 1, Answer{Status: 429, RetryAfter: "3600"}, first, DeadLetter, 0, "beyond the max age"},
		{"backoff clipped to deadline", 4, Answer{Status: 500}, first.Add(9*time.Minute + 50*time.Second), Retry, 10 * time.Second, ""},
		{"max age reached", 3, Answer{Status: 500}, first.Add(10 * time.Minute), DeadLetter, 0, "max age"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := s.Next(c.attempts, first, c.a, c.now)
			if d.Action != c.action {
				t.Fatalf("action %v (%+v), want %v", d.Action, d, c.action)
			}
			switch c.action {
			case Retry:
				if got := d.At.Sub(c.now); got != c.delay {
					t.Fatalf("delay %v, want %v", got, c.delay)
				}
			case DeadLetter:
				if !strings.Contains(d.Reason, c.reason) {
					t.Fatalf("reason %q does not contain %q", d.Reason, c.reason)
				}
			}
		})
	}
}

func TestRetryPolicyDefaults(t *testing.T) {
	p, err := RetryPolicy{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if p.MaxAttempts != DefaultMaxAttempts || p.MinBackoff.D() != DefaultMinBackoff || p.MaxBackoff.D() != DefaultMaxBackoff || p.MaxAge.D() != DefaultMaxAge {
		t.Fatalf("defaults %+v", p)
	}
	// A min above the default max lifts the max rather than failing.
	p, err = RetryPolicy{MinBackoff: Duration(time.Hour)}.withDefaults()
	if err != nil || p.MaxBackoff.D() != time.Hour {
		t.Fatalf("%+v %v", p, err)
	}
	if _, err := (RetryPolicy{MinBackoff: Duration(time.Minute), MaxBackoff: Duration(time.Second)}).withDefaults(); err == nil {
		t.Fatal("min above max accepted")
	}
}
