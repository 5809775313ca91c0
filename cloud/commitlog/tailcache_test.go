package commitlog

import (
	"context"
	"fmt"
	"io/fs"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// readCountFS counts ReadAt calls on segment files, to tell reads served
// by the tail cache from reads of the files.
type readCountFS struct {
	FS
	reads atomic.Int64
}

func (c *readCountFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	f, err := c.FS.OpenFile(name, flag, perm)
	if err != nil || !strings.HasSuffix(name, segmentExt) {
		return f, err
	}
	return &readCountFile{File: f, n: &c.reads}, nil
}

type readCountFile struct {
	File
	n *atomic.Int64
}

func (f *readCountFile) ReadAt(b []byte, off int64) (int, error) {
	f.n.Add(1)
	return f.File.ReadAt(b, off)
}

// TestTailCacheServesTail: reads of the newest records (by offset and by
// topic) are served from memory; older records, and every record with the
// cache off, come from the files, with the same results.
func TestTailCacheServesTail(t *testing.T) {
	const topics, n = 7, 600
	want := func(off uint64) Record {
		return Record{Offset: off, Topic: fmt.Sprint("t", off%topics), Value: fmt.Appendf(nil, "value-%d", off)}
	}
	check := func(t *testing.T, recs []Record, offs ...uint64) {
		t.Helper()
		if len(recs) != len(offs) {
			t.Fatalf("%d records, want %d", len(recs), len(offs))
		}
		for i, r := range recs {
			w := want(offs[i])
			if r.Offset != w.Offset || r.Topic != w.Topic || string(r.Value) != string(w.Value) {
				t.Fatalf("record %d: %d %q %q, want %d %q %q", i, r.Offset, r.Topic, r.Value, w.Offset, w.Topic, w.Value)
			}
		}
	}
	for _, tc := range []struct {
		name      string
		cache     int64
		tailReads bool // reads of the last records touch the files
		oldReads  bool // reads of the first records touch the files
	}{
		{"default", 0, false, false},
		{"small", 2000, false, true},
		{"off", -1, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfs := &readCountFS{FS: OSFS{}}
			l := openFile(t, t.TempDir(), Options{FS: cfs, TailCacheBytes: tc.cache, SegmentBytes: 8 << 10, NoPreallocate: true})
			for i := 0; i < n; i += 10 {
				batch := make([]Record, 10)
				for j := range batch {
					batch[j] = want(uint64(i + j))
					batch[j].Offset = 0
				}
				mustAppend(t, l, batch...)
			}
			reads := func(what string, wantFiles bool, fn func()) {
				t.Helper()
				before := cfs.reads.Load()
				fn()
				if got := cfs.reads.Load() - before; (got > 0) != wantFiles {
					t.Errorf("%s: %d segment reads, want reads: %v", what, got, wantFiles)
				}
			}
			reads("Read of the tail", tc.tailReads, func() {
				recs, err := l.Read(n-5, 100, 1<<20)
				if err != nil {
					t.Fatal(err)
				}
				check(t, recs, n-5, n-4, n-3, n-2, n-1)
			})
			reads("ReadTopic of the tail", tc.tailReads, func() {
				recs, err := l.ReadTopic(fmt.Sprint("t", (n-1)%topics), n-topics, 10)
				if err != nil {
					t.Fatal(err)
				}
				check(t, recs, n-1)
			})
			reads("Read of the head", tc.oldReads, func() {
				recs, err := l.Read(0, 3, 1<<20)
				if err != nil {
					t.Fatal(err)
				}
				check(t, recs, 0, 1, 2)
			})
			// A read by topic that spans files and cache returns both, in
			// order.
			recs, err := l.ReadTopic("t3", 0, n)
			if err != nil {
				t.Fatal(err)
			}
			var offs []uint64
			for off := uint64(3); off < n; off += topics {
				offs = append(offs, off)
			}
			check(t, recs, offs...)
			// Read honours maxBytes (at least one record) from the cache too.
			if recs, err := l.Read(n-5, 100, 1); err != nil || len(recs) != 1 {
				t.Fatalf("Read with maxBytes 1: %d records, %v", len(recs), err)
			}
			if recs, err := l.Read(n-5, 2, 1<<20); err != nil || len(recs) != 2 {
				t.Fatalf("Read with maxRecords 2: %d records, %v", len(recs), err)
			}
			if recs, err := l.Read(n, 2, 1<<20); err != nil || len(recs) != 0 {
				t.Fatalf("Read at the end: %d records, %v", len(recs), err)
			}
		})
	}
}

func TestTailCacheEviction(t *testing.T) {
	chunk := func(first uint64, sizes ...int) *tailChunk {
		c := &tailChunk{first: first}
		for i, s := range sizes {
			c.starts = append(c.starts, uint32(len(c.data)))
			for range s {
				c.data = append(c.data, byte(first)+byte(i))
			}
		}
		return c
	}
	tc := tailCache{maxBytes: 10, maxChunks: 3}
	var retired []*tailChunk
	if _, ok := tc.first(); ok || tc.holds(0) {
		t.Fatal("an empty cache holds something")
	}
	retired = tc.add(chunk(0, 2, 3), retired) // offsets 0-1, 5 bytes
	retired = tc.add(chunk(2, 4), retired)    // offset 2, 9 bytes in all
	if first, _ := tc.first(); first != 0 || !tc.holds(2) || tc.holds(3) {
		t.Fatalf("first %d, holds(2) %v, holds(3) %v", first, tc.holds(2), tc.holds(3))
	}
	f, held := tc.frames([]uint64{1, 2}, nil, nil)
	if string(f[0]) != "\x01\x01\x01" || string(f[1]) != "\x02\x02\x02\x02" || len(held) != 2 || held[0].refs.Load() != 1 || held[1].refs.Load() != 1 {
		t.Fatalf("frames: %q, %d chunks held", f, len(held))
	}
	release(held)
	if held[0].refs.Load() != 0 {
		t.Fatal("release left a reference")
	}
	retired = tc.add(chunk(3, 2), retired) // 11 bytes: the first chunk goes
	if first, _ := tc.first(); first != 2 || tc.bytes != 6 || len(retired) != 1 || retired[0].first != 0 {
		t.Fatalf("after eviction by bytes: first %d, bytes %d, %d retired", first, tc.bytes, len(retired))
	}
	retired = tc.add(chunk(4, 1), retired)
	retired = tc.add(chunk(5, 1), retired) // four chunks: one goes
	if first, _ := tc.first(); first != 3 || len(tc.chunks)-tc.head != 3 {
		t.Fatalf("after eviction by count: first %d, %d chunks", first, len(tc.chunks)-tc.head)
	}
	if sp := tc.span(3, 6, 2); len(sp) != 2 || sp[0].first != 3 || sp[1].first != 4 || sp[0].refs.Load() != 1 {
		t.Fatalf("span(3, 6, 2): %d chunks", len(sp))
	} else {
		release(sp)
	}
	retired = tc.add(chunk(20, 50), retired) // larger than the limit and not contiguous: kept alone
	if first, _ := tc.first(); first != 20 || tc.holds(5) || !tc.holds(20) || tc.bytes != 50 {
		t.Fatalf("after a gap: first %d, bytes %d", first, tc.bytes)
	}
	tc.trim(21)
	if _, ok := tc.first(); ok || tc.bytes != 0 {
		t.Fatal("trim left a chunk below the first offset")
	}
	// Many chunks: the evicted prefix is compacted away.
	tc = tailCache{maxBytes: 1 << 20, maxChunks: 10}
	for i := range uint64(1000) {
		retired = tc.add(chunk(i, 1), retired)
	}
	if first, _ := tc.first(); first != 990 || len(tc.chunks) > 200 || tc.find(995) != tc.head+5 {
		t.Fatalf("first %d, %d slots, find(995) %d (head %d)", first, len(tc.chunks), tc.find(995), tc.head)
	}
	off := tailCache{}
	_ = off.add(chunk(0, 1), nil)
	if off.holds(0) {
		t.Fatal("a cache with maxBytes 0 keeps chunks")
	}
}

// TestTailCacheConcurrentReaders: readers by offset and by topic follow
// appenders through a cache small enough to evict all the time; every
// record read is the one appended at its offset.
func TestTailCacheConcurrentReaders(t *testing.T) {
	const topics, writers, perWriter = 13, 4, 300
	l := openFile(t, t.TempDir(), Options{TailCacheBytes: 3000, SegmentBytes: 16 << 10, NoPreallocate: true})
	value := func(topic string, seq uint64) string { return fmt.Sprintf("%s#%d", topic, seq) }
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				topic := fmt.Sprint("t", (w*perWriter+i)%topics)
				p := fmt.Sprint("w", w)
				if _, err := l.Append(context.Background(), []Record{{Topic: topic, Producer: p, ProducerSeq: uint64(i + 1), Value: []byte(value(topic, uint64(i+1)))}}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	total := uint64(writers * perWriter)
	errc := make(chan error, topics+1)
	var readers sync.WaitGroup
	verify := func(r Record) error {
		if want := value(r.Topic, r.ProducerSeq); string(r.Value) != want {
			return fmt.Errorf("offset %d: value %q, want %q", r.Offset, r.Value, want)
		}
		return nil
	}
	readers.Add(1)
	go func() {
		defer readers.Done()
		for from := uint64(0); from < total; {
			if err := l.Wait(context.Background(), from); err != nil {
				errc <- err
				return
			}
			recs, err := l.Read(from, 7, 1<<20)
			if err != nil {
				errc <- err
				return
			}
			for _, r := range recs {
				if r.Offset != from {
					errc <- fmt.Errorf("Read: offset %d, want %d", r.Offset, from)
					return
				}
				if err := verify(r); err != nil {
					errc <- err
					return
				}
				from++
			}
		}
	}()
	for k := range topics {
		readers.Add(1)
		go func() {
			defer readers.Done()
			topic := fmt.Sprint("t", k)
			count, from := 0, uint64(0)
			for count < writers*perWriter/topics {
				if err := l.Wait(context.Background(), from); err != nil {
					errc <- err
					return
				}
				next := l.NextOffset() // ReadTopic looks at least this far
				recs, err := l.ReadTopic(topic, from, 5)
				if err != nil {
					errc <- err
					return
				}
				for _, r := range recs {
					if r.Topic != topic || r.Offset < from {
						errc <- fmt.Errorf("ReadTopic(%s): record %d of %s", topic, r.Offset, r.Topic)
						return
					}
					if err := verify(r); err != nil {
						errc <- err
						return
					}
					from = r.Offset + 1
					count++
				}
				if len(recs) == 0 {
					from = max(from, next) // nothing of the topic below: wait for more
				}
			}
		}()
	}
	wg.Wait()
	readers.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
}

// TestTailCacheReuseWaitsForReaders: the writer does not write a new group
// into the buffer of an evicted chunk that a reader still holds.
func TestTailCacheReuseWaitsForReaders(t *testing.T) {
	l := openFile(t, t.TempDir(), Options{TailCacheBytes: 1, NoPreallocate: true})
	mustAppend(t, l, Record{Topic: "t", Value: []byte("first")})
	l.mu.RLock()
	frames, held := l.cache.frames([]uint64{0}, nil, nil)
	l.mu.RUnlock()
	for i := range 50 { // each group evicts the one before (and may reuse its buffer)
		mustAppend(t, l, Record{Topic: "t", Value: fmt.Appendf(nil, "later-%d", i)})
	}
	m, err := parseBody(frames[0][frameHeaderLen:])
	if err != nil || string(m.value) != "first" || m.offset != 0 {
		t.Fatalf("held frame now %q at offset %d (%v): its buffer was reused", m.value, m.offset, err)
	}
	release(held)
	for i := range 5 {
		mustAppend(t, l, Record{Topic: "t", Value: fmt.Appendf(nil, "again-%d", i)})
	}
	recs, err := l.Read(0, 100, 1<<20)
	if err != nil || len(recs) != 56 || string(recs[0].Value) != "first" || string(recs[55].Value) != "again-4" {
		t.Fatalf("Read: %d records, %v", len(recs), err)
	}
}
