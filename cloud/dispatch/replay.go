package dispatch

import (
	"fmt"
	"time"

	"github.com/tributary-io/tributary/cloud/commitlog"
)

// ReplayRequest says where a subscription's cursor moves. Exactly one field
// is set.
type ReplayRequest struct {
	// FromOffset is a log offset. Below the oldest retained record it means
	// that record; above the log's end it is an error.
	FromOffset *uint64 `json:"from_offset,omitempty"`
	// FromTime selects the first record the log accepted at or after this
	// time (the end of the log if there is none).
	FromTime *time.Time `json:"from_time,omitempty"`
}

// Replay moves subscription id's cursor to the requested position and
// resumes delivery there; it returns the offset delivery restarts from.
// Back re-delivers (same event ids), forward skips. The subscription's
// runner is stopped (events in flight are abandoned: they are behind or at
// the new cursor, or skipped on purpose), the cursor file is rewritten
// durably before Replay returns, and a new runner starts from it.
//
// The replay also starts a new cursor epoch, so the dead letters of
// replayed events get fresh producer names: an event dead-lettered before
// is dead-lettered again if it fails again, instead of being dropped by the
// log's duplicate check. Redrive state is kept.
//
// Errors: ErrNotFound, ErrInvalidRequest, ErrNoTopicIndex (FromTime on a
// log without a time index), ErrStopped.
func (d *Dispatcher) Replay(id string, req ReplayRequest) (uint64, error) {
	if (req.FromOffset == nil) == (req.FromTime == nil) {
		return 0, fmt.Errorf("%w: give exactly one of from_offset and from_time", ErrInvalidRequest)
	}
	off, err := d.resolvePosition(req)
	if err != nil {
		return 0, err
	}

	d.admin.Lock()
	defer d.admin.Unlock()
	d.mu.Lock()
	old, ok := d.subs[id]
	stopped := d.stopped
	d.mu.Unlock()
	switch {
	case stopped:
		return 0, ErrStopped
	case !ok:
		return 0, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	old.stop()
	off = max(off, d.log.FirstOffset())
	if err := old.cur.store(cursorState{Offset: off, Epoch: newEpoch()}); err != nil {
		d.restart(id, old, nil)
		return 0, err
	}
	if err := d.restart(id, old, old.c); err != nil {
		return 0, err
	}
	d.opts.Logger.Info("subscription replayed", "subscription", id, "offset", off)
	return off, nil
}

// resolvePosition turns a replay request into a log offset.
func (d *Dispatcher) resolvePosition(req ReplayRequest) (uint64, error) {
	if req.FromOffset != nil {
		if end := d.log.NextOffset(); *req.FromOffset > end {
			return 0, fmt.Errorf("%w: from_offset %d is beyond the end of the log (%d)", ErrInvalidRequest, *req.FromOffset, end)
		}
		return *req.FromOffset, nil
	}
	tr, ok := d.log.(commitlog.TopicReader)
	if !ok {
		return 0, ErrNoTopicIndex
	}
	off, err := tr.OffsetForTime(*req.FromTime)
	if err != nil {
		return 0, fmt.Errorf("dispatch: find offset for %s: %w", req.FromTime.Format(time.RFC3339Nano), err)
	}
	return off, nil
}

// restart replaces the stopped runner old of subscription id with a new one
// for c (old's configuration if c is nil), which loads the cursor from disk,
// keeps the counters and the redrive state, and starts if Run runs.
// d.admin must be held.
func (d *Dispatcher) restart(id string, old *runner, c *compiled) error {
	if c == nil {
		c = old.c
	}
	r, err := newRunner(d, c, old.rd)
	if err != nil {
		return err
	}
	r.stats.carry(&old.stats)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.subs[id] != old {
		return fmt.Errorf("%w: %s changed during the replay", ErrNotFound, id)
	}
	d.subs[id] = r
	if d.runCtx != nil {
		r.start(d.runCtx)
	}
	return nil
}
