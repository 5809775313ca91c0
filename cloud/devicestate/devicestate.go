// Package devicestate keeps the last reported state of every device: it
// consumes the central log for events of type EventType (which a gateway
// makes of what a device publishes on $tributary/state/<device>), merges
// each one into its device's reported properties as an RFC 7386 JSON merge
// patch, and answers reads of the result.
//
// # Durability: a snapshot plus the log
//
// The log is the source of truth; the Store is a view of it that must
// survive restarts without applying an update twice (State.Version counts
// updates). It is kept in one snapshot file in Options.Dir holding every
// device's state together with the log offset it reflects, written
// atomically (temp file, fsync, rename, directory fsync) at most every
// Options.SnapshotInterval while updates arrive, and at Close. A restart
// loads the snapshot and resumes reading the log at its offset, so what is
// replayed is bounded by one snapshot interval of updates, and every update
// before the offset is in the snapshot: none is applied twice, none is
// skipped. Rejected alternatives: rebuilding from the whole log at every
// start costs a read of the log (unbounded, and lossy once retention
// removed old updates); a database would add a second durability story for
// what is one atomically replaced file.
//
// Without a snapshot (the first start) the Store rebuilds from the oldest
// retained offset. If retention removed records the Store had not read yet,
// it continues at the oldest retained one and counts the skipped offsets in
// Stats.SkippedByRetention: those updates are lost to the view.
//
// The whole state is held in memory: about the size of the reported JSON
// of every device, plus a few hundred bytes per device.
package devicestate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/tributary-io/tributary/cloud/commitlog"
)

// EventType is the CloudEvent type of a reported-state update. Its source is
// /gateways/<gateway>/devices/<device> (path-escaped) and its data a JSON
// object, the merge patch.
const EventType = "io.tributary.device.state"

// ErrUnknownDevice is returned by Get for a device with no applied update.
var ErrUnknownDevice = errors.New("devicestate: no reported state for this device")

// ErrCorruptSnapshot is returned (wrapped) by Open when the snapshot file
// exists but cannot be read back. The Store refuses to guess: delete the
// file to rebuild from the log's oldest retained record.
var ErrCorruptSnapshot = errors.New("devicestate: corrupt snapshot")

// ErrClosed is returned by Run and Snapshot after Close.
var ErrClosed = errors.New("devicestate: closed")

// Options configure a Store. Every field documents its zero-value default.
type Options struct {
	// Dir holds the snapshot file (snapshotFile). Required; created if
	// missing. One Store per directory.
	Dir string
	// SnapshotInterval is the most time between an applied update and the
	// snapshot that makes it durable in the view (a crash replays at most
	// this much of the log). 0 means 5 s.
	SnapshotInterval time.Duration
	// ReadBatch is how many log records one read takes. 0 means 1000.
	ReadBatch int
	// Logger receives the Store's logs. nil discards them.
	Logger *slog.Logger
}

// Validate reports a missing Dir or a negative setting.
func (o Options) Validate() error {
	if o.Dir == "" {
		return errors.New("devicestate: Options.Dir is required")
	}
	if o.SnapshotInterval < 0 || o.ReadBatch < 0 {
		return errors.New("devicestate: negative SnapshotInterval or ReadBatch")
	}
	return nil
}

// State is one device's reported state as the API shows it.
type State struct {
	// Gateway and Device identify the device (its MQTT client id behind
	// that gateway).
	Gateway string `json:"gateway"`
	Device  string `json:"device"`
	// Reported is the merge of every update, a JSON object.
	Reported json.RawMessage `json:"reported"`
	// Version counts the updates applied (1 after the first).
	Version uint64 `json:"version"`
	// LastUpdated is the time of the last update's event (when the gateway
	// received it), or the log's time if the event had none.
	LastUpdated time.Time `json:"last_updated"`
	// LastEventID is the last applied event's id.
	LastEventID string `json:"last_event_id"`
	// LastOffset is the last applied event's log offset.
	LastOffset uint64 `json:"last_offset"`
}

// Summary is one device in a gateway's list.
type Summary struct {
	// Device is the device id; Version and LastUpdated are its State's.
	Device      string    `json:"device"`
	Version     uint64    `json:"version"`
	LastUpdated time.Time `json:"last_updated"`
}

// Stats are a Store's counters since Open.
type Stats struct {
	// Devices is how many devices have a state.
	Devices int
	// Applied counts updates merged; Invalid counts state events skipped
	// because their source or data was not what EventType promises (logged);
	// Duplicates counts events skipped because they repeated the device's
	// last event id.
	Applied, Invalid, Duplicates uint64
	// SkippedByRetention counts log offsets removed by retention before the
	// Store read them.
	SkippedByRetention uint64
	// Next is the next log offset the Store will read: every record below it
	// is reflected.
	Next uint64
}

// device is a device's state in memory.
type device struct {
	reported    map[string]any
	version     uint64
	lastUpdated time.Time
	lastEventID string
	lastOffset  uint64
}

type key struct{ gateway, device string }

// Store is the device-state view. Run feeds it from the log; Get, List and
// Stats read it concurrently.
//
// Lock order: snapMu (held by whoever writes a snapshot) before mu.
type Store struct {
	log      commitlog.Log
	opts     Options
	logger   *slog.Logger
	now      func() time.Time
	snapPath string

	snapMu sync.Mutex // serializes snapshot writes

	mu       sync.Mutex
	devices  map[key]*device
	next     uint64 // next offset to read
	dirty    bool   // applied offsets not yet in a snapshot
	stats    Stats
	progress chan struct{} // closed and replaced when next grows
	closed   bool
	running  bool

	afterSnapshot func(next uint64) // test hook: called after each snapshot written
}

// Open loads the snapshot in opts.Dir (if any) and returns a Store that
// resumes at its offset; call Run to consume the log.
func Open(l commitlog.Log, opts Options) (*Store, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if opts.SnapshotInterval == 0 {
		opts.SnapshotInterval = 5 * time.Second
	}
	if opts.ReadBatch == 0 {
		opts.ReadBatch = 1000
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(opts.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("devicestate: %w", err)
	}
	s := &Store{
		log: l, opts: opts, logger: logger, now: time.Now,
		snapPath: snapshotPath(opts.Dir),
		devices:  map[key]*device{}, progress: make(chan struct{}),
	}
	snap, ok, err := loadSnapshot(s.snapPath)
	if err != nil {
		return nil, err
	}
	switch {
	case !ok:
		s.next = l.FirstOffset()
	case snap.Next > l.NextOffset():
		// The snapshot saw records this log does not have: it belongs to
		// another log (the data directory was replaced). Rebuild.
		logger.Warn("devicestate: snapshot is ahead of the log; rebuilding from the log",
			"snapshot_next", snap.Next, "log_next", l.NextOffset())
		s.next = l.FirstOffset()
	default:
		s.next = snap.Next
		for _, d := range snap.Devices {
			s.devices[key{d.Gateway, d.Device}] = &device{
				reported: d.Reported, version: d.Version, lastUpdated: d.LastUpdated,
				lastEventID: d.LastEventID, lastOffset: d.LastOffset,
			}
		}
	}
	s.stats.Next = s.next
	return s, nil
}

// Run reads the log from the Store's offset and applies state events until
// ctx ends (then it writes a final snapshot and returns ctx.Err()) or
// reading the log fails. One Run at a time.
func (s *Store) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.closed || s.running {
		s.mu.Unlock()
		return fmt.Errorf("%w (or already running)", ErrClosed)
	}
	s.running = true
	next := s.next
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.running = false
		s.mu.Unlock()
	}()
	lastSnap := s.now()
	for {
		recs, err := s.log.Read(next, s.opts.ReadBatch, 4<<20)
		if errors.Is(err, commitlog.ErrOutOfRange) {
			first := s.log.FirstOffset()
			s.logger.Warn("devicestate: retention removed unread records; their updates are lost to the view",
				"from", next, "first_retained", first)
			s.mu.Lock()
			if first > next {
				s.stats.SkippedByRetention += first - next
				next = first
				s.advance(next)
			}
			s.mu.Unlock()
			continue
		}
		if err != nil {
			_ = s.Snapshot()
			return fmt.Errorf("devicestate: read log at %d: %w", next, err)
		}
		if len(recs) > 0 {
			s.apply(recs)
			next = recs[len(recs)-1].Offset + 1
		}
		due := lastSnap.Add(s.opts.SnapshotInterval)
		if s.isDirty() && !s.now().Before(due) {
			if err := s.Snapshot(); err != nil {
				s.logger.Error("devicestate: snapshot failed; retrying after the next interval", "err", err)
			}
			lastSnap = s.now()
			due = lastSnap.Add(s.opts.SnapshotInterval)
		}
		if len(recs) > 0 {
			continue
		}
		// Caught up: wait for more, but not past the next snapshot due.
		wctx, cancel := ctx, context.CancelFunc(func() {})
		if s.isDirty() {
			wctx, cancel = context.WithDeadline(ctx, due)
		}
		err = s.log.Wait(wctx, next)
		cancel()
		if ctx.Err() != nil {
			if err := s.Snapshot(); err != nil {
				s.logger.Error("devicestate: final snapshot failed", "err", err)
			}
			return ctx.Err()
		}
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			_ = s.Snapshot()
			return fmt.Errorf("devicestate: wait for the log: %w", err)
		}
	}
}

func (s *Store) isDirty() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dirty
}

// apply merges the state events among recs and advances the offset past
// them, under one lock so a snapshot sees whole batches.
func (s *Store) apply(recs []commitlog.Record) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range recs {
		s.applyOne(&recs[i])
	}
	s.advance(recs[len(recs)-1].Offset + 1)
}

// applyOne applies one record if it is a state event. Called with mu held.
func (s *Store) applyOne(rec *commitlog.Record) {
	u, ok, err := decodeUpdate(rec.Value)
	if !ok {
		return
	}
	if err != nil {
		s.stats.Invalid++
		s.logger.Warn("devicestate: skipping an invalid state event", "offset", rec.Offset, "err", err)
		return
	}
	k := key{u.gateway, u.device}
	d := s.devices[k]
	if d == nil {
		d = &device{reported: map[string]any{}}
		s.devices[k] = d
		s.stats.Devices = len(s.devices)
	} else if u.id == d.lastEventID {
		s.stats.Duplicates++
		return
	}
	d.reported = mergePatch(d.reported, u.patch).(map[string]any)
	d.version++
	d.lastUpdated = u.time
	if d.lastUpdated.IsZero() {
		d.lastUpdated = rec.Time
	}
	d.lastEventID = u.id
	d.lastOffset = rec.Offset
	s.stats.Applied++
}

// advance moves the offset to next and wakes WaitApplied. Called with mu
// held.
func (s *Store) advance(next uint64) {
	if next <= s.next {
		return
	}
	s.next = next
	s.stats.Next = next
	s.dirty = true
	close(s.progress)
	s.progress = make(chan struct{})
}

// WaitApplied blocks until every log record below offset is reflected (for
// read-your-writes: wait for the offset after the update's), or ctx ends.
func (s *Store) WaitApplied(ctx context.Context, offset uint64) error {
	for {
		s.mu.Lock()
		next, ch := s.next, s.progress
		s.mu.Unlock()
		if next >= offset {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Get returns the state of device behind gateway, or ErrUnknownDevice.
func (s *Store) Get(gateway, dev string) (State, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.devices[key{gateway, dev}]
	if d == nil {
		return State{}, fmt.Errorf("%w: device %q of gateway %q", ErrUnknownDevice, dev, gateway)
	}
	rep, err := json.Marshal(d.reported)
	if err != nil {
		// Decoded JSON always encodes again.
		return State{}, fmt.Errorf("devicestate: encode state: %w", err)
	}
	return State{
		Gateway: gateway, Device: dev, Reported: rep, Version: d.version,
		LastUpdated: d.lastUpdated, LastEventID: d.lastEventID, LastOffset: d.lastOffset,
	}, nil
}

// List returns the devices of gateway that have a state, sorted by id.
func (s *Store) List(gateway string) []Summary {
	s.mu.Lock()
	out := []Summary{}
	for k, d := range s.devices {
		if k.gateway == gateway {
			out = append(out, Summary{Device: k.device, Version: d.version, LastUpdated: d.lastUpdated})
		}
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Device < out[j].Device })
	return out
}

// Stats returns the Store's counters.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Close writes a final snapshot; Run must have returned. Reads keep working.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	s.mu.Unlock()
	err := s.Snapshot()
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	return err
}
