package dispatch

import (
	"sync"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/tributary-io/tributary/cloud/commitlog"
)

// decodeCache shares decoded events between the subscriptions of one
// dispatcher. Each subscription reads the log on its own (so a slow one
// holds back nobody), but they mostly read the same recent offsets; without
// the cache a record was decoded from protobuf once per subscription, which
// with 100 subscriptions was a quarter of the dispatcher's CPU.
//
// It is a direct-mapped table indexed by log offset: a slot holds the last
// offset decoded into it, so memory is bounded (decodeSlots events) and a
// subscription far behind the others simply misses. An offset names one
// record for the life of the log, so a hit is always the right event.
//
// Cached events are shared and must not be modified: the dispatcher only
// reads them (filters, lane keys, senders), a transformation works on a
// clone, and redrives and dead-letter listings decode their own.
type decodeCache struct {
	mu    [decodeStripes]sync.Mutex
	slots [decodeSlots]decodeSlot
}

const (
	decodeSlots   = 8192
	decodeStripes = 64
)

type decodeSlot struct {
	off  uint64
	used bool
	ev   *event.Event
	err  error
}

// decode returns rec's event, decoding it if the cache does not hold it.
// The event must not be modified.
func (c *decodeCache) decode(rec commitlog.Record) (*event.Event, error) {
	i := rec.Offset % decodeSlots
	mu := &c.mu[i%decodeStripes]
	mu.Lock()
	s := c.slots[i]
	mu.Unlock()
	if s.used && s.off == rec.Offset {
		return s.ev, s.err
	}
	ev, err := decodeEvent(rec.Value)
	mu.Lock()
	c.slots[i] = decodeSlot{off: rec.Offset, used: true, ev: ev, err: err}
	mu.Unlock()
	return ev, err
}
