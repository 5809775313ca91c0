package link

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
	"github.com/tributary-io/tributary/sync/wire"
)

// session is one gateway's live connection on the server.
type session struct {
	srv  *Server
	gw   string
	conn *quic.Conn
	str  *quic.Stream

	// acceptsCredit: the gateway set Hello.accepts_credit. Set before the
	// session is registered, read-only afterwards.
	acceptsCredit bool

	// Priority lanes (lanes_server.go): lane is this stream's lane; parent
	// is the control stream's session of a lane's (nil for lane 0); share
	// counts the batches pending on all of the connection's lanes; lanes
	// tracks the lane goroutines.
	lane   uint32
	parent *session
	share  *connShare
	lanes  sync.WaitGroup
	// acceptsCommands: the gateway set Hello.accepts_commands (commands.go).
	acceptsCommands bool

	wmu sync.Mutex // serialises writes to str; guards failed writes

	mu           sync.Mutex
	pending      []*pendingBatch // appended, not yet acknowledged, in order
	pendingBytes int64           // frame bytes of pending
	eof          bool            // the gateway closed its side of the stream

	// Owned by run, then by ackLoop: the last seq acknowledged (the
	// high-water mark at Welcome) and the window last granted.
	acked     uint64
	sentGrant int

	wake     chan struct{} // cap 1: a pending batch completed, or eof
	failed   chan struct{} // closed by fail
	failOnce sync.Once
	code     syncv1.ErrorCode // set by fail before failed is closed
	reason   string
}

type pendingBatch struct {
	last uint64
	size int64 // frame bytes
	done bool
	err  error
}

func newSession(s *Server, gw string, conn *quic.Conn, str *quic.Stream) *session {
	return &session{
		srv: s, gw: gw, conn: conn, str: str,
		wake:   make(chan struct{}, 1),
		failed: make(chan struct{}),
		share:  &connShare{},
	}
}

func (ss *session) signal() {
	select {
	case ss.wake <- struct{}{}:
	default:
	}
}

// write sends one frame unless the session has failed.
func (ss *session) write(f *syncv1.Frame) error {
	ss.wmu.Lock()
	defer ss.wmu.Unlock()
	select {
	case <-ss.failed:
		return errors.New("session failed")
	default:
	}
	// A gateway that stops reading must not pin this goroutine (and wmu)
	// forever: QUIC keep-alives would keep the connection up.
	_ = ss.str.SetWriteDeadline(time.Now().Add(ss.srv.cfg.MaxIdleTimeout))
	return wire.WriteFrame(ss.str, f)
}

// fail ends the session with an Error frame: it is the last frame written,
// the send side is closed, and run closes the connection with code once the
// gateway closed it or ErrorLinger passed. Only the first call counts.
func (ss *session) fail(code syncv1.ErrorCode, reason string) {
	if ss.parent != nil {
		ss.parent.fail(code, reason) // a lane fails its connection
		return
	}
	ss.failOnce.Do(func() {
		ss.wmu.Lock()
		defer ss.wmu.Unlock()
		ss.code, ss.reason = code, reason
		close(ss.failed)
		_ = ss.str.SetWriteDeadline(time.Now().Add(ss.srv.cfg.ErrorLinger))
		if err := wire.WriteFrame(ss.str, errorFrame(code, reason)); err == nil {
			_ = ss.str.Close()
		}
		ss.str.CancelRead(quic.StreamErrorCode(code))
	})
}

// run serves the session after Hello until it ends.
func (ss *session) run(hello *syncv1.Hello) {
	s := ss.srv
	log := s.log.With("gateway", ss.gw, "remote", ss.conn.RemoteAddr().String())
	hwm := s.sink.HighWaterMark(ss.gw)
	welcome := &syncv1.Welcome{
		ProtocolVersion: syncv1.Version_VERSION_1,
		HighWaterMark:   hwm,
		Window:          uint32(s.cfg.Window),
		MaxFrameBytes:   uint32(s.cfg.MaxFrameBytes),
		Lanes:           true,
	}
	ss.acked = hwm
	if ss.acceptsCredit {
		ss.sentGrant = int(s.grant.Load())
		welcome.Credit = &syncv1.Credit{Window: uint32(ss.sentGrant), WindowBytes: uint64(s.cfg.WindowBytes)}
	}
	err := ss.write(&syncv1.Frame{Body: &syncv1.Frame_Welcome{Welcome: welcome}})
	if err != nil {
		log.Info("sync session lost before Welcome", "err", err)
		_ = ss.conn.CloseWithError(0, "")
		return
	}
	log.Info("sync session open", "high_water_mark", hwm, "software_version", hello.GetSoftwareVersion(), "first_seq", hello.GetFirstSeq())

	ackerDone := make(chan struct{})
	go func() {
		defer close(ackerDone)
		ss.ackLoop()
	}()
	ss.startLanes(hello) // lanes_server.go
	defer ss.lanes.Wait()
	readErr := ss.readLoop(hwm)
	switch {
	case readErr == nil:
		// The gateway half-closed: wait for the acks of what it sent.
		select {
		case <-ackerDone:
		case <-ss.failed:
		case <-ss.conn.Context().Done():
		}
	case errors.Is(readErr, wire.ErrFrameTooLarge):
		s.protocolErrors.Add(1)
		ss.fail(syncv1.ErrorCode_ERROR_CODE_FRAME_TOO_LARGE, readErr.Error())
	case errors.Is(readErr, ErrProtocol), errors.Is(readErr, wire.ErrMalformed),
		errors.Is(readErr, wire.ErrInvalidBatch), errors.Is(readErr, wire.ErrDecodedTooLarge),
		errors.Is(readErr, io.ErrUnexpectedEOF):
		s.protocolErrors.Add(1)
		ss.fail(syncv1.ErrorCode_ERROR_CODE_PROTOCOL, readErr.Error())
	}
	var code syncv1.ErrorCode
	select {
	case <-ss.failed:
		code = ss.code
		log.Warn("sync session closed with error", "code", code.String(), "reason", ss.reason)
		s.linger(ss.conn)
		_ = ss.conn.CloseWithError(closeCode(code), ss.reason)
	default:
		log.Info("sync session closed", "err", readErr)
		_ = ss.conn.CloseWithError(0, "")
	}
	ss.signal()
	<-ackerDone
}

// readLoop reads batches and hands them to the sink until the stream ends
// (nil), the connection fails (its error) or a frame breaks the protocol (an
// error wrapping a wire sentinel or ErrProtocol). after is the sequence the
// first batch must pass.
func (ss *session) readLoop(after uint64) error {
	s := ss.srv
	r := &countingReader{r: ss.str}
	for {
		before := r.n
		f, err := wire.ReadFrame(r, s.cfg.MaxFrameBytes)
		if err != nil {
			if err == io.EOF {
				ss.mu.Lock()
				ss.eof = true
				ss.mu.Unlock()
				ss.signal()
				return nil
			}
			return err
		}
		if handled, err := ss.commandFrame(f); handled { // commands.go
			if err != nil {
				return err
			}
			continue
		}
		b := f.GetBatch()
		if b == nil {
			return fmt.Errorf("%w: expected Batch, got %s", ErrProtocol, frameKind(f))
		}
		recs, err := wire.DecodeBatchRaw(b, s.cfg.MaxDecodedBytes)
		if err != nil {
			return err
		}
		if first := recs[0].Seq; first <= after {
			return fmt.Errorf("%w: batch starts at seq %d, not above %d", ErrProtocol, first, after)
		}
		after = b.GetLastSeq()
		pb := &pendingBatch{last: after, size: r.n - before}
		ss.mu.Lock()
		if err := ss.admit(pb.size); err != nil { // lanes_server.go
			ss.mu.Unlock()
			return err
		}
		ss.pending = append(ss.pending, pb)
		ss.pendingBytes += pb.size
		ss.mu.Unlock()
		s.batches.Add(1)
		s.records.Add(uint64(len(recs)))
		s.bytes.Add(uint64(pb.size))
		backlog := int64(0)
		for i := range recs {
			backlog += int64(len(recs[i].Event))
		}
		s.addBacklog(backlog)
		s.sink.AppendAsync(LaneProducer(ss.gw, ss.lane), recs, func(err error) {
			ss.mu.Lock()
			pb.done, pb.err = true, err
			ss.mu.Unlock()
			s.addBacklog(-backlog)
			ss.signal()
		})
	}
}

// ackLoop writes an Ack for each completed batch, strictly in batch order,
// and fails the session at the first append error. To a gateway that
// accepts credits it also sends every change of the server's grant, in an
// Ack (repeating the last acked seq if nothing new is durable). It returns
// when the session failed, the connection closed, or the gateway
// half-closed and every batch was acknowledged.
func (ss *session) ackLoop() {
	s := ss.srv
	for {
		select {
		case <-ss.wake:
		case <-ss.failed:
			return
		case <-ss.conn.Context().Done():
			return
		}
		ss.mu.Lock()
		var last uint64
		n := 0
		var appendErr error
		var bytes int64
		for n < len(ss.pending) && ss.pending[n].done {
			if appendErr = ss.pending[n].err; appendErr != nil {
				break
			}
			last = ss.pending[n].last
			ss.pendingBytes -= ss.pending[n].size
			bytes += ss.pending[n].size
			n++
		}
		ss.share.release(n, bytes)
		ss.pending = ss.pending[n:]
		drained := ss.eof && len(ss.pending) == 0
		ss.mu.Unlock()
		ack := &syncv1.Ack{AckedSeq: ss.acked}
		if n > 0 {
			ss.acked, ack.AckedSeq = last, last
		}
		if g := int(s.grant.Load()); ss.acceptsCredit && g != ss.sentGrant {
			ss.sentGrant = g
			ack.Credit = &syncv1.Credit{Window: uint32(g), WindowBytes: uint64(s.cfg.WindowBytes)}
			s.credits.Add(1)
		}
		if n > 0 || ack.Credit != nil {
			if err := ss.write(&syncv1.Frame{Body: &syncv1.Frame_Ack{Ack: ack}}); err != nil {
				return
			}
			s.ackedBatches.Add(uint64(n))
		}
		if appendErr != nil {
			s.sinkErrors.Add(1)
			ss.fail(syncv1.ErrorCode_ERROR_CODE_INTERNAL, "append failed: "+appendErr.Error())
			return
		}
		if drained {
			return
		}
	}
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
