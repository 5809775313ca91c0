// Package commitlog is Tributary's central log: one append-only sequence of
// records for every topic and every gateway, durable before it acknowledges.
//
// The Log interface is what the rest of the cloud uses (ingest appends,
// dispatch reads). Two implementations keep it: Memory, a deliberately simple
// model used by tests, and the segmented file log (Open) used in production. A
// clustered engine can take their place later by keeping the same contract.
package commitlog

import (
	"context"
	"errors"
	"time"
)

// Sentinel errors. Compare with errors.Is.
var (
	// ErrClosed is returned by every method once Close has been called.
	ErrClosed = errors.New("commitlog: closed")
	// ErrOutOfRange is returned by Read when from is below the oldest
	// retained offset (the records were removed by retention). Readers
	// restart at FirstOffset.
	ErrOutOfRange = errors.New("commitlog: offset out of range")
	// ErrCorrupt is returned by Open when a record other than the torn tail
	// fails its checksum.
	ErrCorrupt = errors.New("commitlog: corrupt record")
	// ErrTooLarge is returned by Append for a record above the log's limit.
	ErrTooLarge = errors.New("commitlog: record too large")
	// ErrFailed is returned by every append after the log failed to write
	// or fsync: the state of the disk is unknown, so the log refuses to
	// acknowledge anything more (the "fsyncgate" lesson: a failed fsync may
	// have dropped dirty pages, and retrying it would falsely succeed). The
	// error also wraps the original cause. Close the log and reopen it; reads
	// of records acknowledged before the failure keep working until then.
	ErrFailed = errors.New("commitlog: log failed")
)

// Record is one entry of the log.
type Record struct {
	// Offset is assigned by Append: dense, starting at 0, never reused.
	Offset uint64
	// Time is when the log accepted the record (set by Append if zero).
	Time time.Time
	// Topic is the key of the per-topic index (the CloudEvent subject).
	Topic string
	// Producer and ProducerSeq identify the record at its origin (gateway id
	// and outbox sequence). Append drops a record whose ProducerSeq is at or
	// below the producer's high-water mark, which makes appends exactly-once
	// across resends. An empty Producer disables the check.
	Producer    string
	ProducerSeq uint64
	// Value is opaque to the log (a protobuf CloudEvent). The log keeps its
	// own copy: callers may reuse the slice after Append returns.
	Value []byte
}

// AppendResult reports what one Append did.
type AppendResult struct {
	// Appended counts records written; Duplicates counts records dropped
	// because their ProducerSeq was at or below the high-water mark.
	Appended, Duplicates int
	// FirstOffset and LastOffset bound the appended records (meaningless
	// when Appended is 0).
	FirstOffset, LastOffset uint64
}

// Log is the central log's contract.
//
// All methods are safe for concurrent use. If Append returns an error the
// records may or may not be in the log; the producer must resend and the
// high-water mark makes the resend harmless. If a method returns an error
// other than ErrOutOfRange or a context error, the log should be treated as
// failed: close it and reopen.
type Log interface {
	// Append writes recs in order and returns once they are durable (fsync'd
	// to disk, or replicated to a quorum). Offsets are assigned in the order
	// Append calls are made. Concurrent appends are committed together
	// (group commit).
	Append(ctx context.Context, recs []Record) (AppendResult, error)

	// AppendAsync queues recs and returns at once; done is called exactly once,
	// from a goroutine owned by the log, when the records are durable or the
	// append failed. Records queued by successive AppendAsync calls from one
	// goroutine are appended in call order, which lets a producer pipeline
	// batches. done must not block.
	AppendAsync(recs []Record, done func(AppendResult, error))

	// Read returns up to maxRecords records (and about maxBytes of values, but
	// always at least one record if any is available) starting at offset from.
	// It returns an empty slice when from == NextOffset(). It never blocks for
	// new data: use Wait.
	Read(from uint64, maxRecords, maxBytes int) ([]Record, error)

	// Wait blocks until a record with offset >= from exists (NextOffset() >
	// from), the context ends, or the log is closed.
	Wait(ctx context.Context, from uint64) error

	// FirstOffset is the oldest retained offset; NextOffset the offset the
	// next appended record will get.
	FirstOffset() uint64
	NextOffset() uint64

	// HighWaterMark is the highest ProducerSeq durably appended for producer
	// (0 if none). It survives restarts: it is rebuilt from the log itself.
	HighWaterMark(producer string) uint64

	// Close stops the log. Appends in flight complete or fail with ErrClosed.
	Close() error
}

// TopicReader is implemented by logs that index records by topic and time
// (Memory and FileLog). It is a separate interface so that Log stays small
// for the implementations and fakes that do not need it.
type TopicReader interface {
	// ReadTopic returns up to max records of topic with Offset >= from, in
	// offset order. Like Read it never blocks, returns an empty slice when
	// there is nothing more (yet), and returns ErrOutOfRange when from is
	// below FirstOffset.
	ReadTopic(topic string, from uint64, max int) ([]Record, error)

	// OffsetForTime returns the offset of the first retained record whose
	// Time is at or after t, or NextOffset() if there is none. Record times
	// need not grow with offsets (a producer may set them); the answer is
	// still the first such record in log order.
	OffsetForTime(t time.Time) (uint64, error)
}
