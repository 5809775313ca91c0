package commitlog

import (
	"context"
	"sync"
	"time"
)

// Memory is an in-memory Log: the model the file log is checked against, and
// a stand-in for tests of the log's users. It is "durable" for as long as the
// value lives. Its behaviour is the specification, so it stays simple.
type Memory struct {
	mu      sync.Mutex
	recs    []Record
	first   uint64 // offset of recs[0]
	hwm     map[string]uint64
	closed  bool
	changed chan struct{} // closed and replaced on every append
	now     func() time.Time
}

var _ Log = (*Memory)(nil)

// NewMemory returns an empty in-memory log. now may be nil (time.Now).
func NewMemory(now func() time.Time) *Memory {
	if now == nil {
		now = time.Now
	}
	return &Memory{hwm: map[string]uint64{}, changed: make(chan struct{}), now: now}
}

func (m *Memory) Append(ctx context.Context, recs []Record) (AppendResult, error) {
	if err := ctx.Err(); err != nil {
		return AppendResult{}, err
	}
	return m.append(recs)
}

func (m *Memory) AppendAsync(recs []Record, done func(AppendResult, error)) {
	res, err := m.append(recs)
	go done(res, err)
}

func (m *Memory) append(recs []Record) (AppendResult, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return AppendResult{}, ErrClosed
	}
	var res AppendResult
	for _, r := range recs {
		if r.Producer != "" {
			if r.ProducerSeq <= m.hwm[r.Producer] {
				res.Duplicates++
				continue
			}
			m.hwm[r.Producer] = r.ProducerSeq
		}
		r.Offset = m.first + uint64(len(m.recs))
		if r.Time.IsZero() {
			r.Time = m.now()
		}
		r.Value = append([]byte(nil), r.Value...)
		if res.Appended == 0 {
			res.FirstOffset = r.Offset
		}
		res.LastOffset = r.Offset
		res.Appended++
		m.recs = append(m.recs, r)
	}
	if res.Appended > 0 {
		close(m.changed)
		m.changed = make(chan struct{})
	}
	return res, nil
}

func (m *Memory) Read(from uint64, maxRecords, maxBytes int) ([]Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	if from < m.first {
		return nil, ErrOutOfRange
	}
	next := m.first + uint64(len(m.recs))
	if from >= next {
		return nil, nil
	}
	var out []Record
	size := 0
	for i := from - m.first; i < uint64(len(m.recs)) && len(out) < maxRecords; i++ {
		r := m.recs[i]
		if len(out) > 0 && size+len(r.Value) > maxBytes {
			break
		}
		size += len(r.Value)
		r.Value = append([]byte(nil), r.Value...)
		out = append(out, r)
	}
	return out, nil
}

func (m *Memory) Wait(ctx context.Context, from uint64) error {
	for {
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			return ErrClosed
		}
		if m.first+uint64(len(m.recs)) > from {
			m.mu.Unlock()
			return nil
		}
		ch := m.changed
		m.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (m *Memory) FirstOffset() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.first
}

func (m *Memory) NextOffset() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.first + uint64(len(m.recs))
}

func (m *Memory) HighWaterMark(producer string) uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.hwm[producer]
}

// Truncate removes records below offset, as retention would.
func (m *Memory) Truncate(below uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for m.first < below && len(m.recs) > 0 {
		m.recs = m.recs[1:]
		m.first++
	}
}

func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.closed {
		m.closed = true
		close(m.changed)
	}
	return nil
}

var _ TopicReader = (*Memory)(nil)

// ReadTopic implements TopicReader by a linear scan.
func (m *Memory) ReadTopic(topic string, from uint64, max int) ([]Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	if from < m.first {
		return nil, ErrOutOfRange
	}
	var out []Record
	for i := from - m.first; i < uint64(len(m.recs)) && len(out) < max; i++ {
		if r := m.recs[i]; r.Topic == topic {
			r.Value = append([]byte(nil), r.Value...)
			out = append(out, r)
		}
	}
	return out, nil
}

// OffsetForTime implements TopicReader by a linear scan.
func (m *Memory) OffsetForTime(t time.Time) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0, ErrClosed
	}
	for _, r := range m.recs {
		if !r.Time.Before(t) {
			return r.Offset, nil
		}
	}
	return m.first + uint64(len(m.recs)), nil
}
