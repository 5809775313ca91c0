package commitlog

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	crashChildDir       = "COMMITLOG_CRASH_CHILD_DIR"
	crashChildRetention = "COMMITLOG_CRASH_CHILD_RETENTION"
)

// crashOptions are the child's log options (small segments, so it rolls
// and writes checkpoints; optionally retention, so acknowledged records of
// some producers are deleted and only the checkpoint keeps their marks).
func crashOptions(retention bool) Options {
	o := Options{SegmentBytes: 32 << 10, IndexIntervalBytes: 1 << 10, MaxGroupBytes: 16 << 10}
	if retention {
		o.RetentionBytes = 128 << 10
	}
	return o
}

// TestSIGKILLChild is the child process of TestSIGKILL: it appends until
// killed and prints "ack producer seq offset" for every record whose
// append was acknowledged.
func TestSIGKILLChild(t *testing.T) {
	dir := os.Getenv(crashChildDir)
	if dir == "" {
		t.Skip("helper process for TestSIGKILL")
	}
	l, err := Open(dir, crashOptions(os.Getenv(crashChildRetention) != ""))
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: open:", err)
		os.Exit(2)
	}
	var out sync.Mutex
	ack := func(p string, seq, off uint64) {
		out.Lock()
		defer out.Unlock()
		fmt.Fprintf(os.Stdout, "ack %s %d %d\n", p, seq, off) // one write per line
	}
	fail := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "child: "+format+"\n", args...)
		os.Exit(3)
	}
	// A producer that appends a few records and stops: once retention
	// deletes them, only the checkpoint remembers its mark.
	early := l.HighWaterMark("early") + 1
	for i := range uint64(5) {
		res, err := l.Append(context.Background(), []Record{{Topic: "early", Producer: "early", ProducerSeq: early + i}})
		if err != nil || res.Appended != 1 {
			fail("early append: %+v %v", res, err)
		}
		ack("early", early+i, res.FirstOffset)
	}
	var wg sync.WaitGroup
	for g := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := fmt.Sprint("gw", g)
			rng := rand.New(rand.NewPCG(uint64(g), uint64(time.Now().UnixNano())))
			next := l.HighWaterMark(p) + 1
			value := bytes.Repeat([]byte{byte(g)}, 200)
			batch := func(from uint64, n int) []Record {
				recs := make([]Record, n)
				for i := range recs {
					recs[i] = Record{Topic: fmt.Sprint("dev/", g), Producer: p, ProducerSeq: from + uint64(i), Value: value}
				}
				return recs
			}
			if g%2 == 0 {
				// Blocking appends, with resends of the last batch.
				for {
					n := 1 + rng.IntN(4)
					res, err := l.Append(context.Background(), batch(next, n))
					if err != nil {
						fail("append: %v", err)
					}
					if res.Appended != n {
						fail("append of new records: %+v", res)
					}
					for i := range n {
						ack(p, next+uint64(i), res.FirstOffset+uint64(i))
					}
					if rng.IntN(4) == 0 {
						if res, err := l.Append(context.Background(), batch(next, n)); err != nil || res.Duplicates != n {
							fail("resend: %+v %v", res, err)
						}
					}
					next += uint64(n)
				}
			}
			// Pipelined appends: a window of 16 in flight.
			window := make(chan struct{}, 16)
			for {
				window <- struct{}{}
				n := 1 + rng.IntN(4)
				from := next
				l.AppendAsync(batch(from, n), func(res AppendResult, err error) {
					if err != nil || res.Appended != n {
						fail("async append: %+v %v", res, err)
					}
					for i := range n {
						ack(p, from+uint64(i), res.FirstOffset+uint64(i))
					}
					<-window
				})
				next += uint64(n)
			}
		}()
	}
	wg.Wait()
}

type ackedRecord struct {
	producer string
	seq, off uint64
}

// TestSIGKILL kills a child process appending to a log at a random moment,
// several times, and checks after each that every acknowledged record is in
// the log exactly once and the high-water marks cover them.
func TestSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns child processes")
	}
	for _, retention := range []bool{false, true} {
		t.Run(fmt.Sprint("retention=", retention), func(t *testing.T) {
			dir := t.TempDir()
			maxAcked := map[string]uint64{}
			for round := range 3 {
				acked := runCrashChild(t, dir, retention, 1000+rand.IntN(1500))
				for _, a := range acked {
					maxAcked[a.producer] = max(maxAcked[a.producer], a.seq)
				}
				checkAfterKill(t, dir, retention, acked, maxAcked)
				t.Logf("round %d: %d records acknowledged before SIGKILL", round, len(acked))
			}
		})
	}
}

// runCrashChild runs the child until it acknowledged at least n records,
// kills it with SIGKILL and returns every acknowledgement it printed.
func runCrashChild(t *testing.T, dir string, retention bool, n int) []ackedRecord {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestSIGKILLChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashChildDir+"="+dir)
	if retention {
		cmd.Env = append(cmd.Env, crashChildRetention+"=1")
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var acked []ackedRecord
	r := bufio.NewReader(stdout)
	killed := false
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			break // EOF after the kill; a line without its newline was cut by it
		}
		f := strings.Fields(line)
		if len(f) != 4 || f[0] != "ack" {
			continue // the test framework's own output
		}
		seq, err1 := strconv.ParseUint(f[2], 10, 64)
		off, err2 := strconv.ParseUint(f[3], 10, 64)
		if err1 != nil || err2 != nil {
			t.Fatalf("bad line from the child: %q", line)
		}
		acked = append(acked, ackedRecord{f[1], seq, off})
		if !killed && len(acked) >= n {
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			killed = true
		}
	}
	err = cmd.Wait()
	if !killed {
		t.Fatalf("the child stopped by itself after %d acknowledgements: %v\n%s", len(acked), err, stderr.String())
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("the child did not die of SIGKILL: %v\n%s", err, stderr.String())
	}
	return acked
}

func checkAfterKill(t *testing.T, dir string, retention bool, acked []ackedRecord, maxAcked map[string]uint64) {
	t.Helper()
	l, err := Open(dir, crashOptions(retention))
	if err != nil {
		t.Fatalf("reopen after SIGKILL: %v", err)
	}
	defer l.Close()
	first := l.FirstOffset()
	all := readAll(t, l)
	type key struct {
		p   string
		seq uint64
	}
	where := map[key]uint64{}
	last := map[string]uint64{}
	for _, r := range all {
		k := key{r.Producer, r.ProducerSeq}
		if off, dup := where[k]; dup {
			t.Fatalf("%s/%d is in the log twice, at %d and %d", r.Producer, r.ProducerSeq, off, r.Offset)
		}
		where[k] = r.Offset
		if r.ProducerSeq <= last[r.Producer] {
			t.Fatalf("%s: seq %d after %d", r.Producer, r.ProducerSeq, last[r.Producer])
		}
		last[r.Producer] = r.ProducerSeq
	}
	kept := 0
	for _, a := range acked {
		if a.off < first {
			continue // deleted by retention
		}
		kept++
		off, ok := where[key{a.producer, a.seq}]
		if !ok {
			t.Fatalf("acknowledged %s/%d (offset %d) is missing after SIGKILL", a.producer, a.seq, a.off)
		}
		if off != a.off {
			t.Fatalf("acknowledged %s/%d at offset %d is at %d", a.producer, a.seq, a.off, off)
		}
	}
	for p, seq := range maxAcked {
		if hw := l.HighWaterMark(p); hw < seq || hw < last[p] {
			t.Fatalf("HighWaterMark(%s) = %d after SIGKILL; acknowledged up to %d, log holds up to %d", p, hw, seq, last[p])
		} else if !retention && hw != last[p] {
			t.Fatalf("HighWaterMark(%s) = %d, the log holds up to %d", p, hw, last[p])
		}
	}
	if _, ok := where[key{"early", maxAcked["early"]}]; retention && ok {
		t.Fatal("retention kept the early producer's records: the test does not exercise the checkpoint")
	}
	if kept == 0 {
		t.Fatal("no acknowledged record was left to check")
	}
}
