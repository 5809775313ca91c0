package outbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// CommitLatencyBounds are the upper bounds, in seconds, of the buckets of
// CommitLatency: from an fsync on fast flash to a commit stuck behind a slow
// SD card.
var CommitLatencyBounds = []float64{0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5}

// CommitLatency is a histogram of how long successful group commits took:
// from BEGIN through the inserts to the end of COMMIT, including its fsync
// with Options.Synchronous full, not the time messages waited in the queue.
type CommitLatency struct {
	// Counts[i] is the number of commits that took at most
	// CommitLatencyBounds[i] and more than the bound before it; the last
	// element counts those above every bound. len(Counts) is
	// len(CommitLatencyBounds)+1.
	Counts []uint64
	// Count and Sum are the number of commits and their total duration.
	Count uint64
	Sum   time.Duration
}

// commitTimer accumulates CommitLatency. The writer goroutine observes;
// any goroutine may read.
type commitTimer struct {
	counts [14]atomic.Uint64 // len(CommitLatencyBounds)+1
	sum    atomic.Int64      // nanoseconds
}

func (c *commitTimer) observe(d time.Duration) {
	s := d.Seconds()
	i := 0
	for i < len(CommitLatencyBounds) && s > CommitLatencyBounds[i] {
		i++
	}
	c.counts[i].Add(1)
	c.sum.Add(int64(d))
}

// CommitLatency returns the commit duration histogram since Open.
func (o *Outbox) CommitLatency() CommitLatency {
	l := CommitLatency{Counts: make([]uint64, len(o.commitTime.counts)), Sum: time.Duration(o.commitTime.sum.Load())}
	for i := range l.Counts {
		l.Counts[i] = o.commitTime.counts[i].Load()
		l.Count += l.Counts[i]
	}
	return l
}

// OldestReceived returns Message.Received of the oldest record the outbox
// holds (the lowest seq, which the cloud has not acknowledged), and false
// when the outbox is empty or that record has no receive time. It is one
// primary-key lookup on a reader connection; it does not wait for the
// writer. A gateway subtracts it from now for the backlog age.
func (o *Outbox) OldestReceived(ctx context.Context) (time.Time, bool, error) {
	var ns int64
	err := o.rdb.QueryRowContext(ctx, `SELECT received FROM records ORDER BY seq LIMIT 1`).Scan(&ns)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return time.Time{}, false, nil
	case err != nil:
		return time.Time{}, false, fmt.Errorf("outbox: oldest record: %w", err)
	case ns == 0:
		return time.Time{}, false, nil
	}
	return fromUnixNano(ns), true, nil
}
