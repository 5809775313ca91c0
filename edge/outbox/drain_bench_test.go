package outbox

import (
	"sync"
	"syscall"
	"testing"
	"time"
)

// BenchmarkDrain measures the outbox's side of a drain to the cloud: b.N
// committed records (200-byte payloads) are read in batches of 1000 and
// acknowledged batch by batch, as the sync link does. cpu-ns/msg is the
// process CPU time (user and system, all goroutines: the readers, the
// writer's deletes, vacuum and checkpoints) per drained record, which is
// less disturbed by other load on the machine than wall time.
func BenchmarkDrain(b *testing.B) {
	o := openT(b, dbPath(b), Options{MaxBatchRows: 10000, QueueLimit: 20000})
	payload := make([]byte, 200)
	for i := range payload {
		payload[i] = byte('a' + i%26)
	}
	var wg sync.WaitGroup
	wg.Add(b.N)
	for i := range b.N {
		o.Append(benchMessage(i%100, payload), func(_ uint64, err error) {
			if err != nil {
				b.Error(err)
			}
			wg.Done()
		})
	}
	wg.Wait()
	b.ResetTimer()
	cpu0 := processCPU(b)
	var after uint64
	var readCPU, ackCPU time.Duration
	drained := 0
	for drained < b.N {
		c0 := processCPU(b)
		recs, err := o.Read(after, 1000, 0)
		c1 := processCPU(b)
		readCPU += c1 - c0
		if err != nil {
			b.Fatal(err)
		}
		if len(recs) == 0 {
			b.Fatalf("read after %d: nothing, %d of %d drained", after, drained, b.N)
		}
		after = recs[len(recs)-1].Seq
		drained += len(recs)
		if err := o.Ack(after); err != nil {
			b.Fatal(err)
		}
		ackCPU += processCPU(b) - c1
	}
	cpu := processCPU(b) - cpu0
	b.StopTimer()
	if st := o.Stats(); st.Records != 0 || st.Bytes != 0 {
		b.Fatalf("after the drain: %d records, %d bytes held", st.Records, st.Bytes)
	}
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/msg")
	b.ReportMetric(float64(readCPU.Nanoseconds())/float64(b.N), "read-cpu-ns/msg")
	b.ReportMetric(float64(ackCPU.Nanoseconds())/float64(b.N), "ack-cpu-ns/msg")
}

func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
