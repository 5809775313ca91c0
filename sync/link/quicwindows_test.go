package link

import (
	"sync"
	"testing"

	"github.com/tributary-io/tributary/sync/wire"
)

// stallSink never returns from its first AppendAsync until release is
// closed: the session's reader stops reading the stream there, so what the
// gateway can still write is what the server's QUIC receive window admits.
type stallSink struct {
	release chan struct{}
	once    sync.Once
}

func (s *stallSink) HighWaterMark(string) uint64 { return 0 }

func (s *stallSink) AppendAsync(_ string, _ []wire.RawRecord, done func(error)) {
	s.once.Do(func() { <-s.release })
	done(nil)
}

// TestServerReceiveWindowAdmitsSeveralBatches: while the server's reader is
// busy with one batch, a gateway can write several more (up to its Window)
// instead of the one or two that quic-go's 512 KiB starting window admits.
// This is what lets reading, decoding and appending on the cloud overlap
// the gateway's sends.
func TestServerReceiveWindowAdmitsSeveralBatches(t *testing.T) {
	p := newPKI(t)
	sink := &stallSink{release: make(chan struct{})}
	srv := startServer(t, serverConfig(t, p), sink, nil)
	src := newSource(t)
	src.add(8 * 4096)
	cfg := clientConfig(t, p, srv.Addr().String(), "gw-window")
	cfg.MaxBatchRecords = 4096
	cfg.MaxBatchBytes = 4 << 20
	cfg.CompressAbove = -1 // ~560 KB frames, more than quic-go's starting window
	c := startClient(t, cfg, src)
	t.Cleanup(func() { close(sink.release) }) // runs before the client and server stop

	// The server window is 8 batches; 3 MiB is over five of these frames,
	// where 512 KiB of stream window (768 KiB for the connection) would
	// stall the second one.
	const want = 3 << 20
	eventually(t, "3 MiB written while the server's reader is stalled", func() bool {
		return c.Stats().BytesSent >= want
	})
	if acked := c.Stats().AckedSeq; acked != 0 {
		t.Fatalf("acked %d while the sink held every append", acked)
	}
}
