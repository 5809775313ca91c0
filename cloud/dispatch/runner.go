package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/tributary-io/tributary/cloud/commitlog"
)

// Stats are one subscription's counters since it was added (Update keeps
// them).
type Stats struct {
	// Cursor is the last durably written cursor: the offset delivery resumes
	// from after a crash.
	Cursor uint64
	// LowWater is the in-memory cursor: every offset below it is completed.
	LowWater uint64
	// ReadOffset is the next log offset the reader will take.
	ReadOffset uint64
	// Delivered counts events the sink accepted (2xx); Retries counts
	// failed attempts that were retried (in batch mode one attempt carries
	// a batch); DeadLettered counts events appended to the dead-letter topic;
	// Filtered counts events the filters rejected.
	Delivered, Retries, DeadLettered, Filtered uint64
	// SkippedByRetention counts offsets the log removed before they were read.
	SkippedByRetention uint64
	// InFlight is the number of events a lane holds (sending or waiting to
	// retry).
	InFlight int64
	// Delayed is the number of events waiting for their deliverat time.
	Delayed int64
	// LastError describes the latest failed attempt or internal error, and
	// LastErrorAt when it happened (zero if none).
	LastError   string
	LastErrorAt time.Time
	// Redriven counts dead letters a redrive delivered, RedriveDeadLettered
	// those that failed again (each is a new dead letter), RedriveLost
	// offsets queued for redrive that retention removed first. RedriveActive
	// is true while a redrive has dead letters left to send. The counters
	// start at zero when the dispatcher starts.
	Redriven, RedriveDeadLettered, RedriveLost uint64
	RedriveActive                              bool
}

type counters struct {
	cursor, lowWater, readOffset               atomic.Uint64
	delivered, retries, deadLettered, filtered atomic.Uint64
	skipped                                    atomic.Uint64
	inFlight, delayed                          atomic.Int64
	mu                                         sync.Mutex
	lastErr                                    string
	lastErrAt                                  time.Time
}

// carry copies the totals of a replaced runner.
func (c *counters) carry(o *counters) {
	c.delivered.Store(o.delivered.Load())
	c.retries.Store(o.retries.Load())
	c.deadLettered.Store(o.deadLettered.Load())
	c.filtered.Store(o.filtered.Load())
	c.skipped.Store(o.skipped.Load())
	o.mu.Lock()
	c.lastErr, c.lastErrAt = o.lastErr, o.lastErrAt
	o.mu.Unlock()
}

// item is one record handed to a lane: a decoded event, or the reason it is
// dead-lettered without being sent.
type item struct {
	rec commitlog.Record
	ev  *event.Event
	// orig is the log offset of the event: rec.Offset, except for a redrive,
	// whose rec is the dead letter and orig the offset it recorded.
	orig uint64
	// producer and producerSeq are the logged record's origin (rec's, or
	// for a redrive the one its dead letter recorded).
	producer    string
	producerSeq uint64
	// reject, if set, dead-letters the event at once with this reason (an
	// undecodable record, an unusable deliverat).
	reject string
	// ready is the earliest time of the first attempt (zero: at once), and
	// delayed is set if it lay in the future when the event was routed.
	ready   time.Time
	delayed bool
}

// finisher is told how each event a lane took ended. The main lanes
// complete the offset in the tracker; redrive lanes complete it in the
// redrive state.
type finisher interface {
	delivered(it item)
	deadLettered(it item)
}

// mainFinisher completes the subscription's own offsets.
type mainFinisher struct{ r *runner }

func (f mainFinisher) delivered(it item) {
	f.r.stats.delivered.Add(1)
	f.r.complete(it.rec.Offset)
}

func (f mainFinisher) deadLettered(it item) {
	f.r.stats.deadLettered.Add(1)
	f.r.complete(it.rec.Offset)
}

// runner delivers one subscription. It is created by Add/Update, started by
// start and stopped by stop; a stopped runner is not restarted (a new one is
// made).
type runner struct {
	d     *Dispatcher
	c     *compiled
	cur   *cursorFile
	state cursorState // as loaded; Epoch is kept for the runner's life
	fresh bool        // no cursor file existed
	send  deliverer
	rd    *redriver // shared with the runners before and after this one
	limit *limiter  // nil without a rate limit
	sched Schedule
	log   *slog.Logger
	stats counters

	// producerBase prefixes the ordered lanes' dead-letter producer names.
	producerBase string

	track      *tracker      // set by run before any lane starts
	kick       chan struct{} // asks the flusher for an early write
	sinceFlush atomic.Int64

	cancel  context.CancelFunc
	done    chan struct{} // closed when run returned (or at stop if never started)
	mu      sync.Mutex    // guards cancel/started
	started bool
}

// newRunner prepares a runner for c. rd is the subscription's redrive
// state, nil to load it from disk (a subscription being added).
func newRunner(d *Dispatcher, c *compiled, rd *redriver) (*runner, error) {
	if rd == nil {
		var err error
		if rd, err = loadRedriver(d.dir, c.ID); err != nil {
			return nil, err
		}
	}
	r := &runner{
		rd:    rd,
		d:     d,
		c:     c,
		cur:   newCursorFile(d.dir, c.ID),
		sched: Schedule{Policy: c.retry, Rand: randFloat},
		log:   d.opts.Logger.With("subscription", c.ID),
		kick:  make(chan struct{}, 1),
		done:  make(chan struct{}),
	}
	st, ok, err := r.cur.load()
	if err != nil {
		return nil, err
	}
	r.state, r.fresh = st, !ok
	if r.fresh {
		r.state.Epoch = newEpoch()
	}
	r.stats.cursor.Store(st.Offset)
	r.stats.lowWater.Store(st.Offset)
	if r.send, err = newDeliverer(c, d.opts.Transport, r.log); err != nil {
		return nil, err
	}
	if c.RateLimit > 0 {
		r.limit = &limiter{b: newTokenBucket(c.RateLimit, c.rateBurst)}
	}
	layout, _ := json.Marshal(struct {
		P int
		F any
	}{c.parallelism, c.Filters})
	h := fnv.New64a()
	_, _ = h.Write(layout)
	r.producerBase = fmt.Sprintf("$dispatch/%s/%s-%x/", c.ID, r.state.Epoch, h.Sum64())
	return r, nil
}

func (r *runner) start(ctx context.Context) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.started {
		return
	}
	r.started = true
	ctx, r.cancel = context.WithCancel(ctx)
	go func() {
		defer close(r.done)
		if err := r.run(ctx); err != nil {
			r.setErr(err)
			r.log.Error("subscription stopped", "err", err)
			r.d.failed(fmt.Errorf("dispatch: subscription %s: %w", r.c.ID, err))
		}
	}()
}

// stop cancels the runner and waits until its goroutines ended and its
// cursor was written.
// It may be called more than once, from any goroutine.
func (r *runner) stop() {
	r.mu.Lock()
	if !r.started {
		r.started = true // never start it now
		r.cancel = func() {}
		close(r.done)
	}
	r.cancel()
	r.mu.Unlock()
	<-r.done
}

func (r *runner) setErr(err error) {
	r.stats.mu.Lock()
	r.stats.lastErr, r.stats.lastErrAt = err.Error(), r.d.opts.Now()
	r.stats.mu.Unlock()
}

func (r *runner) snapshot() Stats {
	s := &r.stats
	var st Stats
	r.rd.fill(&st)
	s.mu.Lock()
	defer s.mu.Unlock()
	st2 := Stats{
		Cursor:             s.cursor.Load(),
		LowWater:           s.lowWater.Load(),
		ReadOffset:         s.readOffset.Load(),
		Delivered:          s.delivered.Load(),
		Retries:            s.retries.Load(),
		DeadLettered:       s.deadLettered.Load(),
		Filtered:           s.filtered.Load(),
		SkippedByRetention: s.skipped.Load(),
		InFlight:           s.inFlight.Load(),
		Delayed:            s.delayed.Load(),
		LastError:          s.lastErr,
		LastErrorAt:        s.lastErrAt,
	}
	st2.Redriven, st2.RedriveDeadLettered, st2.RedriveLost, st2.RedriveActive = st.Redriven, st.RedriveDeadLettered, st.RedriveLost, st.RedriveActive
	return st2
}

// startOffset decides where reading begins: the cursor, or From for a new
// subscription; clipped to the log's retained range.
func (r *runner) startOffset() uint64 {
	lg := r.d.log
	start := r.state.Offset
	if r.fresh {
		latest, off, _ := parseFrom(r.c.From) // validated by compile
		start = off
		if latest {
			start = lg.NextOffset()
		}
	}
	if first := lg.FirstOffset(); start < first {
		if !r.fresh {
			r.log.Warn("cursor is below the oldest retained record; events were lost to retention", "cursor", start, "first", first)
			r.stats.skipped.Add(first - start)
		}
		start = first
	}
	return start
}

// run is the runner's life: read, route to lanes, flush the cursor; on the
// way out stop the lanes and write the cursor a last time. It returns nil
// when ctx ended and an error when the log failed.
func (r *runner) run(ctx context.Context) error {
	start := r.startOffset()
	r.track = newTracker(start, r.d.opts.MaxPending)
	r.stats.lowWater.Store(start)
	r.stats.readOffset.Store(start)
	if r.fresh || start != r.state.Offset {
		// Pin the start (a "latest" subscription must not move forward on
		// restart) and the epoch before anything is delivered.
		if err := r.cur.store(cursorState{Offset: start, Epoch: r.state.Epoch}); err != nil {
			return err
		}
		r.fresh = false
		r.state.Offset = start
	}
	r.stats.cursor.Store(start)

	inner, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	queues := r.startLanes(inner, cancel, &wg, true, mainFinisher{r})
	var later *delayQueue // unordered: holds events until their deliverat
	if !r.c.ordered {
		later = newDelayQueue()
		wg.Add(1)
		go func() {
			defer wg.Done()
			later.run(inner, queues[0], r.d.opts.Now, r.d.opts.After)
		}()
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		r.flusher(inner)
	}()
	go func() {
		defer wg.Done()
		if err := r.redriveLoop(inner, cancel); err != nil {
			cancel(err)
		}
	}()

	err := r.read(inner, queues, later)
	if err != nil {
		cancel(err)
	} else {
		cancel(nil)
	}
	wg.Wait()
	r.send.close()
	r.flush()
	if err == nil {
		if cause := context.Cause(inner); cause != nil && !errors.Is(cause, context.Canceled) {
			err = cause // a lane found the log broken
		}
	}
	return err
}

// read feeds records to the lanes in log order until ctx ends (nil) or the
// log fails (its error).
func (r *runner) read(ctx context.Context, queues []*queue, later *delayQueue) error {
	lg := r.d.log
	next := r.track.lowWater()
	for {
		recs, err := lg.Read(next, r.d.opts.ReadBatch, 1<<20)
		switch {
		case errors.Is(err, commitlog.ErrOutOfRange):
			// Retention removed records we had not read. Let the lanes
			// finish what they hold, then continue at the oldest record.
			if r.track.waitIdle(ctx) != nil {
				return nil
			}
			if first := lg.FirstOffset(); first > next {
				r.log.Warn("records removed by retention before delivery", "from", next, "to", first)
				r.stats.skipped.Add(first - next)
				r.track.reset(first)
				storeMax(&r.stats.lowWater, first)
				next = first
				r.stats.readOffset.Store(next)
			}
			continue
		case err != nil:
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("read log at %d: %w", next, err)
		}
		if len(recs) == 0 {
			if err := lg.Wait(ctx, next); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("wait for log offset %d: %w", next, err)
			}
			continue
		}
		for _, rec := range recs {
			if rec.Offset != next {
				if rec.Offset < next {
					return fmt.Errorf("log returned offset %d when %d was asked for", rec.Offset, next)
				}
				// A gap: treat the missing offsets as removed.
				if r.track.waitIdle(ctx) != nil {
					return nil
				}
				r.stats.skipped.Add(rec.Offset - next)
				r.track.reset(rec.Offset)
				storeMax(&r.stats.lowWater, rec.Offset)
				next = rec.Offset
			}
			if r.track.issue(ctx, next) != nil {
				return nil
			}
			next++
			r.stats.readOffset.Store(next)
			if r.route(ctx, rec, queues, later) != nil {
				return nil
			}
		}
	}
}

// startLanes starts the lane goroutines of one set of queues (the live
// events', or the redrive's) and returns the queues: one per lane when
// ordered, one shared by every worker otherwise. withProducers gives the
// ordered lanes their dead-letter producer names (see deadLetterRecord).
func (r *runner) startLanes(ctx context.Context, fail context.CancelCauseFunc, wg *sync.WaitGroup, withProducers bool, fin finisher) []*queue {
	n := r.c.parallelism
	queues := make([]*queue, 1)
	if r.c.ordered {
		queues = make([]*queue, n)
	}
	for i := range queues {
		queues[i] = newQueue()
	}
	for i := range n {
		q, producer := queues[0], ""
		if r.c.ordered {
			q = queues[i]
			if withProducers {
				producer = r.producerBase + strconv.Itoa(i)
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.lane(ctx, fail, q, producer, fin)
		}()
	}
	return queues
}

// pushToLane queues it to the lane of its partition key (the single queue
// when unordered).
func pushToLane(queues []*queue, it item) {
	q := queues[0]
	if len(queues) > 1 {
		key := ""
		if it.ev != nil {
			key = laneKey(it.ev)
		}
		q = queues[laneOf(key, len(queues))]
	}
	q.push(it)
}

// route completes records the subscription does not want and queues the
// others to their lane: at once, or, for an unordered subscription, through
// later when their deliverat lies ahead. With a subscription delay it first
// waits until the record is old enough; it returns ctx's error if ctx ends
// during that wait.
func (r *runner) route(ctx context.Context, rec commitlog.Record, queues []*queue, later *delayQueue) error {
	if strings.HasPrefix(rec.Topic, "$") {
		r.complete(rec.Offset)
		return nil
	}
	it := item{rec: rec, orig: rec.Offset, producer: rec.Producer, producerSeq: rec.ProducerSeq}
	var err error
	if it.ev, err = r.d.decoded.decode(rec); err != nil {
		it.reject = "undecodable record: " + err.Error()
	}
	if it.ev != nil && !r.c.matcher.Match(it.ev) {
		r.stats.filtered.Add(1)
		r.complete(rec.Offset)
		return nil
	}
	if it.ev != nil {
		if d := r.c.delay; d > 0 {
			// Capped at the delay itself: a record time far in the future
			// (a producer's clock) must not hold the subscription longer.
			now := r.d.opts.Now()
			if err := sleepUntil(ctx, minTime(rec.Time.Add(d), now.Add(d)), now, r.d.opts.After); err != nil {
				return err
			}
		}
		if it.ready, err = readyAt(it.ev, rec.Time, r.c.maxDelay); err != nil {
			it.reject = err.Error()
		} else if it.ready.After(r.d.opts.Now()) {
			it.delayed = true
			r.stats.delayed.Add(1)
			if later != nil {
				later.add(it)
				return nil
			}
		}
	}
	pushToLane(queues, it)
	return nil
}

func (r *runner) complete(off uint64) {
	if moved, base := r.track.complete(off); moved {
		storeMax(&r.stats.lowWater, base) // completions race; the mark only grows
	}
	r.noteCompletion()
}

// noteCompletion counts a completion towards the next early state write.
func (r *runner) noteCompletion() {
	if r.sinceFlush.Add(1) >= int64(r.d.opts.FlushEvery) {
		select {
		case r.kick <- struct{}{}:
		default:
		}
	}
}

// lane delivers the items of one queue, one request at a time, in order
// (in batch mode a request may carry several: see takeBatch).
func (r *runner) lane(ctx context.Context, fail context.CancelCauseFunc, q *queue, producer string, fin finisher) {
	buf := make([]item, 0, max(1, r.c.batch))
	for {
		it, ok := q.pop(ctx)
		if !ok {
			return
		}
		buf = r.takeBatch(q, append(buf[:0], it))
		n := int64(len(buf))
		r.stats.inFlight.Add(n)
		var err error
		if n == 1 {
			err = r.handle(ctx, it, producer, fin)
		} else {
			err = r.handleBatch(ctx, buf, producer, fin)
		}
		clear(buf) // let the events be collected
		r.stats.inFlight.Add(-n)
		if err != nil {
			if ctx.Err() == nil {
				fail(err)
			}
			return
		}
	}
}

// handle takes one event to completion: delivered, or dead-lettered. It
// returns ctx's error if stopped first (the event stays uncompleted and is
// sent again after a restart) and the log's error if dead-lettering failed
// for good.
func (r *runner) handle(ctx context.Context, it item, producer string, fin finisher) error {
	now := r.d.opts.Now
	if it.reject != "" {
		r.setErr(fmt.Errorf("offset %d: %s", it.orig, it.reject))
		return r.deadLetter(ctx, it, producer, 0, 0, it.reject, fin)
	}
	if it.delayed {
		// An ordered lane waits here for its head event (the other lanes go
		// on); an unordered event arrives from the delay queue when due.
		err := sleepUntil(ctx, it.ready, now(), r.d.opts.After)
		r.stats.delayed.Add(-1)
		if err != nil {
			return err
		}
	}
	ev := it.ev
	if r.c.transform != nil {
		var err error
		if ev, err = r.c.transform.apply(ctx, it.ev); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			r.setErr(fmt.Errorf("event %s (offset %d): %w", it.ev.ID(), it.orig, err))
			return r.deadLetter(ctx, it, producer, 0, 0, err.Error(), fin)
		}
	}
	first := now()
	for attempts := 1; ; attempts++ {
		if r.limit != nil {
			if err := r.limit.wait(ctx, now, r.d.opts.After); err != nil {
				return err
			}
		}
		a := r.send.send(ctx, ev)
		if ctx.Err() != nil && Classify(a) != Delivered {
			return ctx.Err() // stopping: an abandoned attempt is not a failure
		}
		t := now()
		dec := r.sched.Next(attempts, first, a, t)
		switch dec.Action {
		case Done:
			fin.delivered(it)
			return nil
		case DeadLetter:
			r.setErr(fmt.Errorf("event %s (offset %d): %s", it.ev.ID(), it.orig, dec.Reason))
			return r.deadLetter(ctx, it, producer, attempts, a.Status, dec.Reason, fin)
		}
		r.stats.retries.Add(1)
		r.setErr(fmt.Errorf("event %s (offset %d) attempt %d: %s", it.ev.ID(), it.orig, attempts, a))
		r.log.Debug("delivery failed, will retry", "id", it.ev.ID(), "offset", it.orig, "attempt", attempts, "answer", a.String(), "at", dec.At)
		select {
		case <-r.d.opts.After(dec.At.Sub(t)):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// deadLetter appends the event to the dead-letter topic and completes it.
// A failing append is retried with the subscription's backoff; only a closed
// or failed log (or ctx ending) gives up, leaving the offset uncompleted.
//
// The dead letter holds the event as it was logged (before any
// transformation), so a redrive sends it through the subscription's current
// settings.
func (r *runner) deadLetter(ctx context.Context, it item, producer string, attempts, status int, reason string, fin finisher) error {
	info := deadLetterInfo{sub: r.c.ID, offset: it.orig, producer: it.producer, producerSeq: it.producerSeq, attempts: attempts, status: status, reason: reason, at: r.d.opts.Now()}
	value, err := deadLetterValue(it.rec.Value, info, false)
	if err != nil {
		return fmt.Errorf("build dead letter for offset %d: %w", it.orig, err)
	}
	backoff := Schedule{Policy: r.c.retry, Rand: randFloat}
	for try := 1; ; try++ {
		rec := deadLetterRecord(r.c.deadLetter, producer, it.orig, value)
		_, err := r.d.log.Append(ctx, []commitlog.Record{rec})
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, commitlog.ErrTooLarge) {
			// Keep the attributes and the reason; drop the data.
			if value, err = deadLetterValue(it.rec.Value, info, true); err != nil {
				return fmt.Errorf("build dead letter for offset %d: %w", it.orig, err)
			}
			continue
		}
		if errors.Is(err, commitlog.ErrClosed) {
			return fmt.Errorf("dead-letter offset %d: %w", it.orig, err)
		}
		r.setErr(fmt.Errorf("dead-letter offset %d: %w", it.orig, err))
		r.log.Error("dead-letter append failed, will retry", "offset", it.orig, "err", err)
		select {
		case <-r.d.opts.After(backoff.backoff(try)):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	r.log.Warn("event dead-lettered", "offset", it.orig, "topic", r.c.deadLetter, "attempts", attempts, "reason", reason)
	fin.deadLettered(it)
	return nil
}

// flusher writes the cursor every FlushInterval, or sooner after FlushEvery
// completions, until ctx ends.
func (r *runner) flusher(ctx context.Context) {
	t := time.NewTicker(r.d.opts.FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.kick:
		}
		r.flush()
	}
}

// flush writes the low-water mark if it moved, and the redrive state if it
// changed. Only the flusher and, after it stopped, run call it.
func (r *runner) flush() {
	r.sinceFlush.Store(0)
	if err := r.rd.flush(); err != nil {
		r.setErr(err)
		r.log.Error("redrive state write failed", "err", err)
	}
	lw := r.track.lowWater()
	if lw == r.stats.cursor.Load() {
		return
	}
	if err := r.cur.store(cursorState{Offset: lw, Epoch: r.state.Epoch}); err != nil {
		r.setErr(err)
		r.log.Error("cursor write failed", "err", err)
		return
	}
	r.stats.cursor.Store(lw)
}

func randFloat() float64 { return rand.Float64() }

func storeMax(a *atomic.Uint64, v uint64) {
	for {
		old := a.Load()
		if v <= old || a.CompareAndSwap(old, v) {
			return
		}
	}
}
