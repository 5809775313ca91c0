package dispatch

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/tributary-io/tributary/cloud/internal/atomicfile"
	"io/fs"
	"os"
	"path/filepath"
)

// ErrCorruptCursor is returned (wrapped) when a cursor file exists but cannot
// be read back. The dispatcher refuses to guess a position: delete the file to
// start the subscription over from its From setting.
var ErrCorruptCursor = errors.New("dispatch: corrupt cursor file")

// cursorState is what a subscription keeps on disk.
//
// Why a file per subscription, replaced by rename: the cursor is one number
// written at most every FlushInterval, so a database would add a dependency
// and a second durability story for nothing; temp + fsync + rename + dir
// fsync gives an atomic, durable replace, and a reader sees either the old or
// the new file, never a torn one.
type cursorState struct {
	Version int `json:"version"`
	// Offset is the lowest log offset not yet completed: every offset below
	// it was delivered, filtered out or dead-lettered.
	Offset uint64 `json:"offset"`
	// Epoch is random, made when the cursor file is first created. It is part
	// of the dead-letter producer names (see deadLetterProducer), so a new
	// subscription with an old ID does not inherit old high-water marks.
	Epoch string `json:"epoch"`
}

type cursorFile struct {
	dir, path string
}

func newCursorFile(dir, id string) *cursorFile {
	return &cursorFile{dir: dir, path: filepath.Join(dir, id+".cursor")}
}

// load returns the stored state, or ok=false if there is no cursor file.
func (c *cursorFile) load() (st cursorState, ok bool, err error) {
	b, err := os.ReadFile(c.path)
	if errors.Is(err, fs.ErrNotExist) {
		return cursorState{}, false, nil
	}
	if err != nil {
		return cursorState{}, false, fmt.Errorf("dispatch: read cursor: %w", err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return cursorState{}, false, fmt.Errorf("%w %s: %w", ErrCorruptCursor, c.path, err)
	}
	if st.Version != 1 || st.Epoch == "" {
		return cursorState{}, false, fmt.Errorf("%w %s: version %d, epoch %q", ErrCorruptCursor, c.path, st.Version, st.Epoch)
	}
	return st, true, nil
}

// store replaces the cursor file atomically and durably.
func (c *cursorFile) store(st cursorState) error {
	st.Version = 1
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(c.path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("dispatch: write cursor: %w", err)
	}
	return nil
}

func (c *cursorFile) remove() error { return removeFile(c.dir, c.path) }

// removeFile deletes path (in dir) durably; a missing file is no error.
func removeFile(dir, path string) error {
	err := os.Remove(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("dispatch: remove %s: %w", filepath.Base(path), err)
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("dispatch: sync dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("dispatch: sync dir: %w", err)
	}
	return nil
}

func newEpoch() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b[:])
}
