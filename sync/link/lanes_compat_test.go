package link

import (
	"context"
	"testing"

	"github.com/quic-go/quic-go"

	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
	"github.com/tributary-io/tributary/sync/wire"
)

// oldCloud is a cloud of before priority lanes: it speaks the control
// stream only, its Welcome says nothing of lanes, and it accepts no other
// stream. It acknowledges every batch at once and reports the seqs it got.
func oldCloud(t *testing.T, p *testPKI) (addr string, got <-chan uint64) {
	t.Helper()
	ln, err := quic.ListenAddr("127.0.0.1:0", p.serverTLS(t), &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	seqs := make(chan uint64, 1<<16)
	done := make(chan struct{})
	t.Cleanup(func() {
		cancel()
		ln.Close()
		<-done
	})
	go func() {
		defer close(done)
		conn, err := ln.Accept(ctx)
		if err != nil {
			return
		}
		defer conn.CloseWithError(0, "")
		str, err := conn.AcceptStream(ctx)
		if err != nil {
			return
		}
		f, err := wire.ReadFrame(str, wire.MaxFrameBytes)
		if err != nil || f.GetHello() == nil {
			t.Errorf("old cloud: first frame %v, %v", f, err)
			return
		}
		w := &syncv1.Welcome{ProtocolVersion: syncv1.Version_VERSION_1, Window: 4, MaxFrameBytes: wire.MaxFrameBytes}
		if err := wire.WriteFrame(str, &syncv1.Frame{Body: &syncv1.Frame_Welcome{Welcome: w}}); err != nil {
			return
		}
		for {
			f, err := wire.ReadFrame(str, wire.MaxFrameBytes)
			if err != nil {
				return
			}
			b := f.GetBatch()
			if b == nil {
				t.Errorf("old cloud: unexpected frame %v", f)
				return
			}
			recs, err := wire.DecodeBatchRaw(b, 0)
			if err != nil {
				t.Errorf("old cloud: %v", err)
				return
			}
			for _, r := range recs {
				seqs <- r.Seq
			}
			ack := &syncv1.Ack{AckedSeq: b.GetLastSeq()}
			if err := wire.WriteFrame(str, &syncv1.Frame{Body: &syncv1.Frame_Ack{Ack: ack}}); err != nil {
				return
			}
		}
	}()
	return ln.Addr().String(), seqs
}

// TestLanesOldCloud: a gateway with lanes, connected to a cloud that knows
// nothing of them, drains lane 0 on the control stream as before and keeps
// the other lanes' records (sending them under lane 0's high-water mark
// would let the cloud drop them, or log them twice after its upgrade).
func TestLanesOldCloud(t *testing.T) {
	p := newPKI(t)
	addr, got := oldCloud(t, p)
	src := newLaneSource(t)
	var lane0 []uint64
	for i := range 600 {
		lane := []uint32{0, 1, 1}[i%3]
		seq := src.add(lane, 1)
		if lane == 0 {
			lane0 = append(lane0, seq)
		}
	}
	cfg := clientConfig(t, p, addr, "gw-1")
	cfg.Lanes = []uint32{1}
	startClient(t, cfg, src)
	eventually(t, "lane 0 acknowledged", func() bool { return src.ackedLane(0) == lane0[len(lane0)-1] })
	for _, want := range lane0 {
		if seq := <-got; seq != want {
			t.Fatalf("old cloud got seq %d, want lane 0's %d", seq, want)
		}
	}
	select {
	case seq := <-got:
		t.Fatalf("old cloud got seq %d beyond lane 0", seq)
	default:
	}
	if n := src.held(); n != 400 || src.ackedLane(1) != 0 {
		t.Fatalf("source holds %d records, lane 1 acked %d: want lane 1's 400 kept", n, src.ackedLane(1))
	}
}
