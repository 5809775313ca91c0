package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/cloudevents/sdk-go/v2/types"

	"github.com/tributary-io/tributary/cloud/commitlog"
	"github.com/tributary-io/tributary/cloud/internal/atomicfile"
)

// Redrive sends dead letters through their subscription again.
//
// What a redrive is: the dead letter (a record in the subscription's
// dead-letter topic holding the event as it was logged) is read back, its
// dl* attributes are removed, and the event is delivered with the
// subscription's current sink, transformation, retries and rate limit, in
// lanes of its own beside the live ones (ordered by partition key among
// redriven events; a redrive is out of band, so it has no order relative to
// live events). It keeps its event id. If it fails again it is dead-lettered
// again, as a new dead letter with a new offset. Filters and delays are not
// applied: a redrive is an explicit request for these events.
//
// How it stays durable and idempotent-ish: the redrive state is a file per
// subscription (<id>.redrive, replaced atomically like the cursor) holding
// two sets of dead-letter offsets as ranges: pending (asked for, not yet
// finished) and done (finished: delivered or dead-lettered again). Redrive
// adds the requested ranges minus done to pending and writes the file
// before it returns, so an accepted request survives a crash. A worker
// walks pending in offset order, reading the dead-letter topic through the
// log's topic index; each finished dead letter moves from pending to done
// in memory, and the file is rewritten on the cursor's schedule (every
// FlushInterval, or after FlushEvery completions). After a crash only the
// dead letters finished since the last write are sent again, which
// at-least-once delivery allows (same event id). Asking twice is harmless:
// done offsets are skipped, pending ones are not queued twice.
//
// Why ranges and not a list of ids: "redrive everything" must cost the same
// for ten dead letters or ten million, and offsets redriven in order merge
// into one range, so the file stays small.
//
// Dead letters written by a redrive carry no producer sequence (a later
// request may redrive lower offsets, so no per-lane sequence grows), so a
// crash between such an append and the next state write can leave that
// dead letter twice in the topic.

// RedriveRequest selects dead letters by their offset in the log (the
// Offset of a DeadLetter). Exactly one form is allowed: All, Offsets, or a
// range From..To.
type RedriveRequest struct {
	// All selects every dead letter the subscription has now that was not
	// redriven before.
	All bool `json:"all,omitempty"`
	// Offsets lists dead letters one by one (at most MaxRedriveOffsets).
	// Each must be a record of the subscription's dead-letter topic.
	Offsets []uint64 `json:"offsets,omitempty"`
	// From and To bound a range of offsets, both included. Without From the
	// range starts at the oldest record; without To it ends at the newest.
	From *uint64 `json:"from,omitempty"`
	To   *uint64 `json:"to,omitempty"`
}

// MaxRedriveOffsets bounds RedriveRequest.Offsets.
const MaxRedriveOffsets = 10000

// RedriveResult counts the dead letters a Redrive call selected.
type RedriveResult struct {
	// Queued dead letters will be sent again.
	Queued int `json:"queued"`
	// AlreadyQueued were queued by an earlier request and are not finished.
	AlreadyQueued int `json:"already_queued"`
	// AlreadyRedriven were finished by an earlier redrive and are skipped.
	AlreadyRedriven int `json:"already_redriven"`
}

func (q RedriveRequest) validate() error {
	forms := 0
	if q.All {
		forms++
	}
	if len(q.Offsets) > 0 {
		forms++
	}
	if q.From != nil || q.To != nil {
		forms++
	}
	switch {
	case forms == 0:
		return fmt.Errorf("%w: say which dead letters: all, offsets, or from/to", ErrInvalidRequest)
	case forms > 1:
		return fmt.Errorf("%w: give only one of all, offsets and from/to", ErrInvalidRequest)
	case len(q.Offsets) > MaxRedriveOffsets:
		return fmt.Errorf("%w: %d offsets, at most %d per request (use a range)", ErrInvalidRequest, len(q.Offsets), MaxRedriveOffsets)
	case q.From != nil && q.To != nil && *q.From > *q.To:
		return fmt.Errorf("%w: from %d is above to %d", ErrInvalidRequest, *q.From, *q.To)
	}
	return nil
}

// redriveState is what the redrive file holds.
type redriveState struct {
	Version int `json:"version"`
	// Topic is the dead-letter topic the offsets refer to.
	Topic   string    `json:"topic"`
	Pending intervals `json:"pending"`
	Done    intervals `json:"done"`
}

// redriver is one subscription's redrive state. It outlives runners: Update
// and Replay hand it to the new runner. mu guards st, inflight and dirty;
// it is taken after Dispatcher.mu, never before.
type redriver struct {
	dir, path string

	mu       sync.Mutex
	st       redriveState
	inflight map[uint64]struct{} // pending offsets handed to a redrive lane
	dirty    bool

	kick  chan struct{} // a request added work
	freed chan struct{} // an in-flight redrive finished

	delivered, deadLettered, lost atomic.Uint64
}

func redrivePath(dir, id string) string { return filepath.Join(dir, id+".redrive") }

// loadRedriver reads the state of subscription id; a missing file is an
// empty state, an unreadable one an error wrapping ErrCorruptCursor.
func loadRedriver(dir, id string) (*redriver, error) {
	rd := &redriver{dir: dir, path: redrivePath(dir, id), inflight: map[uint64]struct{}{},
		kick: make(chan struct{}, 1), freed: make(chan struct{}, 1)}
	b, err := os.ReadFile(rd.path)
	if errors.Is(err, os.ErrNotExist) {
		return rd, nil
	}
	if err != nil {
		return nil, fmt.Errorf("dispatch: read redrive state: %w", err)
	}
	if err := json.Unmarshal(b, &rd.st); err != nil {
		return nil, fmt.Errorf("%w %s: %w", ErrCorruptCursor, rd.path, err)
	}
	if rd.st.Version != 1 {
		return nil, fmt.Errorf("%w %s: version %d", ErrCorruptCursor, rd.path, rd.st.Version)
	}
	rd.st.Pending = rd.st.Pending.normalize()
	rd.st.Done = rd.st.Done.normalize()
	return rd, nil
}

// saveLocked writes the state durably. rd.mu must be held.
func (rd *redriver) saveLocked() error {
	rd.st.Version = 1
	b, err := json.Marshal(rd.st)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(rd.path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("dispatch: write redrive state: %w", err)
	}
	rd.dirty = false
	return nil
}

// flush writes the state if it changed since the last write.
func (rd *redriver) flush() error {
	rd.mu.Lock()
	defer rd.mu.Unlock()
	if !rd.dirty {
		return nil
	}
	return rd.saveLocked()
}

func (rd *redriver) remove() error { return removeFile(rd.dir, rd.path) }

func wake(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// nextLocked returns the lowest pending offset at or above from that is not
// in flight.
func (rd *redriver) nextLocked(from uint64) (uint64, bool) {
	for {
		off, ok := rd.st.Pending.next(from)
		if !ok {
			return 0, false
		}
		if _, busy := rd.inflight[off]; !busy {
			return off, true
		}
		from = off + 1
	}
}

// clear removes [lo, hi), which holds no dead letter, from pending.
func (rd *redriver) clear(lo, hi uint64) {
	if lo >= hi {
		return
	}
	rd.mu.Lock()
	defer rd.mu.Unlock()
	if n := rd.st.Pending.count(); n > 0 {
		rd.st.Pending = rd.st.Pending.remove(lo, hi)
		rd.dirty = rd.dirty || rd.st.Pending.count() != n
	}
}

// dropBelow removes pending offsets below first: retention removed those
// records before they were redriven.
func (rd *redriver) dropBelow(first uint64) uint64 {
	rd.mu.Lock()
	defer rd.mu.Unlock()
	var n uint64
	for _, s := range rd.st.Pending {
		if s.lo >= first {
			break
		}
		n += min(s.hi, first) - s.lo
	}
	if n > 0 {
		rd.st.Pending = rd.st.Pending.remove(0, first)
		rd.dirty = true
	}
	return n
}

// claim marks a pending dead letter in flight; false if it is not pending or
// already in flight.
func (rd *redriver) claim(off uint64) bool {
	rd.mu.Lock()
	defer rd.mu.Unlock()
	if _, busy := rd.inflight[off]; busy || !rd.st.Pending.contains(off) {
		return false
	}
	rd.inflight[off] = struct{}{}
	return true
}

// finish moves a redriven dead letter from pending to done.
func (rd *redriver) finish(off uint64) {
	rd.mu.Lock()
	delete(rd.inflight, off)
	rd.st.Pending = rd.st.Pending.remove(off, off+1)
	rd.st.Done = rd.st.Done.add(off, off+1)
	rd.dirty = true
	rd.mu.Unlock()
	wake(rd.freed)
}

// release forgets in-flight claims when the runner stops; the offsets stay
// pending and the next runner sends them.
func (rd *redriver) release() {
	rd.mu.Lock()
	clear(rd.inflight)
	rd.mu.Unlock()
}

// redriveStats fills the redrive fields of Stats.
func (rd *redriver) fill(s *Stats) {
	s.Redriven = rd.delivered.Load()
	s.RedriveDeadLettered = rd.deadLettered.Load()
	s.RedriveLost = rd.lost.Load()
	rd.mu.Lock()
	s.RedriveActive = len(rd.st.Pending) > 0
	rd.mu.Unlock()
}

// status says what a redrive did with the dead letter at off: "done",
// "queued" or "" (never asked for), for the DeadLetters listing.
func (rd *redriver) status(topic string, off uint64) string {
	rd.mu.Lock()
	defer rd.mu.Unlock()
	switch {
	case rd.st.Topic != topic:
		return ""
	case rd.st.Done.contains(off):
		return RedriveDone
	case rd.st.Pending.contains(off):
		return RedriveQueued
	}
	return ""
}

// DeadLetterEntry.Redrive values.
const (
	RedriveQueued = "queued"
	RedriveDone   = "done"
)

// redriveFinisher completes redriven dead letters in the redrive state.
type redriveFinisher struct{ r *runner }

func (f redriveFinisher) delivered(it item) {
	f.r.rd.delivered.Add(1)
	f.r.rd.finish(it.rec.Offset)
	f.r.noteCompletion()
}

func (f redriveFinisher) deadLettered(it item) {
	f.r.rd.deadLettered.Add(1)
	f.r.rd.finish(it.rec.Offset)
	f.r.noteCompletion()
}

// redriveItem turns a dead-letter record into the event to send again: the
// logged event without the dl* attributes, remembering its original offset.
func redriveItem(rec commitlog.Record) item {
	it := item{rec: rec, orig: rec.Offset}
	ev, err := decodeEvent(rec.Value)
	if err != nil {
		it.reject = "undecodable dead letter: " + err.Error()
		return it
	}
	if v, ok := ev.Extensions()[ExtDLOffset]; ok {
		if s, err := types.ToString(v); err == nil {
			if o, err := strconv.ParseUint(s, 10, 64); err == nil {
				it.orig = o
			}
		}
	}
	it.producer, it.producerSeq = dlOrigin(ev.Extensions())
	for name := range ev.Extensions() {
		if isDLAttribute(name) {
			ev.SetExtension(name, nil)
		}
	}
	it.ev = ev
	return it
}

// dlOrigin reads the original record's origin from a dead letter's
// attributes ("", 0 if it had none).
func dlOrigin(ext map[string]any) (producer string, seq uint64) {
	p, err := types.ToString(ext[ExtDLProducer])
	if err != nil || p == "" {
		return "", 0
	}
	s, err := types.ToString(ext[ExtDLProducerSeq])
	if err != nil {
		return p, 0
	}
	seq, _ = strconv.ParseUint(s, 10, 64)
	return p, seq
}

func isDLAttribute(name string) bool {
	switch name {
	case ExtDLSubscription, ExtDLOffset, ExtDLAttempts, ExtDLStatus, ExtDLReason, ExtDLTime, ExtDLProducer, ExtDLProducerSeq:
		return true
	}
	return false
}

// redriveLoop runs the subscription's redrives until ctx ends (nil) or the
// log fails (its error). Its lanes start on first use.
func (r *runner) redriveLoop(ctx context.Context, fail context.CancelCauseFunc) error {
	tr, ok := r.d.log.(commitlog.TopicReader)
	if !ok {
		return nil // Redrive refuses requests for such logs
	}
	rd, lg := r.rd, r.d.log
	defer rd.release()
	var wg sync.WaitGroup
	defer wg.Wait()
	var queues []*queue
	limit := r.d.opts.MaxPending
	batch := r.d.opts.ReadBatch
	scan := uint64(0)
	for ctx.Err() == nil {
		rd.mu.Lock()
		topic := rd.st.Topic
		off, ok := rd.nextLocked(scan)
		full := len(rd.inflight) >= limit
		rd.mu.Unlock()
		switch {
		case full:
			select {
			case <-rd.freed:
			case <-ctx.Done():
			}
			continue
		case !ok && scan > 0:
			scan = 0 // a new pass finds ranges added below
			continue
		case !ok:
			select {
			case <-rd.kick:
			case <-rd.freed:
			case <-ctx.Done():
			}
			continue
		}
		end, first := lg.NextOffset(), lg.FirstOffset()
		if off < first {
			if n := rd.dropBelow(first); n > 0 {
				rd.lost.Add(n)
				r.log.Warn("dead letters removed by retention before they were redriven", "offsets", n, "below", first)
			}
			continue
		}
		recs, err := tr.ReadTopic(topic, off, batch)
		switch {
		case errors.Is(err, commitlog.ErrOutOfRange):
			continue // retention moved: dropBelow next time round
		case err != nil:
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("read dead letters at %d: %w", off, err)
		}
		cur := off
		for _, rec := range recs {
			rd.clear(cur, rec.Offset)
			cur = rec.Offset + 1
			if !rd.claim(rec.Offset) {
				continue
			}
			if queues == nil {
				queues = r.startLanes(ctx, fail, &wg, false, redriveFinisher{r})
			}
			pushToLane(queues, redriveItem(rec))
		}
		if len(recs) < batch {
			// No dead letter in [cur, end): the index had every record
			// below end when ReadTopic ran.
			rd.clear(cur, end)
			cur = max(cur, end)
		}
		scan = cur
	}
	return nil
}

// Redrive queues dead letters of subscription id for delivery again (see
// the comment at the top of redrive.go) and returns once the request is
// durable; the sending happens in the background while Run runs, and Stats
// shows its progress. Errors: ErrNotFound, ErrInvalidRequest (a bad
// request, or offsets that are not dead letters of the subscription),
// ErrConflict (the dead-letter topic changed while a redrive of the old one
// is unfinished), ErrNoTopicIndex (the log cannot read by topic).
func (d *Dispatcher) Redrive(id string, req RedriveRequest) (RedriveResult, error) {
	if err := req.validate(); err != nil {
		return RedriveResult{}, err
	}
	tr, ok := d.log.(commitlog.TopicReader)
	if !ok {
		return RedriveResult{}, ErrNoTopicIndex
	}
	d.admin.Lock()
	defer d.admin.Unlock()
	d.mu.Lock()
	r, ok := d.subs[id]
	d.mu.Unlock()
	if !ok {
		return RedriveResult{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	rd, topic := r.rd, r.c.deadLetter
	rd.mu.Lock()
	if rd.st.Topic != topic {
		if len(rd.st.Pending) > 0 {
			rd.mu.Unlock()
			return RedriveResult{}, fmt.Errorf("%w: a redrive of the former dead-letter topic %q is unfinished", ErrConflict, rd.st.Topic)
		}
		rd.st = redriveState{Topic: topic}
	}
	rd.mu.Unlock()

	first, end := d.log.FirstOffset(), d.log.NextOffset()
	var sel intervals
	switch {
	case req.All:
		sel = sel.add(first, end)
	case len(req.Offsets) > 0:
		var bad []string
		for _, o := range req.Offsets {
			recs, err := tr.ReadTopic(topic, max(o, first), 1)
			if err != nil && !errors.Is(err, commitlog.ErrOutOfRange) {
				return RedriveResult{}, fmt.Errorf("dispatch: read dead letters: %w", err)
			}
			if o < first || len(recs) == 0 || recs[0].Offset != o {
				if len(bad) < 10 {
					bad = append(bad, strconv.FormatUint(o, 10))
				}
				continue
			}
			sel = sel.add(o, o+1)
		}
		if bad != nil {
			return RedriveResult{}, fmt.Errorf("%w: offset(s) %s are not dead letters of subscription %s (topic %s)", ErrInvalidRequest, strings.Join(bad, ", "), id, topic)
		}
	default:
		lo, hi := first, end
		if req.From != nil {
			lo = max(lo, *req.From)
		}
		if req.To != nil && *req.To < hi {
			hi = *req.To + 1
		}
		sel = sel.add(lo, hi)
	}

	// Count, and narrow each selected range to the span from its first to
	// its last newly queued dead letter: that is what becomes pending (the
	// other offsets inside it are cleared by the worker as it passes).
	var res RedriveResult
	var queue intervals
	for _, s := range sel {
		lo, hi := uint64(0), uint64(0)
		err := scanTopic(tr, topic, s.lo, s.hi, func(recs []commitlog.Record) {
			rd.mu.Lock()
			defer rd.mu.Unlock()
			for _, rec := range recs {
				switch {
				case rd.st.Done.contains(rec.Offset):
					res.AlreadyRedriven++
				case rd.st.Pending.contains(rec.Offset):
					res.AlreadyQueued++
				default:
					res.Queued++
					if hi == 0 {
						lo = rec.Offset
					}
					hi = rec.Offset + 1
				}
			}
		})
		if err != nil {
			return RedriveResult{}, fmt.Errorf("dispatch: read dead letters: %w", err)
		}
		queue = queue.add(lo, hi)
	}

	rd.mu.Lock()
	old := rd.st.Pending.clone()
	for _, s := range queue {
		for _, piece := range rd.st.Done.minus(s.lo, s.hi) {
			rd.st.Pending = rd.st.Pending.add(piece.lo, piece.hi)
		}
	}
	if err := rd.saveLocked(); err != nil {
		rd.st.Pending = old
		rd.mu.Unlock()
		return RedriveResult{}, err
	}
	rd.mu.Unlock()
	wake(rd.kick)
	d.opts.Logger.Info("redrive queued", "subscription", id, "queued", res.Queued, "already_queued", res.AlreadyQueued, "already_redriven", res.AlreadyRedriven)
	return res, nil
}

// scanTopic calls fn with the records of topic in [lo, hi), a page at a
// time. Records removed by retention meanwhile are skipped.
func scanTopic(tr commitlog.TopicReader, topic string, lo, hi uint64, fn func([]commitlog.Record)) error {
	const page = 1000
	for lo < hi {
		recs, err := tr.ReadTopic(topic, lo, page)
		if errors.Is(err, commitlog.ErrOutOfRange) {
			if l, ok := tr.(commitlog.Log); ok && l.FirstOffset() > lo {
				lo = l.FirstOffset()
				continue
			}
		}
		if err != nil {
			return err
		}
		n := len(recs)
		for n > 0 && recs[n-1].Offset >= hi {
			n--
		}
		if n > 0 {
			fn(recs[:n])
		}
		if n < len(recs) || len(recs) < page {
			return nil
		}
		lo = recs[len(recs)-1].Offset + 1
	}
	return nil
}
