package devicestate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/tributary-io/tributary/cloud/internal/atomicfile"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// snapshotFile is the snapshot's name in Options.Dir.
const snapshotFile = "devicestate.json"

func snapshotPath(dir string) string { return filepath.Join(dir, snapshotFile) }

// snapshot is the file's content: every device's state and the log offset
// it reflects (every record below Next, none at or above).
type snapshot struct {
	Version int          `json:"version"`
	Next    uint64       `json:"next"`
	Devices []snapDevice `json:"devices"`
}

type snapDevice struct {
	Gateway     string         `json:"gateway"`
	Device      string         `json:"device"`
	Reported    map[string]any `json:"reported"`
	Version     uint64         `json:"version"`
	LastUpdated time.Time      `json:"last_updated"`
	LastEventID string         `json:"last_event_id"`
	LastOffset  uint64         `json:"last_offset"`
}

// loadSnapshot reads the snapshot at path; ok is false when there is none.
func loadSnapshot(path string) (snap snapshot, ok bool, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return snapshot{}, false, nil
	}
	if err != nil {
		return snapshot{}, false, fmt.Errorf("devicestate: read snapshot: %w", err)
	}
	snap, err = decodeSnapshot(b)
	if err != nil {
		return snapshot{}, false, fmt.Errorf("%w %s: %w", ErrCorruptSnapshot, path, err)
	}
	return snap, true, nil
}

// decodeSnapshot parses and checks a snapshot file's bytes.
func decodeSnapshot(b []byte) (snapshot, error) {
	var snap snapshot
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber() // keep numbers exactly as devices sent them
	dec.DisallowUnknownFields()
	if err := dec.Decode(&snap); err != nil {
		return snapshot{}, err
	}
	if dec.More() {
		return snapshot{}, errors.New("trailing data")
	}
	if snap.Version != 1 {
		return snapshot{}, fmt.Errorf("version %d, want 1", snap.Version)
	}
	seen := make(map[key]bool, len(snap.Devices))
	for i, d := range snap.Devices {
		k := key{d.Gateway, d.Device}
		switch {
		case d.Gateway == "" || d.Device == "":
			return snapshot{}, fmt.Errorf("device %d: empty gateway or device id", i)
		case seen[k]:
			return snapshot{}, fmt.Errorf("device %d: %s/%s listed twice", i, d.Gateway, d.Device)
		case d.Reported == nil:
			return snapshot{}, fmt.Errorf("device %d: reported is not an object", i)
		case d.Version == 0:
			return snapshot{}, fmt.Errorf("device %d: version 0", i)
		case d.LastOffset >= snap.Next:
			return snapshot{}, fmt.Errorf("device %d: last offset %d not below next %d", i, d.LastOffset, snap.Next)
		}
		seen[k] = true
	}
	return snap, nil
}

// Snapshot writes the current state and offset to the snapshot file now, if
// anything changed since the last one. Run calls it on its own; it is
// exported for operators and tests.
func (s *Store) Snapshot() error {
	s.snapMu.Lock()
	defer s.snapMu.Unlock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	if !s.dirty {
		s.mu.Unlock()
		return nil
	}
	snap := snapshot{Version: 1, Next: s.next, Devices: make([]snapDevice, 0, len(s.devices))}
	for k, d := range s.devices {
		snap.Devices = append(snap.Devices, snapDevice{
			Gateway: k.gateway, Device: k.device, Reported: d.reported, Version: d.version,
			LastUpdated: d.lastUpdated, LastEventID: d.lastEventID, LastOffset: d.lastOffset,
		})
	}
	// Encode under mu: the maps are shared with apply.
	b, err := json.Marshal(snap)
	if err == nil {
		s.dirty = false
	}
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("devicestate: encode snapshot: %w", err)
	}
	if err := atomicfile.Write(s.snapPath, append(b, '\n'), 0o600); err != nil {
		s.mu.Lock()
		s.dirty = true
		s.mu.Unlock()
		return fmt.Errorf("devicestate: write snapshot: %w", err)
	}
	if s.afterSnapshot != nil {
		s.afterSnapshot(snap.Next)
	}
	return nil
}
