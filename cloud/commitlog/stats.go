package commitlog

import (
	"sync/atomic"
	"time"
)

// Stats are a FileLog's counters since Open, shaped for Prometheus:
// counters only grow, gauges are the current value, and FsyncSeconds is a
// histogram with cumulative buckets (prometheus.MustNewConstHistogram takes
// Count, Sum and the buckets as they are).
type Stats struct {
	// Appended counts records written; Duplicates records dropped because
	// their ProducerSeq was at or below the producer's high-water mark;
	// Bytes the framed bytes written for the appended records. Counters.
	Appended, Duplicates, Bytes uint64
	// Appends counts Append and AppendAsync calls completed, successfully
	// or not; Failures those that returned an error. Counters.
	Appends, Failures uint64
	// Groups counts group commits that wrote records: one write and one
	// fsync for the appends the writer found queued together.
	// Appended/Groups is the mean group size. Counter.
	Groups uint64
	// GroupRecords is the distribution of records per group commit (bounds
	// 1, 2, 4 … 16384, in records rather than seconds).
	GroupRecords Histogram
	// The time of an append splits into QueueSeconds, from the Append or
	// AppendAsync call to the writer taking it into a group (waiting for
	// the group before it to be written and fsync'd); then the group's
	// WriteSeconds (the write system call) and FsyncSeconds (the segment
	// fsync that makes the group durable). QueueSeconds has one
	// observation per append, the others one per group.
	QueueSeconds, WriteSeconds, FsyncSeconds Histogram
	// Rolls counts segments started after Open; PreallocatedRolls those
	// that started in a zero-filled spare (see Options.NoPreallocate).
	// Counters.
	Rolls, PreallocatedRolls uint64
	// RetentionSegments, RetentionRecords and RetentionBytes count what
	// retention deleted. Counters.
	RetentionSegments, RetentionRecords, RetentionBytes uint64
	// Segments, SizeBytes, FirstOffset and NextOffset describe the retained
	// log now. Gauges.
	Segments                int
	SizeBytes               int64
	FirstOffset, NextOffset uint64
	// Failed is true once a write or fsync failed (see ErrFailed).
	Failed bool
}

// Histogram is a histogram, Prometheus style: of latencies in seconds, or
// of counts (GroupRecords).
type Histogram struct {
	Count uint64
	Sum   float64 // seconds (or records)
	// Buckets are ascending; each counts the observations at or below its
	// UpperBound (cumulative, as Prometheus "le" buckets). Observations
	// above the last bound are counted only in Count.
	Buckets []Bucket
}

// Bucket is one cumulative histogram bucket.
type Bucket struct {
	UpperBound      float64 // seconds (or records)
	CumulativeCount uint64
}

// Quantile estimates the q-quantile (0 < q ≤ 1) by linear interpolation
// inside the bucket that holds it, as Prometheus' histogram_quantile does.
// It returns -1 for an empty histogram, and the last bound if the quantile
// lies above it.
func (h Histogram) Quantile(q float64) float64 {
	if h.Count == 0 || len(h.Buckets) == 0 {
		return -1
	}
	rank := q * float64(h.Count)
	lower, below := 0.0, uint64(0)
	for _, b := range h.Buckets {
		if float64(b.CumulativeCount) >= rank {
			in := b.CumulativeCount - below
			if in == 0 {
				return b.UpperBound
			}
			return lower + (b.UpperBound-lower)*(rank-float64(below))/float64(in)
		}
		lower, below = b.UpperBound, b.CumulativeCount
	}
	return h.Buckets[len(h.Buckets)-1].UpperBound
}

// fsyncBounds are the bucket bounds of the latency histograms: from the
// 50 µs of a fast NVMe flush to the seconds of a stalled network disk.
var fsyncBounds = [...]float64{
	50e-6, 100e-6, 200e-6, 300e-6, 500e-6, 750e-6,
	1e-3, 2e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1, 2.5,
}

// histogram is a lock-free Histogram being filled.
type histogram struct {
	counts [len(fsyncBounds) + 1]atomic.Uint64 // per bucket, non-cumulative; the last is above every bound
	sumNs  atomic.Int64
}

func (h *histogram) observe(d time.Duration) {
	s := d.Seconds()
	i := 0
	for i < len(fsyncBounds) && s > fsyncBounds[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sumNs.Add(int64(d))
}

func (h *histogram) snapshot() Histogram {
	out := Histogram{Buckets: make([]Bucket, len(fsyncBounds)), Sum: time.Duration(h.sumNs.Load()).Seconds()}
	var cum uint64
	for i, b := range fsyncBounds {
		cum += h.counts[i].Load()
		out.Buckets[i] = Bucket{UpperBound: b, CumulativeCount: cum}
	}
	out.Count = cum + h.counts[len(fsyncBounds)].Load()
	return out
}

// groupBounds are the GroupRecords bucket bounds.
var groupBounds = [...]float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384}

// countHistogram is a lock-free histogram of counts being filled.
type countHistogram struct {
	counts [len(groupBounds) + 1]atomic.Uint64
	sum    atomic.Uint64
}

func (h *countHistogram) observe(n int) {
	i := 0
	for i < len(groupBounds) && float64(n) > groupBounds[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sum.Add(uint64(n))
}

func (h *countHistogram) snapshot() Histogram {
	out := Histogram{Buckets: make([]Bucket, len(groupBounds)), Sum: float64(h.sum.Load())}
	var cum uint64
	for i, b := range groupBounds {
		cum += h.counts[i].Load()
		out.Buckets[i] = Bucket{UpperBound: b, CumulativeCount: cum}
	}
	out.Count = cum + h.counts[len(groupBounds)].Load()
	return out
}

// counters are the FileLog's Stats counters, updated without FileLog.mu.
type counters struct {
	appended, duplicates, bytes       atomic.Uint64
	appends, failures, groups         atomic.Uint64
	rolls, preallocRolls              atomic.Uint64
	retSegments, retRecords, retBytes atomic.Uint64
	queue, write, fsync               histogram
	groupRecords                      countHistogram
	failed                            atomic.Bool
}

// Stats returns the log's counters. It is cheap enough to call on every
// metrics scrape.
func (l *FileLog) Stats() Stats {
	c := &l.stats
	st := Stats{
		Appended:          c.appended.Load(),
		Duplicates:        c.duplicates.Load(),
		Bytes:             c.bytes.Load(),
		Appends:           c.appends.Load(),
		Failures:          c.failures.Load(),
		Groups:            c.groups.Load(),
		Rolls:             c.rolls.Load(),
		PreallocatedRolls: c.preallocRolls.Load(),
		GroupRecords:      c.groupRecords.snapshot(),
		QueueSeconds:      c.queue.snapshot(),
		WriteSeconds:      c.write.snapshot(),
		FsyncSeconds:      c.fsync.snapshot(),
		RetentionSegments: c.retSegments.Load(),
		RetentionRecords:  c.retRecords.Load(),
		RetentionBytes:    c.retBytes.Load(),
		Failed:            c.failed.Load(),
	}
	l.mu.RLock()
	st.Segments = len(l.segments)
	st.SizeBytes = l.bytes
	st.FirstOffset = l.segments[0].base
	st.NextOffset = l.next
	l.mu.RUnlock()
	return st
}
