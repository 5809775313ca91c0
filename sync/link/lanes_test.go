package link

import (
	"context"
	"errors"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cloudevents/sdk-go/binding/format/protobuf/v2/pb"
	"google.golang.org/protobuf/proto"

	"github.com/tributary-io/tributary/cloud/commitlog"
	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
	"github.com/tributary-io/tributary/sync/wire"
)

// laneSource is an in-memory outbox with priority lanes: one seq counter,
// each record in one lane, AckLane deleting that lane's records only.
// Records are made from their seq on demand (record), so a large backlog
// costs 8 bytes a record.
type laneSource struct {
	t       *testing.T
	mu      sync.Mutex
	lanes   [MaxLanes][]uint64 // held seqs of each lane, ascending
	acked   [MaxLanes]uint64
	next    uint64
	changed chan struct{}
	failAck atomic.Int32 // AckLane calls still to fail
}

func newLaneSource(t *testing.T) *laneSource {
	return &laneSource{t: t, next: 1, changed: make(chan struct{})}
}

var _ LaneSource = (*laneSource)(nil)

// add commits n records to lane and returns the last seq.
func (s *laneSource) add(lane uint32, n int) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		s.lanes[lane] = append(s.lanes[lane], s.next)
		s.next++
	}
	close(s.changed)
	s.changed = make(chan struct{})
	return s.next - 1
}

func (s *laneSource) ReadLane(lane uint32, after uint64, maxRecords, maxBytes int) ([]*syncv1.Record, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	seqs := s.lanes[lane]
	i := sort.Search(len(seqs), func(i int) bool { return seqs[i] > after })
	var out []*syncv1.Record
	size := 0
	for ; i < len(seqs) && len(out) < maxRecords; i++ {
		r := record(seqs[i])
		n := proto.Size(r)
		if len(out) > 0 && size+n > maxBytes {
			break
		}
		size += n
		out = append(out, r)
	}
	return out, nil
}

func (s *laneSource) WaitLane(ctx context.Context, lane uint32, after uint64) error {
	for {
		s.mu.Lock()
		seqs := s.lanes[lane]
		if n := len(seqs); n > 0 && seqs[n-1] > after {
			s.mu.Unlock()
			return nil
		}
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (s *laneSource) AckLane(lane uint32, upTo uint64) error {
	if s.failAck.Load() > 0 {
		s.failAck.Add(-1)
		return errors.New("disk hiccup")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if upTo <= s.acked[lane] {
		s.t.Errorf("source: AckLane(%d, %d) does not grow (acked %d)", lane, upTo, s.acked[lane])
	}
	s.acked[lane] = upTo
	seqs := s.lanes[lane]
	s.lanes[lane] = seqs[sort.Search(len(seqs), func(i int) bool { return seqs[i] > upTo }):]
	return nil
}

// The single-lane methods must not be used by a client with lanes.
func (s *laneSource) Read(after uint64, maxRecords, maxBytes int) ([]*syncv1.Record, error) {
	if after != 0 || maxRecords != 1 {
		s.t.Errorf("source: Read(%d, %d) on a lane source", after, maxRecords)
	}
	return nil, nil // Hello.first_seq is informational
}

func (s *laneSource) Wait(ctx context.Context, after uint64) error {
	s.t.Errorf("source: Wait on a lane source")
	<-ctx.Done()
	return ctx.Err()
}

func (s *laneSource) Ack(upTo uint64) error {
	s.t.Errorf("source: Ack(%d) on a lane source", upTo)
	return nil
}

// held is the number of records not yet acknowledged, over all lanes.
func (s *laneSource) held() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, l := range s.lanes {
		n += len(l)
	}
	return n
}

func (s *laneSource) ackedLane(lane uint32) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acked[lane]
}

// checkLanesLog asserts that the log holds every seq of laneOf exactly once,
// under its lane's producer, in seq order within each lane, with the event
// the source made, and returns each seq's log offset.
func checkLanesLog(t *testing.T, log *commitlog.Memory, gw string, laneOf map[uint64]uint32) map[uint64]uint64 {
	t.Helper()
	recs, err := log.Read(0, 1<<30, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	producers := map[string]uint32{}
	for l := range uint32(MaxLanes) {
		producers[LaneProducer(gw, l)] = l
	}
	offset := map[uint64]uint64{}
	var last [MaxLanes]uint64
	for _, r := range recs {
		lane, ok := producers[r.Producer]
		if !ok {
			t.Fatalf("log: offset %d has producer %q", r.Offset, r.Producer)
		}
		seq := r.ProducerSeq
		if want, ok := laneOf[seq]; !ok || want != lane {
			t.Fatalf("log: seq %d under lane %d (its lane: %d, known: %v)", seq, lane, want, ok)
		}
		if _, dup := offset[seq]; dup {
			t.Fatalf("log: seq %d twice", seq)
		}
		if seq <= last[lane] {
			t.Fatalf("log: lane %d seq %d after %d", lane, seq, last[lane])
		}
		last[lane] = seq
		var ev pb.CloudEvent
		if err := proto.Unmarshal(r.Value, &ev); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(&ev, record(seq).Event) {
			t.Fatalf("log: seq %d holds %v", seq, &ev)
		}
		offset[seq] = r.Offset
	}
	if len(offset) != len(laneOf) {
		t.Fatalf("log: %d records, want %d", len(offset), len(laneOf))
	}
	return offset
}

// TestLanesAlarmOvertakesBacklog: an alarm committed to lane 0 behind a
// large telemetry backlog of lane 2 reaches the log long before the backlog
// has drained. On one lane it would come after the last telemetry record.
//
// The backlog is 20,000 records to keep the package's tests short under
// -race; LINK_LANES_BACKLOG sets another size (200000 was run too).
func TestLanesAlarmOvertakesBacklog(t *testing.T) {
	backlog := 20_000
	if v := os.Getenv("LINK_LANES_BACKLOG"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1000 {
			t.Fatalf("LINK_LANES_BACKLOG=%q: want a number of at least 1000", v)
		}
		backlog = n
	}
	p := newPKI(t)
	sink := newLogSink()
	srv := startServer(t, serverConfig(t, p), sink, nil)
	src := newLaneSource(t)
	laneOf := map[uint64]uint32{}
	last := src.add(2, backlog)
	for seq := uint64(1); seq <= last; seq++ {
		laneOf[seq] = 2
	}
	cfg := clientConfig(t, p, srv.Addr().String(), "gw-1")
	cfg.Lanes = []uint32{2}
	startClient(t, cfg, src)
	eventually(t, "telemetry draining", func() bool { return src.ackedLane(2) > 0 })
	alarm := src.add(0, 1)
	laneOf[alarm] = 0
	eventually(t, "alarm acknowledged", func() bool { return src.ackedLane(0) == alarm })
	ackedAtAlarm := src.ackedLane(2)
	eventually(t, "backlog acknowledged", func() bool { return src.held() == 0 })
	offset := checkLanesLog(t, sink.log, "gw-1", laneOf)
	after := offset[last] - offset[alarm]
	t.Logf("alarm at log offset %d, last telemetry at %d; lane 2 acked up to %d when the alarm was", offset[alarm], offset[last], ackedAtAlarm)
	if offset[alarm] > offset[last] || after < uint64(backlog/4) {
		t.Fatalf("alarm at offset %d, only %d telemetry records after it: it did not overtake the backlog", offset[alarm], after)
	}
	if ackedAtAlarm >= last {
		t.Fatalf("the backlog was acknowledged before the alarm")
	}
}

// TestLanesExactlyOnce: records of three lanes, committed in rounds, reach
// the log exactly once per (gateway, lane, seq) through sessions that end
// on failed acks and a restart of the cloud.
func TestLanesExactlyOnce(t *testing.T) {
	p := newPKI(t)
	sink := &gateSink{logSink: newLogSink()}
	srv1 := startServer(t, serverConfig(t, p), sink, nil)
	addr := srv1.Addr().String()
	src := newLaneSource(t)
	laneOf := map[uint64]uint32{}
	var mu sync.Mutex
	addRound := func(n int) {
		mu.Lock()
		defer mu.Unlock()
		for i := range n {
			lane := []uint32{0, 1, 3, 3, 1}[i%5]
			laneOf[src.add(lane, 1)] = lane
		}
	}
	addRound(3000)
	cfg := clientConfig(t, p, addr, "gw-1")
	cfg.Lanes = []uint32{3, 1}
	c := startClient(t, cfg, src)
	eventually(t, "every lane under way", func() bool {
		return src.ackedLane(0) > 0 && src.ackedLane(1) > 0 && src.ackedLane(3) > 0
	})
	src.failAck.Store(2) // two sessions end on a failed AckLane
	addRound(3000)
	eventually(t, "second round acknowledged", func() bool { return src.held() == 0 })

	srv1.Close()
	pc := listenAgain(t, addr)
	addRound(3000)
	srv2 := startServer(t, serverConfig(t, p), sink, pc)
	eventually(t, "third round acknowledged after the restart", func() bool { return src.held() == 0 })
	mu.Lock()
	checkLanesLog(t, sink.log, "gw-1", laneOf)
	mu.Unlock()
	if st := c.Stats(); st.Sessions < 3 {
		t.Fatalf("client %+v: want sessions ended by failed acks and the restart", st)
	}
	if ss := srv2.Stats(); ss.ProtocolErrors != 0 {
		t.Fatalf("server %+v", ss)
	}
	for _, ls := range c.LaneStats() {
		if ls.AckedSeq == 0 {
			t.Fatalf("lane stats %+v", c.LaneStats())
		}
	}
}

// TestLanesOldClient: a gateway that knows nothing of lanes (no Hello.lanes)
// drains on one stream into the gateway's own producer, as before.
func TestLanesOldClient(t *testing.T) {
	p := newPKI(t)
	sink := newLogSink()
	srv := startServer(t, serverConfig(t, p), sink, nil)
	src := newSource(t)
	src.add(3000)
	startClient(t, clientConfig(t, p, srv.Addr().String(), "gw-1"), src)
	eventually(t, "all acknowledged", func() bool { _, a := src.state(); return a == 3000 })
	checkLog(t, sink.log, "gw-1", 3000)
	if n := sink.log.HighWaterMark(LaneProducer("gw-1", 1)); n != 0 {
		t.Fatalf("lane 1 producer has %d", n)
	}
}

// TestLanesConfig: lanes need a LaneSource and must be 1 to MaxLanes-1,
// once each.
func TestLanesConfig(t *testing.T) {
	p := newPKI(t)
	for _, tc := range []struct {
		lanes []uint32
		src   Source
	}{
		{[]uint32{1}, newSource(t)},
		{[]uint32{0}, newLaneSource(t)},
		{[]uint32{MaxLanes}, newLaneSource(t)},
		{[]uint32{2, 2}, newLaneSource(t)},
	} {
		cfg := clientConfig(t, p, "127.0.0.1:1", "gw-1")
		cfg.Lanes = tc.lanes
		if err := NewClient(cfg, tc.src).Run(context.Background()); err == nil {
			t.Fatalf("lanes %v with %T: Run started", tc.lanes, tc.src)
		}
	}
}

// TestConnBudget: the client's side of the connection's credit.
func TestConnBudget(t *testing.T) {
	b := newConnBudget(2, 0)
	if !b.allows(1, 10) {
		t.Fatal("empty budget refuses")
	}
	b.sent(1, 10)
	b.sent(2, 10)
	if b.allows(1, 10) || b.allows(2, 10) {
		t.Fatal("full budget allows a lane above 0")
	}
	if !b.allows(0, 10) {
		t.Fatal("lane 0 refused with nothing of its own in flight")
	}
	b.sent(0, 10)
	if b.allows(0, 10) {
		t.Fatal("lane 0 allowed a second batch beyond the budget")
	}
	ch := b.changed()
	b.setLimits(0, 0) // paused
	select {
	case <-ch:
	default:
		t.Fatal("no change signalled")
	}
	b.released(0, 1, 10)
	if !b.allows(0, 10) || b.allows(1, 10) {
		t.Fatal("paused: lane 0 must still send one batch, others none")
	}
	b.setLimits(4, 25)
	b.released(1, 1, 10)
	if !b.allows(1, 15) || b.allows(1, 16) {
		t.Fatal("byte cap not applied")
	}
	var nilBudget *connBudget
	if !nilBudget.allows(3, 1<<30) || nilBudget.changed() != nil {
		t.Fatal("nil budget")
	}
	nilBudget.sent(1, 1)
	nilBudget.released(1, 1, 1)
}

// laneHoldSink holds the appends of one producer until released.
type laneHoldSink struct {
	*logSink
	producer string
	mu       sync.Mutex
	holding  bool
	held     []func()
}

func (s *laneHoldSink) AppendAsync(gw string, recs []wire.RawRecord, done func(error)) {
	s.mu.Lock()
	if s.holding && gw == s.producer {
		s.held = append(s.held, func() { s.logSink.AppendAsync(gw, recs, done) })
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	s.logSink.AppendAsync(gw, recs, done)
}

func (s *laneHoldSink) heldCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.held)
}

func (s *laneHoldSink) release() {
	s.mu.Lock()
	h := s.held
	s.held, s.holding = nil, false
	s.mu.Unlock()
	for _, f := range h {
		f()
	}
}

// TestLanesZeroNeverStarved: the cloud pauses the connection (its log
// holds lane 2's appends, so the backlog passes MaxBacklog), yet an alarm
// of lane 0 still goes through and is acknowledged while lane 2 waits;
// nothing breaks the server's per-connection credit check.
func TestLanesZeroNeverStarved(t *testing.T) {
	p := newPKI(t)
	sink := &laneHoldSink{logSink: newLogSink(), producer: LaneProducer("gw-1", 2), holding: true}
	cfg := serverConfig(t, p)
	cfg.MaxBacklog = 1 // any backlog pauses
	srv := startServer(t, cfg, sink, nil)
	src := newLaneSource(t)
	laneOf := map[uint64]uint32{}
	last := src.add(2, 3000)
	for seq := uint64(1); seq <= last; seq++ {
		laneOf[seq] = 2
	}
	ccfg := clientConfig(t, p, srv.Addr().String(), "gw-1")
	ccfg.Lanes = []uint32{2}
	c := startClient(t, ccfg, src)
	eventually(t, "lane 2 held and the connection paused", func() bool {
		return sink.heldCount() > 0 && c.Stats().Window == 0
	})
	alarm := src.add(0, 1)
	laneOf[alarm] = 0
	eventually(t, "alarm acknowledged during the pause", func() bool { return src.ackedLane(0) == alarm })
	if src.ackedLane(2) != 0 || c.Stats().Window != 0 {
		t.Fatalf("lane 2 acked %d, window %d: the pause did not hold", src.ackedLane(2), c.Stats().Window)
	}
	sink.release()
	eventually(t, "lane 2 drained after the pause", func() bool { return src.held() == 0 })
	checkLanesLog(t, sink.log, "gw-1", laneOf)
	if ss := srv.Stats(); ss.ProtocolErrors != 0 || ss.Credits == 0 {
		t.Fatalf("server %+v", ss)
	}
}
