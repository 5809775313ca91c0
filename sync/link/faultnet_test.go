package link

import (
	"sync"
	"testing"
	"time"

	"github.com/tributary-io/tributary/sync/faultnet"
)

func startRelay(t *testing.T, target string, cfg faultnet.Config) *faultnet.Relay {
	t.Helper()
	cfg.Target = target
	r, err := faultnet.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// TestImpairedLink runs the link through loss, duplication, reordering and
// jitter in both directions: QUIC repairs the stream, and the log must
// still hold every record exactly once, in order.
func TestImpairedLink(t *testing.T) {
	p := newPKI(t)
	sink := newLogSink()
	srv := startServer(t, serverConfig(t, p), sink, nil)
	imp := faultnet.Impairment{Loss: 0.03, Duplicate: 0.02, Reorder: 0.05, ReorderDelay: 3 * time.Millisecond, Delay: time.Millisecond, Jitter: time.Millisecond}
	relay := startRelay(t, srv.Addr().String(), faultnet.Config{Up: imp, Down: imp, Seed: 11})
	src := newSource(t)
	src.add(3000)
	cfg := clientConfig(t, p, relay.Addr().String(), "gw-1")
	cfg.CompressAbove = -1 // many datagrams, so the impairments bite
	c := startClient(t, cfg, src)
	eventually(t, "all acknowledged", func() bool { _, a := src.state(); return a == 3000 })
	checkLog(t, sink.log, "gw-1", 3000)
	st := relay.Stats()
	if st.Dropped == 0 || st.Duplicated == 0 {
		t.Fatalf("relay did not impair: %+v", st)
	}
	t.Logf("relay %+v, client %+v", st, c.Stats())
}

type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// TestBlackholeReconnect cuts the uplink while records flow: the client
// notices through the idle timeout, keeps retrying, and once the path is
// back its new connection supersedes the server's stale session and the
// backlog arrives exactly once.
func TestBlackholeReconnect(t *testing.T) {
	p := newPKI(t)
	sink := newLogSink()
	srv := startServer(t, serverConfig(t, p), sink, nil)
	clock := &testClock{now: time.Unix(1000, 0)}
	relay := startRelay(t, srv.Addr().String(), faultnet.Config{Now: clock.Now, Seed: 5})
	src := newSource(t)
	src.add(2000)
	cfg := clientConfig(t, p, relay.Addr().String(), "gw-1")
	cfg.MaxIdleTimeout = time.Second
	cfg.KeepAlivePeriod = 200 * time.Millisecond
	cfg.DialTimeout = time.Second
	c := startClient(t, cfg, src)
	eventually(t, "first records acknowledged", func() bool { _, a := src.state(); return a > 0 })

	relay.Blackhole(time.Hour) // until the test advances the clock
	src.add(2000)
	eventually(t, "client noticed the outage", func() bool { return c.Stats().Reconnects >= 2 })
	if st := c.Stats(); st.State == Connected {
		t.Fatalf("client connected through a blackhole: %+v", st)
	}
	clock.Advance(time.Hour)
	eventually(t, "backlog acknowledged", func() bool { _, a := src.state(); return a == 4000 })
	checkLog(t, sink.log, "gw-1", 4000)
	if relay.Stats().Blackholed == 0 {
		t.Fatal("relay swallowed nothing")
	}
	if st := c.Stats(); st.Sessions < 2 {
		t.Fatalf("client stats %+v", st)
	}
}

// TestBandwidthCap: a capped client still delivers everything exactly
// once, and its batches did wait for the cap.
func TestBandwidthCap(t *testing.T) {
	p := newPKI(t)
	sink := newLogSink()
	srv := startServer(t, serverConfig(t, p), sink, nil)
	src := newSource(t)
	src.add(1000)
	cfg := clientConfig(t, p, srv.Addr().String(), "gw-1")
	cfg.CompressAbove = -1
	cfg.MaxBatchRecords = 100
	cfg.MaxBytesPerSecond = 200 << 10 // ~150 KiB to send: most of it paced
	c := startClient(t, cfg, src)
	eventually(t, "all acknowledged", func() bool { _, a := src.state(); return a == 1000 })
	checkLog(t, sink.log, "gw-1", 1000)
	if st := c.Stats(); st.Throttled <= 0 || st.BytesSent < 100<<10 {
		t.Fatalf("client stats %+v: expected batches to wait for the cap", st)
	}
}
