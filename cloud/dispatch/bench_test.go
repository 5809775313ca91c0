package dispatch

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/tributary-io/tributary/cloud/commitlog"
)

// BenchmarkDeliver measures events per second from an in-memory log to a
// plain net/http sink on loopback, per parallelism setting.
func BenchmarkDeliver(b *testing.B) {
	for _, p := range []int{1, 4, 16} {
		b.Run(fmt.Sprintf("lanes=%d", p), func(b *testing.B) {
			var got atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				got.Add(1)
				w.WriteHeader(http.StatusAccepted)
			}))
			defer srv.Close()
			lg := commitlog.NewMemory(nil)
			fillLog(b, lg, b.N, 64)
			d := mustNew(b, lg, b.TempDir(), Options{})
			if err := d.Add(Subscription{ID: "bench", Sink: srv.URL, Parallelism: p}); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			stop := started(b, d)
			waitFor(b, "all delivered", func() bool { st, _ := d.Stats("bench"); return st.LowWater == uint64(b.N) })
			b.StopTimer()
			if err := stop(); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}
