package broker

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/tributary-io/tributary/edge/outbox"
)

// The crash child runs a broker over a real outbox file until it is killed.
const (
	envCrashDB   = "TRIBUTARY_BROKER_CRASH_DB"
	envCrashMode = "TRIBUTARY_BROKER_CRASH_MODE"
)

// TestCrashChild is not a test: it is the process TestCrashKeepsAckedMessages
// starts and kills. It prints the broker's address, then serves until killed
// or until its stdin closes (the parent died), so it never outlives the test.
func TestCrashChild(t *testing.T) {
	path := os.Getenv(envCrashDB)
	if path == "" {
		t.Skip("crash child: run by TestCrashKeepsAckedMessages")
	}
	ob, err := outbox.Open(path, outbox.Options{})
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(2)
	}
	b, err := New(Config{
		AckMode:   AckMode(os.Getenv(envCrashMode)),
		Listeners: Listeners{TCP: TCPListener{Address: "127.0.0.1:0"}},
	}, ob, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err == nil {
		err = b.Start()
	}
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(2)
	}
	fmt.Println("ADDR", b.Addr().TCP)
	_, _ = io.Copy(io.Discard, os.Stdin)
	os.Exit(3)
}

// TestCrashKeepsAckedMessages: paho clients publish QoS 1 to a broker in a
// child process with a real SQLite outbox; the child is SIGKILLed while
// messages are in flight; every message a client got a PUBACK for must be in
// the reopened outbox, byte for byte.
func TestCrashKeepsAckedMessages(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test")
	}
	for _, mode := range ackModes {
		t.Run(string(mode), func(t *testing.T) { crashOnce(t, mode) })
	}
}

func crashOnce(t *testing.T, mode AckMode) {
	const publishers, inFlight, killAfter = 4, 100, 3000
	path := filepath.Join(t.TempDir(), "outbox.db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), envCrashDB+"="+path, envCrashMode+"="+string(mode))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		stdin.Close()
		if !killed {
			_ = cmd.Process.Kill()
		}
		_ = cmd.Wait()
	})
	var addr string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if a, ok := strings.CutPrefix(sc.Text(), "ADDR "); ok {
			addr = a
			break
		}
		if strings.HasPrefix(sc.Text(), "ERROR") {
			t.Fatalf("child: %s", sc.Text())
		}
	}
	if addr == "" {
		t.Fatalf("child printed no address: %v", sc.Err())
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()

	var (
		mu    sync.Mutex
		acked = map[string]bool{}
		kill  = make(chan struct{})
		once  sync.Once
	)
	var wg sync.WaitGroup
	for p := range publishers {
		c := pahoClient(t, "tcp://"+addr, fmt.Sprintf("crash-%d", p))
		wg.Add(1)
		go func() {
			defer wg.Done()
			window := make(chan struct{}, inFlight)
			var inner sync.WaitGroup
			defer inner.Wait()
			for i := 0; ; i++ {
				window <- struct{}{}
				if !c.IsConnectionOpen() {
					return
				}
				payload := fmt.Sprintf("p%d-%06d-%s", p, i, strings.Repeat("x", 180))
				tok := c.Publish("sensors/crash", 1, false, payload)
				inner.Add(1)
				go func() {
					defer inner.Done()
					defer func() { <-window }()
					if tok.WaitTimeout(safetyTimeout) && tok.Error() == nil {
						mu.Lock()
						acked[payload] = true
						n := len(acked)
						mu.Unlock()
						if n >= killAfter {
							once.Do(func() { close(kill) })
						}
					}
				}()
			}
		}()
	}
	select {
	case <-kill:
	case <-waitDone(&wg):
		t.Fatal("publishers stopped before the kill")
	}
	if err := cmd.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	killed = true
	_ = cmd.Wait()
	wg.Wait() // every token has completed: the set of PUBACKed messages is final

	ob, err := outbox.Open(path, outbox.Options{})
	if err != nil {
		t.Fatalf("reopen outbox: %v", err)
	}
	defer ob.Close()
	stored := map[string]int{}
	var after uint64
	for {
		recs, err := ob.Read(after, 5000, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			break
		}
		for _, r := range recs {
			stored[string(r.Payload)]++
			after = r.Seq
		}
	}
	mu.Lock()
	defer mu.Unlock()
	missing := 0
	for p := range acked {
		if stored[p] == 0 {
			missing++
		}
	}
	t.Logf("%s: %d messages acknowledged before SIGKILL, %d distinct stored", mode, len(acked), len(stored))
	if missing > 0 {
		t.Fatalf("%d of %d acknowledged messages are not in the outbox after the crash", missing, len(acked))
	}
}

func waitDone(wg *sync.WaitGroup) <-chan struct{} {
	ch := make(chan struct{})
	go func() { wg.Wait(); close(ch) }()
	return ch
}
