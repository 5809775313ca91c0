package commitlog

import (
	"os"
	"syscall"
)

// datasync is fdatasync(2): the file's data and the metadata needed to
// read it back, not its timestamps. On a segment whose blocks were
// preallocated and written (see prealloc.go) it needs no journal commit.
func datasync(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for {
			serr = syscall.Fdatasync(int(fd))
			if serr != syscall.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	if serr != nil {
		return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: serr}
	}
	return nil
}

// directIO is the open flag for writes that bypass the page cache: the
// preparer's zeros need not be copied into memory nobody reads.
const directIO = syscall.O_DIRECT
