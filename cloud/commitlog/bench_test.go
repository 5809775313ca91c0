package commitlog

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"
)

// Benchmarks run on the real file system with real fsyncs. Compare ratios
// between runs on one machine, not absolute figures.

var benchValue = make([]byte, 200)

// BenchmarkAppend: blocking Appends of one 200-byte record from many
// goroutines at once; group commit is what makes this scale.
func BenchmarkAppend(b *testing.B) {
	for _, g := range []int{1, 16, 128} {
		b.Run(fmt.Sprint("goroutines=", g), func(b *testing.B) {
			l := openFile(b, b.TempDir(), Options{})
			var n atomic.Uint64
			b.SetParallelism(max(1, g/runtime.GOMAXPROCS(0)))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				p := fmt.Sprint("p", n.Add(1))
				seq := uint64(0)
				for pb.Next() {
					seq++
					if _, err := l.Append(context.Background(), []Record{{Topic: "t", Producer: p, ProducerSeq: seq, Value: benchValue}}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
		})
	}
}

// BenchmarkAppendAsync: one producer pipelining single-record appends with
// a window in flight, as the sync server does for one gateway.
func BenchmarkAppendAsync(b *testing.B) {
	for _, window := range []int{1, 64, 512} {
		b.Run(fmt.Sprint("window=", window), func(b *testing.B) {
			l := openFile(b, b.TempDir(), Options{})
			sem := make(chan struct{}, window)
			var wg sync.WaitGroup
			b.ResetTimer()
			for i := range b.N {
				sem <- struct{}{}
				wg.Add(1)
				l.AppendAsync([]Record{{Topic: "t", Producer: "p", ProducerSeq: uint64(i + 1), Value: benchValue}}, func(_ AppendResult, err error) {
					if err != nil {
						b.Error(err)
					}
					<-sem
					wg.Done()
				})
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
		})
	}
}

// BenchmarkAppendLatency reports the latency distribution of blocking
// Appends with 16 concurrent appenders.
func BenchmarkAppendLatency(b *testing.B) {
	l := openFile(b, b.TempDir(), Options{})
	const g = 16
	lat := make([][]time.Duration, g)
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	for w := range g {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				start := time.Now()
				if _, err := l.Append(context.Background(), []Record{{Topic: "t", Value: benchValue}}); err != nil {
					b.Error(err)
					return
				}
				lat[w] = append(lat[w], time.Since(start))
			}
		}()
	}
	wg.Wait()
	all := slices.Concat(lat...)
	slices.Sort(all)
	if len(all) > 0 {
		q := func(p float64) float64 { return float64(all[int(p*float64(len(all)-1))].Microseconds()) }
		b.ReportMetric(q(0.5), "p50-µs")
		b.ReportMetric(q(0.99), "p99-µs")
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
	}
}

// BenchmarkRead reads the log sequentially, 1,000 records per call.
func BenchmarkRead(b *testing.B) {
	l := openFile(b, b.TempDir(), Options{})
	fillBench(b, l, 100_000, 1)
	b.ResetTimer()
	from := uint64(0)
	for range b.N {
		recs, err := l.Read(from, 1000, 1<<20)
		if err != nil || len(recs) == 0 {
			b.Fatal(err)
		}
		from = recs[len(recs)-1].Offset + 1
		if from >= l.NextOffset() {
			from = 0
		}
	}
	b.ReportMetric(float64(b.N*1000)/b.Elapsed().Seconds(), "records/s")
}

// BenchmarkTopics appends over 1 and 10,000 topics and reads one topic:
// ten thousand topics should cost what one does. It reports the topic
// index's memory per record.
func BenchmarkTopics(b *testing.B) {
	for _, topics := range []int{1, 10_000} {
		b.Run(fmt.Sprint("topics=", topics), func(b *testing.B) {
			l := openFile(b, b.TempDir(), Options{})
			fillBench(b, l, 200_000, topics)
			rng := rand.New(rand.NewPCG(1, 2))
			b.ResetTimer()
			n := 0
			for range b.N {
				topic := fmt.Sprint("topic-", rng.IntN(topics))
				recs, err := l.ReadTopic(topic, 0, 20)
				if err != nil || len(recs) == 0 {
					b.Fatal(err)
				}
				n += len(recs)
			}
			b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "records/s")
			b.ReportMetric(float64(topicIndexBytes(l))/float64(l.NextOffset()), "index-B/record")
		})
	}
}

func fillBench(b *testing.B, l *FileLog, n, topics int) {
	b.Helper()
	batch := make([]Record, 0, 1000)
	for i := range n {
		batch = append(batch, Record{Topic: fmt.Sprint("topic-", i%topics), Value: benchValue})
		if len(batch) == cap(batch) {
			mustAppend(b, l, batch...)
			batch = batch[:0]
		}
	}
	mustAppend(b, l, batch...)
}

// topicIndexBytes estimates the topic index's heap size: map entries,
// names, block slices and their delta bytes.
func topicIndexBytes(l *FileLog) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	const mapEntry = 16 + 8 + 8 // key header, value pointer, bucket overhead (about)
	n := 0
	for name, t := range l.topics {
		n += mapEntry + len(name) + int(unsafe.Sizeof(*t)) + cap(t.blocks)*int(unsafe.Sizeof(offsetBlock{}))
		for _, blk := range t.blocks {
			n += cap(blk.deltas)
		}
	}
	return n
}

// BenchmarkOpen opens a log of 256 MiB in 16 MiB segments: loading the
// closed segments' snapshots against scanning (and checksumming) them all.
// The files are in the page cache, so the scan's cost here is CPU; on a
// cold disk it is the whole log read as well.
func BenchmarkOpen(b *testing.B) {
	dir := b.TempDir()
	opts := Options{SegmentBytes: 16 << 20, NoPreallocate: true}
	l, err := Open(dir, opts)
	if err != nil {
		b.Fatal(err)
	}
	batch := make([]Record, 1000)
	for n := 0; l.Size() < 256<<20; n++ {
		for i := range batch {
			batch[i] = Record{Topic: fmt.Sprint("topic-", (n*1000+i)%1000), Producer: "gw", ProducerSeq: uint64(n*1000 + i + 1), Value: benchValue}
		}
		mustAppend(b, l, batch...)
	}
	l.Close()
	for _, verify := range []bool{false, true} {
		b.Run(fmt.Sprint("verify=", verify), func(b *testing.B) {
			o := opts
			o.VerifyOnOpen = verify
			for range b.N {
				l, err := Open(dir, o)
				if err != nil {
					b.Fatal(err)
				}
				l.Close()
			}
		})
	}
}
