package fleet

import (
	"math"
	"slices"
	"sync"
	"time"
)

// series records a run's figures over time in buckets of step seconds,
// counted from t0 (the start of publishing; earlier events fall in bucket 0).
// Safe for concurrent use.
type series struct {
	t0   time.Time
	step time.Duration

	mu                                 sync.Mutex
	published, acked, delivered, inLog []int
	lat                                [][]float32 // per bucket: first-delivery latencies in ms
	backlog                            [][]int64   // per gateway, per bucket: outbox records (sampled; -1: down; unsampled: noSample)
	queued                             []int64     // per bucket: messages waiting in devices (sampled)
}

func newSeries(t0 time.Time, step time.Duration, gateways int) *series {
	return &series{t0: t0, step: step, backlog: make([][]int64, gateways)}
}

func (s *series) index(t time.Time) int {
	return max(int(t.Sub(s.t0)/s.step), 0)
}

func grow[T any](a []T, i int, fill T) []T {
	for len(a) <= i {
		a = append(a, fill)
	}
	return a
}

func (s *series) count(a *[]int, t time.Time) {
	i := s.index(t)
	s.mu.Lock()
	*a = grow(*a, i, 0)
	(*a)[i]++
	s.mu.Unlock()
}

func (s *series) Published(t time.Time) { s.count(&s.published, t) }
func (s *series) Acked(t time.Time)     { s.count(&s.acked, t) }
func (s *series) InLog(t time.Time)     { s.count(&s.inLog, t) }

// Delivered records a first delivery at t after latency.
func (s *series) Delivered(t time.Time, latency time.Duration) {
	i := s.index(t)
	s.mu.Lock()
	s.delivered = grow(s.delivered, i, 0)
	s.delivered[i]++
	s.lat = grow(s.lat, i, nil)
	s.lat[i] = append(s.lat[i], float32(latency.Seconds()*1000))
	s.mu.Unlock()
}

// noSample marks a bucket no sample fell in (samples may be sparser than
// buckets); report carries the previous sample forward over it.
const noSample = math.MinInt64

// Sample records the gateways' backlogs (-1 for a gateway that could not
// be read) and the devices' queues at t.
func (s *series) Sample(t time.Time, backlog []int64, queued int64) {
	i := s.index(t)
	s.mu.Lock()
	for g, v := range backlog {
		s.backlog[g] = grow(s.backlog[g], i, noSample)
		s.backlog[g][i] = v
	}
	s.queued = grow(s.queued, i, noSample)
	s.queued[i] = queued
	s.mu.Unlock()
}

// SeriesReport is the time series of a Report. Every slice has one value
// per step, the first covering [0, step) from the start of publishing.
type SeriesReport struct {
	StepS float64 `json:"step_s"`
	// Published, Acked, InLog and Delivered count messages created,
	// acknowledged by gateways, appended to the central log and delivered
	// (first deliveries, every subscription) in each step.
	Published []int `json:"published"`
	Acked     []int `json:"acked"`
	InLog     []int `json:"in_log"`
	Delivered []int `json:"delivered"`
	// P50ms, P90ms and P99ms are end-to-end latency percentiles of the
	// deliveries made in each step; -1 where none was made.
	P50ms []float64 `json:"p50_ms"`
	P90ms []float64 `json:"p90_ms"`
	P99ms []float64 `json:"p99_ms"`
	// Backlog is each gateway's outbox records, sampled once a step; -1
	// where it could not be read (the gateway was down).
	Backlog []GatewaySeries `json:"backlog"`
	// DeviceQueue is the messages waiting in devices, sampled once a step.
	DeviceQueue []int64 `json:"device_queue"`
}

// GatewaySeries is one gateway's samples.
type GatewaySeries struct {
	Gateway string  `json:"gateway"`
	Values  []int64 `json:"values"`
}

// report freezes the series up to (not including) bucket n.
func (s *series) report(n int, gateways []string) SeriesReport {
	s.mu.Lock()
	defer s.mu.Unlock()
	pad := func(a []int) []int { return grow(slices.Clone(a), n-1, 0)[:n] }
	r := SeriesReport{
		StepS: s.step.Seconds(), Published: pad(s.published), Acked: pad(s.acked),
		InLog: pad(s.inLog), Delivered: pad(s.delivered),
		P50ms: make([]float64, n), P90ms: make([]float64, n), P99ms: make([]float64, n),
		DeviceQueue: carry(grow(slices.Clone(s.queued), n-1, noSample)[:n]),
	}
	for i := range n {
		r.P50ms[i], r.P90ms[i], r.P99ms[i] = -1, -1, -1
		if i >= len(s.lat) || len(s.lat[i]) == 0 {
			continue
		}
		l := slices.Clone(s.lat[i])
		slices.Sort(l)
		q := func(p float64) float64 {
			j := max(0, min(int(p*float64(len(l))+0.5)-1, len(l)-1))
			return float64(l[j])
		}
		r.P50ms[i], r.P90ms[i], r.P99ms[i] = q(0.50), q(0.90), q(0.99)
	}
	for g, id := range gateways {
		r.Backlog = append(r.Backlog, GatewaySeries{Gateway: id, Values: carry(grow(slices.Clone(s.backlog[g]), n-1, noSample)[:n])})
	}
	return r
}

// carry replaces unsampled buckets by the previous sample (-1 before the
// first).
func carry(a []int64) []int64 {
	last := int64(-1)
	for i, v := range a {
		if v == noSample {
			a[i] = last
		} else {
			last = v
		}
	}
	return a
}
