package dispatch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
)

// Batch mode (HTTPSettings.Mode "batch") sends several events per request
// as a JSON array (the CloudEvents JSON batch format). It exists because on
// loopback the cost of push delivery is the HTTP exchange, not the event:
// two syscalls and a header parse per request on each side, ≈ 40 µs of CPU
// per event with one event per request (shared/notes/measured-limits.md).
// An ordered lane may still have only one request in flight (pipelining
// would break order on a retry), so batching is the way to move more than
// one event per round trip without giving up order.
//
// A lane takes what its queue already holds, up to BatchSize events and
// maxBatchBytes of records: it never waits to fill a batch, so batching adds
// no latency when the sink keeps up and grows by itself when it does not.
// An event that must wait (deliverat) or is rejected before sending ends a
// batch, and is handled alone.

// maxBatchBytes bounds the records (their log values) in one batch; the
// first event always goes, whatever its size.
const maxBatchBytes = 1 << 20

// batchDeliverer is a deliverer that can also send several events in one
// attempt; the answer is for all of them.
type batchDeliverer interface {
	deliverer
	sendBatch(ctx context.Context, evs []*event.Event) Answer
}

var _ batchDeliverer = (*batchSender)(nil)

// batchSender posts application/cloudevents-batch+json requests. A single
// event goes as a batch of one: a sink that asked for batches gets nothing
// else.
type batchSender struct {
	client  http.Client
	url     string
	method  string
	header  http.Header
	timeout time.Duration
	bufs    sync.Pool // *bytes.Buffer
}

func newBatchSender(c *compiled, rt http.RoundTripper) *batchSender {
	s := &batchSender{
		client: http.Client{
			Transport:     rt,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		url:     c.Sink,
		method:  http.MethodPost,
		header:  http.Header{},
		timeout: c.timeout,
	}
	if c.ProtocolSettings.Method != "" {
		s.method = c.ProtocolSettings.Method
	}
	for k, v := range c.ProtocolSettings.Headers {
		s.header.Set(k, v)
	}
	s.header.Set("Content-Type", event.ApplicationCloudEventsBatchJSON)
	return s
}

func (s *batchSender) close() {} // the transport is the dispatcher's

func (s *batchSender) send(ctx context.Context, e *event.Event) Answer {
	return s.sendBatch(ctx, []*event.Event{e})
}

// sendBatch makes one attempt to deliver evs in one request. It never
// returns an error: a failure is an Answer (Permanent if the events cannot
// be encoded).
func (s *batchSender) sendBatch(ctx context.Context, evs []*event.Event) Answer {
	buf, _ := s.bufs.Get().(*bytes.Buffer)
	if buf == nil {
		buf = new(bytes.Buffer)
	}
	defer func() {
		if buf.Cap() <= 4*maxBatchBytes {
			buf.Reset()
			s.bufs.Put(buf)
		}
	}()
	if err := encodeBatch(buf, evs); err != nil {
		return Answer{Err: err, Permanent: true}
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, s.method, s.url, bytes.NewReader(buf.Bytes()))
	if err != nil {
		return Answer{Err: err, Permanent: true}
	}
	for k, v := range s.header {
		req.Header[k] = v
	}
	resp, err := s.client.Do(req)
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("no answer within %v: %w", s.timeout, err)
		}
		return Answer{Err: err}
	}
	defer resp.Body.Close()
	a := Answer{Status: resp.StatusCode, RetryAfter: resp.Header.Get("Retry-After")}
	if a.Status < 200 || a.Status >= 300 {
		a.Body = readSnippet(resp.Body)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, drainBody))
	return a
}

// encodeBatch writes evs as a JSON array of structured events.
func encodeBatch(buf *bytes.Buffer, evs []*event.Event) error {
	buf.WriteByte('[')
	for i, e := range evs {
		if i > 0 {
			buf.WriteByte(',')
		}
		b, err := e.MarshalJSON()
		if err != nil {
			return fmt.Errorf("encode event %s for a batch: %w", e.ID(), err)
		}
		buf.Write(b)
	}
	buf.WriteByte(']')
	return nil
}

// batchable says whether an item may join a batch: it is to be sent now.
func batchable(it item) bool { return it.reject == "" && !it.delayed && it.ev != nil }

func recordSize(it item) int { return len(it.rec.Value) }

// takeBatch fills buf (holding the item just popped) with the items queued
// behind it that may go in the same request.
func (r *runner) takeBatch(q *queue, buf []item) []item {
	if r.c.batch <= 1 || !batchable(buf[0]) {
		return buf
	}
	return q.takeMore(buf, r.c.batch, maxBatchBytes-recordSize(buf[0]), batchable, recordSize)
}

// handleBatch takes several events to completion with one request per
// attempt; see HTTPSettings.BatchSize for what happens on failure. items
// are in lane order, and dead letters are appended in that order (an
// ordered lane's dead-letter producer sequence must grow).
func (r *runner) handleBatch(ctx context.Context, items []item, producer string, fin finisher) error {
	bs, ok := r.send.(batchDeliverer)
	if !ok || len(items) == 1 {
		return r.handleEach(ctx, items, producer, fin)
	}
	evs := make([]*event.Event, len(items))
	for i, it := range items {
		evs[i] = it.ev
		if r.c.transform != nil {
			ev, err := r.c.transform.apply(ctx, it.ev)
			if err != nil {
				// Dead-letter it in its place: one by one.
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return r.handleEach(ctx, items, producer, fin)
			}
			evs[i] = ev
		}
	}
	now := r.d.opts.Now
	first := now()
	for attempts := 1; ; attempts++ {
		if r.limit != nil {
			for range evs { // the limit counts events
				if err := r.limit.wait(ctx, now, r.d.opts.After); err != nil {
					return err
				}
			}
		}
		a := bs.sendBatch(ctx, evs)
		if ctx.Err() != nil && Classify(a) != Delivered {
			return ctx.Err()
		}
		t := now()
		dec := r.sched.Next(attempts, first, a, t)
		switch dec.Action {
		case Done:
			for _, it := range items {
				fin.delivered(it)
			}
			return nil
		case DeadLetter:
			if Classify(a) == Fatal {
				// The sink refused the request, perhaps for one event:
				// find out which, one at a time.
				r.log.Debug("batch refused, sending its events one by one", "events", len(items), "answer", a.String())
				return r.handleEach(ctx, items, producer, fin)
			}
			r.setErr(fmt.Errorf("batch of %d events from offset %d: %s", len(items), items[0].orig, dec.Reason))
			for _, it := range items {
				if err := r.deadLetter(ctx, it, producer, attempts, a.Status, dec.Reason, fin); err != nil {
					return err
				}
			}
			return nil
		}
		r.stats.retries.Add(1)
		r.setErr(fmt.Errorf("batch of %d events from offset %d, attempt %d: %s", len(items), items[0].orig, attempts, a))
		select {
		case <-r.d.opts.After(dec.At.Sub(t)):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// handleEach handles items one at a time, in order.
func (r *runner) handleEach(ctx context.Context, items []item, producer string, fin finisher) error {
	for _, it := range items {
		if err := r.handle(ctx, it, producer, fin); err != nil {
			return err
		}
	}
	return nil
}
