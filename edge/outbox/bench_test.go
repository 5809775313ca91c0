package outbox

import (
	"context"
	"fmt"
	"sync"
	"testing"
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
			b.Run(name, func(b *testing.B) { benchAppend(b, appenders, window) })
		}
	}
}

func benchAppend(b *testing.B, appenders, window int) {
	o := openT(b, dbPath(b), Options{})
	payload := make([]byte, 200)
	for i := range payload {
		payload[i] = byte('a' + i%26)
	}
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
			m := Message{ClientID: fmt.Sprintf("bench-%d", a), Topic: "bench/t", Payload: payload, QoS: 1}
			if window == 1 {
				for range n {
					if _, err := o.AppendWait(context.Background(), m); err != nil {
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
					if err != nil {
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
	b.ReportMetric(st.RowsPerCommit(), "rows/commit")
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msg/s")
}
