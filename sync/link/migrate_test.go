package link

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tributary-io/tributary/sync/faultnet"
)

// TestMigrateMidTransfer: the gateway moves to a new UDP socket (its
// address changes) while batches are in flight and unacknowledged; the
// connection follows it with no reconnect, the cloud acknowledges the
// batches on the new path, and every record arrives exactly once.
func TestMigrateMidTransfer(t *testing.T) {
	p := newPKI(t)
	sink := &holdSink{logSink: newLogSink(), gw: "gw-1", holding: true}
	srv := startServer(t, serverConfig(t, p), sink, nil)
	relay := startRelay(t, srv.Addr().String(), faultnet.Config{Seed: 3})
	src := newSource(t)
	src.add(2000)
	cfg := clientConfig(t, p, relay.Addr().String(), "gw-1")
	cfg.LocalAddr = "127.0.0.1:0"
	c := startClient(t, cfg, src)
	if err := c.Migrate(context.Background()); err != nil && !errors.Is(err, ErrNotConnected) {
		t.Fatalf("Migrate before connecting: %v", err)
	}
	eventually(t, "batches in flight", func() bool { return sink.heldCount() >= 2 })
	_, ackedBefore := src.state()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if st := relay.Stats(); st.Clients != 2 {
		t.Fatalf("relay saw %d client addresses, want 2 (old and new socket)", st.Clients)
	}
	sink.release()
	src.add(2000)
	eventually(t, "all acknowledged", func() bool { _, a := src.state(); return a == 4000 })
	checkLog(t, sink.log, "gw-1", 4000)
	st := c.Stats()
	if st.Sessions != 1 || st.Reconnects != 0 || st.Migrations != 1 {
		t.Fatalf("client %+v: want one session that migrated", st)
	}
	if ackedBefore != 0 || sink.dups() != 0 {
		t.Fatalf("acked %d before migrating, %d duplicates: nothing should be resent", ackedBefore, sink.dups())
	}
	if ss := srv.Stats(); ss.Accepted != 1 || ss.Records != 4000 {
		t.Fatalf("server %+v", ss)
	}
}

// TestNATRebinding: the relay gives the gateway a new address on the
// cloud's side (a NAT rebinding) without the gateway knowing; the cloud
// follows the connection to the new address and the transfer continues in
// the same session.
func TestNATRebinding(t *testing.T) {
	p := newPKI(t)
	sink := &holdSink{logSink: newLogSink(), gw: "gw-1", holding: true}
	srv := startServer(t, serverConfig(t, p), sink, nil)
	relay := startRelay(t, srv.Addr().String(), faultnet.Config{Seed: 4})
	src := newSource(t)
	src.add(2000)
	c := startClient(t, clientConfig(t, p, relay.Addr().String(), "gw-1"), src)
	eventually(t, "batches in flight", func() bool { return sink.heldCount() >= 2 })
	if err := relay.Rebind(); err != nil {
		t.Fatal(err)
	}
	sink.release()
	src.add(2000)
	eventually(t, "all acknowledged", func() bool { _, a := src.state(); return a == 4000 })
	checkLog(t, sink.log, "gw-1", 4000)
	if st := c.Stats(); st.Sessions != 1 || st.Reconnects != 0 {
		t.Fatalf("client %+v: want the session to survive the rebinding", st)
	}
	if st := relay.Stats(); st.Rebinds != 1 {
		t.Fatalf("relay %+v", st)
	}
}
