package link

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
	"github.com/tributary-io/tributary/sync/flow"
	"github.com/tributary-io/tributary/sync/wire"
)

// MaxLanes bounds the priority lanes: 0 to MaxLanes-1, the urgencies of
// QUIC stream priorities.
const MaxLanes = 8

// LaneSource is a Source that reads and acknowledges per priority lane, for
// a Client with ClientConfig.Lanes. Each lane is an ordered sequence of its
// own: seqs increase within a lane (the outbox's seqs, shared by all lanes,
// do), and acknowledging a lane leaves the others' records alone. The
// methods have the contracts of the Source methods of the same names.
type LaneSource interface {
	Source
	// ReadLane returns records of lane with seq > after, as Read.
	ReadLane(lane uint32, after uint64, maxRecords, maxBytes int) ([]*syncv1.Record, error)
	// WaitLane blocks until a record of lane with seq > after exists or
	// ctx ends.
	WaitLane(ctx context.Context, lane uint32, after uint64) error
	// AckLane tells the source that every record of lane with seq <= upTo
	// is durable in the cloud. A lane's acks only ever grow.
	AckLane(lane uint32, upTo uint64) error
}

// laneIO is what a send loop reads: one lane of a LaneSource, or every
// record of a Source.
type laneIO struct {
	src  Source
	ls   LaneSource // nil: src's Read and Wait
	lane uint32
}

func (l laneIO) Read(after uint64, maxRecords, maxBytes int) ([]*syncv1.Record, error) {
	if l.ls == nil {
		return l.src.Read(after, maxRecords, maxBytes)
	}
	return l.ls.ReadLane(l.lane, after, maxRecords, maxBytes)
}

func (l laneIO) Wait(ctx context.Context, after uint64) error {
	if l.ls == nil {
		return l.src.Wait(ctx, after)
	}
	return l.ls.WaitLane(ctx, l.lane, after)
}

func (l laneIO) Ack(upTo uint64) error {
	if l.ls == nil {
		return l.src.Ack(upTo)
	}
	return l.ls.AckLane(l.lane, upTo)
}

func (c *Client) laneIO(lane uint32) laneIO {
	io := laneIO{src: c.src, lane: lane}
	if len(c.cfg.Lanes) > 0 {
		io.ls = c.src.(LaneSource) // checkLanes made sure
	}
	return io
}

// checkLanes reports a ClientConfig.Lanes the client cannot drain.
func (c *Client) checkLanes() error {
	if len(c.cfg.Lanes) == 0 {
		return nil
	}
	if _, ok := c.src.(LaneSource); !ok {
		return errors.New("link: ClientConfig.Lanes needs a LaneSource")
	}
	seen := map[uint32]bool{}
	for _, l := range c.cfg.Lanes {
		if l == 0 || l >= MaxLanes || seen[l] {
			return fmt.Errorf("link: ClientConfig.Lanes %v: want distinct lanes from 1 to %d", c.cfg.Lanes, MaxLanes-1)
		}
		seen[l] = true
	}
	return nil
}

// startAckers starts the acker of lane 0 (Client.acker) and of every other
// lane; the function it returns stops them once their pending acks are
// applied. The ackers outlive sessions: they remember what the source was
// told.
func (c *Client) startAckers() (stop func()) {
	c.acker = newSourceAcker(c.laneIO(0), &c.ackedSeq)
	ackers := map[uint32]*sourceAcker{}
	for _, l := range c.cfg.Lanes {
		ackers[l] = newSourceAcker(c.laneIO(l), new(atomic.Uint64))
	}
	c.ackersMu.Lock()
	c.laneAckers = ackers
	c.ackersMu.Unlock()
	return func() {
		c.acker.close()
		for _, a := range ackers {
			a.close()
		}
	}
}

// runLanes runs a session's send loops once Welcome arrived: lane 0 on the
// control stream str and, when lanes are configured and the cloud serves
// them, one stream per lane, each opened with LaneHello/LaneWelcome. The
// loops share the connection's credit (connBudget). The session ends with
// the first loop that ends.
func (c *Client) runLanes(ctx context.Context, conn *quic.Conn, str *quic.Stream, win *flow.Window, maxFrame int, welcome *syncv1.Welcome) error {
	lane0 := &sendLoop{c: c, str: str, win: win, maxFrame: maxFrame, io: c.laneIO(0), acker: c.acker}
	if len(c.cfg.Lanes) == 0 {
		return lane0.run(ctx, conn)
	}
	// The credit moves from lane 0's window to the connection's budget;
	// each lane's window then only tracks its seqs and sizes.
	budget := newConnBudget(win.Max(), win.MaxBytes())
	win.SetLimits(c.cfg.Window, 0)
	lane0.budget = budget
	str.SetPriority(0, false)
	loops := []*sendLoop{lane0}
	if !welcome.GetLanes() {
		c.log.Warn("the cloud does not serve priority lanes: only lane 0 is drained", "lanes", c.cfg.Lanes)
	} else {
		for _, l := range c.cfg.Lanes {
			sl, err := c.openLane(ctx, conn, l, maxFrame, budget)
			if err != nil {
				return err
			}
			loops = append(loops, sl)
		}
	}
	errc := make(chan error, len(loops))
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for _, sl := range loops {
		go func() { errc <- sl.run(lctx, conn) }()
	}
	err := <-errc
	cancel()
	for range len(loops) - 1 {
		<-errc
	}
	return err
}

// openLane opens lane's stream and returns its send loop, resuming after
// the lane's high-water mark.
func (c *Client) openLane(ctx context.Context, conn *quic.Conn, lane uint32, maxFrame int, budget *connBudget) (*sendLoop, error) {
	octx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer cancel()
	str, err := conn.OpenStreamSync(octx)
	if err != nil {
		return nil, fmt.Errorf("open lane %d: %w", lane, remoteClose(err))
	}
	str.SetPriority(int8(lane), false) // lower lanes first; a lane's bytes not interleaved
	_ = str.SetDeadline(time.Now().Add(c.cfg.DialTimeout))
	if err := wire.WriteFrame(str, &syncv1.Frame{Body: &syncv1.Frame_LaneHello{LaneHello: &syncv1.LaneHello{Lane: lane}}}); err != nil {
		return nil, fmt.Errorf("send LaneHello %d: %w", lane, remoteClose(err))
	}
	f, err := wire.ReadFrame(str, wire.MaxFrameBytes)
	if err != nil {
		return nil, fmt.Errorf("read LaneWelcome %d: %w", lane, remoteClose(err))
	}
	_ = str.SetDeadline(time.Time{})
	if e := f.GetError(); e != nil {
		return nil, &RemoteError{Code: e.GetCode(), Message: e.GetMessage()}
	}
	lw := f.GetLaneWelcome()
	if lw == nil || lw.GetLane() != lane {
		return nil, fmt.Errorf("%w: expected LaneWelcome for lane %d, got %s", ErrProtocol, lane, frameKind(f))
	}
	c.ackersMu.Lock()
	acker := c.laneAckers[lane]
	c.ackersMu.Unlock()
	hwm := lw.GetHighWaterMark()
	if acked := acker.posted(); hwm < acked {
		c.log.Error("cloud high-water mark below an earlier ack", "lane", lane, "high_water_mark", hwm, "acked", acked)
		hwm = acked
	}
	acker.post(hwm)
	c.log.Info("sync lane up", "lane", lane, "high_water_mark", hwm)
	return &sendLoop{
		c: c, str: str, win: flow.NewWindow(c.cfg.Window, hwm), maxFrame: maxFrame,
		lane: lane, io: c.laneIO(lane), acker: acker, budget: budget,
	}, nil
}

// canSend reports whether a batch of size bytes may go now: the lane's
// window and the connection's budget allow it.
func (sl *sendLoop) canSend(size int) bool {
	return sl.win.CanSendSized(size) && sl.budget.allows(sl.lane, size)
}

// applyCredit applies a cloud credit: to the connection's budget when lanes
// share it, to the window otherwise.
func (sl *sendLoop) applyCredit(cr *syncv1.Credit) {
	if sl.budget == nil {
		sl.c.applyCredit(sl.win, cr)
		return
	}
	n, b := min(sl.c.cfg.Window, int(min(cr.GetWindow(), 1<<30))), int64(min(cr.GetWindowBytes(), 1<<62))
	sl.budget.setLimits(n, b)
	sl.c.window.Store(int64(n))
	sl.c.windowBytes.Store(b)
}

// connBudget is the connection's credit, shared by its lanes: at most max
// batches (and maxBytes bytes, 0 for no cap; one batch is always allowed
// when none is in flight) unacknowledged on all lanes together, except that
// lane 0 may always have one batch in flight, so an alarm never waits for
// the telemetry backlog that filled the window, nor for a pause. The
// cloud's check (connShare) is the same. A nil *connBudget (one lane)
// allows everything and never changes.
type connBudget struct {
	mu            sync.Mutex
	max           int
	maxBytes      int64
	n, lane0      int   // batches in flight: all lanes, lane 0
	bytes         int64 // their frame bytes
	changedSignal chan struct{}
}

func newConnBudget(max int, maxBytes int64) *connBudget {
	return &connBudget{max: max, maxBytes: maxBytes, changedSignal: make(chan struct{})}
}

// changed returns a channel closed at the budget's next change.
func (b *connBudget) changed() <-chan struct{} {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.changedSignal
}

func (b *connBudget) signalLocked() {
	close(b.changedSignal)
	b.changedSignal = make(chan struct{})
}

func (b *connBudget) allows(lane uint32, size int) bool {
	if b == nil {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if lane == 0 && b.lane0 == 0 {
		return true
	}
	return b.n < b.max && (b.maxBytes == 0 || b.n == 0 || b.bytes+int64(size) <= b.maxBytes)
}

func (b *connBudget) sent(lane uint32, size int) {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.n++
	b.bytes += int64(size)
	if lane == 0 {
		b.lane0++
	}
	b.signalLocked()
}

func (b *connBudget) released(lane uint32, n int, bytes int64) {
	if b == nil || n == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.n -= n
	b.bytes -= bytes
	if lane == 0 {
		b.lane0 -= n
	}
	b.signalLocked()
}

func (b *connBudget) setLimits(max int, maxBytes int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.max, b.maxBytes = max, maxBytes
	b.signalLocked()
}

// LaneStats are one lane's sequences, as ClientStats.SentSeq and AckedSeq
// are lane 0's.
type LaneStats struct {
	Lane     uint32
	AckedSeq uint64
}

// LaneStats returns the acknowledged seq of each lane above 0, in
// ClientConfig.Lanes order (nil before Run).
func (c *Client) LaneStats() []LaneStats {
	c.ackersMu.Lock()
	defer c.ackersMu.Unlock()
	var out []LaneStats
	for _, l := range c.cfg.Lanes {
		if a := c.laneAckers[l]; a != nil {
			out = append(out, LaneStats{Lane: l, AckedSeq: a.applied.Load()})
		}
	}
	return slices.Clip(out)
}
