package gateway

import (
	"context"
	"fmt"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/tributary-io/tributary/edge/outbox"
	"github.com/tributary-io/tributary/sync/wire"
)

// BenchmarkDrainRead compares, on one outbox of 20,000 telemetry records,
// the link's two ways of turning the outbox into batches: the generic path
// (Read, ToRecord, wire.EncodeBatch) and the fast path (ReadSync,
// AppendRecord, wire.EncodeEncodedBatch), both compressing as the link does.
// cpu-ns/rec is the process's CPU time per record read and encoded, which
// other work on a loaded machine disturbs less than the wall time.
func BenchmarkDrainRead(b *testing.B) {
	ob, err := outbox.Open(filepath.Join(b.TempDir(), "outbox.db"), outbox.Options{MaxBatchRows: 5000, QueueLimit: 20000})
	if err != nil {
		b.Fatal(err)
	}
	defer ob.Close()
	const n = 20000
	for i := range n {
		dev := fmt.Sprintf("d-%d", i%100)
		payload := fmt.Sprintf(`{"dev":%q,"n":%d,"temp":%d.%03d,"x":"%0150d"}`, dev, i, i%40, i%1000, i)
		ob.Append(outbox.Message{ClientID: dev, Topic: "devices/" + dev + "/telemetry", Payload: []byte(payload), QoS: 1, Received: time.Unix(1700000000, int64(i))}, nil)
	}
	if _, err := ob.AppendWait(context.Background(), outbox.Message{ClientID: "d", Topic: "t", Payload: []byte("{}")}); err != nil {
		b.Fatal(err)
	}
	src := &source{ob: ob, gw: "gw-bench"}
	for _, path := range []string{"generic", "fast"} {
		b.Run(path, func(b *testing.B) {
			recs := 0
			cpu := processCPU()
			for b.Loop() {
				var after uint64
				for {
					var last uint64
					var k int
					if path == "generic" {
						rs, err := src.Read(after, 4096, 1<<20)
						if err != nil {
							b.Fatal(err)
						}
						if len(rs) == 0 {
							break
						}
						if _, _, err := wire.EncodeBatch(rs, 4<<10); err != nil {
							b.Fatal(err)
						}
						k, last = len(rs), rs[len(rs)-1].GetSeq()
					} else {
						rs, err := src.ReadEncoded(-1, after, 4096, 1<<20)
						if err != nil {
							b.Fatal(err)
						}
						if len(rs) == 0 {
							break
						}
						if _, _, err := wire.EncodeEncodedBatch(rs, 4<<10); err != nil {
							b.Fatal(err)
						}
						k, last = len(rs), rs[len(rs)-1].Seq
					}
					recs += k
					after = last
				}
			}
			b.ReportMetric(float64(processCPU()-cpu)/float64(recs), "cpu-ns/rec")
		})
	}
}

// processCPU is the user and system CPU time of the process, in ns.
func processCPU() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
