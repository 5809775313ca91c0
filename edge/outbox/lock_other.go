//go:build !unix

package outbox

import "os"

// lockFile does nothing where flock is unavailable: the gateway runs on
// Linux, and other platforms are for development only.
func lockFile(string) (*os.File, error) { return nil, nil }
