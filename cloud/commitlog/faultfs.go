package commitlog

import (
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// FaultFS wraps an FS and injects faults, for tests of the log and of its
// users (pebble's vfs/errorfs in miniature): failed and torn writes, failed
// fsyncs, failed directory operations, and power loss (Crash).
//
// It tracks, per file, how much of it is durable: the size at its last
// successful Sync, and whether a newly created file's directory entry was
// made durable by SyncDir. Renames and removals are treated as durable at
// once. Writes are assumed to only extend files (as the log's do).
type FaultFS struct {
	inner FS

	mu     sync.Mutex
	faults []*Fault
	gen    int  // bumped by Crash; files opened before fail with ErrCrashed
	down   bool // between Crash and Restart every operation fails
	files  map[string]*durability
	counts map[Op]int
}

// durability is what FaultFS knows of one file.
type durability struct {
	size    int64 // as written through the FaultFS
	synced  int64 // durable prefix
	created bool  // created and its directory not fsync'd since
}

// Op names an FS operation a Fault can target.
type Op string

const (
	OpWrite   Op = "write"   // File.WriteAt
	OpSync    Op = "sync"    // File.Sync
	OpSyncDir Op = "syncdir" // FS.SyncDir
	OpCreate  Op = "create"  // FS.OpenFile with os.O_CREATE
	OpRename  Op = "rename"  // FS.Rename (of the new path)
	OpRemove  Op = "remove"  // FS.Remove
)

// Fault is one injected failure.
type Fault struct {
	Op Op
	// PathSuffix limits the fault to paths ending with it ("" = any path),
	// e.g. ".log" for segments or "hwm.checkpoint.tmp".
	PathSuffix string
	// After is how many matching operations succeed before the fault fires.
	After int
	// Err is returned by the failing operation (nil = ErrInjected).
	Err error
	// TornBytes, for OpWrite, writes this many bytes of the data before
	// failing (a torn write); a negative value writes half of it.
	TornBytes int
	// Sticky makes every later matching operation fail too.
	Sticky bool
	// Crash makes the fault a power loss at this operation: the FS crashes
	// (see FaultFS.Crash, with Rand and Holes) just before it, after the
	// TornBytes of a write reached the file, and the operation fails with
	// ErrCrashed.
	Crash bool
	Rand  *rand.Rand
	Holes bool
}

var (
	// ErrInjected is the default error of a Fault.
	ErrInjected = errors.New("commitlog: injected fault")
	// ErrCrashed is returned by files opened before FaultFS.Crash.
	ErrCrashed = errors.New("commitlog: file system crashed")
)

// NewFaultFS wraps inner (nil = OSFS).
func NewFaultFS(inner FS) *FaultFS {
	if inner == nil {
		inner = OSFS{}
	}
	return &FaultFS{inner: inner, files: map[string]*durability{}, counts: map[Op]int{}}
}

var _ FS = (*FaultFS)(nil)

// Inject adds a fault.
func (f *FaultFS) Inject(ft Fault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults = append(f.faults, &ft)
}

// Clear removes every pending fault.
func (f *FaultFS) Clear() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults = nil
}

// Count returns how many operations of kind op went through the FS
// (including failed ones).
func (f *FaultFS) Count(op Op) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.counts[op]
}

// check counts an operation and returns the error of a fault that fires
// for it (mu held).
func (f *FaultFS) check(op Op, path string) *Fault {
	f.counts[op]++
	for i, ft := range f.faults {
		if ft.Op != op || !strings.HasSuffix(path, ft.PathSuffix) {
			continue
		}
		if ft.After > 0 {
			ft.After--
			continue
		}
		if !ft.Sticky {
			f.faults = append(f.faults[:i], f.faults[i+1:]...)
		}
		return ft
	}
	return nil
}

// fire returns the error of a fault that fired (mu held), crashing the FS
// first if the fault says so.
func (f *FaultFS) fire(ft *Fault) error {
	if ft.Crash {
		rng := ft.Rand
		if rng == nil {
			rng = rand.New(rand.NewPCG(1, 2))
		}
		if err := f.crash(rng, ft.Holes); err != nil {
			return errors.Join(ErrCrashed, err)
		}
		return ErrCrashed
	}
	return ft.err()
}

func (ft *Fault) err() error {
	if ft.Err != nil {
		return ft.Err
	}
	return ErrInjected
}

// Crash simulates a power loss: every file loses what was written since its
// last Sync except a random prefix of it (a torn write), with holes random
// 4 KiB pages of zeros in the kept part (pages reaching the disk out of
// order), and files whose creation was not made durable by SyncDir vanish.
// Until Restart every operation fails with ErrCrashed, and files opened
// before the crash fail for good, so the abandoned log can do no harm.
func (f *FaultFS) Crash(rng *rand.Rand, holes bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.crash(rng, holes)
}

func (f *FaultFS) crash(rng *rand.Rand, holes bool) error {
	f.gen++
	f.down = true
	var errs []error
	for path, d := range f.files {
		if d.created {
			if err := f.inner.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
			delete(f.files, path)
			continue
		}
		if d.size <= d.synced {
			continue
		}
		keep := d.synced + rng.Int64N(d.size-d.synced+1)
		if err := f.tear(path, d.synced, keep, rng, holes); err != nil {
			errs = append(errs, err)
		}
		d.size, d.synced = keep, keep
	}
	return errors.Join(errs...)
}

// Restart ends the outage Crash began: the FS works again (for the
// reopen), files opened before the crash do not.
func (f *FaultFS) Restart() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = false
}

func (f *FaultFS) tear(path string, synced, keep int64, rng *rand.Rand, holes bool) error {
	h, err := f.inner.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer h.Close()
	if err := h.Truncate(keep); err != nil {
		return err
	}
	if holes {
		const page = 4096
		zero := make([]byte, page)
		for p := (synced + page - 1) / page * page; p+page <= keep; p += page {
			if rng.IntN(3) == 0 {
				if _, err := h.WriteAt(zero, p); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func (f *FaultFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return nil, &fs.PathError{Op: "open", Path: name, Err: ErrCrashed}
	}
	if flag&os.O_CREATE != 0 {
		if ft := f.check(OpCreate, name); ft != nil {
			return nil, &fs.PathError{Op: "open", Path: name, Err: f.fire(ft)}
		}
	}
	_, existed := f.files[name]
	inner, err := f.inner.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	if !existed {
		d := &durability{}
		if flag&(os.O_EXCL|os.O_TRUNC) != 0 && flag&os.O_CREATE != 0 {
			d.created = true
		} else if st, err := inner.Stat(); err == nil {
			d.size, d.synced = st.Size(), st.Size()
		}
		f.files[name] = d
	} else if flag&os.O_TRUNC != 0 {
		f.files[name].size = 0
		f.files[name].synced = 0
	}
	return &faultFile{fs: f, inner: inner, path: name, gen: f.gen}, nil
}

func (f *FaultFS) Remove(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return &fs.PathError{Op: "remove", Path: name, Err: ErrCrashed}
	}
	if ft := f.check(OpRemove, name); ft != nil {
		return &fs.PathError{Op: "remove", Path: name, Err: f.fire(ft)}
	}
	if err := f.inner.Remove(name); err != nil {
		return err
	}
	delete(f.files, name)
	return nil
}

func (f *FaultFS) Rename(oldpath, newpath string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return &os.LinkError{Op: "rename", Old: oldpath, New: newpath, Err: ErrCrashed}
	}
	if ft := f.check(OpRename, newpath); ft != nil {
		return &os.LinkError{Op: "rename", Old: oldpath, New: newpath, Err: f.fire(ft)}
	}
	if err := f.inner.Rename(oldpath, newpath); err != nil {
		return err
	}
	if d, ok := f.files[oldpath]; ok {
		delete(f.files, oldpath)
		d.created = false // the rename is taken as durable
		f.files[newpath] = d
	}
	return nil
}

// Lock implements Locker if the inner FS does (and does nothing if not).
func (f *FaultFS) Lock(path string) (io.Closer, error) {
	if lk, ok := f.inner.(Locker); ok {
		return lk.Lock(path)
	}
	return nopLock{}, nil
}

type nopLock struct{}

func (nopLock) Close() error { return nil }

func (f *FaultFS) ReadDir(name string) ([]fs.DirEntry, error) {
	if f.isDown() {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: ErrCrashed}
	}
	return f.inner.ReadDir(name)
}

func (f *FaultFS) MkdirAll(path string, perm fs.FileMode) error {
	if f.isDown() {
		return &fs.PathError{Op: "mkdir", Path: path, Err: ErrCrashed}
	}
	return f.inner.MkdirAll(path, perm)
}

func (f *FaultFS) isDown() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.down
}

func (f *FaultFS) SyncDir(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return &fs.PathError{Op: "sync", Path: name, Err: ErrCrashed}
	}
	if ft := f.check(OpSyncDir, name); ft != nil {
		return &fs.PathError{Op: "sync", Path: name, Err: f.fire(ft)}
	}
	if err := f.inner.SyncDir(name); err != nil {
		return err
	}
	clean := filepath.Clean(name)
	for path, d := range f.files {
		if filepath.Dir(path) == clean {
			d.created = false
		}
	}
	return nil
}

// faultFile is a File of a FaultFS.
type faultFile struct {
	fs    *FaultFS
	inner File
	path  string
	gen   int
}

func (h *faultFile) alive() bool { return h.gen == h.fs.gen && !h.fs.down } // fs.mu held

func (h *faultFile) ReadAt(b []byte, off int64) (int, error) {
	h.fs.mu.Lock()
	alive := h.alive()
	h.fs.mu.Unlock()
	if !alive {
		return 0, ErrCrashed
	}
	return h.inner.ReadAt(b, off)
}

func (h *faultFile) WriteAt(b []byte, off int64) (int, error) {
	h.fs.mu.Lock()
	defer h.fs.mu.Unlock()
	if !h.alive() {
		return 0, ErrCrashed
	}
	if ft := h.fs.check(OpWrite, h.path); ft != nil {
		n := ft.TornBytes
		if n < 0 {
			n = len(b) / 2
		}
		n = min(n, len(b))
		if n > 0 {
			n, _ = h.inner.WriteAt(b[:n], off)
			h.wrote(off, n)
		}
		return n, &fs.PathError{Op: "write", Path: h.path, Err: h.fs.fire(ft)}
	}
	n, err := h.inner.WriteAt(b, off)
	h.wrote(off, n)
	return n, err
}

func (h *faultFile) wrote(off int64, n int) {
	d := h.fs.files[h.path]
	if d == nil {
		return
	}
	d.size = max(d.size, off+int64(n))
	if off < d.synced {
		d.synced = off
	}
}

func (h *faultFile) Sync() error {
	h.fs.mu.Lock()
	defer h.fs.mu.Unlock()
	if !h.alive() {
		return ErrCrashed
	}
	if ft := h.fs.check(OpSync, h.path); ft != nil {
		return &fs.PathError{Op: "sync", Path: h.path, Err: h.fs.fire(ft)}
	}
	if err := h.inner.Sync(); err != nil {
		return err
	}
	if d := h.fs.files[h.path]; d != nil {
		d.synced = d.size
	}
	return nil
}

func (h *faultFile) Truncate(size int64) error {
	h.fs.mu.Lock()
	defer h.fs.mu.Unlock()
	if !h.alive() {
		return ErrCrashed
	}
	if err := h.inner.Truncate(size); err != nil {
		return err
	}
	if d := h.fs.files[h.path]; d != nil {
		d.size = size
		d.synced = min(d.synced, size)
	}
	return nil
}

func (h *faultFile) Stat() (fs.FileInfo, error) {
	h.fs.mu.Lock()
	alive := h.alive()
	h.fs.mu.Unlock()
	if !alive {
		return nil, ErrCrashed
	}
	return h.inner.Stat()
}

func (h *faultFile) Close() error { return h.inner.Close() }
