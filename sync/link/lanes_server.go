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

// connShare counts the batches pending (appended, not yet acknowledged) on
// all lanes of one connection, against ServerConfig.Window and WindowBytes:
// the credit is the connection's, not each lane's. When the gateway uses
// lanes, lane 0 may always have one batch pending beyond it (see
// connBudget, the gateway's side of the same rule).
type connShare struct {
	mu     sync.Mutex
	n      int
	bytes  int64
	lanes  bool // the gateway's Hello listed lanes
	credit bool // the gateway accepts credits: WindowBytes applies
}

// admit counts a batch of size frame bytes that arrived on ss's stream, or
// returns the protocol error of a gateway that sent more than its credit.
// ss.mu is held.
func (ss *session) admit(size int64) error {
	cfg := &ss.srv.cfg
	sh := ss.share
	sh.mu.Lock()
	defer sh.mu.Unlock()
	exempt := sh.lanes && ss.lane == 0 && len(ss.pending) == 0
	if !exempt {
		if sh.n >= cfg.Window {
			return fmt.Errorf("%w: more than %d batches unacknowledged", ErrProtocol, cfg.Window)
		}
		// The byte cap is static for the session, so a gateway that
		// honours it never exceeds it here: acks leave the server before
		// the gateway releases the batches they cover.
		if sh.credit && cfg.WindowBytes > 0 && sh.n > 0 && sh.bytes+size > cfg.WindowBytes {
			return fmt.Errorf("%w: more than %d bytes unacknowledged", ErrProtocol, cfg.WindowBytes)
		}
	}
	sh.n++
	sh.bytes += size
	return nil
}

// release uncounts n acknowledged batches of bytes frame bytes.
func (sh *connShare) release(n int, bytes int64) {
	if n == 0 {
		return
	}
	sh.mu.Lock()
	sh.n -= n
	sh.bytes -= bytes
	sh.mu.Unlock()
}

// startLanes serves the lanes hello lists, each on a stream the gateway
// opens after Welcome: every lane is a session of its own (its stream, its
// pending batches, its producer in the log, LaneProducer) whose failures
// fail the connection. ss.lanes tracks the goroutines; they end with the
// connection.
func (ss *session) startLanes(hello *syncv1.Hello) {
	want := map[uint32]bool{}
	for _, l := range hello.GetLanes() {
		want[l] = true
	}
	ss.share.mu.Lock()
	ss.share.lanes = len(want) > 0
	ss.share.credit = ss.acceptsCredit
	ss.share.mu.Unlock()
	if len(want) == 0 {
		return
	}
	for l := range want {
		if l == 0 || l >= MaxLanes {
			ss.srv.protocolErrors.Add(1)
			ss.fail(syncv1.ErrorCode_ERROR_CODE_PROTOCOL, fmt.Sprintf("Hello lists lane %d: lanes are 1 to %d", l, MaxLanes-1))
			return
		}
	}
	ss.lanes.Add(1)
	go func() {
		defer ss.lanes.Done()
		var mu sync.Mutex
		open := map[uint32]bool{}
		for range len(want) {
			str, err := ss.conn.AcceptStream(ss.conn.Context())
			if err != nil {
				return
			}
			ss.lanes.Add(1)
			go func() {
				defer ss.lanes.Done()
				ss.serveLane(str, func(l uint32) bool {
					mu.Lock()
					defer mu.Unlock()
					if !want[l] || open[l] {
						return false
					}
					open[l] = true
					return true
				})
			}()
		}
	}()
}

// serveLane runs one lane's stream: LaneHello, LaneWelcome, then batches
// and acks as on lane 0. claim reports whether the lane named may be
// opened (listed in Hello, not yet open).
func (ss *session) serveLane(str *quic.Stream, claim func(uint32) bool) {
	s := ss.srv
	_ = str.SetReadDeadline(time.Now().Add(s.cfg.HelloTimeout))
	f, err := wire.ReadFrame(str, s.cfg.MaxFrameBytes)
	_ = str.SetReadDeadline(time.Time{})
	if err != nil {
		if ss.conn.Context().Err() == nil {
			s.protocolErrors.Add(1)
			ss.fail(syncv1.ErrorCode_ERROR_CODE_PROTOCOL, "reading LaneHello: "+err.Error())
		}
		return
	}
	lh := f.GetLaneHello()
	if lh == nil || !claim(lh.GetLane()) {
		s.protocolErrors.Add(1)
		ss.fail(syncv1.ErrorCode_ERROR_CODE_PROTOCOL, fmt.Sprintf("expected LaneHello for a lane listed in Hello and not yet open, got %s", frameKind(f)))
		return
	}
	lane := &session{
		srv: s, gw: ss.gw, conn: ss.conn, str: str,
		wake:   make(chan struct{}, 1),
		failed: ss.failed, // closed when the connection's session fails
		lane:   lh.GetLane(),
		parent: ss,
		share:  ss.share,
	}
	hwm := s.sink.HighWaterMark(LaneProducer(ss.gw, lane.lane))
	lane.acked = hwm
	err = lane.write(&syncv1.Frame{Body: &syncv1.Frame_LaneWelcome{LaneWelcome: &syncv1.LaneWelcome{Lane: lane.lane, HighWaterMark: hwm}}})
	if err != nil {
		return
	}
	s.log.Info("sync lane open", "gateway", ss.gw, "lane", lane.lane, "high_water_mark", hwm)
	ackerDone := make(chan struct{})
	go func() {
		defer close(ackerDone)
		lane.ackLoop()
	}()
	readErr := lane.readLoop(hwm)
	switch {
	case readErr == nil:
		// The gateway half-closed the lane: its acks still go out.
		select {
		case <-ackerDone:
		case <-ss.failed:
		case <-ss.conn.Context().Done():
		}
	case errors.Is(readErr, wire.ErrFrameTooLarge):
		s.protocolErrors.Add(1)
		ss.fail(syncv1.ErrorCode_ERROR_CODE_FRAME_TOO_LARGE, fmt.Sprintf("lane %d: %v", lane.lane, readErr))
	case errors.Is(readErr, ErrProtocol), errors.Is(readErr, wire.ErrMalformed),
		errors.Is(readErr, wire.ErrInvalidBatch), errors.Is(readErr, wire.ErrDecodedTooLarge),
		errors.Is(readErr, io.ErrUnexpectedEOF):
		s.protocolErrors.Add(1)
		ss.fail(syncv1.ErrorCode_ERROR_CODE_PROTOCOL, fmt.Sprintf("lane %d: %v", lane.lane, readErr))
	default:
		// The connection ended: the control session closes it.
		_ = ss.conn.CloseWithError(0, "")
	}
	lane.signal()
	<-ackerDone
}
