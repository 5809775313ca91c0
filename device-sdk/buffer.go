package devicesdk

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
)

// OverflowPolicy says what a full buffer does with a new message.
type OverflowPolicy int

const (
	// RejectNew (the zero value) refuses the new message with ErrBufferFull
	// and keeps every buffered one.
	RejectNew OverflowPolicy = iota
	// DropOldest discards the oldest buffered messages until the new one
	// fits, and counts them in Stats.Dropped.
	DropOldest
)

// ErrBufferFull is returned by Enqueue under RejectNew when the message does
// not fit in the buffer's byte bound.
var ErrBufferFull = errors.New("devicesdk: buffer full")

// ErrTooLarge is returned for a message larger than the whole buffer (or
// than 16 MiB, or a topic longer than 65535 bytes).
var ErrTooLarge = errors.New("devicesdk: message too large")

// ErrBufferFailed is returned (wrapping the cause) by every Enqueue after
// the buffer's journal could not be fsync'd or repaired after a failed
// write: whether earlier writes are on disk is then unknown, so the buffer
// stops taking messages. Opening it again (a restart) recovers what is on
// disk.
var ErrBufferFailed = errors.New("devicesdk: buffer failed")

// ErrClosed is returned by calls on a closed buffer or device.
var ErrClosed = errors.New("devicesdk: closed")

// bufferFile is the journal's name inside the buffer directory.
const bufferFile = "buffer.log"

// journal is the part of *os.File the buffer writes through; tests wrap it
// to inject faults.
type journal interface {
	Write(p []byte) (int, error)
	Sync() error
	Truncate(size int64) error
	Close() error
}

// entry is one buffered message.
type entry struct {
	seq     uint64
	topic   string
	payload []byte
}

func (e entry) size() int64 { return int64(len(e.topic) + len(e.payload)) }

// buffer is the durable offline buffer: an append-only journal file that is
// fsync'd before Append returns, mirrored in memory. It is bounded by the sum
// of topic and payload bytes of the messages it holds.
//
// Removals (acknowledgements and drops) are journalled without fsync: a
// removal lost in a crash brings the message back, and it is sent again (a
// duplicate, which QoS 1 allows), never lost. The journal is rewritten
// (compacted) when it is mostly removed messages, and on open.
//
// A torn or corrupt record ends the journal: it and everything after it are
// discarded on open and counted in truncated. Only the tail can be torn by a
// crash, since every append is fsync'd before the next.
type buffer struct {
	dir      string
	maxBytes int64
	policy   OverflowPolicy
	log      *slog.Logger

	mu        sync.Mutex
	f         journal
	failed    error // non-nil: ErrBufferFailed wrapping the cause
	fileBytes int64
	entries   []entry // in seq order; entries[0] is the oldest
	liveBytes int64
	nextSeq   uint64
	dropped   uint64
	rejected  uint64
	acked     uint64
	truncated int64
	closed    bool
	scratch   []byte
}

// openBuffer opens (or creates) the buffer in dir and replays its journal.
func openBuffer(dir string, maxBytes int64, policy OverflowPolicy, log *slog.Logger) (*buffer, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("devicesdk: buffer dir: %w", err)
	}
	b := &buffer{dir: dir, maxBytes: maxBytes, policy: policy, log: log, nextSeq: 1}
	data, err := os.ReadFile(filepath.Join(dir, bufferFile))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("devicesdk: read buffer: %w", err)
	}
	off := 0
	for off < len(data) {
		r, n, err := decodeRecord(data[off:])
		if err != nil {
			b.truncated = int64(len(data) - off)
			log.Warn("devicesdk: buffer journal ends in a bad record; discarding the tail",
				"offset", off, "bytes", b.truncated, "err", err)
			break
		}
		off += n
		b.replay(r)
	}
	// Whatever was there, start from a clean journal of the live entries.
	if err := b.rewrite(); err != nil {
		return nil, err
	}
	return b, nil
}

// replay applies one journal record to the in-memory state.
func (b *buffer) replay(r record) {
	switch r.kind {
	case kindData:
		if r.seq < b.nextSeq {
			return // a duplicate or out-of-order record: ignore
		}
		e := entry{seq: r.seq, topic: r.topic, payload: append([]byte(nil), r.payload...)}
		b.entries = append(b.entries, e)
		b.liveBytes += e.size()
		b.nextSeq = r.seq + 1
	case kindAck, kindDrop:
		n := b.removeThrough(r.seq)
		if r.kind == kindDrop {
			b.dropped += uint64(n)
		}
		if r.seq >= b.nextSeq {
			b.nextSeq = r.seq + 1
		}
	}
}

// removeThrough removes every entry with seq <= through and returns how many.
func (b *buffer) removeThrough(through uint64) int {
	i := 0
	for i < len(b.entries) && b.entries[i].seq <= through {
		b.liveBytes -= b.entries[i].size()
		i++
	}
	if i > 0 {
		clear(b.entries[:i])
		b.entries = b.entries[i:]
	}
	return i
}

// rewrite writes the live entries to a new journal, fsyncs it and renames it
// over the old one. Called with mu held (or before b is shared).
func (b *buffer) rewrite() error {
	tmp := filepath.Join(b.dir, bufferFile+".tmp")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("devicesdk: compact buffer: %w", err)
	}
	buf := b.scratch[:0]
	// An ack record first keeps the sequence numbers growing across
	// compactions even when the buffer is empty. It must remove nothing
	// live: it acknowledges only what comes before the oldest entry.
	through := b.nextSeq - 1
	if len(b.entries) > 0 {
		through = b.entries[0].seq - 1
	}
	if through > 0 {
		buf = appendRecord(buf, record{kind: kindAck, seq: through})
	}
	for _, e := range b.entries {
		buf = appendRecord(buf, record{kind: kindData, seq: e.seq, topic: e.topic, payload: e.payload})
	}
	_, err = f.Write(buf)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(b.dir, bufferFile))
	}
	if err == nil {
		err = syncDir(b.dir)
	}
	if err != nil {
		return fmt.Errorf("devicesdk: compact buffer: %w", err)
	}
	nf, err := os.OpenFile(filepath.Join(b.dir, bufferFile), os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("devicesdk: reopen buffer: %w", err)
	}
	if b.f != nil {
		b.f.Close()
	}
	b.f = nf
	b.fileBytes = int64(len(buf))
	if cap(buf) <= 1<<20 {
		b.scratch = buf[:0]
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// append buffers one message durably: it returns nil only once the record is
// fsync'd. Under DropOldest it may drop older entries first.
func (b *buffer) append(topic string, payload []byte) (uint64, error) {
	size := int64(len(topic) + len(payload))
	if len(topic) > 65535 || len(payload) > maxPayload || size > b.maxBytes {
		return 0, fmt.Errorf("%w: %d bytes (limit %d)", ErrTooLarge, size, b.maxBytes)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, ErrClosed
	}
	if b.failed != nil {
		return 0, b.failed
	}
	buf := b.scratch[:0]
	var dropThrough uint64
	dropN := 0
	if b.liveBytes+size > b.maxBytes {
		if b.policy != DropOldest {
			b.rejected++
			return 0, fmt.Errorf("%w: %d of %d bytes used", ErrBufferFull, b.liveBytes, b.maxBytes)
		}
		for free := b.maxBytes - b.liveBytes; free < size; dropN++ {
			free += b.entries[dropN].size()
			dropThrough = b.entries[dropN].seq
		}
		// The drop goes into the same fsync'd write as the new message.
		buf = appendRecord(buf, record{kind: kindDrop, seq: dropThrough})
	}
	seq := b.nextSeq
	buf = appendRecord(buf, record{kind: kindData, seq: seq, topic: topic, payload: payload})
	if err := b.write(buf, true); err != nil {
		return 0, err
	}
	if dropN > 0 {
		b.removeThrough(dropThrough)
		b.dropped += uint64(dropN)
	}
	b.nextSeq++
	b.entries = append(b.entries, entry{seq: seq, topic: topic, payload: append([]byte(nil), payload...)})
	b.liveBytes += size
	return seq, nil
}

// write appends buf to the journal, fsyncing if sync. Called with mu held.
//
// A failed write is cut off the journal again, so later records do not
// follow a torn one (which would hide them on the next open); if that cut or
// an fsync fails, the buffer fails for good (ErrBufferFailed).
func (b *buffer) write(buf []byte, sync bool) error {
	if cap(buf) <= 1<<20 {
		defer func() { b.scratch = buf[:0] }()
	}
	if _, err := b.f.Write(buf); err != nil {
		if terr := b.f.Truncate(b.fileBytes); terr != nil {
			b.failed = fmt.Errorf("%w: write: %w; truncate: %w", ErrBufferFailed, err, terr)
			return b.failed
		}
		return fmt.Errorf("devicesdk: write buffer: %w", err)
	}
	b.fileBytes += int64(len(buf))
	if sync {
		if err := b.f.Sync(); err != nil {
			b.failed = fmt.Errorf("%w: fsync: %w", ErrBufferFailed, err)
			return b.failed
		}
	}
	return nil
}

// ack removes every entry with seq <= through (the gateway acknowledged
// them) and journals that without fsync. Acks of entries already gone are
// no-ops.
func (b *buffer) ack(through uint64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	n := b.removeThrough(through)
	if n == 0 {
		return nil
	}
	b.acked += uint64(n)
	if b.failed != nil {
		// Keep sending what is in memory; the journal takes no more writes.
		return nil
	}
	if err := b.write(appendRecord(b.scratch[:0], record{kind: kindAck, seq: through}), false); err != nil {
		return err
	}
	if b.fileBytes > 1<<20 && b.fileBytes > 4*b.liveBytes {
		return b.rewrite()
	}
	return nil
}

// next returns up to max entries with seq > after, oldest first. The
// returned entries' payloads must not be modified.
func (b *buffer) next(after uint64, max int) []entry {
	b.mu.Lock()
	defer b.mu.Unlock()
	i := sort.Search(len(b.entries), func(i int) bool { return b.entries[i].seq > after })
	j := min(i+max, len(b.entries))
	return append([]entry(nil), b.entries[i:j]...)
}

// len returns how many messages are buffered.
func (b *buffer) len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.entries)
}

// stats returns a snapshot of the counters.
func (b *buffer) stats() Stats {
	b.mu.Lock()
	defer b.mu.Unlock()
	return Stats{
		Buffered: len(b.entries), BufferedBytes: b.liveBytes,
		Acked: b.acked, Dropped: b.dropped, Rejected: b.rejected,
		TruncatedBytes: b.truncated,
	}
}

// close fsyncs the journal (so removals are durable too) and closes it.
func (b *buffer) close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	err := b.f.Sync()
	if cerr := b.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("devicesdk: close buffer: %w", err)
	}
	return nil
}
