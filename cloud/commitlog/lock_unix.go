//go:build unix

package commitlog

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// Lock takes an exclusive, non-blocking flock on path (created if
// missing). The kernel drops it when the process dies, so a crash never
// leaves the log locked.
func (OSFS) Lock(path string) (io.Closer, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("commitlog: open lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s", ErrLocked, path)
		}
		return nil, fmt.Errorf("commitlog: lock %s: %w", path, err)
	}
	return f, nil
}
