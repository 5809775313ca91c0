package commitlog

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
)

// The high-water-mark checkpoint keeps the producers' high-water marks alive
// when retention deletes the segments that held their records: without it a
// gateway whose records all aged out would have its resends appended again.
//
// It is written each time a segment is closed (and at Open when missing),
// tagged with the offset it is valid up to: it holds the exact high-water
// marks of the records below validUpTo. Recovery loads it and then folds in
// every retained record, so records at or above validUpTo (and any record
// retention has not deleted) count whatever the checkpoint says. Retention
// only deletes segments that end at or below validUpTo.
//
// It is written to a temporary file, fsync'd, renamed over the old one and
// the directory fsync'd, so a crash leaves either the old or the new one.
//
// Format:
//
//	magic      8 bytes "TRBHWM01"
//	validUpTo  uint64 LE
//	count      uvarint
//	count × {  uvarint length, producer bytes, uint64 LE seq }
//	crc        uint32 LE, CRC-32C of everything before it
const (
	checkpointName  = "hwm.checkpoint"
	checkpointMagic = "TRBHWM01"
)

type checkpoint struct {
	validUpTo uint64
	hwm       map[string]uint64
}

func encodeCheckpoint(validUpTo uint64, hwm map[string]uint64) []byte {
	names := make([]string, 0, len(hwm))
	for p := range hwm {
		names = append(names, p)
	}
	slices.Sort(names) // deterministic files are easier to debug
	b := append([]byte(nil), checkpointMagic...)
	b = binary.LittleEndian.AppendUint64(b, validUpTo)
	b = binary.AppendUvarint(b, uint64(len(names)))
	for _, p := range names {
		b = binary.AppendUvarint(b, uint64(len(p)))
		b = append(b, p...)
		b = binary.LittleEndian.AppendUint64(b, hwm[p])
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, crcTable))
}

var errBadCheckpoint = errors.New("malformed checkpoint")

// decodeCheckpoint parses a checkpoint file. It never panics on bad input.
func decodeCheckpoint(b []byte) (checkpoint, error) {
	var c checkpoint
	if len(b) < len(checkpointMagic)+8+1+4 || !bytes.HasPrefix(b, []byte(checkpointMagic)) {
		return c, fmt.Errorf("%w: bad header", errBadCheckpoint)
	}
	body, sum := b[:len(b)-4], binary.LittleEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, crcTable) != sum {
		return c, fmt.Errorf("%w: %w", errBadCheckpoint, errChecksum)
	}
	rest := body[len(checkpointMagic):]
	c.validUpTo = binary.LittleEndian.Uint64(rest)
	rest = rest[8:]
	n, k := binary.Uvarint(rest)
	if k <= 0 || n > uint64(len(rest))/9 { // every entry takes at least 9 bytes
		return c, fmt.Errorf("%w: bad count", errBadCheckpoint)
	}
	rest = rest[k:]
	c.hwm = make(map[string]uint64, n)
	for i := uint64(0); i < n; i++ {
		p, r, ok := cutString(rest)
		if !ok || len(r) < 8 {
			return c, fmt.Errorf("%w: entry %d truncated", errBadCheckpoint, i)
		}
		c.hwm[string(p)] = binary.LittleEndian.Uint64(r)
		rest = r[8:]
	}
	if len(rest) != 0 {
		return c, fmt.Errorf("%w: %d trailing bytes", errBadCheckpoint, len(rest))
	}
	return c, nil
}

// writeCheckpoint replaces dir's checkpoint atomically and durably.
func writeCheckpoint(fsys FS, dir string, validUpTo uint64, hwm map[string]uint64) error {
	b := encodeCheckpoint(validUpTo, hwm)
	final := filepath.Join(dir, checkpointName)
	tmp := final + ".tmp"
	f, err := fsys.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("commitlog: write checkpoint: %w", err)
	}
	_, err = f.WriteAt(b, 0)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = fsys.Rename(tmp, final)
	}
	if err == nil {
		err = fsys.SyncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("commitlog: write checkpoint: %w", err)
	}
	return nil
}

// readCheckpoint loads dir's checkpoint; ok is false if there is none.
func readCheckpoint(fsys FS, dir string) (c checkpoint, ok bool, err error) {
	path := filepath.Join(dir, checkpointName)
	f, err := fsys.OpenFile(path, os.O_RDONLY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return c, false, nil
	}
	if err != nil {
		return c, false, fmt.Errorf("commitlog: read checkpoint: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return c, false, fmt.Errorf("commitlog: read checkpoint: %w", err)
	}
	b := make([]byte, st.Size())
	if _, err := f.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
		return c, false, fmt.Errorf("commitlog: read checkpoint: %w", err)
	}
	if c, err = decodeCheckpoint(b); err != nil {
		return c, false, fmt.Errorf("%w: %s: %w", ErrCorrupt, path, err)
	}
	return c, true, nil
}
