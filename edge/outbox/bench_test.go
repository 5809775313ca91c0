package outbox

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// BenchmarkAppend measures committed messages per second (200-byte payloads,
// synchronous=FULL) with 1 and 50 concurrent appenders, each either waiting
// for every commit (AppendWait, like a blocking OnPublish) or keeping a
// window of 100 messages in flight (Append with callbacks, like the async
// PUBACK path). rows/commit shows how well commits group.
func BenchmarkAppend(b *testing.B) {
	for _, appenders := range []int{1, 50} {
		for _, window := range []int{1, 100} {
			name := fmt.Sprintf("appenders=%d/inflight=%d", appenders, window)
			b.Run(name, func(b *testing.B) { benchAppend(b, appenders, window, Options{}, 0) })
		}
	}
}

// BenchmarkAppendPolicy measures what the quota and TTL bookkeeping costs
// group commit, with 50 appenders keeping 100 messages each in flight:
//
//	off:          no quota, no TTL (the baseline)
//	quota:        a quota that is never reached (the per-message check)
//	ttl:          a TTL nothing reaches (scheduling expiry at each commit)
//	drop-oldest:  a full outbox where every message drops the oldest record
//	              (a DELETE and an index lookup per group, in the commit)
//	reject-new:   a full outbox refusing every message (no insert at all)
//	reserve-off:  as off, without the free-space reserve (off measures it
//	              on a disk far from full: a statfs every 64 groups or 1 s)
func BenchmarkAppendPolicy(b *testing.B) {
	const prefill = 20000
	size := benchMessage(0, nil).StoredSize() + 200
	for _, tc := range []struct {
		name    string
		opts    Options
		prefill int
	}{
		{"off", Options{}, 0},
		{"reserve-off", Options{MinFreeBytes: -1}, 0},
		{"quota", Options{QuotaBytes: 1 << 40}, 0},
		{"ttl", Options{TTL: time.Hour}, 0},
		{"drop-oldest", Options{QuotaBytes: prefill * size, Overflow: DropOldest}, prefill},
		{"reject-new", Options{QuotaBytes: prefill * size}, prefill},
	} {
		b.Run(tc.name, func(b *testing.B) { benchAppend(b, 50, 100, tc.opts, tc.prefill) })
	}
}

func benchMessage(a int, payload []byte) Message {
	return Message{ClientID: fmt.Sprintf("bench-%02d", a), Topic: "bench/t", Payload: payload, QoS: 1, Received: time.Now()}
}

// benchAppend appends b.N messages from `appenders` goroutines, each keeping
// `window` in flight (1: AppendWait). prefill messages are committed before
// the timer starts. Refusals by the quota count as done, not as errors.
func benchAppend(b *testing.B, appenders, window int, opts Options, prefill int) {
	o := openT(b, dbPath(b), opts)
	payload := make([]byte, 200)
	for i := range payload {
		payload[i] = byte('a' + i%26)
	}
	if prefill > 0 {
		var wg sync.WaitGroup
		wg.Add(prefill)
		for range prefill {
			o.Append(benchMessage(0, payload), func(_ uint64, err error) {
				if err != nil {
					b.Error(err)
				}
				wg.Done()
			})
		}
		wg.Wait()
	}
	before := o.Stats()
	b.SetBytes(int64(len(payload)))
	b.ResetTimer()
	var wg sync.WaitGroup
	for a := range appenders {
		n := b.N / appenders
		if a < b.N%appenders {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := benchMessage(a, payload)
			if window == 1 {
				for range n {
					if _, err := o.AppendWait(context.Background(), m); err != nil && !errors.Is(err, ErrQuotaExceeded) {
						b.Error(err)
						return
					}
				}
				return
			}
			slots := make(chan struct{}, window)
			var inflight sync.WaitGroup
			inflight.Add(n)
			for range n {
				slots <- struct{}{}
				o.Append(m, func(_ uint64, err error) {
					if err != nil && !errors.Is(err, ErrQuotaExceeded) {
						b.Error(err)
					}
					<-slots
					inflight.Done()
				})
			}
			inflight.Wait()
		}()
	}
	wg.Wait()
	b.StopTimer()
	st := o.Stats()
	b.ReportMetric(float64(st.CommittedRows-before.CommittedRows)/float64(max(1, st.CommittedGroups-before.CommittedGroups)), "rows/commit")
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msg/s")
	if d := st.DroppedOldest - before.DroppedOldest; d > 0 {
		b.ReportMetric(float64(d)/float64(b.N), "drops/msg")
	}
	if r := st.Rejected - before.Rejected; r > 0 {
		b.ReportMetric(float64(r)/float64(b.N), "refused/msg")
	}
	if r := st.WALRestarts - before.WALRestarts; r > 0 {
		b.ReportMetric(float64(r)/float64(b.N)*1e6, "wal-restarts/Mmsg")
		b.ReportMetric((st.WALRestartTime-before.WALRestartTime).Seconds()*1e3/float64(r), "ms/wal-restart")
	}
}
