package outbox

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// classMsg is a message of priority class whose StoredSize is exactly size
// (at least classMsgMin). i is written into the payload so records can be
// told apart.
func classMsg(class uint8, i int, size int64) Message {
	m := Message{ClientID: "dev", Topic: fmt.Sprintf("c/%d", class), Priority: class}
	pad := size - m.StoredSize()
	m.Payload = []byte(fmt.Sprintf("%0*d", pad, i))
	return m
}

// classMsgMin is the smallest size classMsg can make.
const classMsgMin = RecordOverhead + 3 + 3 + 12

func appendErr(t *testing.T, o *Outbox, m Message) (uint64, error) {
	t.Helper()
	return o.AppendWait(context.Background(), m)
}

func mustAppend(t *testing.T, o *Outbox, m Message) uint64 {
	t.Helper()
	seq, err := appendErr(t, o, m)
	if err != nil {
		t.Fatalf("append priority %d: %v", m.Priority, err)
	}
	return seq
}

// heldSeqs returns the seqs the outbox holds, read through Read in small
// pages (so reads cross the gaps that drops and expiry leave).
func heldSeqs(t *testing.T, o *Outbox) []uint64 {
	t.Helper()
	var seqs []uint64
	for _, r := range readAll(t, o, 0) {
		seqs = append(seqs, r.Seq)
	}
	return seqs
}

func classStats(st Stats, class uint8) ClassStats {
	for _, c := range st.Classes {
		if c.Priority == class {
			return c
		}
	}
	return ClassStats{Priority: class}
}

// checkAccounting compares Stats with what Read returns: records, payload
// bytes and StoredSize in total and per class.
func checkAccounting(t *testing.T, o *Outbox) {
	t.Helper()
	st := o.Stats()
	var records, payload, bytes, first uint64
	byClass := map[uint8][2]uint64{}
	for _, r := range readAll(t, o, 0) {
		if first == 0 {
			first = r.Seq
		}
		records++
		payload += uint64(len(r.Payload))
		size := uint64(r.Message.StoredSize())
		bytes += size
		c := byClass[r.Priority]
		byClass[r.Priority] = [2]uint64{c[0] + 1, c[1] + size}
	}
	if st.Records != records || st.PayloadBytes != payload || st.Bytes != bytes {
		t.Fatalf("stats hold %d records, %d payload bytes, %d bytes; Read finds %d, %d, %d",
			st.Records, st.PayloadBytes, st.Bytes, records, payload, bytes)
	}
	if st.FirstSeq != first {
		t.Fatalf("Stats.FirstSeq = %d, Read finds %d first", st.FirstSeq, first)
	}
	for _, c := range st.Classes {
		if want := byClass[c.Priority]; c.Records != want[0] || c.Bytes != want[1] {
			t.Fatalf("class %d stats hold %d records, %d bytes; Read finds %d, %d", c.Priority, c.Records, c.Bytes, want[0], want[1])
		}
		delete(byClass, c.Priority)
	}
	if len(byClass) != 0 {
		t.Fatalf("classes held but missing from Stats.Classes: %v", byClass)
	}
}

// TestStoredSizeMatchesDatabase: the byte accounting kept in memory, the
// recount from the stored columns on Open, and Message.StoredSize of what
// Read returns all agree, including for strings SQLite's length() would
// count differently (multi-byte UTF-8, NUL, invalid UTF-8).
func TestStoredSizeMatchesDatabase(t *testing.T) {
	path := dbPath(t)
	o, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	msgs := []Message{
		testMessage(1, 7),
		{},
		{Topic: "héllo/wörld/✓", ClientID: "dev\x00ice", Username: "\xff\xfe", Payload: []byte{0, 1, 2}},
		{Topic: "p", UserProperties: []UserProperty{{strings.Repeat("k", 200), strings.Repeat("v", 300)}, {"", ""}}},
		{Topic: "t", ContentType: "text/plain; charset=utf-8", EventType: "io.x", Priority: 200, Payload: make([]byte, 5000)},
	}
	var want int64
	for _, m := range msgs {
		if got, enc := m.StoredSize(), int64(len(m.Payload)+len(m.ClientID)+len(m.Username)+len(m.Topic)+
			len(m.ContentType)+len(m.EventType)+len(appendUserProperties(nil, m.UserProperties)))+RecordOverhead; got != enc {
			t.Fatalf("StoredSize = %d, want %d for %+v", got, enc, m)
		}
		want += m.StoredSize()
		mustAppend(t, o, m)
	}
	if st := o.Stats(); st.Bytes != uint64(want) {
		t.Fatalf("Stats.Bytes = %d, want %d", st.Bytes, want)
	}
	checkAccounting(t, o)
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	o = openT(t, path, Options{})
	if st := o.Stats(); st.Bytes != uint64(want) {
		t.Fatalf("Stats.Bytes after reopen = %d, want %d", st.Bytes, want)
	}
	checkAccounting(t, o)
}

// TestRejectNewQuota: with the default policy, messages that do not fit are
// refused with ErrQuotaExceeded and counted, nothing held is deleted, and an
// Ack makes room again.
func TestRejectNewQuota(t *testing.T) {
	const size = 200
	o := openT(t, dbPath(t), Options{QuotaBytes: 5*size + size/2})
	for i := range 5 {
		if seq := mustAppend(t, o, classMsg(3, i, size)); seq != uint64(i+1) {
			t.Fatalf("seq %d, want %d", seq, i+1)
		}
	}
	for i := range 3 {
		seq, err := appendErr(t, o, classMsg(3, 5+i, size))
		if !errors.Is(err, ErrQuotaExceeded) || seq != 0 {
			t.Fatalf("append over the quota = %d, %v; want 0, ErrQuotaExceeded", seq, err)
		}
	}
	// Half a record still fits: a small message is accepted.
	if seq := mustAppend(t, o, classMsg(0, 0, size/2)); seq != 6 {
		t.Fatalf("small message seq %d, want 6", seq)
	}
	// Larger than the whole quota: refused even when empty.
	if _, err := appendErr(t, o, classMsg(0, 0, 6*size)); !errors.Is(err, ErrQuotaExceeded) {
		t.Fatalf("message larger than the quota = %v", err)
	}
	st := o.Stats()
	if st.Rejected != 4 || st.DroppedOldest != 0 || st.Records != 6 || st.Bytes != 5*size+size/2 {
		t.Fatalf("stats: %+v", st)
	}
	if c3, c0 := classStats(st, 3), classStats(st, 0); c3.Rejected != 3 || c3.Records != 5 || c0.Rejected != 1 || c0.Records != 1 {
		t.Fatalf("class stats: %+v", st.Classes)
	}
	if got := heldSeqs(t, o); fmt.Sprint(got) != "[1 2 3 4 5 6]" {
		t.Fatalf("held %v", got)
	}
	if err := o.Ack(2); err != nil {
		t.Fatal(err)
	}
	// Rejected messages never took a seq.
	for i := range 2 {
		if seq := mustAppend(t, o, classMsg(3, 10+i, size)); seq != uint64(7+i) {
			t.Fatalf("seq after Ack %d, want %d", seq, 7+i)
		}
	}
	if _, err := appendErr(t, o, classMsg(3, 20, size)); !errors.Is(err, ErrQuotaExceeded) {
		t.Fatalf("append over the quota after refilling = %v", err)
	}
	checkAccounting(t, o)
}

// TestDropOldestClassOrder: room is made from the lowest-priority DropOldest
// class first, oldest first; never from a higher class for a lower one; never
// from a RejectNew class. Read works across the gaps this leaves.
func TestDropOldestClassOrder(t *testing.T) {
	const size = 150
	o := openT(t, dbPath(t), Options{
		QuotaBytes: 10 * size,
		Overflow:   DropOldest,
		Classes:    map[uint8]ClassPolicy{4: {Overflow: RejectNew}},
	})
	// seq: class
	//  1:0 2:1 3:2 4:3 5:4 6:0 7:1 8:2 9:3 10:1
	classes := []uint8{0, 1, 2, 3, 4, 0, 1, 2, 3, 1}
	for i, c := range classes {
		mustAppend(t, o, classMsg(c, i, size))
	}
	steps := []struct {
		class uint8
		held  string // seqs held after the append
	}{
		{1, "[1 2 3 5 6 7 8 9 10 11]"},      // drops 4 (class 3, the lowest droppable)
		{1, "[1 2 3 5 6 7 8 10 11 12]"},     // drops 9 (class 3); class 4 is RejectNew
		{2, "[1 2 5 6 7 8 10 11 12 13]"},    // drops 3 (oldest class 2)
		{1, "[1 2 5 6 7 10 11 12 13 14]"},   // drops 8 (class 2)
		{1, "[1 2 5 6 7 10 11 12 14 15]"},   // drops 13 (the last class 2)
		{1, "[1 5 6 7 10 11 12 14 15 16]"},  // class 1 now drops its own oldest: 2
		{0, "[1 5 6 10 11 12 14 15 16 17]"}, // class 0 drops the lowest class left: 7 (class 1)
	}
	for i, s := range steps {
		mustAppend(t, o, classMsg(s.class, 100+i, size))
		if got := fmt.Sprint(heldSeqs(t, o)); got != s.held {
			t.Fatalf("step %d (class %d): held %s, want %s", i, s.class, got, s.held)
		}
	}
	// Class 2 and 3 are gone; a class 3 message cannot take room from
	// classes 0 and 1, nor from the RejectNew class 4.
	for _, c := range []uint8{3, 2, 4} {
		if _, err := appendErr(t, o, classMsg(c, 200, size)); !errors.Is(err, ErrQuotaExceeded) {
			t.Fatalf("class %d append into an outbox of higher classes = %v, want ErrQuotaExceeded", c, err)
		}
	}
	st := o.Stats()
	want := map[uint8]ClassStats{
		0: {Priority: 0, Records: 3, Bytes: 3 * size},
		1: {Priority: 1, Records: 6, Bytes: 6 * size, DroppedOldest: 2},
		2: {Priority: 2, DroppedOldest: 3, Rejected: 1},
		3: {Priority: 3, DroppedOldest: 2, Rejected: 1},
		4: {Priority: 4, Records: 1, Bytes: size, Rejected: 1},
	}
	if len(st.Classes) != len(want) {
		t.Fatalf("classes %+v, want %+v", st.Classes, want)
	}
	for _, c := range st.Classes {
		if c != want[c.Priority] {
			t.Errorf("class %d: %+v, want %+v", c.Priority, c, want[c.Priority])
		}
	}
	if st.DroppedOldest != 7 || st.Rejected != 3 || st.Bytes != 10*size || st.FirstSeq != 1 {
		t.Fatalf("stats %+v", st)
	}
	// Read pages across the gaps, and Acks across them delete what is left.
	if recs, err := o.Read(1, 2, 0); err != nil || len(recs) != 2 || recs[0].Seq != 5 || recs[1].Seq != 6 {
		t.Fatalf("Read(1, 2) across a gap = %v, %v", recs, err)
	}
	if err := o.Ack(9); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(heldSeqs(t, o)); got != "[10 11 12 14 15 16 17]" {
		t.Fatalf("held after Ack(9): %s", got)
	}
	checkAccounting(t, o)
}

// TestQuotaExactUnderConcurrency: many goroutines append at once; after
// every commit the outbox holds no more than the quota, and at the end the
// outcome is exactly what the policy promises.
func TestQuotaExactUnderConcurrency(t *testing.T) {
	const (
		size      = 300
		fits      = 40
		clients   = 16
		perClient = 60
	)
	for _, policy := range []Overflow{RejectNew, DropOldest} {
		t.Run(string(policy), func(t *testing.T) {
			var (
				o       *Outbox
				overErr error
				commits int
				checkMu sync.Mutex
			)
			hooks := &testHooks{afterCommit: func() {
				st := o.Stats()
				checkMu.Lock()
				defer checkMu.Unlock()
				commits++
				if st.Bytes > fits*size && overErr == nil {
					overErr = fmt.Errorf("after commit %d the outbox holds %d bytes, quota %d", commits, st.Bytes, fits*size)
				}
			}}
			o = openT(t, dbPath(t), Options{QuotaBytes: fits*size + size - 1, Overflow: policy, hooks: hooks})
			type result struct {
				seq uint64
				err error
			}
			results := make([][]result, clients)
			var wg sync.WaitGroup
			for c := range clients {
				results[c] = make([]result, perClient)
				wg.Add(perClient)
				go func() {
					// A small window per client, like an MQTT receive
					// maximum, so that many groups commit.
					window := make(chan struct{}, 4)
					for i := range perClient {
						window <- struct{}{}
						o.Append(classMsg(1, c*1000+i, size), func(seq uint64, err error) {
							results[c][i] = result{seq, err}
							<-window
							wg.Done()
						})
					}
				}()
			}
			wg.Wait()
			if overErr != nil {
				t.Fatal(overErr)
			}
			var ok []uint64
			var refused uint64
			for c := range clients {
				var last uint64
				for i, r := range results[c] {
					switch {
					case r.err == nil:
						if r.seq <= last {
							t.Fatalf("client %d message %d: seq %d after %d", c, i, r.seq, last)
						}
						last = r.seq
						ok = append(ok, r.seq)
					case errors.Is(r.err, ErrQuotaExceeded) && r.seq == 0:
						refused++
					default:
						t.Fatalf("client %d message %d: %d, %v", c, i, r.seq, r.err)
					}
				}
			}
			slices.Sort(ok)
			st := o.Stats()
			held := heldSeqs(t, o)
			t.Logf("%s: %d committed in %d groups (%d commits), %d refused, %d dropped", policy, len(ok), st.CommittedGroups, commits, refused, st.DroppedOldest)
			if st.Rejected != refused || uint64(len(ok))+refused != clients*perClient {
				t.Fatalf("%d accepted + %d refused of %d; Stats.Rejected %d", len(ok), refused, clients*perClient, st.Rejected)
			}
			if len(held) != fits || st.Bytes != fits*size {
				t.Fatalf("holds %d records, %d bytes; want exactly %d records", len(held), st.Bytes, fits)
			}
			switch policy {
			case RejectNew:
				// The first `fits` messages are stored, the rest refused,
				// and nothing acknowledged is lost.
				if len(ok) != fits || !slices.Equal(held, ok) || st.DroppedOldest != 0 {
					t.Fatalf("accepted %v, held %v, dropped %d", ok, held, st.DroppedOldest)
				}
			case DropOldest:
				// The newest `fits` accepted messages are held; every
				// other accepted one was dropped and counted.
				if !slices.Equal(held, ok[len(ok)-fits:]) || st.DroppedOldest != uint64(len(ok)-fits) {
					t.Fatalf("held %v, want the newest %d of %d accepted; dropped %d", held, fits, len(ok), st.DroppedOldest)
				}
				if c := classStats(st, 1); c.DroppedOldest != st.DroppedOldest || c.Rejected != refused {
					t.Fatalf("class stats %+v", c)
				}
			}
			checkAccounting(t, o)
		})
	}
}

// TestQuotaAgainstModel drives deterministic groups of messages of random
// classes and sizes into an outbox with a random policy table, with Acks
// and reopens in between, and checks every outcome, what is held and every
// counter against a plain list that applies the rule as documented.
func TestQuotaAgainstModel(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3, 4} {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { runQuotaModel(t, seed) })
	}
}

type modelRec struct {
	seq   uint64 // 0 while in the group being planned
	idx   int    // index in the group
	class uint8
	size  int64
}

func runQuotaModel(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 99))
	const classes = 5
	opts := Options{QuotaBytes: int64(2000 + rng.IntN(3000)), Classes: map[uint8]ClassPolicy{}}
	drop := make([]bool, classes)
	for c := range classes {
		if rng.IntN(3) > 0 {
			drop[c] = true
			opts.Classes[uint8(c)] = ClassPolicy{Overflow: DropOldest}
		}
	}
	t.Logf("quota %d, drop-oldest classes %v", opts.QuotaBytes, drop)
	h := &writerHold{}
	opts.hooks = h.hooks()
	path := dbPath(t)
	o, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { o.Close() }()

	var (
		held                      []modelRec // in seq order
		last                      uint64
		rejected, dropped         [classes]uint64
		totalRejected, totalDrops uint64
	)
	bytesOf := func(recs []modelRec, class int) (n int64) {
		for _, r := range recs {
			if class < 0 || int(r.class) == class {
				n += r.size
			}
		}
		return n
	}
	for step := range 60 {
		switch op := rng.IntN(10); {
		case op < 7: // a group of 1 to 8 messages
			k := 1 + rng.IntN(8)
			msgs := make([]Message, k)
			for i := range msgs {
				msgs[i] = classMsg(uint8(rng.IntN(classes)), step*100+i, int64(classMsgMin+rng.IntN(700)))
			}
			// The model: held then the group in order; victims of class k are
			// its entries in that order.
			refusedIdx := map[int]bool{}
			list := slices.Clone(held)
			for i, m := range msgs {
				c, size := int(m.Priority), m.StoredSize()
				need := bytesOf(list, -1) + size - opts.QuotaBytes
				if need > 0 {
					var avail int64
					for k := c; k < classes; k++ {
						if drop[k] {
							avail += bytesOf(list, k)
						}
					}
					if size > opts.QuotaBytes || avail < need {
						refusedIdx[i] = true
						rejected[c]++
						totalRejected++
						continue
					}
					var freed int64
					for k := classes - 1; k >= c && freed < need; k-- {
						if !drop[k] {
							continue
						}
						list = slices.DeleteFunc(list, func(r modelRec) bool {
							if freed >= need || int(r.class) != k {
								return false
							}
							freed += r.size
							if r.seq == 0 {
								refusedIdx[r.idx] = true
								rejected[k]++
								totalRejected++
							} else {
								dropped[k]++
								totalDrops++
							}
							return true
						})
					}
				}
				list = append(list, modelRec{idx: i, class: uint8(c), size: size})
			}
			// The outbox, in one group.
			seqs := make([]uint64, k)
			errs := make([]error, k)
			var wg sync.WaitGroup
			wg.Add(k)
			heldCh, release := h.arm()
			for i, m := range msgs {
				o.Append(m, func(seq uint64, err error) { seqs[i], errs[i] = seq, err; wg.Done() })
				if i == 0 {
					<-heldCh
				}
			}
			close(release)
			wg.Wait()
			for i := range msgs {
				if refusedIdx[i] {
					if !errors.Is(errs[i], ErrQuotaExceeded) || seqs[i] != 0 {
						t.Fatalf("step %d message %d (class %d): %d, %v; model refuses it", step, i, msgs[i].Priority, seqs[i], errs[i])
					}
					continue
				}
				if errs[i] != nil || seqs[i] != last+1 {
					t.Fatalf("step %d message %d (class %d): %d, %v; model stores it as seq %d", step, i, msgs[i].Priority, seqs[i], errs[i], last+1)
				}
				last++
			}
			held = held[:0]
			for _, r := range list {
				if r.seq == 0 {
					r.seq = seqs[r.idx]
				}
				held = append(held, r)
			}
		case op < 8: // ack a prefix
			if len(held) == 0 {
				break
			}
			upTo := held[rng.IntN(len(held))].seq
			if err := o.Ack(upTo); err != nil {
				t.Fatal(err)
			}
			held = slices.DeleteFunc(held, func(r modelRec) bool { return r.seq <= upTo })
		default: // reopen: the accounting is recounted, the counters restart
			if err := o.Close(); err != nil {
				t.Fatal(err)
			}
			if o, err = Open(path, opts); err != nil {
				t.Fatal(err)
			}
			rejected, dropped = [classes]uint64{}, [classes]uint64{}
			totalRejected, totalDrops = 0, 0
		}

		var want []uint64
		for _, r := range held {
			want = append(want, r.seq)
		}
		if got := heldSeqs(t, o); !slices.Equal(got, want) {
			t.Fatalf("step %d: held %v, model %v", step, got, want)
		}
		st := o.Stats()
		if st.Bytes != uint64(bytesOf(held, -1)) || st.Bytes > uint64(opts.QuotaBytes) ||
			st.Rejected != totalRejected || st.DroppedOldest != totalDrops || st.LastSeq != last ||
			(len(held) > 0 && st.FirstSeq != held[0].seq) || (len(held) == 0 && st.FirstSeq != 0) {
			t.Fatalf("step %d: stats %+v; model holds %d bytes, %d rejected, %d dropped, last %d",
				step, st, bytesOf(held, -1), totalRejected, totalDrops, last)
		}
		for c := range classes {
			cs := classStats(st, uint8(c))
			if cs.Rejected != rejected[c] || cs.DroppedOldest != dropped[c] || cs.Bytes != uint64(bytesOf(held, c)) {
				t.Fatalf("step %d: class %d stats %+v; model %d rejected, %d dropped, %d bytes", step, c, cs, rejected[c], dropped[c], bytesOf(held, c))
			}
		}
	}
	t.Logf("last seq %d, %d records held, %d bytes", last, len(held), bytesOf(held, -1))
	checkAccounting(t, o)
}

// fakeClock is a settable clock for Options.Now.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// TestTTLExpiry: records older than their class's TTL (by Received, on an
// injected clock) are deleted in bounded chunks and counted per class;
// classes without a TTL and records without a Received time stay; Read and
// Ack work across the gaps.
func TestTTLExpiry(t *testing.T) {
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := &fakeClock{now: start}
	path := dbPath(t)
	opts := Options{
		TTL: time.Hour,
		Classes: map[uint8]ClassPolicy{
			1: {TTL: 10 * time.Minute},
			2: {TTL: -1}, // never
		},
		Now:             clock.Now,
		ExpireInterval:  time.Millisecond,
		ExpireChunkRows: 3,
	}
	o := openT(t, path, opts)
	// Minute i: one message of each class 0, 1, 2 received then, for i in
	// 0..29; and a class-0 message with no Received time.
	for i := range 30 {
		for c := range uint8(3) {
			m := classMsg(c, i, 200)
			m.Received = start.Add(time.Duration(i) * time.Minute)
			mustAppend(t, o, m)
		}
	}
	mustAppend(t, o, classMsg(0, 99, 200)) // seq 91, Received zero
	if st := o.Stats(); st.Expired != 0 || st.Records != 91 {
		t.Fatalf("expired before the clock moved: %+v", st)
	}

	waitExpired := func(want uint64) Stats {
		t.Helper()
		var st Stats
		if !pollUntil(30*time.Second, func() bool { st = o.Stats(); return st.Expired >= want }) {
			t.Fatalf("expired %d, want %d: %+v", st.Expired, want, st)
		}
		return st
	}
	// At 0:25, class 1 records received before 0:15 are due: 16 of them
	// (minutes 0..15), deleted in chunks of 3.
	clock.Advance(25 * time.Minute)
	st := waitExpired(16)
	if st.Expired != 16 || classStats(st, 1).Expired != 16 || classStats(st, 1).Records != 14 {
		t.Fatalf("after 25 minutes: %+v", st)
	}
	// Class 1 records are at seqs 2, 5, 8, ...: the first 16 are gone.
	recs := readAll(t, o, 0)
	for _, r := range recs {
		if r.Priority == 1 && r.Received.Before(start.Add(16*time.Minute)) {
			t.Fatalf("seq %d (class 1, received %v) not expired", r.Seq, r.Received)
		}
	}
	if recs, err := o.Read(1, 2, 0); err != nil || len(recs) != 2 || recs[0].Seq != 3 || recs[1].Seq != 4 {
		t.Fatalf("Read(1, 2) across an expiry gap = %v, %v", recs, err)
	}

	// At 1:20 class 0 records received at or before 0:20 are due too (21),
	// and every class 1 record; class 2 and the record without Received time
	// never expire.
	clock.Advance(55 * time.Minute)
	st = waitExpired(16 + 14 + 21)
	if st.Expired != 51 || st.Records != 40 {
		t.Fatalf("after 80 minutes: %+v", st)
	}
	for c, want := range []ClassStats{
		{Priority: 0, Records: 10, Bytes: 10 * 200, Expired: 21},
		{Priority: 1, Expired: 30},
		{Priority: 2, Records: 30, Bytes: 30 * 200},
	} {
		if got := classStats(st, uint8(c)); got != want {
			t.Errorf("class %d: %+v, want %+v", c, got, want)
		}
	}
	checkAccounting(t, o)
	// An Ack across the gaps deletes what is left below it.
	if err := o.Ack(62); err != nil {
		t.Fatal(err)
	}
	for _, r := range readAll(t, o, 0) {
		if r.Seq <= 62 {
			t.Fatalf("seq %d held after Ack(62)", r.Seq)
		}
	}
	checkAccounting(t, o)

	// Reopened much later: due records are found at Open.
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	clock.Advance(24 * time.Hour)
	o = openT(t, path, opts)
	st = waitExpired(9) // class 0 minutes 21..29 (seqs 64..88)
	if got := heldSeqs(t, o); uint64(len(got)) != 1+classStats(st, 2).Records || got[len(got)-1] != 91 {
		t.Fatalf("held after reopening a day later: %v (%+v)", got, st)
	}
	checkAccounting(t, o)
}

// TestExpiryMakesRoomBeforeRefusing: when records are due, the writer
// expires them before it plans the next group, so a full RejectNew outbox
// accepts a message once its clock passes the TTL of what it holds.
func TestExpiryMakesRoomBeforeRefusing(t *testing.T) {
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := &fakeClock{now: start}
	o := openT(t, dbPath(t), Options{
		QuotaBytes: 1000, TTL: time.Minute, Now: clock.Now,
		ExpireInterval: time.Hour, // the idle writer never looks by itself
	})
	for i := range 5 {
		m := classMsg(0, i, 200)
		m.Received = start
		mustAppend(t, o, m)
	}
	m := classMsg(0, 5, 200)
	m.Received = start
	if _, err := appendErr(t, o, m); !errors.Is(err, ErrQuotaExceeded) {
		t.Fatalf("append into a full outbox = %v", err)
	}
	clock.Advance(time.Minute)
	m.Received = clock.Now()
	if seq := mustAppend(t, o, m); seq != 6 {
		t.Fatalf("seq %d, want 6", seq)
	}
	if st := o.Stats(); st.Expired != 5 || st.Records != 1 || st.Rejected != 1 || st.FirstSeq != 6 {
		t.Fatalf("stats: %+v", st)
	}
}

// TestRestartKeepsAccounting: held bytes per class survive Close and Open,
// and the quota is exact right after reopening (also with a lower quota
// than what is held).
func TestRestartKeepsAccounting(t *testing.T) {
	const size = 250
	path := dbPath(t)
	opts := Options{QuotaBytes: 20 * size, Classes: map[uint8]ClassPolicy{7: {Overflow: DropOldest}}}
	o, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		c := uint8(7)
		if i%3 == 0 {
			c = 2
		}
		if _, err := appendErr(t, o, classMsg(c, i, size)); err != nil {
			t.Fatal(err) // class 2 always finds class 7 records to drop
		}
	}
	if err := o.Ack(12); err != nil {
		t.Fatal(err)
	}
	before := o.Stats()
	if before.Bytes != 16*size || before.DroppedOldest != 10 {
		t.Fatalf("before reopen: %+v", before)
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}

	o, err = Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	after := o.Stats()
	if after.Bytes != before.Bytes || after.Records != before.Records || after.PayloadBytes != before.PayloadBytes {
		t.Fatalf("reopened: %+v, was %+v", after, before)
	}
	for _, c := range after.Classes {
		if b := classStats(before, c.Priority); c.Records != b.Records || c.Bytes != b.Bytes || c.DroppedOldest != 0 {
			t.Fatalf("class %d reopened: %+v, was %+v", c.Priority, c, b)
		}
	}
	checkAccounting(t, o)
	// Exactly four more fit for class 9, which may not take room from the
	// higher class 7.
	for i := range 5 {
		_, err := appendErr(t, o, classMsg(9, 100+i, size))
		if (i < 4) != (err == nil) || (i == 4 && !errors.Is(err, ErrQuotaExceeded)) {
			t.Fatalf("append %d after reopen: %v", i, err)
		}
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}

	// A lower quota: nothing is deleted at Open. The outbox holds 20 records
	// (6 of class 2, 10 of class 7, 4 of class 9); one more needs 11 dropped
	// and only class 7's 10 may go, so both classes are refused.
	opts.QuotaBytes = 10 * size
	o = openT(t, path, opts)
	if st := o.Stats(); st.Bytes != 20*size {
		t.Fatalf("Open with a lower quota changed the outbox: %+v", st)
	}
	if _, err := appendErr(t, o, classMsg(2, 200, size)); !errors.Is(err, ErrQuotaExceeded) {
		t.Fatalf("class 2 over a lowered quota = %v", err)
	}
	if _, err := appendErr(t, o, classMsg(7, 200, size)); !errors.Is(err, ErrQuotaExceeded) {
		t.Fatalf("class 7 over a lowered quota, holding only %d bytes of class 7 = %v", classStats(o.Stats(), 7).Bytes, err)
	}
	checkAccounting(t, o)
}

// TestClassIndexFollowsOptions: records_class exists exactly while a
// DropOldest (with a quota) or TTL policy reads it, is rebuilt over existing
// records, and the policies work on the rebuilt index.
func TestClassIndexFollowsOptions(t *testing.T) {
	path := dbPath(t)
	hasIndex := func(o *Outbox) bool {
		var n int
		if err := o.wdb.QueryRow(`SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'records_class'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 1
	}
	dropOldest := Options{QuotaBytes: 6 * 300, Overflow: DropOldest}
	for i, tc := range []struct {
		opts Options
		want bool
	}{
		{Options{}, false},
		{Options{QuotaBytes: 1 << 20}, false},                    // RejectNew never reads it
		{Options{Overflow: DropOldest}, true},                    // no quota, but the free-space reserve drops
		{Options{Overflow: DropOldest, MinFreeBytes: -1}, false}, // neither: nothing is dropped
		{dropOldest, true},                                       // built over 5 records
		{Options{}, false},                                       // dropped again
		{Options{Classes: map[uint8]ClassPolicy{9: {TTL: time.Hour}}}, true},
	} {
		o, err := Open(path, tc.opts)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			for j := range 5 {
				mustAppend(t, o, classMsg(uint8(j%2), j, 300))
			}
		}
		if got := hasIndex(o); got != tc.want {
			t.Errorf("options %d: index exists = %v, want %v", i, got, tc.want)
		}
		if err := o.Close(); err != nil {
			t.Fatal(err)
		}
	}
	o := openT(t, path, dropOldest)
	mustAppend(t, o, classMsg(1, 5, 300))
	mustAppend(t, o, classMsg(1, 6, 300)) // drops seq 2, the oldest of class 1
	if got := fmt.Sprint(heldSeqs(t, o)); got != "[1 3 4 5 6 7]" {
		t.Fatalf("held %s", got)
	}
	checkAccounting(t, o)
}

// TestQueryPlans: the policy queries use the indexes they were written for;
// an Ack's count walks the seq range, not the class index.
func TestQueryPlans(t *testing.T) {
	o := openT(t, dbPath(t), Options{TTL: time.Hour})
	for _, tc := range []struct{ query, want string }{
		{`SELECT priority, count(*) FROM records NOT INDEXED WHERE seq <= 5 GROUP BY priority`, "INTEGER PRIMARY KEY"},
		{`SELECT seq, received FROM records INDEXED BY records_class WHERE priority = 1 AND seq > 5 ORDER BY seq LIMIT 9`, "records_class (priority=? AND rowid>?)"},
		{`DELETE FROM records INDEXED BY records_class WHERE priority = 1 AND seq > 5 AND seq <= 9 AND received > 0`, "records_class (priority=? AND rowid>? AND rowid<?)"},
		{`DELETE FROM records INDEXED BY records_class WHERE priority = 1 AND seq <= 9`, "records_class (priority=? AND rowid<?)"},
	} {
		rows, err := o.wdb.Query("EXPLAIN QUERY PLAN " + tc.query)
		if err != nil {
			t.Fatal(err)
		}
		var plan []string
		for rows.Next() {
			var id, parent, unused int
			var detail string
			if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, detail)
		}
		rows.Close()
		if !strings.Contains(strings.Join(plan, "; "), tc.want) {
			t.Errorf("plan of %q = %q, want it to use %q", tc.query, plan, tc.want)
		}
	}
}

func TestValidatePolicies(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
		ok   bool
	}{
		{"defaults", Options{}, true},
		{"all set", Options{QuotaBytes: 1 << 30, Overflow: DropOldest, TTL: time.Hour, ExpireInterval: time.Second, ExpireChunkRows: 10,
			Classes: map[uint8]ClassPolicy{0: {Overflow: RejectNew, TTL: -1}, 9: {}}}, true},
		{"negative quota", Options{QuotaBytes: -1}, false},
		{"unknown overflow", Options{Overflow: "drop-newest"}, false},
		{"unknown class overflow", Options{Classes: map[uint8]ClassPolicy{3: {Overflow: "Reject-New"}}}, false},
		{"negative TTL", Options{TTL: -time.Second}, false},
		{"negative expire interval", Options{ExpireInterval: -1}, false},
		{"negative expire chunk", Options{ExpireChunkRows: -1}, false},
	} {
		if err := tc.opts.Validate(); (err == nil) != tc.ok {
			t.Errorf("%s: Validate = %v", tc.name, err)
		}
	}
}

// TestFailedCommitDropsNothing: when a group's commit fails, its planned
// drops are rolled back with its inserts: every message gets the commit's
// error (also those the quota would have refused), nothing held is lost and
// no counter moves. The same group succeeds once commits do.
func TestFailedCommitDropsNothing(t *testing.T) {
	const size = 200
	injected := errors.New("injected commit failure")
	var failing atomic.Bool
	h := &writerHold{}
	hooks := h.hooks()
	hooks.beforeCommit = func() error {
		if failing.Load() {
			return injected
		}
		return nil
	}
	o := openT(t, dbPath(t), Options{QuotaBytes: 5 * size, Classes: map[uint8]ClassPolicy{2: {Overflow: DropOldest}}, hooks: hooks})
	for i := range 5 {
		mustAppend(t, o, classMsg(2, i, size))
	}
	before := o.Stats()
	// One group: a class 2 message (drops seq 1), a class 2 message (drops
	// seq 2), a class 0 message (drops seq 3), a message larger than the
	// quota (refused).
	group := []Message{classMsg(2, 10, size), classMsg(2, 11, size), classMsg(0, 12, size), classMsg(0, 13, 6*size)}
	run := func() ([]uint64, []error) {
		seqs := make([]uint64, len(group))
		errs := make([]error, len(group))
		var wg sync.WaitGroup
		wg.Add(len(group))
		held, release := h.arm()
		for i, m := range group {
			o.Append(m, func(seq uint64, err error) { seqs[i], errs[i] = seq, err; wg.Done() })
			if i == 0 {
				<-held
			}
		}
		close(release)
		wg.Wait()
		return seqs, errs
	}

	failing.Store(true)
	seqs, errs := run()
	for i := range group {
		if seqs[i] != 0 || !errors.Is(errs[i], injected) {
			t.Errorf("message %d of the failed group: %d, %v", i, seqs[i], errs[i])
		}
	}
	after := o.Stats()
	if got := fmt.Sprint(heldSeqs(t, o)); got != "[1 2 3 4 5]" {
		t.Fatalf("held after the failed group: %s", got)
	}
	if after.Bytes != before.Bytes || after.DroppedOldest != 0 || after.Rejected != 0 || after.FailedRows != 4 ||
		after.LastSeq != 5 || fmt.Sprint(after.Classes) != fmt.Sprint(before.Classes) {
		t.Fatalf("stats after the failed group: %+v, before %+v", after, before)
	}
	checkAccounting(t, o)

	failing.Store(false)
	seqs, errs = run()
	if fmt.Sprint(seqs) != "[6 7 8 0]" || errs[0] != nil || errs[1] != nil || errs[2] != nil || !errors.Is(errs[3], ErrQuotaExceeded) {
		t.Fatalf("the group retried: seqs %v, errors %v", seqs, errs)
	}
	if got := fmt.Sprint(heldSeqs(t, o)); got != "[4 5 6 7 8]" {
		t.Fatalf("held after the retried group: %s", got)
	}
	st := o.Stats()
	if st.DroppedOldest != 3 || classStats(st, 2).DroppedOldest != 3 || st.Rejected != 1 || classStats(st, 0).Rejected != 1 {
		t.Fatalf("stats after the retried group: %+v", st)
	}
	checkAccounting(t, o)
}

// TestTTLFirstInFirstOut: within a class, a due record waits behind an
// earlier-committed record that is not yet due (the clock stepped back
// between them), and records with no Received time neither expire nor hold
// anything back.
func TestTTLFirstInFirstOut(t *testing.T) {
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := &fakeClock{now: start}
	o := openT(t, dbPath(t), Options{TTL: 10 * time.Minute, Now: clock.Now, ExpireInterval: time.Millisecond, ExpireChunkRows: 2})
	for i, received := range []time.Time{
		start,                      // 1
		{},                         // 2: unknown
		start.Add(5 * time.Minute), // 3
		start.Add(-time.Hour),      // 4: the clock stepped back
		{},                         // 5: unknown
		start.Add(time.Minute),     // 6
		start.Add(-2 * time.Hour),  // 7, class 1: its own queue
	} {
		m := classMsg(0, i, 200)
		if i == 6 {
			m = classMsg(1, i, 200)
		}
		m.Received = received
		mustAppend(t, o, m)
	}
	wait := func(want uint64, held string) {
		t.Helper()
		var st Stats
		if !pollUntil(30*time.Second, func() bool { st = o.Stats(); return st.Expired >= want }) || st.Expired != want {
			t.Fatalf("expired %d, want %d", st.Expired, want)
		}
		if got := fmt.Sprint(heldSeqs(t, o)); got != held {
			t.Fatalf("held %s, want %s", got, held)
		}
		checkAccounting(t, o)
	}
	// At 0:10, 1 is due and 3 is not: 4 waits behind 3. Class 1 is not held
	// back by class 0.
	clock.Advance(10 * time.Minute)
	wait(2, "[2 3 4 5 6]")
	// At 0:15, 3 is due, and 4 and 6 behind it.
	clock.Advance(5 * time.Minute)
	wait(5, "[2 5]")
	if c := classStats(o.Stats(), 0); c.Expired != 4 || c.Records != 2 {
		t.Fatalf("class 0: %+v", c)
	}
	// A record committed now, behind the unknown ones, still expires.
	m := classMsg(0, 9, 200)
	m.Received = clock.Now()
	mustAppend(t, o, m)
	clock.Advance(24 * time.Hour)
	wait(6, "[2 5]")
}
