package commitlog

import (
	"errors"
	"io"
	"io/fs"
	"os"
)

// FS is the file system the log works through. It is injected (Options.FS)
// so tests can simulate failed writes, failed fsyncs, torn writes and power
// loss (see FaultFS); production uses OSFS. Paths are OS paths.
type FS interface {
	OpenFile(name string, flag int, perm fs.FileMode) (File, error)
	Remove(name string) error
	Rename(oldpath, newpath string) error
	ReadDir(name string) ([]fs.DirEntry, error)
	MkdirAll(path string, perm fs.FileMode) error
	// SyncDir makes the directory's entries (files created, renamed or
	// removed in it) durable.
	SyncDir(name string) error
}

// File is an open file of an FS. ReadAt may be called concurrently with
// WriteAt on other regions of the file (as with *os.File).
type File interface {
	io.ReaderAt
	io.WriterAt
	io.Closer
	// Sync makes the file's data durable (fsync).
	Sync() error
	Truncate(size int64) error
	Stat() (fs.FileInfo, error)
}

// Locker is implemented by file systems that can lock a directory against
// a second FileLog (OSFS, with flock; FaultFS, if its inner FS can). Open
// takes the lock when Options.FS implements it and holds it until Close.
type Locker interface {
	// Lock locks path exclusively or fails with an error wrapping
	// ErrLocked if it is locked already.
	Lock(path string) (io.Closer, error)
}

// ErrLocked is returned by Open when another FileLog (in this or another
// process) has the directory open.
var ErrLocked = errors.New("commitlog: directory in use by another log")

// OSFS is the FS of the operating system. Its files' Sync is fdatasync
// where the system has it (Linux): it makes the data and the metadata
// needed to read it back (the size) durable, without a journal commit for
// timestamps, which is all the log needs; directories are made durable
// with SyncDir.
type OSFS struct{}

var (
	_ FS     = OSFS{}
	_ Locker = OSFS{}
)

func (OSFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	f, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return osFile{f}, nil
}

// osFile is an *os.File whose Sync is datasync (see OSFS).
type osFile struct{ *os.File }

func (f osFile) Sync() error { return datasync(f.File) }

func (OSFS) Remove(name string) error                     { return os.Remove(name) }
func (OSFS) Rename(oldpath, newpath string) error         { return os.Rename(oldpath, newpath) }
func (OSFS) ReadDir(name string) ([]fs.DirEntry, error)   { return os.ReadDir(name) }
func (OSFS) MkdirAll(path string, perm fs.FileMode) error { return os.MkdirAll(path, perm) }

func (OSFS) SyncDir(name string) error {
	d, err := os.Open(name)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
