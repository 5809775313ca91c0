// Package dispatch pushes the central log's events to subscribers' sinks
// (HTTP webhooks, NATS subjects) as CloudEvents (contract 5 of DESIGN.md).
//
// A Dispatcher runs subscriptions independently of each other: each has its
// own reader over the log, its own lanes, retry timers and durable cursor, so
// a slow or dead sink holds back nothing but its own subscription. Within a
// subscription, Parallelism lanes deliver at once; with Ordered (the default)
// an event's lane is fixed by its partition key, and a lane sends one event at
// a time, so per-device order is kept.
//
// Delivery is at-least-once with stable ids: an event's CloudEvent id is the
// one stored in the log, and the cursor moves past an offset only after the
// sink answered 2xx, the event was filtered out, or it was dead-lettered into
// the log. After a crash, delivery resumes at the last durable cursor, so
// events after it may be delivered again (same id); none is skipped.
//
// Around that core: dead letters can be listed (DeadLetters) and sent again
// (Redrive, redrive.go); a subscription's cursor can be moved to an offset or
// a time (Replay); events can be delayed (the deliverat extension, the delay
// setting) and a subscription rate-limited (schedule.go); a transformation in
// CEL can reshape events before they are sent (transform.go); and Tail reads
// the log as a pull consumer for the streaming API. In batch mode
// (batch.go) a lane sends the events it has queued in one request, in the
// CloudEvents JSON batch format; subscriptions share decoded events
// (decodecache.go) so a record is decoded once, not once per subscription.
//
// Goroutines and locks: Dispatcher.admin serialises the calls that replace a
// runner (Add, Update, Remove, Replay, Redrive) and is taken before
// Dispatcher.mu, which guards the subscription table and the run state and
// is never held while waiting for a runner to stop. A subscription's redrive
// state has its own mutex (redriver.mu), taken with neither admin nor mu
// held, or after admin only. Each runner owns a reader goroutine, its lane
// goroutines, a cursor flusher and a redrive loop (with its own lanes,
// started on first use); unordered subscriptions add a delay-queue
// goroutine. The reader hands events to the lanes through queues (one per
// ordered lane, one shared by the unordered workers), each with its own
// mutex; completions go to the tracker (its own mutex), which computes the
// cursor; counters are atomics, the last error sits under counters.mu,
// runner.mu only guards starting and stopping, and the rate limiter has its
// own mutex held only to take a reservation. Apart from admin before mu and
// mu before runner.mu (starting a runner), no goroutine holds two of these
// locks at once.
package dispatch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tributary-io/tributary/cloud/commitlog"
)

// Sentinel errors. Compare with errors.Is.
var (
	// ErrExists is returned by Add for an ID already present.
	ErrExists = errors.New("dispatch: subscription already exists")
	// ErrNotFound is returned for an unknown subscription ID.
	ErrNotFound = errors.New("dispatch: no such subscription")
	// ErrStopped is returned by Add, Update and Run once Run has returned.
	ErrStopped = errors.New("dispatch: dispatcher stopped")
	// ErrRunning is returned by a second call to Run.
	ErrRunning = errors.New("dispatch: already running")
	// ErrInvalidRequest is returned (wrapped, with the reason) for a bad
	// Redrive or Replay request: the caller's mistake, an HTTP 400.
	ErrInvalidRequest = errors.New("dispatch: invalid request")
	// ErrConflict is returned when a request cannot be done in the
	// subscription's current state (an HTTP 409).
	ErrConflict = errors.New("dispatch: conflict")
	// ErrNoTopicIndex is returned by DeadLetters, Redrive and time-based
	// Replay when the log does not implement commitlog.TopicReader.
	ErrNoTopicIndex = errors.New("dispatch: the log cannot be read by topic or time")
)

// Options configure a Dispatcher. The zero value is usable.
type Options struct {
	// Logger receives operational logs. Nil discards them.
	Logger *slog.Logger
	// Now is the clock used for retry decisions and dead-letter times.
	// Nil means time.Now.
	Now func() time.Time
	// After waits before a retry (it is called with the delay chosen by the
	// retry schedule). Nil means time.After. Tests inject one that returns at
	// once and records the delays.
	After func(time.Duration) <-chan time.Time
	// Transport carries every HTTP request. Nil means DefaultTransport(),
	// whose idle connections Run closes when it returns.
	Transport http.RoundTripper
	// FlushInterval is the longest a completed offset waits before the
	// cursor is written to disk. Zero means 1 s.
	FlushInterval time.Duration
	// FlushEvery writes the cursor early once this many events completed
	// since the last write. Zero means 1000.
	FlushEvery int
	// MaxPending bounds how far (in offsets) a subscription's reader may run
	// ahead of its cursor. That bounds the events held in memory (each
	// decoded event waiting in a lane) and the redelivery after a crash. A
	// lane stuck in retries holds the cursor, so the subscription's other
	// lanes stall once they are this many offsets ahead of it.
	// Zero means 16384.
	MaxPending int
	// ReadBatch is the number of records a reader takes from the log at a
	// time. Zero means 256.
	ReadBatch int
}

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.After == nil {
		o.After = time.After
	}
	if o.FlushInterval <= 0 {
		o.FlushInterval = time.Second
	}
	if o.FlushEvery <= 0 {
		o.FlushEvery = 1000
	}
	if o.MaxPending <= 0 {
		o.MaxPending = 1 << 14
	}
	if o.ReadBatch <= 0 {
		o.ReadBatch = 256
	}
	return o
}

// Dispatcher runs push subscriptions over one log. Its methods are safe for
// concurrent use; Add, Update and Remove take effect at once, also while Run
// is running (an HTTP API can call them directly).
type Dispatcher struct {
	log      commitlog.Log
	dir      string
	opts     Options
	ownTrans *http.Transport // non-nil if we made the transport

	// admin serialises the calls that replace or reconfigure a runner (Add,
	// Update, Remove, Replay, Redrive), so that two of them never stop and
	// replace the same runner at once. It is taken before mu.
	admin sync.Mutex

	mu      sync.Mutex
	subs    map[string]*runner
	runCtx  context.Context // non-nil while Run runs
	stopped bool
	fatal   chan error    // first runner failure (log broken)
	done    chan struct{} // closed when Run starts stopping (ends Tails)

	decoded *decodeCache // events decoded by one subscription, read by the others
}

// New returns a dispatcher that reads from log and keeps its cursors in dir
// (created if missing). It starts nothing: Add subscriptions, then Run.
func New(log commitlog.Log, dir string, opts Options) (*Dispatcher, error) {
	if log == nil {
		return nil, errors.New("dispatch: nil log")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("dispatch: cursor dir: %w", err)
	}
	// Temp files left by a crash during a cursor or redrive state write.
	for _, pat := range []string{"*.cursor.tmp*", "*.redrive.tmp*"} {
		if tmps, err := filepath.Glob(filepath.Join(dir, pat)); err == nil {
			for _, t := range tmps {
				_ = os.Remove(t)
			}
		}
	}
	d := &Dispatcher{log: log, dir: dir, opts: opts.withDefaults(), subs: map[string]*runner{}, fatal: make(chan error, 1), done: make(chan struct{}), decoded: new(decodeCache)}
	if d.opts.Transport == nil {
		d.ownTrans = DefaultTransport()
		d.opts.Transport = d.ownTrans
	}
	return d, nil
}

// Add validates sub and starts delivering it (at once if Run is running,
// else when Run starts). An existing cursor file for the same ID is resumed;
// without one the subscription starts at sub.From. A corrupt cursor file is
// an error wrapping ErrCorruptCursor.
func (d *Dispatcher) Add(sub Subscription) error {
	c, err := sub.compile()
	if err != nil {
		return err
	}
	d.admin.Lock()
	defer d.admin.Unlock()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped {
		return ErrStopped
	}
	if _, ok := d.subs[sub.ID]; ok {
		return fmt.Errorf("%w: %s", ErrExists, sub.ID)
	}
	r, err := newRunner(d, c, nil)
	if err != nil {
		return err
	}
	d.subs[sub.ID] = r
	if d.runCtx != nil {
		r.start(d.runCtx)
	}
	return nil
}

// Update replaces the configuration of an existing subscription, keeping its
// cursor: the old runner stops (events in flight are abandoned and will be
// sent again), its cursor is written, and the new one resumes from it.
func (d *Dispatcher) Update(sub Subscription) error {
	c, err := sub.compile()
	if err != nil {
		return err
	}
	d.admin.Lock()
	defer d.admin.Unlock()
	d.mu.Lock()
	old, ok := d.subs[sub.ID]
	switch {
	case d.stopped:
		d.mu.Unlock()
		return ErrStopped
	case !ok:
		d.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrNotFound, sub.ID)
	}
	d.mu.Unlock()

	old.stop()

	d.mu.Lock()
	defer d.mu.Unlock()
	if d.subs[sub.ID] != old {
		return fmt.Errorf("%w: %s changed during update", ErrNotFound, sub.ID)
	}
	r, err := newRunner(d, c, old.rd)
	if err != nil {
		// Keep the old configuration running rather than nothing.
		if prev, perr := newRunner(d, old.c, old.rd); perr == nil {
			d.subs[sub.ID] = prev
			if d.runCtx != nil {
				prev.start(d.runCtx)
			}
		}
		return err
	}
	r.stats.carry(&old.stats)
	d.subs[sub.ID] = r
	if d.runCtx != nil {
		r.start(d.runCtx)
	}
	return nil
}

// Remove stops a subscription and deletes its cursor and redrive state:
// adding the same ID later starts over from its From setting.
func (d *Dispatcher) Remove(id string) error {
	d.admin.Lock()
	defer d.admin.Unlock()
	d.mu.Lock()
	r, ok := d.subs[id]
	if !ok {
		d.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	delete(d.subs, id)
	d.mu.Unlock()
	r.stop()
	return errors.Join(r.cur.remove(), r.rd.remove())
}

// List returns the subscriptions' configurations, sorted by ID.
func (d *Dispatcher) List() []Subscription {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]Subscription, 0, len(d.subs))
	for _, r := range d.subs {
		out = append(out, r.c.Subscription)
	}
	slices.SortFunc(out, func(a, b Subscription) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Get returns one subscription's configuration.
func (d *Dispatcher) Get(id string) (Subscription, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	r, ok := d.subs[id]
	if !ok {
		return Subscription{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return r.c.Subscription, nil
}

// Stats returns a subscription's counters.
func (d *Dispatcher) Stats(id string) (Stats, error) {
	d.mu.Lock()
	r, ok := d.subs[id]
	d.mu.Unlock()
	if !ok {
		return Stats{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return r.snapshot(), nil
}

// Run delivers every subscription until ctx ends or the log fails, then
// stops them, writes their cursors and returns. It returns nil after ctx
// ended, or the log's error (wrapped) if a subscription could not read or
// append to it. A dispatcher runs once: afterwards Add, Update and Run
// return ErrStopped.
func (d *Dispatcher) Run(ctx context.Context) error {
	d.mu.Lock()
	if d.stopped {
		d.mu.Unlock()
		return ErrStopped
	}
	if d.runCtx != nil {
		d.mu.Unlock()
		return ErrRunning
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	d.runCtx = runCtx
	for _, r := range d.subs {
		r.start(runCtx)
	}
	d.mu.Unlock()

	var err error
	select {
	case <-ctx.Done():
	case err = <-d.fatal:
	}

	d.mu.Lock()
	d.stopped = true
	d.runCtx = nil
	close(d.done)
	runners := make([]*runner, 0, len(d.subs))
	for _, r := range d.subs {
		runners = append(runners, r)
	}
	d.mu.Unlock()

	cancel()
	for _, r := range runners {
		r.stop()
	}
	if d.ownTrans != nil {
		d.ownTrans.CloseIdleConnections()
	}
	return err
}

// failed is called by a runner whose log broke.
func (d *Dispatcher) failed(err error) {
	select {
	case d.fatal <- err:
	default:
	}
}
