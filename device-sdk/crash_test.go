package devicesdk

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The crash test re-executes this test binary as a device process
// (TestCrashChild, selected by the environment), SIGKILLs it, and starts it
// again on the same buffer directory, as a device reboot would.
const (
	envChildDir    = "TRIBUTARY_SDK_CHILD_DIR"
	envChildBroker = "TRIBUTARY_SDK_CHILD_BROKER"
	envChildPrefix = "TRIBUTARY_SDK_CHILD_PREFIX"
	envChildCount  = "TRIBUTARY_SDK_CHILD_COUNT"
)

// TestCrashChild is the device process of TestCrashReboot; it is skipped in
// a normal run. It enqueues COUNT messages and prints "ok <payload>" after
// each Enqueue returned, then keeps sending until killed (or 60 s pass).
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(envChildDir)
	if dir == "" {
		t.Skip("only run as TestCrashReboot's child process")
	}
	n, _ := strconv.Atoi(os.Getenv(envChildCount))
	cfg := testDeviceConfig(t, os.Getenv(envChildBroker), dir)
	cfg.DeviceID = "crash-device"
	d, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		p := fmt.Sprintf("%s-%04d", os.Getenv(envChildPrefix), i)
		if err := d.Enqueue("sensors/crash", []byte(p)); err != nil {
			t.Fatal(err)
		}
		fmt.Printf("ok %s\n", p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	<-ctx.Done()
}

// runChild starts a device process and SIGKILLs it once killWhen says so
// (checked after each acknowledged message). It returns the payloads the
// child's buffer acknowledged before it died, in order.
func runChild(t *testing.T, dir, broker, prefix string, count int, killWhen func(acked int) bool) []string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.v=false")
	cmd.Env = append(os.Environ(),
		envChildDir+"="+dir, envChildBroker+"="+broker,
		envChildPrefix+"="+prefix, envChildCount+"="+strconv.Itoa(count))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var acked []string
	killed := false
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		p, ok := strings.CutPrefix(sc.Text(), "ok ")
		if !ok {
			continue
		}
		acked = append(acked, p)
		if !killed && killWhen(len(acked)) {
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			killed = true
		}
	}
	if !killed { // it finished enqueueing first: kill it now
		cmd.Process.Signal(syscall.SIGKILL)
	}
	err = cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child did not die of SIGKILL: %v", err)
	}
	return acked
}

// TestCrashReboot: a device buffers while the gateway is unreachable and is
// killed; it reboots with the gateway up and is killed again mid-sending;
// it reboots once more and flushes. Every message whose Enqueue returned
// must reach the broker, in order, and duplicates are bounded by one
// message in flight per crash.
func TestCrashReboot(t *testing.T) {
	if os.Getenv(envChildDir) != "" {
		t.Skip("child process")
	}
	addr, rec := startBroker(t)
	crashReboot(t, addr, rec.snapshot)
}

// crashReboot runs the crash scenario against the broker at addr; seen
// returns what the broker received (or committed) so far as topic=payload.
func crashReboot(t *testing.T, addr string, seen func() []string) {
	dir := t.TempDir()

	// 1. Offline: nothing listens on port 1. Killed after 100 messages.
	acked1 := runChild(t, dir, "tcp://127.0.0.1:1", "a", 1000, func(n int) bool { return n >= 100 })
	if n := len(seen()); n != 0 {
		t.Fatalf("broker saw %d messages while the device was offline", n)
	}
	// 2. Online: killed once the broker has some of its messages.
	acked2 := runChild(t, dir, addr, "b", 2000, func(n int) bool {
		return n >= 100 && len(seen()) >= 20
	})
	seenAtKill := len(seen())
	// 3. Reboot and flush in this process.
	cfg := testDeviceConfig(t, addr, dir)
	cfg.DeviceID = "crash-device"
	d, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}

	acked := append(acked1, acked2...)
	ackedSet := map[string]bool{}
	for _, p := range acked {
		ackedSet[p] = true
	}
	count := map[string]int{}
	var firsts []string // first sightings of acknowledged messages, in order
	dups := 0
	for _, m := range seen() {
		p, ok := strings.CutPrefix(m, "sensors/crash=")
		if !ok || !(strings.HasPrefix(p, "a-") || strings.HasPrefix(p, "b-")) {
			t.Fatalf("broker saw a message never enqueued: %q", m)
		}
		count[p]++
		if count[p] > 1 {
			dups++
			continue
		}
		if ackedSet[p] {
			firsts = append(firsts, p)
		}
	}
	for i, p := range acked {
		if count[p] == 0 {
			t.Fatalf("acknowledged message %s (%d of %d) never reached the broker", p, i, len(acked))
		}
	}
	for i := range acked {
		if firsts[i] != acked[i] {
			t.Fatalf("delivery order broken at %d: %s, want %s", i, firsts[i], acked[i])
		}
	}
	t.Logf("acknowledged %d offline + %d online; broker had %d at the second kill; %d distinct delivered, %d duplicates",
		len(acked1), len(acked2), seenAtKill, len(count), dups)
	// One message is in flight at a time; each of the two kills can leave
	// at most that one sent but not removed from the buffer.
	if dups > 2 {
		t.Fatalf("%d duplicates, want at most 2 (one per crash)", dups)
	}
}
