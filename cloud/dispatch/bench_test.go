package dispatch

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"
	"time"

	"github.com/tributary-io/tributary/cloud/commitlog"
)

// BenchmarkDeliver measures events per second from an in-memory log to a
// plain net/http sink on loopback (which reads and drops each body, so the
// figures are the dispatcher's and net/http's), per content mode and
// parallelism setting. cpu-µs/event is the process's user+system CPU (the
// sink's included) per event.
func BenchmarkDeliver(b *testing.B) {
	for _, mode := range []string{ModeBinary, ModeBatch} {
		for _, p := range []int{1, 4, 16} {
			b.Run(fmt.Sprintf("mode=%s/lanes=%d", mode, p), func(b *testing.B) {
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					_, _ = io.Copy(io.Discard, r.Body)
					w.WriteHeader(http.StatusAccepted)
				}))
				defer srv.Close()
				lg := commitlog.NewMemory(nil)
				fillLog(b, lg, b.N, 64)
				d := mustNew(b, lg, b.TempDir(), Options{})
				if err := d.Add(Subscription{ID: "bench", Sink: srv.URL, Parallelism: p, ProtocolSettings: HTTPSettings{Mode: mode}}); err != nil {
					b.Fatal(err)
				}
				cpu0 := processCPU()
				b.ResetTimer()
				stop := started(b, d)
				waitFor(b, "all delivered", func() bool { st, _ := d.Stats("bench"); return st.LowWater == uint64(b.N) })
				b.StopTimer()
				cpu := processCPU() - cpu0
				if err := stop(); err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
				b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/event")
			})
		}
	}
}

// processCPU is the user and system CPU time this process used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
