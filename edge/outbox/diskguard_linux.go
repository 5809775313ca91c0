//go:build linux

package outbox

import (
	"fmt"
	"syscall"
)

// statfs reports the bytes of dir's file system available to unprivileged
// users (f_bavail, the root reserve excluded) and its size, in units of the
// fragment size as statfs(2) defines them.
func statfs(dir string) (avail, size int64, err error) {
	var st syscall.Statfs_t
	for {
		err = syscall.Statfs(dir, &st)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		return 0, 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	unit := int64(st.Frsize)
	if unit <= 0 {
		unit = int64(st.Bsize)
	}
	return int64(st.Bavail) * unit, int64(st.Blocks) * unit, nil
}
