package link

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"google.golang.org/protobuf/proto"

	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
	"github.com/tributary-io/tributary/sync/flow"
	"github.com/tributary-io/tributary/sync/wire"
)

// sendLoop is one session's pipeline, four goroutines deep:
//
//   - the batcher reads the Source and hands records on, a Read ahead;
//   - the encoder turns them into encoded, compressed frames, one ahead;
//   - run (the session's goroutine) writes those frames while the window and
//     the bandwidth cap allow, and applies acks to the window;
//   - the reader reads the cloud's frames and coalesces acks (they are
//     cumulative) so that it never blocks.
//
// Acks reach the Source through the Client's sourceAcker. Reading and
// encoding the next batch thus overlaps writing the previous one and the
// cloud's append, and deleting acknowledged records overlaps everything: on a
// gateway each of those is an SQLite transaction or a zstd pass, and done in
// turn they left the link idle most of the time.
type sendLoop struct {
	c        *Client
	str      *quic.Stream
	win      *flow.Window
	maxFrame int
	lane     uint32       // the lane this loop drains (lanes_client.go)
	io       laneIO       // reads the lane's records
	acker    *sourceAcker // acknowledges the lane's records to the source
	budget   *connBudget  // the connection's credit shared by lanes; nil with one lane

	mu         sync.Mutex
	lastAck    uint64
	lastCredit *syncv1.Credit // latest credit not yet applied, or nil
	ackCh      chan struct{}  // cap 1: lastAck or lastCredit changed
	errCh      chan error     // cap 1: the reader's final error
}

// batch is one encoded Batch frame, ready to write.
type batch struct {
	frame []byte // length prefix and Frame
	last  uint64 // seq of the last record
	count int    // records
	raw   int    // record bytes before compression
}

// batchesAhead is how many Reads, and how many encoded batches, may wait
// for the next stage, beside the one each stage holds.
const batchesAhead = 1

func (sl *sendLoop) run(ctx context.Context, conn *quic.Conn) (err error) {
	sl.ackCh = make(chan struct{}, 1)
	sl.errCh = make(chan error, 1)
	sl.lastAck = sl.win.Acked()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		sl.errCh <- sl.readLoop()
	}()
	bctx, stopBatcher := context.WithCancel(ctx)
	read := make(chan srcBatch, batchesAhead)
	batches := make(chan batch, batchesAhead)
	batchErr := make(chan error, 2)
	wg.Add(2)
	go func() {
		defer wg.Done()
		batchErr <- sl.batcher(bctx, sl.win.Sent(), read)
	}()
	go func() {
		defer wg.Done()
		batchErr <- sl.encoder(bctx, read, batches)
	}()
	// Closing the connection stops the reader, cancelling stops the
	// batcher; waiting keeps both from outliving the session. A protocol
	// error of the cloud is reported in the close.
	defer func() {
		code, msg := quic.ApplicationErrorCode(0), ""
		if errors.Is(err, ErrProtocol) {
			code, msg = closeCode(syncv1.ErrorCode_ERROR_CODE_PROTOCOL), err.Error()
		}
		stopBatcher()
		_ = conn.CloseWithError(code, msg)
		wg.Wait()
	}()

	var held *batch // taken from the encoder, waiting for the window
	for {
		budgetChanged := sl.budget.changed() // before the check: no lost wake-up
		if held != nil && sl.canSend(len(held.frame)) {
			if err := sl.send(ctx, *held); err != nil {
				return sl.preferPeerError(err)
			}
			held = nil
		}
		var next <-chan batch
		if held == nil && sl.win.CanSend() {
			next = batches
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-sl.errCh:
			// Acks that arrived before the end are still good news.
			if ackErr := sl.applyAck(); ackErr != nil {
				sl.c.log.Warn("ack before session end not applied", "err", ackErr)
			}
			return err
		case <-sl.ackCh:
			if err := sl.applyAck(); err != nil {
				return err
			}
		case err := <-sl.acker.errc:
			return err
		case <-budgetChanged:
		case err := <-batchErr:
			if err == nil {
				err = ctx.Err()
			}
			return err
		case b := <-next:
			held = &b
		}
	}
}

// preferPeerError returns the cloud's own account of why the session ends
// when a write failed because the cloud closed it: its Error frame usually
// arrives just after the stream was reset. It waits at most a second.
func (sl *sendLoop) preferPeerError(err error) error {
	var re *RemoteError
	if !errors.As(err, &re) {
		return err
	}
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case rerr := <-sl.errCh:
		if errors.As(rerr, &re) {
			return rerr
		}
	case <-t.C:
	}
	return err
}

// batcher reads the source from after on and hands records to out, one
// Read's worth at a time and in seq order, until ctx ends (nil) or reading
// fails.
func (sl *sendLoop) batcher(ctx context.Context, after uint64, out chan<- srcBatch) error {
	cfg := &sl.c.cfg
	src := sl.io
	for {
		recs, err := src.ReadBatch(after, cfg.MaxBatchRecords, cfg.MaxBatchBytes)
		if err != nil {
			return fmt.Errorf("source read: %w", err)
		}
		if recs.len() == 0 {
			if err := src.Wait(ctx, after); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("source wait: %w", err)
			}
			continue
		}
		if cfg.Linger > 0 && recs.len() < cfg.MaxBatchRecords && recs.size() < cfg.MaxBatchBytes {
			if !sleep(ctx, cfg.Linger) {
				return nil
			}
			if recs, err = src.ReadBatch(after, cfg.MaxBatchRecords, cfg.MaxBatchBytes); err != nil {
				return fmt.Errorf("source read: %w", err)
			}
		}
		if last := recs.lastSeq(); last <= after {
			return fmt.Errorf("source records out of order: seq %d after %d", last, after)
		}
		select {
		case out <- recs:
		case <-ctx.Done():
			return nil
		}
		after = recs.lastSeq()
	}
}

// encoder turns the batcher's records into frames, splitting them to fit
// the cloud's frame limit, until in is closed or ctx ends (nil) or a record
// cannot be sent.
func (sl *sendLoop) encoder(ctx context.Context, in <-chan srcBatch, out chan<- batch) error {
	for {
		var recs srcBatch
		select {
		case recs = <-in:
		case <-ctx.Done():
			return nil
		}
		for recs.len() > 0 {
			b, err := sl.encode(recs)
			if err != nil {
				return err
			}
			select {
			case out <- b:
			case <-ctx.Done():
				return nil
			}
			recs = recs.from(b.count)
		}
	}
}

// sleep waits d; false if ctx ended first.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func payloadSize(recs []*syncv1.Record) int {
	n := 0
	for _, r := range recs {
		n += proto.Size(r)
	}
	return n
}

// encode encodes as many of recs as fit in one frame the cloud accepts
// (at least one, or ErrRecordTooLarge).
func (sl *sendLoop) encode(recs srcBatch) (batch, error) {
	n := recs.len()
	for {
		b, raw, err := recs.encode(n, sl.c.cfg.CompressAbove)
		if err != nil {
			return batch{}, fmt.Errorf("source returned records that cannot be sent: %w", err)
		}
		frame, err := wire.AppendFrame(nil, &syncv1.Frame{Body: &syncv1.Frame_Batch{Batch: b}})
		if err == nil && len(frame) <= sl.maxFrame {
			return batch{frame: frame, last: b.GetLastSeq(), count: n, raw: raw}, nil
		}
		if err != nil && !errors.Is(err, wire.ErrFrameTooLarge) {
			return batch{}, err
		}
		if n == 1 {
			return batch{}, fmt.Errorf("%w: seq %d encodes to more than %d bytes", ErrRecordTooLarge, recs.firstSeq(), sl.maxFrame)
		}
		n /= 2
	}
}

// pause waits d for the bandwidth cap, applying acks meanwhile.
func (sl *sendLoop) pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case err := <-sl.errCh:
			return err
		case <-sl.ackCh:
			if err := sl.applyAck(); err != nil {
				return err
			}
		}
	}
}

// send writes one batch; the window has room for it.
func (sl *sendLoop) send(ctx context.Context, b batch) error {
	if wait := sl.c.bucket.Reserve(sl.c.cfg.Now(), len(b.frame)); wait > 0 {
		sl.c.throttled.Add(int64(wait))
		if err := sl.pause(ctx, wait); err != nil {
			return err
		}
	}
	if err := sl.win.OnSendSized(b.last, len(b.frame)); err != nil {
		return fmt.Errorf("source records out of order: %w", err)
	}
	sl.budget.sent(sl.lane, len(b.frame))
	if _, err := sl.c.writeFrame(sl.str, b.frame); err != nil {
		return fmt.Errorf("send batch: %w", remoteClose(err))
	}
	if sl.lane == 0 {
		sl.c.sentSeq.Store(b.last)
	}
	sl.c.batchesSent.Add(1)
	sl.c.recordsSent.Add(uint64(b.count))
	sl.c.bytesSent.Add(uint64(len(b.frame)))
	sl.c.rawBytes.Add(uint64(b.raw))
	return nil
}

// applyAck applies the latest cumulative ack and credit to the window and
// posts the ack to the source's acker.
func (sl *sendLoop) applyAck() error {
	sl.mu.Lock()
	ack, credit := sl.lastAck, sl.lastCredit
	sl.lastCredit = nil
	sl.mu.Unlock()
	if credit != nil {
		sl.applyCredit(credit)
	}
	bytes := sl.win.Bytes()
	released, err := sl.win.OnAck(ack)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	sl.budget.released(sl.lane, released, bytes-sl.win.Bytes())
	sl.c.batchesAcked.Add(uint64(released))
	sl.acker.post(ack)
	return nil
}

// readLoop reads the cloud's frames until the stream or connection ends.
func (sl *sendLoop) readLoop() error {
	for {
		f, err := wire.ReadFrame(sl.str, wire.MaxFrameBytes)
		if err != nil {
			if errors.Is(err, wire.ErrMalformed) || errors.Is(err, wire.ErrFrameTooLarge) {
				return fmt.Errorf("%w: %w", ErrProtocol, err)
			}
			return fmt.Errorf("read: %w", remoteClose(err))
		}
		switch body := f.GetBody().(type) {
		case *syncv1.Frame_Ack:
			sl.mu.Lock()
			seq := body.Ack.GetAckedSeq()
			prev := sl.lastAck
			credit := body.Ack.GetCredit()
			if credit != nil {
				sl.lastCredit = credit
				// A credit repeats the cloud's last ack, which is below
				// our start if the cloud lost records it once acked.
				seq = max(seq, prev)
			}
			if seq >= prev {
				sl.lastAck = seq
			}
			sl.mu.Unlock()
			if seq < prev {
				return fmt.Errorf("%w: ack %d after %d", ErrProtocol, seq, prev)
			}
			select {
			case sl.ackCh <- struct{}{}:
			default:
			}
		case *syncv1.Frame_Error:
			return &RemoteError{Code: body.Error.GetCode(), Message: body.Error.GetMessage()}
		default:
			if handled, err := sl.c.commandFrame(f); handled { // commands.go
				if err != nil {
					return err
				}
				continue
			}
			return fmt.Errorf("%w: unexpected %s frame", ErrProtocol, frameKind(f))
		}
	}
}
