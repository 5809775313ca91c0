//go:build !linux

package outbox

// statfs is implemented for Linux only, where gateways run; elsewhere the
// free-space reserve is off (Open logs it at the first commit).
func statfs(dir string) (avail, size int64, err error) {
	return 0, 0, errStatfsUnsupported
}
