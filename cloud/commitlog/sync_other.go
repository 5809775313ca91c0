//go:build !linux

package commitlog

import "os"

// datasync is fsync where fdatasync is not available.
func datasync(f *os.File) error { return f.Sync() }

// directIO is 0 where O_DIRECT is not available.
const directIO = 0
