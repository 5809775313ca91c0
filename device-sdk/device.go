package devicesdk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// DeviceConfig configures a Device: a Client whose publishes go through a
// durable offline buffer. Every field documents its zero-value default.
type DeviceConfig struct {
	// Config is the connection to the gateway (Broker and DeviceID are
	// required).
	Config
	// BufferDir is the directory holding the buffer's journal; it must
	// survive a reboot and belong to one Device at a time. Required.
	BufferDir string
	// MaxBufferBytes bounds the topic plus payload bytes held in the buffer.
	// 0 means 64 MiB.
	MaxBufferBytes int64
	// Overflow is what a full buffer does with a new message. The zero
	// value is RejectNew.
	Overflow OverflowPolicy
	// MaxInflight is how many buffered messages are sent ahead of their
	// PUBACKs. 0 means 1: strict order, each message is sent only after the
	// one before it was acknowledged. Above 1, throughput improves on slow
	// links but order is kept only while the connection stays up: after a
	// reconnect paho's resend of the in-flight window can interleave with
	// newer messages (none is lost). It also bounds the duplicates one crash
	// or connection loss can cause.
	MaxInflight int
	// RetryInterval is the wait before resending after a failed publish.
	// 0 means 1 s.
	RetryInterval time.Duration
	// Logger receives the Device's logs. nil discards them.
	Logger *slog.Logger
}

// Validate checks the embedded Config and reports a missing BufferDir, a
// negative limit or an unknown Overflow, as an error wrapping ErrConfig.
func (cfg DeviceConfig) Validate() error {
	if err := cfg.Config.Validate(); err != nil {
		return err
	}
	if cfg.BufferDir == "" {
		return fmt.Errorf("%w: BufferDir is required", ErrConfig)
	}
	if cfg.MaxBufferBytes < 0 || cfg.MaxInflight < 0 || cfg.RetryInterval < 0 {
		return fmt.Errorf("%w: negative limit", ErrConfig)
	}
	if cfg.Overflow != RejectNew && cfg.Overflow != DropOldest {
		return fmt.Errorf("%w: unknown overflow policy %d", ErrConfig, cfg.Overflow)
	}
	return nil
}

// Stats are a Device's buffer counters since Open (Buffered and
// BufferedBytes are current values, including messages replayed from disk).
type Stats struct {
	// Buffered is how many messages wait for the gateway's PUBACK.
	Buffered int
	// BufferedBytes is their topic plus payload bytes.
	BufferedBytes int64
	// Acked is how many messages the gateway acknowledged (and so left the
	// buffer).
	Acked uint64
	// Dropped is how many messages DropOldest discarded unsent.
	Dropped uint64
	// Rejected is how many Enqueue calls failed with ErrBufferFull.
	Rejected uint64
	// TruncatedBytes is how many bytes of a torn or corrupt journal tail
	// were discarded when the buffer was opened.
	TruncatedBytes int64
}

// Device publishes through a durable offline buffer: Enqueue returns once a
// message is fsync'd to the buffer, and a background sender delivers
// buffered messages in order (see DeviceConfig.MaxInflight) with QoS 1, removing each only after the
// gateway's PUBACK. The sender reconnects on its own and resends, after a
// reconnect or a reboot, everything not yet acknowledged: delivery is at
// least once. A crash between sending and receiving a PUBACK (or losing an
// unsynced acknowledgement record) resends up to MaxInflight messages, so the
// gateway may see duplicates.
//
// A Device is safe for concurrent use.
type Device struct {
	cfg  DeviceConfig
	log  *slog.Logger
	c    mqtt.Client
	buf  *buffer
	acks *ackStore // paho's store, signalling PUBACKs
	cmd  *commander
	wake chan struct{}
	stop chan struct{}
	done chan struct{}

	mu     sync.Mutex
	closed bool

	progressMu sync.Mutex
	progressCh chan struct{} // closed on the next ack
}

// Open opens the buffer in cfg.BufferDir, replays what a previous run left
// unacknowledged, and starts connecting to the gateway in the background. It
// does not wait for the gateway: a device can buffer while offline.
func Open(cfg DeviceConfig) (*Device, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.MaxBufferBytes == 0 {
		cfg.MaxBufferBytes = 64 << 20
	}
	if cfg.MaxInflight == 0 {
		cfg.MaxInflight = 1
	}
	if cfg.RetryInterval == 0 {
		cfg.RetryInterval = time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = discard()
	}
	buf, err := openBuffer(cfg.BufferDir, cfg.MaxBufferBytes, cfg.Overflow, log)
	if err != nil {
		return nil, err
	}
	d := &Device{
		cfg: cfg, log: log, buf: buf,
		wake: make(chan struct{}, 1),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	// Replies go through the buffer, so they survive a broken link.
	d.cmd = newCommander(cfg.DeviceID, log, cfg.Commands, func(_ context.Context, topic string, payload []byte) error {
		return d.bufferAppend(topic, payload)
	})
	d.acks = newAckStore(mqtt.NewOrderedMemoryStore())
	d.c = newPahoClient(cfg.Config, d.cmd, d.acks)
	// With ConnectRetry the token completes only once connected (or at
	// Disconnect).
	go d.send(d.c.Connect())
	return d, nil
}

// Enqueue buffers payload for topic and returns once it is fsync'd: from
// then on it survives a crash or reboot and will be sent. It returns
// ErrBufferFull (RejectNew) when it does not fit, ErrTooLarge when it could
// never fit, and ErrClosed after Close.
func (d *Device) Enqueue(topic string, payload []byte) error {
	if topic == "" {
		return errors.New("devicesdk: empty topic")
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return ErrClosed
	}
	d.mu.Unlock()
	return d.bufferAppend(topic, payload)
}

// bufferAppend buffers a message and wakes the sender. Command replies use
// it directly: they are still buffered while Close waits for handlers.
func (d *Device) bufferAppend(topic string, payload []byte) error {
	if _, err := d.buf.append(topic, payload); err != nil {
		return err
	}
	select {
	case d.wake <- struct{}{}:
	default:
	}
	return nil
}

// Flush waits until every buffered message is acknowledged by the gateway
// or ctx ends (then it returns ctx.Err()).
func (d *Device) Flush(ctx context.Context) error {
	for {
		// Take the channel before looking, so an ack in between wakes us.
		ch := d.progress()
		if d.buf.len() == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-d.done:
			return ErrClosed
		case <-ch:
		}
	}
}

// progress returns a channel that is closed on the sender's next ack.
func (d *Device) progress() <-chan struct{} {
	d.progressMu.Lock()
	defer d.progressMu.Unlock()
	if d.progressCh == nil {
		d.progressCh = make(chan struct{})
	}
	return d.progressCh
}

func (d *Device) signalProgress() {
	d.progressMu.Lock()
	defer d.progressMu.Unlock()
	if d.progressCh != nil {
		close(d.progressCh)
		d.progressCh = nil
	}
}

// Stats returns the buffer's counters.
func (d *Device) Stats() Stats { return d.buf.stats() }

// Connected reports whether the connection to the gateway is up now.
func (d *Device) Connected() bool { return d.c.IsConnectionOpen() }

// Close stops accepting messages and commands, cancels running command
// handlers' context and waits for their replies to be buffered, waits until
// the buffer is flushed, or until ctx ends, then disconnects and closes the
// buffer. Messages still buffered stay on disk for the next Open; Close then
// returns ctx.Err().
func (d *Device) Close(ctx context.Context) error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return ErrClosed
	}
	d.closed = true
	d.mu.Unlock()
	ferr := d.cmd.close(ctx)
	if ferr == nil {
		ferr = d.Flush(ctx)
	}
	close(d.stop)
	<-d.done
	d.c.Disconnect(100)
	if err := d.buf.close(); err != nil {
		return err
	}
	return ferr
}

// inflight is one sent, not yet acknowledged message.
type inflight struct {
	seq uint64
	tok mqtt.Token
	// tokDone is tok.Done() until the token completes without an error,
	// then nil: the completion was paho's resend re-claiming the packet id
	// (see ackStore), not the PUBACK.
	tokDone <-chan struct{}
	// acked closes on the message's PUBACK; nil when paho assigned no
	// packet id (then tok carries the error).
	acked <-chan struct{}
}

// publish hands a buffered message to paho.
func (d *Device) publish(e entry) inflight {
	tok := d.c.Publish(e.topic, 1, false, e.payload)
	f := inflight{seq: e.seq, tok: tok, tokDone: tok.Done()}
	if pt, ok := tok.(*mqtt.PublishToken); ok && pt.MessageID() != 0 {
		f.acked = d.acks.acked(pt.MessageID())
	}
	return f
}

// send is the sender goroutine: it keeps up to MaxInflight buffered
// messages published and acknowledges them in the buffer, in order, as
// their PUBACKs arrive. On a failed publish it waits RetryInterval and
// resends from the oldest unacknowledged message.
//
// A message counts as acknowledged only when paho removes it from its store
// on the PUBACK (ackStore), never because its token completed: after a
// reconnect paho v1.5.1 completes the old token without an error as it
// queues its own resend, and trusting that sent the next message ahead of
// the resend (out of order) and dropped from the buffer a message the
// gateway did not have yet.
//
// It publishes nothing before the first connection is complete: paho marks
// a connection up before it resends its store, and a message published in
// between is sent twice, racing on the same packet (paho v1.5.1).
func (d *Device) send(connected mqtt.Token) {
	defer close(d.done)
	select {
	case <-d.stop:
		return
	case <-connected.Done():
	}
	var window []inflight
	var sent uint64 // highest seq published in the current window
	retry := time.NewTimer(0)
	<-retry.C
	for {
		if len(window) < d.cfg.MaxInflight {
			for _, e := range d.buf.next(sent, d.cfg.MaxInflight-len(window)) {
				window = append(window, d.publish(e))
				sent = e.seq
			}
		}
		if len(window) == 0 {
			select {
			case <-d.stop:
				return
			case <-d.wake:
				continue
			}
		}
		head := &window[0]
		var err error
		select {
		case <-d.stop:
			return
		case <-d.wake:
			continue
		case <-head.acked:
		case <-head.tokDone:
			// Without an error and without a packet id to watch (not a
			// paho v1.5.1 token), the token is all there is: trust it.
			if err = head.tok.Error(); err == nil && head.acked != nil {
				select {
				case <-head.acked: // paho deletes on the PUBACK before completing the token
				default:
					d.log.Debug("devicesdk: publish token completed by paho's resend; waiting for the PUBACK", "seq", head.seq)
					head.tokDone = nil
					continue
				}
			}
		}
		if err != nil {
			d.log.Warn("devicesdk: publish failed; resending after a pause", "seq", head.seq, "err", err)
			// Resend the whole window, in order, after the pause. Tokens of
			// the rest are abandoned; paho may still deliver them
			// (duplicates).
			sent = head.seq - 1
			window = window[:0]
			retry.Reset(d.cfg.RetryInterval)
			select {
			case <-d.stop:
				retry.Stop()
				return
			case <-retry.C:
			}
			continue
		}
		seq := head.seq
		window = window[1:]
		if err := d.buf.ack(seq); err != nil {
			d.log.Error("devicesdk: journal ack", "seq", seq, "err", err)
		}
		d.signalProgress()
	}
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
