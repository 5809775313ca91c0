package dispatch

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/types"

	"github.com/tributary-io/tributary/cloud/commitlog"
)

// DeadLetterEntry is one dead-lettered event, as DeadLetters lists it.
type DeadLetterEntry struct {
	// Offset is the dead letter's own offset in the log: what Redrive takes.
	Offset uint64 `json:"offset"`
	// Time is when the dead letter was appended.
	Time time.Time `json:"time"`
	// OriginalOffset is the offset of the event the subscription failed to
	// deliver.
	OriginalOffset uint64 `json:"original_offset"`
	// OriginalProducer and OriginalProducerSeq are the origin of the
	// logged record (for an event from the edge: the gateway id and outbox
	// sequence), kept through redrives; empty and 0 if it had none.
	OriginalProducer    string `json:"original_producer,omitempty"`
	OriginalProducerSeq uint64 `json:"original_producer_seq,omitempty"`
	// Attempts is the number of delivery attempts made (0: the event was
	// refused before any, e.g. undecodable or a bad deliverat).
	Attempts int `json:"attempts"`
	// Status is the sink's last HTTP status, 0 if none arrived.
	Status int `json:"status"`
	// Reason says why the event was dead-lettered: the last error.
	Reason string `json:"reason"`
	// Redrive is "queued" while a redrive of it is pending, "done" once a
	// redrive finished it, "" otherwise.
	Redrive string `json:"redrive,omitempty"`
	// Event is the event as it was logged, without the dl* attributes; nil
	// if the record does not decode (then DecodeError says why).
	Event       *event.Event `json:"event,omitempty"`
	DecodeError string       `json:"decode_error,omitempty"`
}

// DeadLetterPage is one page of DeadLetters.
type DeadLetterPage struct {
	// Topic is the subscription's dead-letter topic.
	Topic       string            `json:"topic"`
	DeadLetters []DeadLetterEntry `json:"dead_letters"`
	// Next is the offset to pass as from for the following page. A page
	// with fewer entries than the limit reached the end (for now).
	Next uint64 `json:"next"`
}

// MaxDeadLetterPage bounds the limit of DeadLetters.
const MaxDeadLetterPage = 1000

// DeadLetters lists up to limit (1 to MaxDeadLetterPage) dead letters of
// subscription id with offsets at or above from, oldest first. A from below
// the oldest retained record starts there. Errors: ErrNotFound,
// ErrInvalidRequest (limit), ErrNoTopicIndex, or the log's read error.
func (d *Dispatcher) DeadLetters(id string, from uint64, limit int) (DeadLetterPage, error) {
	if limit < 1 || limit > MaxDeadLetterPage {
		return DeadLetterPage{}, fmt.Errorf("%w: limit %d is not between 1 and %d", ErrInvalidRequest, limit, MaxDeadLetterPage)
	}
	tr, ok := d.log.(commitlog.TopicReader)
	if !ok {
		return DeadLetterPage{}, ErrNoTopicIndex
	}
	d.mu.Lock()
	r, ok := d.subs[id]
	d.mu.Unlock()
	if !ok {
		return DeadLetterPage{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	topic := r.c.deadLetter
	page := DeadLetterPage{Topic: topic, DeadLetters: []DeadLetterEntry{}, Next: from}
	var recs []commitlog.Record
	for range 3 { // retention may move the first offset under us
		from = max(from, d.log.FirstOffset())
		var err error
		recs, err = tr.ReadTopic(topic, from, limit)
		if errors.Is(err, commitlog.ErrOutOfRange) {
			continue
		}
		if err != nil {
			return DeadLetterPage{}, fmt.Errorf("dispatch: read dead letters: %w", err)
		}
		break
	}
	page.Next = max(page.Next, from)
	for _, rec := range recs {
		page.DeadLetters = append(page.DeadLetters, describeDeadLetter(rec, r.rd.status(topic, rec.Offset)))
		page.Next = rec.Offset + 1
	}
	return page, nil
}

// describeDeadLetter reads the dl* attributes of a dead-letter record.
func describeDeadLetter(rec commitlog.Record, redrive string) DeadLetterEntry {
	dl := DeadLetterEntry{Offset: rec.Offset, Time: rec.Time, OriginalOffset: rec.Offset, Redrive: redrive}
	ev, err := decodeEvent(rec.Value)
	if err != nil {
		dl.DecodeError = err.Error()
		return dl
	}
	ext := ev.Extensions()
	if s, err := types.ToString(ext[ExtDLOffset]); err == nil {
		if o, err := strconv.ParseUint(s, 10, 64); err == nil {
			dl.OriginalOffset = o
		}
	}
	dl.OriginalProducer, dl.OriginalProducerSeq = dlOrigin(ext)
	if n, err := types.ToInteger(ext[ExtDLAttempts]); err == nil {
		dl.Attempts = int(n)
	}
	if n, err := types.ToInteger(ext[ExtDLStatus]); err == nil {
		dl.Status = int(n)
	}
	if s, err := types.ToString(ext[ExtDLReason]); err == nil {
		dl.Reason = s
	}
	for name := range ext {
		if isDLAttribute(name) {
			ev.SetExtension(name, nil)
		}
	}
	dl.Event = ev
	return dl
}
