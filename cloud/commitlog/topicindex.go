package commitlog

import (
	"encoding/binary"
	"sort"
)

// topicIndex maps each topic to the offsets of its records, so a reader of
// one topic does not scan the others. It lives in memory and is rebuilt by
// recovery.
//
// Memory: offsets are kept as varint deltas in blocks of up to
// topicBlockLen entries, so a record costs 1 to 3 bytes (1 for a topic that
// has most of the traffic, 2 for one of ~10,000 busy topics, 3 for a rare
// one) plus ~0.4 byte of block overhead, and a topic costs ~150 bytes plus
// its name. Ten thousand topics thus cost ~1.5 MB, and 100 million retained
// records ~200-300 MB. Retention drops whole blocks below the first offset
// and forgets topics left with none. A later version could keep the blocks
// in files next to the segments (RocketMQ's consume queues).
//
// Guarded by FileLog.mu. The writer goroutine, the only one that changes
// it, also reads it without the lock.
type topicIndex map[string]*topicOffsets

const topicBlockLen = 128

type topicOffsets struct {
	// last is the topic's newest offset (blocks[len-1].last), beside the
	// slice header so that a reader polling a topic with nothing new (the
	// common case with many topics) touches one cache line of it.
	last   uint64
	blocks []offsetBlock
}

// offsetBlock holds ascending offsets: first, then n-1 uvarint deltas.
type offsetBlock struct {
	first, last uint64
	n           int
	deltas      []byte
}

// get returns topic's offsets, adding the topic if it is new.
func (ti topicIndex) get(topic string) *topicOffsets {
	t := ti[topic]
	if t == nil {
		t = &topicOffsets{}
		ti[topic] = t
	}
	return t
}

// addBytes is add for a topic decoded from a record: the name is only
// copied the first time the topic is seen.
func (ti topicIndex) addBytes(topic []byte, off uint64) {
	t := ti[string(topic)] // the compiler does not allocate for this lookup
	if t == nil {
		t = &topicOffsets{}
		ti[string(topic)] = t
	}
	t.add(off)
}

func (t *topicOffsets) add(off uint64) {
	t.last = off
	if k := len(t.blocks); k > 0 && t.blocks[k-1].n < topicBlockLen {
		b := &t.blocks[k-1]
		b.deltas = binary.AppendUvarint(b.deltas, off-b.last)
		b.last = off
		b.n++
		return
	}
	t.blocks = append(t.blocks, offsetBlock{first: off, last: off, n: 1})
}

// collect appends to out the offsets in [from, end), at most max of them.
func (t *topicOffsets) collect(from, end uint64, max int, out []uint64) []uint64 {
	if t.last < from || len(t.blocks) == 0 {
		return out // the common case of a reader polling many topics
	}
	i := len(t.blocks) - 1 // a reader following the topic wants its last block
	if t.blocks[i].first > from {
		i = sort.Search(len(t.blocks), func(i int) bool { return t.blocks[i].last >= from })
	}
	for ; i < len(t.blocks) && len(out) < max; i++ {
		b := &t.blocks[i]
		off, rest := b.first, b.deltas
		for j := 0; j < b.n && len(out) < max; j++ {
			if j > 0 {
				d, k := binary.Uvarint(rest)
				off += d
				rest = rest[k:]
			}
			if off >= end {
				return out
			}
			if off >= from {
				out = append(out, off)
			}
		}
	}
	return out
}

// trim drops blocks entirely below first and forgets empty topics.
func (ti topicIndex) trim(first uint64) {
	for name, t := range ti {
		i := sort.Search(len(t.blocks), func(i int) bool { return t.blocks[i].last >= first })
		if i == len(t.blocks) {
			delete(ti, name)
			continue
		}
		if i > 0 {
			t.blocks = append(t.blocks[:0:0], t.blocks[i:]...)
		}
	}
}
