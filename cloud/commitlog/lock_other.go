//go:build !unix

package commitlog

import "io"

// Lock does nothing where flock is unavailable: the cloud runs on Linux,
// and other platforms are for development only.
func (OSFS) Lock(string) (io.Closer, error) { return nopLock{}, nil }
