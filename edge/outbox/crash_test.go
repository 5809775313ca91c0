package outbox

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
)

// The crash test runs the test binary itself as a child process
// (TestHelperProcess) that appends from several goroutines and prints
// "ok <seq> <client> <i>" for each message whose callback reported a
// commit. The parent SIGKILLs it mid-stream, reopens the database and checks
// that every reported message is stored under its seq, field by field.
const (
	envCrashDB    = "OUTBOX_CRASH_DB"
	envCrashMode  = "OUTBOX_CRASH_MODE"  // "durable" or "early" (the control)
	envCrashRound = "OUTBOX_CRASH_ROUND" // distinguishes rounds' client ids
	envCrashSync  = "OUTBOX_CRASH_SYNC"  // Options.Synchronous of the child
	crashClients  = 8
	crashWindow   = 50 // messages in flight per client, like an MQTT receive maximum
	crashQuota    = 64 << 10
)

// TestHelperProcess is the crash test's child. It does nothing unless run
// by TestCrashKill.
func TestHelperProcess(t *testing.T) {
	path := os.Getenv(envCrashDB)
	if path == "" {
		t.Skip("crash-test child; run by TestCrashKill")
	}
	mode := os.Getenv(envCrashMode)
	var round int
	fmt.Sscan(os.Getenv(envCrashRound), &round)

	opts := Options{Synchronous: os.Getenv(envCrashSync)}
	early := mode == "early"
	if early {
		// The control reports each message before it is committed, and
		// stalls the writer from its third group on, so some reported
		// messages are certainly not stored when the parent kills it.
		var groups atomic.Int64
		opts.hooks = &testHooks{afterFirst: func() {
			if groups.Add(1) >= 3 {
				select {}
			}
		}}
	}
	quota := mode == "quota"
	if quota {
		opts.QuotaBytes, opts.Overflow = crashQuota, DropOldest
	}
	o, err := Open(path, opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		os.Exit(2)
	}
	report := func(seq uint64, client, i int) {
		// One write per line: lines from the writer goroutine never
		// interleave, and a pipe write this small is atomic.
		if _, err := fmt.Fprintf(os.Stdout, "ok %d %d %d\n", seq, client, i); err != nil {
			os.Exit(3)
		}
	}
	for c := range crashClients {
		client := round*100 + c
		go func() {
			window := make(chan struct{}, crashWindow)
			for i := 0; ; i++ {
				window <- struct{}{}
				if early {
					report(0, client, i)
				}
				o.Append(testMessage(client, i), func(seq uint64, err error) {
					if quota && errors.Is(err, ErrQuotaExceeded) {
						<-window // displaced within its group: not stored, not reported
						return
					}
					if err != nil {
						fmt.Fprintln(os.Stderr, "child append:", err)
						os.Exit(4)
					}
					if !early {
						report(seq, client, i)
					}
					<-window
				})
			}
		}()
	}
	select {} // until killed
}

type reported struct {
	seq       uint64
	client, i int
}

// runCrashChild starts the child, reads its reports until it has `kill`
// of them, SIGKILLs it, and returns every complete report it made.
func runCrashChild(t *testing.T, path, mode, sync string, round, kill int) []reported {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), envCrashDB+"="+path, envCrashMode+"="+mode, envCrashSync+"="+sync, fmt.Sprintf("%s=%d", envCrashRound, round))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		if !killed {
			cmd.Process.Kill()
			cmd.Wait()
		}
	}()
	var reps []reported
	r := bufio.NewReader(out)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			if err != io.EOF {
				t.Fatalf("reading child: %v", err)
			}
			// A line cut short by the kill was never reported.
			break
		}
		var rep reported
		if !strings.HasPrefix(line, "ok ") {
			continue // test framework output
		}
		if _, err := fmt.Sscanf(line, "ok %d %d %d\n", &rep.seq, &rep.client, &rep.i); err != nil {
			t.Fatalf("child wrote %q: %v", line, err)
		}
		reps = append(reps, rep)
		if len(reps) == kill && !killed {
			// Keep reading after the kill: reports already in the pipe
			// were made before the child died and count too.
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			killed = true
		}
	}
	werr := cmd.Wait()
	if !killed {
		t.Fatalf("child exited after %d reports (want %d): %v\n%s", len(reps), kill, werr, stderr.String())
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child did not die of SIGKILL: %v\n%s", werr, stderr.String())
	}
	return reps
}

// checkCrash reopens the database and returns a description of every
// reported message that is missing or wrong, after checking that what is
// stored is consistent: each client's messages form a gap-free prefix in
// call order with increasing seqs.
func checkCrash(t *testing.T, path string, reps []reported, byKey bool) []string {
	t.Helper()
	o, err := Open(path, Options{})
	if err != nil {
		t.Fatalf("reopen after kill: %v", err)
	}
	defer o.Close()
	recs := readAll(t, o, 0)
	bySeq := map[uint64]Record{}
	byClientI := map[[2]int]uint64{}
	next := map[string]int{}
	for _, r := range recs {
		bySeq[r.Seq] = r
		var client, i int
		if _, err := fmt.Sscanf(string(r.Payload), "payload %d/%d", &client, &i); err != nil {
			t.Fatalf("seq %d: unexpected payload %q", r.Seq, r.Payload)
		}
		if !equalMessage(r.Message, testMessage(client, i)) {
			t.Fatalf("seq %d holds a mangled message %+v", r.Seq, r.Message)
		}
		if i != next[r.ClientID] {
			t.Fatalf("client %s: seq %d holds message %d, want %d (order broken or gap)", r.ClientID, r.Seq, i, next[r.ClientID])
		}
		next[r.ClientID]++
		byClientI[[2]int{client, i}] = r.Seq
	}
	var bad []string
	for _, rep := range reps {
		if byKey {
			if _, ok := byClientI[[2]int{rep.client, rep.i}]; !ok {
				bad = append(bad, fmt.Sprintf("reported message %d/%d is not stored", rep.client, rep.i))
			}
			continue
		}
		r, ok := bySeq[rep.seq]
		switch {
		case !ok:
			bad = append(bad, fmt.Sprintf("reported seq %d (%d/%d) is not stored", rep.seq, rep.client, rep.i))
		case !equalMessage(r.Message, testMessage(rep.client, rep.i)):
			bad = append(bad, fmt.Sprintf("seq %d holds %q, reported as %d/%d", rep.seq, r.Payload, rep.client, rep.i))
		}
	}
	t.Logf("%d reports checked, %d records stored, %d problems", len(reps), len(recs), len(bad))
	return bad
}

// TestCrashKill: every message whose callback reported success survives
// SIGKILL, across several kill/reopen rounds on the same file, at every
// Synchronous level (a process crash loses nothing even at "normal"; only a
// power loss could, which this test cannot simulate).
func TestCrashKill(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns child processes")
	}
	path := dbPath(t)
	for round, tc := range []struct {
		sync string
		kill int
	}{{"full", 3000}, {"normal", 1000}, {"extra", 5000}, {"full", 2000}} {
		kill := tc.kill
		reps := runCrashChild(t, path, "durable", tc.sync, round, kill)
		if len(reps) < kill {
			t.Fatalf("round %d: %d reports, want at least %d", round, len(reps), kill)
		}
		if bad := checkCrash(t, path, reps, false); len(bad) > 0 {
			t.Fatalf("round %d (synchronous=%s): %d of %d reported messages lost or wrong after SIGKILL, e.g. %s", round, tc.sync, len(bad), len(reps), bad[0])
		}
	}
}

// TestCrashKillControl shows TestCrashKill can fail: a child that reports
// messages before committing them loses reported messages to the kill, and
// the same check finds them.
func TestCrashKillControl(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns child processes")
	}
	path := dbPath(t)
	reps := runCrashChild(t, path, "early", "full", 0, 200)
	bad := checkCrash(t, path, reps, true)
	if len(bad) == 0 {
		t.Fatalf("the control reported %d messages before committing them and none was lost: the check is blind", len(reps))
	}
	t.Logf("control: %d of %d early reports lost, e.g. %s", len(bad), len(reps), bad[0])
}

// TestCrashKillQuota: a child appending into a full DropOldest outbox is
// SIGKILLed; on reopen the byte accounting is recounted from what SQLite
// recovered: it matches the records, stays within the quota, and the quota
// is enforced exactly from the first append after the restart.
func TestCrashKillQuota(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns child processes")
	}
	path := dbPath(t)
	reps := runCrashChild(t, path, "quota", "full", 0, 3000)
	opts := Options{QuotaBytes: crashQuota, Overflow: DropOldest}
	o := openT(t, path, opts)
	integrity(t, o)
	checkAccounting(t, o)
	st := o.Stats()
	if st.Bytes > crashQuota || st.Bytes < crashQuota/2 {
		t.Fatalf("after the kill the outbox holds %d bytes; quota %d", st.Bytes, crashQuota)
	}
	// Every held record is intact and was appended by the child.
	for _, r := range readAll(t, o, 0) {
		var client, i int
		if _, err := fmt.Sscanf(string(r.Payload), "payload %d/%d", &client, &i); err != nil || !equalMessage(r.Message, testMessage(client, i)) {
			t.Fatalf("seq %d holds a mangled message %+v", r.Seq, r.Message)
		}
	}
	// Class 0 may drop every other class, so it always fits; the others
	// may find only higher classes held and be refused. Either way the
	// quota holds after every append.
	for i := range 60 {
		m := testMessage(999, i)
		_, err := appendErr(t, o, m)
		if err != nil && (m.Priority == 0 || !errors.Is(err, ErrQuotaExceeded)) {
			t.Fatalf("append %d (priority %d) after the restart: %v", i, m.Priority, err)
		}
		if st := o.Stats(); st.Bytes > crashQuota {
			t.Fatalf("append %d after the restart: %d bytes held, quota %d", i, st.Bytes, crashQuota)
		}
	}
	checkAccounting(t, o)
	t.Logf("%d reports; %d records held after the kill, %d dropped since", len(reps), st.Records, o.Stats().DroppedOldest)
}
