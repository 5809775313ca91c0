package commitlog

import (
	"sort"
	"sync/atomic"
)

// tailCache keeps the frames of the latest group commits in memory, so that
// readers of the tail copy records from memory instead of reading the
// segment files.
//
// Why: live readers (dispatch, a consumer of every topic) follow the log
// closely, and a read by topic wants records scattered over the segment: at
// 10,000 topics a topic's next record is ~10,000 records past its last one,
// so every record cost one pread of an index interval (measured with the
// log-topics benchmark: the consumer's preads took 80% of the CPU and the
// appends fell to a third). RocketMQ serves the same reads from its
// memory-mapped commit log; we keep the bytes the writer just wrote
// instead, which needs no mmap (and no SIGBUS risk when a file shrinks) and
// goes through no FS. Older records are read from the files as before.
//
// The frames are the sealed frames the writer wrote and fsync'd: the
// writer's group buffer itself, handed over after the write. A chunk is
// published with its group (under FileLog.mu) and not changed while the
// cache holds it. A reader that finds a chunk under the lock takes a
// reference (refs) and reads it after releasing the lock; the writer reuses
// the buffers of an evicted chunk for a later group only once its refs are
// back to 0 (no reader can take a new one: it is no longer in the cache).
// Chunks cover consecutive offsets without gaps: every published record is
// in a chunk from the first cached offset on.
//
// Guarded by FileLog.mu.
type tailCache struct {
	chunks    []*tailChunk // ascending offsets; chunks[:head] are evicted (nil)
	head      int
	bytes     int64 // data bytes of chunks[head:]
	maxBytes  int64 // 0: the cache is off
	maxChunks int
}

// tailChunk is the frames one flush wrote to one segment.
type tailChunk struct {
	first  uint64   // offset of the first record
	data   []byte   // whole sealed frames, as written
	starts []uint32 // start of each record's frame in data
	refs   atomic.Int32
}

// maxTailChunks bounds the chunk count (whatever their bytes), so that a
// trickle of one-record groups does not make a huge slice to search.
const maxTailChunks = 8192

func (c *tailChunk) next() uint64 { return c.first + uint64(len(c.starts)) }

// frame returns record off's frame (off must be in the chunk).
func (c *tailChunk) frame(off uint64) []byte {
	i := off - c.first
	end := len(c.data)
	if i+1 < uint64(len(c.starts)) {
		end = int(c.starts[i+1])
	}
	return c.data[c.starts[i]:end]
}

// maxRetired bounds the evicted chunks kept for their buffers.
const maxRetired = 4

// add publishes chunk (which must start where the last one ends), evicts
// the oldest chunks beyond the limits and returns retired with the evicted
// chunks appended (at most maxRetired are kept).
func (tc *tailCache) add(chunk *tailChunk, retired []*tailChunk) []*tailChunk {
	if tc.maxBytes == 0 {
		return retired
	}
	if k := len(tc.chunks); k > tc.head && tc.chunks[k-1].next() != chunk.first {
		tc.clear() // not contiguous (cannot happen in a healthy log): start again
	}
	tc.chunks = append(tc.chunks, chunk)
	tc.bytes += int64(len(chunk.data))
	for len(tc.chunks)-tc.head > 1 && (tc.bytes > tc.maxBytes || len(tc.chunks)-tc.head > tc.maxChunks) {
		c := tc.chunks[tc.head]
		if len(retired) < maxRetired {
			retired = append(retired, c)
		}
		tc.bytes -= int64(len(c.data))
		tc.chunks[tc.head] = nil
		tc.head++
	}
	if tc.head > 64 && tc.head*2 >= len(tc.chunks) {
		n := copy(tc.chunks, tc.chunks[tc.head:])
		clear(tc.chunks[n:])
		tc.chunks = tc.chunks[:n]
		tc.head = 0
	}
	return retired
}

func (tc *tailCache) clear() {
	clear(tc.chunks)
	tc.chunks, tc.head, tc.bytes = tc.chunks[:0], 0, 0
}

// first returns the oldest cached offset, and false if the cache is empty.
func (tc *tailCache) first() (uint64, bool) {
	if tc.head == len(tc.chunks) {
		return 0, false
	}
	return tc.chunks[tc.head].first, true
}

// holds reports whether off is cached.
func (tc *tailCache) holds(off uint64) bool {
	first, ok := tc.first()
	return ok && off >= first && off < tc.chunks[len(tc.chunks)-1].next()
}

// find returns the index in chunks of the chunk holding off (which must be
// cached).
func (tc *tailCache) find(off uint64) int {
	live := tc.chunks[tc.head:]
	return tc.head + sort.Search(len(live), func(i int) bool { return live[i].next() > off })
}

// frames appends to out the frames of offs (ascending, all cached), and to
// held the chunks they are in, each with a reference taken: the caller
// reads the frames after releasing FileLog.mu and then calls release(held).
func (tc *tailCache) frames(offs []uint64, out [][]byte, held []*tailChunk) ([][]byte, []*tailChunk) {
	i := -1
	for _, off := range offs {
		if i < 0 || off >= tc.chunks[i].next() {
			i = tc.find(off)
			tc.chunks[i].refs.Add(1)
			held = append(held, tc.chunks[i])
		}
		out = append(out, tc.chunks[i].frame(off))
	}
	return out, held
}

// span returns the chunks holding [from, end), from cached, end at most the
// last cached offset + 1; records beyond maxRecords are left out. Like
// frames, it takes a reference to each chunk for the caller to release.
func (tc *tailCache) span(from, end uint64, maxRecords int) []*tailChunk {
	var out []*tailChunk
	n := 0
	for i := tc.find(from); i < len(tc.chunks) && tc.chunks[i].first < end && n < maxRecords; i++ {
		c := tc.chunks[i]
		c.refs.Add(1)
		out = append(out, c)
		n += int(c.next() - max(c.first, from))
	}
	return out
}

// release drops the references frames or span took.
func release(held []*tailChunk) {
	for _, c := range held {
		c.refs.Add(-1)
	}
}

// trim drops the chunks entirely below first (after retention).
func (tc *tailCache) trim(first uint64) {
	for tc.head < len(tc.chunks) && tc.chunks[tc.head].next() <= first {
		tc.bytes -= int64(len(tc.chunks[tc.head].data))
		tc.chunks[tc.head] = nil
		tc.head++
	}
}
