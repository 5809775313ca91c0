package commitlog

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"unsafe"
)

// Segment preallocation.
//
// Appending to a file makes every fsync also commit the file system's
// journal (the blocks an append allocates, the new size), and on ext4 that
// commit is shared by every process on the file system: an append's fsync
// waits for other people's metadata too. Overwriting blocks that were
// written before needs no journal commit: fdatasync writes the data and
// flushes the disk's cache. So the log writes into segment files it
// zero-filled beforehand. Measured with the log-append benchmark on a
// 2-vCPU virtio disk shared with other workloads, median fsync fell from
// 0.85–1.2 ms to 0.34–0.44 ms; fallocate alone (unwritten extents, whose
// conversion on first write is journaled) reached only 0.65–0.8 ms.
//
// A preparer goroutine zero-fills the next segment in a spare file before it
// is needed: it writes segment.spare.tmp, fsyncs it and renames it to
// segment.spare, so a crash leaves no spare or a whole one. At a roll the
// writer renames the spare to the new segment's name and fsyncs the
// directory; with no spare ready it creates an empty segment as before. A
// segment that is not preallocated (a new log's first, the active segment
// after a reopen, or one created without a spare) is left early, at the
// first group after a spare is ready, so a busy log soon runs on
// preallocated files. The preparer starts only when a spare will be needed
// soon (the active segment is half full, or is not preallocated and the log
// wrote prepareAfterBytes since Open), so quiet logs never write one.
//
// On disk a preallocated segment is its records followed by zeros up to its
// full size. A zero length field is never a valid frame, so recovery reads
// up to the zeros, and it treats zeros from the first bad frame to the end
// of a file as unused space, not as damage (see recover.go).
//
// Cost: up to two segments of disk beyond the data (the active segment's
// unused part and the spare), and every byte is written twice (zeros, then
// the records), in the background. Options.NoPreallocate turns it off.
const (
	spareName = "segment.spare"
	spareTmp  = spareName + ".tmp"

	// prepareAfterBytes is how much a log writes after Open before it
	// prepares a spare to move to, if its active segment is not
	// preallocated.
	prepareAfterBytes = 1 << 20
	// zeroChunk is the size of the preparer's writes; it fsyncs every
	// zeroSyncEvery bytes so that its writeback reaches the disk in
	// pieces rather than one burst that appends' fsyncs would queue behind.
	zeroChunk     = 1 << 20
	zeroSyncEvery = 8 << 20
	// directAlign is the buffer, offset and size alignment O_DIRECT needs
	// (a page covers every common logical block size).
	directAlign = 4096
)

var errPreparerStopped = errors.New("commitlog: preparer stopped")

// preparer zero-fills spare segment files on its own goroutine.
type preparer struct {
	fs    FS
	dir   string
	size  int64
	log   *slog.Logger
	ready atomic.Bool   // segment.spare exists, whole
	want  chan struct{} // capacity 1: a spare is wanted
	stop  chan struct{}
	done  chan struct{}
}

func newPreparer(l *FileLog) *preparer {
	return &preparer{
		fs:   l.fs,
		dir:  l.dir,
		size: l.opts.SegmentBytes,
		log:  l.log,
		want: make(chan struct{}, 1),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
}

// isReady reports whether a spare is ready (false for a nil preparer).
func (p *preparer) isReady() bool { return p != nil && p.ready.Load() }

// request asks for a spare if there is none; it never blocks.
func (p *preparer) request() {
	if p == nil || p.ready.Load() {
		return
	}
	select {
	case p.want <- struct{}{}:
	default:
	}
}

func (p *preparer) run() {
	defer close(p.done)
	// Aligned for O_DIRECT.
	zero := make([]byte, zeroChunk+directAlign)
	if off := int(uintptr(unsafe.Pointer(&zero[0])) % directAlign); off != 0 {
		zero = zero[directAlign-off:]
	}
	zero = zero[:min(zeroChunk, p.size)]
	for {
		select {
		case <-p.stop:
			return
		case <-p.want:
		}
		if p.ready.Load() {
			continue
		}
		if err := p.prepare(zero); err != nil {
			if errors.Is(err, errPreparerStopped) {
				return
			}
			// The log goes on with segments that are not preallocated;
			// the next roll asks again.
			p.log.Warn("commitlog: could not prepare a preallocated segment", "err", err)
			continue
		}
		p.ready.Store(true)
	}
}

// prepare writes a whole spare. It writes around the page cache (O_DIRECT)
// when the file system allows it and the size is a multiple of its
// alignment: zero-filling through the cache cost about a fifth of the
// ingest server's CPU in the log-append benchmark (copying zeros into pages
// nobody reads, then evicting them).
func (p *preparer) prepare(zero []byte) (err error) {
	tmp := filepath.Join(p.dir, spareTmp)
	flag := os.O_RDWR | os.O_CREATE | os.O_TRUNC
	var f File
	if directIO != 0 && p.size%directAlign == 0 {
		f, err = p.fs.OpenFile(tmp, flag|directIO, 0o644)
	}
	if f == nil { // not tried, or refused (tmpfs has no O_DIRECT)
		f, err = p.fs.OpenFile(tmp, flag, 0o644)
	}
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = p.fs.Remove(tmp)
		}
	}()
	unsynced := int64(0)
	for pos := int64(0); pos < p.size; {
		select {
		case <-p.stop:
			return errPreparerStopped
		default:
		}
		n := int(min(int64(len(zero)), p.size-pos))
		if _, err := f.WriteAt(zero[:n], pos); err != nil {
			return err
		}
		pos += int64(n)
		if unsynced += int64(n); unsynced >= zeroSyncEvery || pos == p.size {
			if err := f.Sync(); err != nil {
				return err
			}
			unsynced = 0
		}
	}
	if err := f.Close(); err != nil {
		_ = p.fs.Remove(tmp)
		return err
	}
	return p.fs.Rename(tmp, filepath.Join(p.dir, spareName))
}

// close stops the preparer and waits for it. A spare it was writing is
// removed; a whole one stays for the next Open.
func (p *preparer) close() {
	if p == nil {
		return
	}
	close(p.stop)
	<-p.done
}

// take moves the spare to path and opens it. It returns nil, nil when no
// spare is ready.
func (p *preparer) take(path string) (File, error) {
	if p == nil || !p.ready.Load() {
		return nil, nil
	}
	p.ready.Store(false)
	if err := p.fs.Rename(filepath.Join(p.dir, spareName), path); err != nil {
		return nil, fmt.Errorf("commitlog: create segment from the spare: %w", err)
	}
	f, err := p.fs.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("commitlog: open segment %s: %w", path, err)
	}
	return f, nil
}

// adoptSpare is called by Open: a whole spare of the right size left by the
// last run is ready for p; a partial one (its temporary file, or a spare of
// another SegmentBytes, or any spare when p is nil because preallocation is
// off) is removed.
func adoptSpare(fsys FS, dir string, p *preparer) error {
	if err := fsys.Remove(filepath.Join(dir, spareTmp)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("commitlog: open: remove %s: %w", spareTmp, err)
	}
	path := filepath.Join(dir, spareName)
	f, err := fsys.OpenFile(path, os.O_RDONLY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("commitlog: open: %w", err)
	}
	st, err := f.Stat()
	_ = f.Close()
	if err != nil {
		return fmt.Errorf("commitlog: open: %w", err)
	}
	if p != nil && st.Size() == p.size {
		p.ready.Store(true)
		return nil
	}
	if err := fsys.Remove(path); err != nil {
		return fmt.Errorf("commitlog: open: remove %s: %w", spareName, err)
	}
	return nil
}

// zeroTail reports whether f holds only zero bytes from pos to size (or to
// its end, if it is shorter).
func zeroTail(f File, pos, size int64, buf []byte) (bool, error) {
	for pos < size {
		n := int(min(int64(len(buf)), size-pos))
		got, err := f.ReadAt(buf[:n], pos)
		if !isZero(buf[:got]) {
			return false, nil
		}
		pos += int64(got)
		if errors.Is(err, io.EOF) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
	}
	return true, nil
}

// zeroEnd returns the end of the last non-zero byte of f in [pos, size),
// or pos if there is none.
func zeroEnd(f File, pos, size int64, buf []byte) (int64, error) {
	end := pos
	for pos < size {
		n := int(min(int64(len(buf)), size-pos))
		got, err := f.ReadAt(buf[:n], pos)
		for i := got - 1; i >= 0; i-- {
			if buf[i] != 0 {
				end = pos + int64(i) + 1
				break
			}
		}
		pos += int64(got)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, err
		}
	}
	return end, nil
}

// isZero reports whether b holds only zeros.
func isZero(b []byte) bool {
	for len(b) >= len(zeroPage) {
		if !bytes.Equal(b[:len(zeroPage)], zeroPage[:]) {
			return false
		}
		b = b[len(zeroPage):]
	}
	return bytes.Equal(b, zeroPage[:len(b)])
}

var zeroPage [pageSize]byte

// pageSize is the page cache's page (4 KiB on every platform the cloud
// runs on; a larger page only makes the padding in writer.flush partial).
const pageSize = 4096
