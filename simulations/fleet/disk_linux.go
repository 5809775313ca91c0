//go:build linux

package fleet

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// mountDisk mounts a tmpfs of mb MiB on dir: a gateway's own small file
// system, which a disk-full fault can really fill. It needs root or
// CAP_SYS_ADMIN.
func mountDisk(dir string, mb int) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, fmt.Sprintf("size=%dm,mode=0755", mb)); err != nil {
		return fmt.Errorf("mount a %d MiB tmpfs on %s for gateways.disk_mb (needs root or CAP_SYS_ADMIN): %w", mb, dir, err)
	}
	return nil
}

// unmountDisk undoes mountDisk, detaching lazily if the file system is
// still busy.
func unmountDisk(dir string) error {
	if err := syscall.Unmount(dir, 0); err != nil {
		if err2 := syscall.Unmount(dir, syscall.MNT_DETACH); err2 != nil {
			return fmt.Errorf("unmount %s: %w", dir, err)
		}
	}
	return nil
}

// ballastName is the file a disk-full fault fills the disk with.
const ballastName = "fleetsim-ballast"

// fillDisk writes a ballast file into dir until the file system answers
// ENOSPC, and returns its size.
func fillDisk(dir string) (int64, error) {
	f, err := os.OpenFile(filepath.Join(dir, ballastName), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var n int64
	for _, chunk := range []int{1 << 20, 4 << 10, 512} {
		buf := make([]byte, chunk)
		for {
			w, err := f.Write(buf)
			n += int64(w)
			if errors.Is(err, syscall.ENOSPC) {
				break
			}
			if err != nil {
				return n, fmt.Errorf("fill %s: %w", dir, err)
			}
		}
	}
	return n, nil
}

// freeDisk removes the ballast.
func freeDisk(dir string) error {
	err := os.Remove(filepath.Join(dir, ballastName))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// ensureFiles raises the open-file limit to at least need, raising the hard
// limit too when allowed (root). It returns the limit in force.
func ensureFiles(need uint64) (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	if lim.Cur >= need {
		return lim.Cur, nil
	}
	want := lim
	want.Cur = need
	if want.Max < need {
		want.Max = need
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		// Without privilege only the soft limit can rise, to the hard one.
		want = syscall.Rlimit{Cur: lim.Max, Max: lim.Max}
		if err2 := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err2 != nil {
			return lim.Cur, err
		}
		return lim.Max, fmt.Errorf("open-file limit %d is below the %d needed: %w", lim.Max, need, err)
	}
	return need, nil
}
