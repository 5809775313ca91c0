//go:build !linux

package fleet

import "errors"

var errNoDisk = errors.New("gateways.disk_mb and disk-full faults need Linux (a tmpfs per gateway)")

func mountDisk(string, int) error    { return errNoDisk }
func unmountDisk(string) error       { return nil }
func fillDisk(string) (int64, error) { return 0, errNoDisk }
func freeDisk(string) error          { return nil }

// ensureFiles cannot change the limit here; the run finds out if it is too
// low.
func ensureFiles(need uint64) (uint64, error) { return need, nil }
