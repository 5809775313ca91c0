package commitlog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"
)

// TestModel checks FileLog against Memory under random sequences of
// appends (new records, resends, gaps, several producers), reads, clean
// reopens, retention and simulated power loss with appends in flight.
//
// After a crash the model cannot know which unacknowledged records
// survived, so the check is: the records from before the crash are intact,
// the recovered tail is a prefix of what was submitted (after dedup), and
// it holds every acknowledged record; the model then takes that tail.
//
// COMMITLOG_MODEL_SEEDS sets the number of seeds (default 12).
func TestModel(t *testing.T) {
	seeds := 12
	if s := os.Getenv("COMMITLOG_MODEL_SEEDS"); s != "" {
		seeds, _ = strconv.Atoi(s)
	}
	for seed := range uint64(seeds) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			t.Parallel() // mostly waiting for fsyncs
			runModel(t, seed, 250)
		})
	}
}

type modelRun struct {
	t       *testing.T
	rng     *rand.Rand
	c       *clock
	ffs     *FaultFS
	dir     string
	opts    Options
	fl      *FileLog
	m       *Memory
	nextSeq map[string]uint64 // each producer's next new seq
	crashes int
	lost    int // crashes that lost submitted records
	cuts    countHandler
}

// countHandler counts log records by message.
type countHandler struct {
	mu sync.Mutex
	n  map[string]int
}

func (h *countHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n == nil {
		h.n = map[string]int{}
	}
	h.n[r.Message]++
	return nil
}
func (h *countHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countHandler) WithGroup(string) slog.Handler      { return h }
func (h *countHandler) count(msg string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n[msg]
}

var modelProducers = []string{"gw-a", "gw-b", "gw-c", ""}

func runModel(t *testing.T, seed uint64, steps int) {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	r := &modelRun{
		t:       t,
		rng:     rng,
		c:       newClock(),
		ffs:     NewFaultFS(nil),
		dir:     t.TempDir(),
		nextSeq: map[string]uint64{},
	}
	r.opts = Options{
		FS:                 r.ffs,
		Now:                r.c.Now,
		SegmentBytes:       int64(300 + rng.IntN(4000)),
		IndexIntervalBytes: 32 + rng.IntN(600),
		MaxGroupBytes:      200 + rng.IntN(5000),
		Logger:             slog.New(&r.cuts),
		NoPreallocate:      rng.IntN(3) == 0,
		VerifyOnOpen:       rng.IntN(3) == 0,
	}
	switch rng.IntN(3) {
	case 0:
		r.opts.TailCacheBytes = -1
	case 1:
		r.opts.TailCacheBytes = int64(1 + rng.IntN(3000))
	}
	if rng.IntN(2) == 0 {
		r.opts.RetentionBytes = int64(2000 + rng.IntN(10000))
	}
	t.Logf("options: segment %d, index %d, group %d, retention %d, no preallocation %v, verify on open %v, tail cache %d", r.opts.SegmentBytes, r.opts.IndexIntervalBytes, r.opts.MaxGroupBytes, r.opts.RetentionBytes, r.opts.NoPreallocate, r.opts.VerifyOnOpen, r.opts.TailCacheBytes)
	r.fl = r.open()
	r.m = NewMemory(r.c.Now)
	defer func() { r.fl.Close() }()

	for step := range steps {
		switch op := rng.IntN(100); {
		case op < 35:
			r.appendSync()
		case op < 50:
			r.appendAsync()
		case op < 65:
			r.read()
		case op < 75:
			r.readTopicAndTime()
		case op < 80:
			r.fl.Close()
			r.fl = r.open()
			r.compareAll("after reopen")
		case op < 90:
			r.crash()
			r.compareAll("after crash")
		default:
			r.c.Advance(time.Minute)
			if err := r.fl.EnforceRetention(); err != nil {
				t.Fatalf("step %d: EnforceRetention: %v", step, err)
			}
		}
		r.syncRetention()
		if r.fl.NextOffset() != r.m.NextOffset() {
			t.Fatalf("step %d: next offset %d, model %d", step, r.fl.NextOffset(), r.m.NextOffset())
		}
	}
	r.compareAll("at the end")
	t.Logf("%d records, first offset %d, %d crashes, %d lost unacknowledged records, %d torn tails cut",
		r.m.NextOffset(), r.m.FirstOffset(), r.crashes, r.lost, r.cuts.count("commitlog: cutting off a torn tail"))
}

func (r *modelRun) open() *FileLog {
	r.t.Helper()
	l, err := Open(r.dir, r.opts)
	if err != nil {
		r.t.Fatalf("Open: %v", err)
	}
	return l
}

// syncRetention applies the file log's retention to the model, after
// checking that it only ever moves forward. Retention runs on the writer
// after a group that closed a segment, so it can still be running when
// Append returns: EnforceRetention, queued behind it, waits for it.
func (r *modelRun) syncRetention() {
	if err := r.fl.EnforceRetention(); err != nil {
		r.t.Fatalf("EnforceRetention: %v", err)
	}
	first := r.fl.FirstOffset()
	if first < r.m.FirstOffset() {
		r.t.Fatalf("first offset went back from %d to %d", r.m.FirstOffset(), first)
	}
	r.m.Truncate(first)
}

func (r *modelRun) batch() []Record {
	n := 1 + r.rng.IntN(5)
	recs := make([]Record, n)
	for i := range recs {
		p := modelProducers[r.rng.IntN(len(modelProducers))]
		var seq uint64
		switch k := r.rng.IntN(10); {
		case k < 7 || r.nextSeq[p] == 0:
			r.nextSeq[p]++
			seq = r.nextSeq[p]
		case k < 9:
			seq = 1 + r.rng.Uint64N(r.nextSeq[p]) // a resend
		default:
			r.nextSeq[p] += 1 + r.rng.Uint64N(3) // a gap
			seq = r.nextSeq[p]
		}
		value := make([]byte, r.rng.IntN(300))
		for j := range value {
			value[j] = byte(r.rng.IntN(256))
		}
		ts := r.c.Now()
		if r.rng.IntN(8) == 0 {
			ts = ts.Add(-time.Duration(r.rng.IntN(1000)) * time.Second) // out of order
		}
		recs[i] = Record{Topic: fmt.Sprint("topic-", r.rng.IntN(6)), Producer: p, ProducerSeq: seq, Value: value, Time: ts}
	}
	return recs
}

func (r *modelRun) appendSync() {
	recs := r.batch()
	got, err := r.fl.Append(context.Background(), recs)
	if err != nil {
		r.t.Fatalf("Append: %v", err)
	}
	want, _ := r.m.Append(context.Background(), recs)
	if got != want {
		r.t.Fatalf("Append: %+v, model %+v", got, want)
	}
}

func (r *modelRun) appendAsync() {
	k := 1 + r.rng.IntN(8)
	got := make([]AppendResult, k)
	var wg sync.WaitGroup
	var errs [8]error
	for i := range k {
		recs := r.batch()
		wg.Add(1)
		r.fl.AppendAsync(recs, func(res AppendResult, err error) {
			got[i], errs[i] = res, err
			wg.Done()
		})
		want, _ := r.m.Append(context.Background(), recs)
		defer func() {
			if errs[i] != nil || got[i] != want {
				r.t.Fatalf("AppendAsync %d: %+v %v, model %+v", i, got[i], errs[i], want)
			}
		}()
	}
	wg.Wait()
}

func (r *modelRun) read() {
	first, next := r.m.FirstOffset(), r.m.NextOffset()
	from := first + r.rng.Uint64N(next-first+3)
	if first > 0 && r.rng.IntN(5) == 0 {
		from = r.rng.Uint64N(first)
	}
	maxRecords, maxBytes := 1+r.rng.IntN(40), r.rng.IntN(4000)
	got, gerr := r.fl.Read(from, maxRecords, maxBytes)
	want, werr := r.m.Read(from, maxRecords, maxBytes)
	if (gerr == nil) != (werr == nil) || (gerr != nil && !errors.Is(gerr, werr)) {
		r.t.Fatalf("Read(%d): error %v, model %v", from, gerr, werr)
	}
	if d := diffRecords(got, want); d != "" {
		r.t.Fatalf("Read(%d, %d, %d): %s", from, maxRecords, maxBytes, d)
	}
}

func (r *modelRun) readTopicAndTime() {
	first, next := r.m.FirstOffset(), r.m.NextOffset()
	topic := fmt.Sprint("topic-", r.rng.IntN(7))
	from := first + r.rng.Uint64N(next-first+2)
	max := 1 + r.rng.IntN(30)
	got, gerr := r.fl.ReadTopic(topic, from, max)
	want, werr := r.m.ReadTopic(topic, from, max)
	if gerr != nil || werr != nil {
		r.t.Fatalf("ReadTopic(%s, %d): %v, model %v", topic, from, gerr, werr)
	}
	if d := diffRecords(got, want); d != "" {
		r.t.Fatalf("ReadTopic(%s, %d, %d): %s", topic, from, max, d)
	}
	at := r.c.Now().Add(-time.Duration(r.rng.IntN(2000)) * time.Second)
	goff, gerr := r.fl.OffsetForTime(at)
	woff, werr := r.m.OffsetForTime(at)
	if gerr != nil || werr != nil || goff != woff {
		for _, rec := range readAll(r.t, r.m) {
			if rec.Offset+10 >= woff && rec.Offset <= goff+2 {
				r.t.Logf("%d %v", rec.Offset, rec.Time)
			}
		}
		r.fl.mu.Lock()
		for _, s := range r.fl.segments {
			r.t.Logf("seg %d next %d runMax %v index %v", s.base, s.next, time.Unix(0, s.runMax).UTC(), s.index)
		}
		r.fl.mu.Unlock()
		r.t.Fatalf("OffsetForTime(%v): %d %v, model %d %v", at, goff, gerr, woff, werr)
	}
}

// crash submits appends, pulls the plug while some are in flight, reopens
// and checks what survived.
func (r *modelRun) crash() {
	r.crashes++
	preNext := r.m.NextOffset()
	// What the log would hold if every submitted append succeeded.
	hwm := map[string]uint64{}
	for _, p := range modelProducers {
		hwm[p] = r.m.HighWaterMark(p)
	}
	var submitted []Record
	k := 1 + r.rng.IntN(12)
	type outcome struct {
		res AppendResult
		err error
	}
	outcomes := make([]outcome, k)
	var done sync.WaitGroup
	finished := make(chan struct{}, k)
	for i := range k {
		recs := r.batch()
		for _, rec := range recs {
			if rec.Producer != "" {
				if rec.ProducerSeq <= hwm[rec.Producer] {
					continue
				}
				hwm[rec.Producer] = rec.ProducerSeq
			}
			submitted = append(submitted, rec)
		}
		done.Add(1)
		r.fl.AppendAsync(recs, func(res AppendResult, err error) {
			outcomes[i] = outcome{res, err}
			finished <- struct{}{}
			done.Done()
		})
	}
	if r.rng.IntN(2) == 0 {
		// Pull the plug at a random moment.
		for range r.rng.IntN(k + 1) {
			<-finished
		}
		if err := r.ffs.Crash(r.rng, r.rng.IntN(2) == 0); err != nil {
			r.t.Fatalf("Crash: %v", err)
		}
	} else {
		// Pull it inside a segment write or fsync, when the group is
		// written but not durable.
		ft := Fault{Op: OpSync, PathSuffix: segmentExt, After: r.rng.IntN(3), Crash: true, Rand: r.rng, Holes: r.rng.IntN(2) == 0}
		if r.rng.IntN(3) == 0 {
			ft.Op, ft.TornBytes = OpWrite, r.rng.IntN(2000)
		}
		r.ffs.Inject(ft)
		// If the appends in flight end before the fault's turn, append
		// more until it fires.
		done.Wait()
		for !r.ffs.isDown() {
			filler := Record{Topic: "filler", Value: []byte("x"), Time: r.c.Now()}
			submitted = append(submitted, filler)
			res, err := r.fl.Append(context.Background(), []Record{filler})
			outcomes = append(outcomes, outcome{res, err})
		}
		r.ffs.Clear()
	}
	done.Wait()
	r.fl.Close()
	r.ffs.Restart()

	r.fl = r.open()
	next := r.fl.NextOffset()
	if next < preNext || next > preNext+uint64(len(submitted)) {
		r.t.Fatalf("after crash: next offset %d, want %d to %d", next, preNext, preNext+uint64(len(submitted)))
	}
	for i, o := range outcomes {
		if o.err == nil && o.res.Appended > 0 && o.res.LastOffset >= next {
			r.t.Fatalf("append %d was acknowledged up to offset %d but the log ends at %d", i, o.res.LastOffset, next)
		}
		if o.err != nil && !errors.Is(o.err, ErrFailed) && !errors.Is(o.err, ErrClosed) {
			r.t.Fatalf("append %d: unexpected error %v", i, o.err)
		}
	}
	// The recovered tail is the first records of what was submitted.
	tail, err := r.fl.Read(preNext, len(submitted)+1, 1<<30)
	if err != nil && !(errors.Is(err, ErrOutOfRange) && r.fl.FirstOffset() > preNext) {
		r.t.Fatalf("after crash: Read: %v", err)
	}
	if uint64(len(tail)) != next-preNext && r.fl.FirstOffset() <= preNext {
		r.t.Fatalf("after crash: %d records from %d, want %d", len(tail), preNext, next-preNext)
	}
	for i, rec := range tail {
		want := submitted[i]
		want.Offset = preNext + uint64(i)
		if !sameRecord(rec, want) {
			r.t.Fatalf("after crash: record %d is %+v, want %+v", rec.Offset, rec, want)
		}
	}
	if int(next-preNext) < len(submitted) {
		r.lost++
	}
	res, _ := r.m.Append(context.Background(), submitted[:next-preNext])
	if res.Duplicates != 0 {
		r.t.Fatalf("after crash: the model found %d duplicates in the recovered tail", res.Duplicates)
	}
}

// compareAll checks every retained record and every mark.
func (r *modelRun) compareAll(when string) {
	r.t.Helper()
	r.syncRetention()
	if d := diffRecords(readAll(r.t, r.fl), readAll(r.t, r.m)); d != "" {
		r.t.Fatalf("%s: %s", when, d)
	}
	for _, p := range modelProducers {
		if got, want := r.fl.HighWaterMark(p), r.m.HighWaterMark(p); got != want {
			r.t.Fatalf("%s: HighWaterMark(%q) = %d, model %d", when, p, got, want)
		}
	}
}
