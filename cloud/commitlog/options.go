package commitlog

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Options configure a FileLog. The zero value is a valid configuration:
// every field documents its default.
type Options struct {
	// SegmentBytes is the size at which the active segment is closed and a
	// new one started. A segment holds at least one record, so it can exceed
	// this by one record. Default 64 MiB; at most 1 GiB.
	SegmentBytes int64

	// MaxRecordBytes limits one record's encoded size: len(Value) +
	// len(Topic) + len(Producer) + 27 bytes. Larger records are refused
	// with ErrTooLarge and nothing of their Append is written. Default
	// 4 MiB; at most 256 MiB.
	MaxRecordBytes int

	// MaxGroupBytes caps how many bytes of queued appends one group commit
	// (one write and one fsync) takes, so that a burst does not make every
	// append in it wait for one huge write. An append larger than the cap is
	// committed alone. Default 1 MiB.
	MaxGroupBytes int

	// NoPreallocate turns off segment preallocation: by default the log
	// zero-fills each next segment in the background and writes into
	// blocks that already exist, which keeps fsyncs clear of the file
	// system's journal (see prealloc.go). It costs up to two segments of
	// disk beyond the data and a second write of every byte.
	NoPreallocate bool

	// VerifyOnOpen makes Open read every segment and verify every record's
	// checksum, as a full recovery does, instead of loading the snapshots
	// of closed segments (see snapshot.go); damage in a closed segment then
	// fails Open rather than the read that meets it. Default false: Open
	// reads the active segment and a few bytes of each closed one.
	VerifyOnOpen bool

	// IndexIntervalBytes is the spacing of the sparse in-memory offset and
	// time index: a read seeks to the nearest entry at or before its offset
	// and scans at most about this many bytes. The index costs 16 bytes per
	// interval of log (2 MiB per GiB at the default). Default 8 KiB.
	IndexIntervalBytes int

	// TailCacheBytes is how many bytes of the newest records the log keeps
	// in memory, as written, so that readers near the tail (dispatch, live
	// consumers, reads by topic) copy them from memory instead of reading
	// the segment files (see tailcache.go). Default 32 MiB; -1 turns the
	// cache off. At least the last group commit is kept.
	TailCacheBytes int64

	// RetentionAge deletes whole segments whose newest record is older than
	// this. Zero keeps records forever.
	RetentionAge time.Duration

	// RetentionBytes deletes the oldest segments while the log is larger
	// than this. The active segment is never deleted, so the log can exceed
	// it by up to one segment. Zero means no size limit.
	RetentionBytes int64

	// RetentionInterval is how often retention is checked when RetentionAge
	// or RetentionBytes is set (it is also checked each time a segment is
	// closed). Default 1 minute.
	RetentionInterval time.Duration

	// FS is the file system. Default OSFS.
	FS FS

	// Now is the clock used for record times and retention by age. Default
	// time.Now.
	Now func() time.Time

	// Logger receives recovery and retention events. Default: discard.
	Logger *slog.Logger
}

// Option defaults.
const (
	DefaultSegmentBytes       = 64 << 20
	DefaultMaxRecordBytes     = 4 << 20
	DefaultMaxGroupBytes      = 1 << 20
	DefaultIndexIntervalBytes = 8 << 10
	DefaultTailCacheBytes     = 32 << 20
	DefaultRetentionInterval  = time.Minute
)

// Validate reports every invalid field.
func (o Options) Validate() error {
	var errs []error
	if o.SegmentBytes < 0 || o.SegmentBytes > 1<<30 {
		errs = append(errs, fmt.Errorf("SegmentBytes %d: want 0 (default) to 1 GiB", o.SegmentBytes))
	}
	if o.MaxRecordBytes < 0 || o.MaxRecordBytes > 256<<20 {
		errs = append(errs, fmt.Errorf("MaxRecordBytes %d: want 0 (default) to 256 MiB", o.MaxRecordBytes))
	}
	if o.MaxGroupBytes < 0 {
		errs = append(errs, fmt.Errorf("MaxGroupBytes %d: want >= 0", o.MaxGroupBytes))
	}
	if o.IndexIntervalBytes < 0 {
		errs = append(errs, fmt.Errorf("IndexIntervalBytes %d: want >= 0", o.IndexIntervalBytes))
	}
	if o.TailCacheBytes < -1 {
		errs = append(errs, fmt.Errorf("TailCacheBytes %d: want -1 (off), 0 (default) or more", o.TailCacheBytes))
	}
	if o.RetentionAge < 0 {
		errs = append(errs, fmt.Errorf("RetentionAge %v: want >= 0", o.RetentionAge))
	}
	if o.RetentionBytes < 0 {
		errs = append(errs, fmt.Errorf("RetentionBytes %d: want >= 0", o.RetentionBytes))
	}
	if o.RetentionInterval < 0 {
		errs = append(errs, fmt.Errorf("RetentionInterval %v: want >= 0", o.RetentionInterval))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("commitlog: invalid options: %w", err)
	}
	return nil
}

func (o Options) withDefaults() Options {
	if o.SegmentBytes == 0 {
		o.SegmentBytes = DefaultSegmentBytes
	}
	if o.MaxRecordBytes == 0 {
		o.MaxRecordBytes = DefaultMaxRecordBytes
	}
	if o.MaxGroupBytes == 0 {
		o.MaxGroupBytes = DefaultMaxGroupBytes
	}
	if o.IndexIntervalBytes == 0 {
		o.IndexIntervalBytes = DefaultIndexIntervalBytes
	}
	if o.TailCacheBytes == 0 {
		o.TailCacheBytes = DefaultTailCacheBytes
	}
	if o.RetentionInterval == 0 {
		o.RetentionInterval = DefaultRetentionInterval
	}
	if o.FS == nil {
		o.FS = OSFS{}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}
