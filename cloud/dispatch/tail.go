package dispatch

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/tributary-io/tributary/cloud/commitlog"
	"github.com/tributary-io/tributary/cloud/filter"
)

// TailOptions configure Tail. The zero value tails every event from offset
// 0 (or the oldest retained) with no heartbeat.
type TailOptions struct {
	// From is the first log offset to read. Below the oldest retained
	// record, Gap is called and reading starts there.
	From uint64
	// Matcher selects events. Nil passes every event.
	Matcher filter.Matcher
	// Batch is the most records read, and so held, at a time (with at most
	// about 1 MiB of values). Zero means 256.
	Batch int
	// Flush, if set, is called after each batch's events were emitted.
	Flush func() error
	// Gap, if set, is called when retention removed records [from, to)
	// before they were read.
	Gap func(from, to uint64) error
	// Idle, if set, is called after IdleEvery without a new record (for
	// heartbeats). IdleEvery zero means 15 s.
	Idle      func() error
	IdleEvery time.Duration
}

// Tail reads the log from opts.From and calls emit with each matching event
// and its offset, in log order, until ctx ends or Run stops (nil), or emit
// or a callback returns an error (that error), or the log fails (its
// error). It is a pull consumer beside the push subscriptions: no cursor,
// nothing stored, memory bounded by one batch. Records of internal topics
// ("$...") and records that do not decode as CloudEvents are skipped.
// After Run returned, Tail returns ErrStopped.
func (d *Dispatcher) Tail(ctx context.Context, opts TailOptions, emit func(offset uint64, e *event.Event) error) error {
	d.mu.Lock()
	stopped, done := d.stopped, d.done
	d.mu.Unlock()
	if stopped {
		return ErrStopped
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-done:
			cancel()
		case <-ctx.Done():
		}
	}()
	if opts.Batch <= 0 {
		opts.Batch = 256
	}
	if opts.IdleEvery <= 0 {
		opts.IdleEvery = 15 * time.Second
	}
	call := func(f func() error) error {
		if f == nil {
			return nil
		}
		return f()
	}
	lg := d.log
	next := opts.From
	for {
		recs, err := lg.Read(next, opts.Batch, 1<<20)
		switch {
		case errors.Is(err, commitlog.ErrOutOfRange):
			first := lg.FirstOffset()
			if first > next && opts.Gap != nil {
				if err := opts.Gap(next, first); err != nil {
					return err
				}
			}
			next = max(next, first)
			continue
		case err != nil:
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("dispatch: tail: read log at %d: %w", next, err)
		}
		if len(recs) == 0 {
			wctx, wcancel := context.WithTimeout(ctx, opts.IdleEvery)
			err := lg.Wait(wctx, next)
			wcancel()
			switch {
			case ctx.Err() != nil:
				return nil
			case errors.Is(err, context.DeadlineExceeded):
				if err := call(opts.Idle); err != nil {
					return err
				}
			case err != nil:
				return fmt.Errorf("dispatch: tail: wait at %d: %w", next, err)
			}
			continue
		}
		for _, rec := range recs {
			next = rec.Offset + 1
			if strings.HasPrefix(rec.Topic, "$") {
				continue
			}
			ev, err := decodeEvent(rec.Value)
			if err != nil || (opts.Matcher != nil && !opts.Matcher.Match(ev)) {
				continue
			}
			if err := emit(rec.Offset, ev); err != nil {
				return err
			}
		}
		if err := call(opts.Flush); err != nil {
			return err
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}
