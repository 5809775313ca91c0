// Package procs runs tributary-edge and tributary-cloud as real child
// processes on loopback, for end-to-end tests, crash tests (SIGKILL) and the
// benchmark command.
package procs

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tributary-io/tributary/cloud/server"
)

// Binaries are the built commands.
type Binaries struct {
	Edge, Cloud string
}

// Build compiles both binaries into dir with the go command (the module root
// is found from this source file's location or the working directory).
func Build(ctx context.Context, dir string, race bool) (Binaries, error) {
	root, err := moduleRoot()
	if err != nil {
		return Binaries{}, err
	}
	b := Binaries{Edge: filepath.Join(dir, "tributary-edge"), Cloud: filepath.Join(dir, "tributary-cloud")}
	for out, pkg := range map[string]string{b.Edge: "./edge/cmd/tributary-edge", b.Cloud: "./cloud/cmd/tributary-cloud"} {
		args := []string{"build", "-o", out}
		if race {
			args = append(args, "-race")
		}
		cmd := exec.CommandContext(ctx, goCommand(), append(args, pkg)...)
		cmd.Dir = root
		if outb, err := cmd.CombinedOutput(); err != nil {
			return Binaries{}, fmt.Errorf("go build %s: %v\n%s", pkg, err, outb)
		}
	}
	return b, nil
}

func goCommand() string {
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
		return p
	}
	return "go"
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if data, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil && strings.Contains(string(data), "module github.com/tributary-io/tributary\n") {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("procs: no tributary go.mod above %s", dir)
		}
	}
}

// FreePort returns a port on 127.0.0.1 that was free a moment ago for
// network ("tcp" or "udp").
func FreePort(network string) (int, error) {
	switch network {
	case "udp":
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port, nil
	default:
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port, nil
	}
}

// Proc is a running child process. Its output goes to a log file.
type Proc struct {
	Name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	mu      sync.Mutex
	err     error
}

// Start runs bin with args, writing stdout and stderr to logPath.
func Start(name, bin, logPath string, args ...string) (*Proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		f.Close()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

// PID is the process id.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended, and how.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return true, p.err
	default:
		return false, nil
	}
}

// Kill sends SIGKILL and waits for the process to end: a crash.
func (p *Proc) Kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Stop sends SIGTERM and waits up to grace, then kills.
func (p *Proc) Stop(grace time.Duration) error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.Kill()
		return fmt.Errorf("%s did not stop within %v; killed", p.Name, grace)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// Log returns the process's output so far (for test failure messages).
func (p *Proc) Log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// Tail returns the last n lines of the output.
func (p *Proc) Tail(n int) string {
	var lines []string
	s := bufio.NewScanner(strings.NewReader(p.Log()))
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		lines = append(lines, s.Text())
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Cloud is a tributary-cloud child with its addresses.
type Cloud struct {
	*Proc
	DataDir  string
	SyncAddr string
	APIURL   string
	// Token is the development admin API token the cloud generated.
	Token string
}

// Get sends an authenticated GET to the cloud's API (path starts with /).
func (c *Cloud) Get(path string) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodGet, c.APIURL+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	return http.DefaultClient.Do(req)
}

// CloudOptions start a cloud.
type CloudOptions struct {
	DataDir string
	// SyncPort and APIPort are reused across restarts; 0 picks free ones.
	SyncPort, APIPort int
	SinkURL           string
	ExtraArgs         []string
}

// StartCloud runs tributary-cloud and waits until its API answers.
func StartCloud(ctx context.Context, b Binaries, o CloudOptions) (*Cloud, error) {
	var err error
	if o.SyncPort == 0 {
		if o.SyncPort, err = FreePort("udp"); err != nil {
			return nil, err
		}
	}
	if o.APIPort == 0 {
		if o.APIPort, err = FreePort("tcp"); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(o.DataDir, 0o755); err != nil {
		return nil, err
	}
	c := &Cloud{
		DataDir:  o.DataDir,
		SyncAddr: "127.0.0.1:" + strconv.Itoa(o.SyncPort),
		APIURL:   "http://127.0.0.1:" + strconv.Itoa(o.APIPort),
	}
	args := []string{"-data-dir", o.DataDir, "-sync-listen", c.SyncAddr, "-api-listen", "127.0.0.1:" + strconv.Itoa(o.APIPort), "-log-level", "info"}
	if o.SinkURL != "" {
		args = append(args, "-sink", o.SinkURL)
	}
	args = append(args, o.ExtraArgs...)
	p, err := Start("cloud", b.Cloud, filepath.Join(o.DataDir, "..", filepath.Base(o.DataDir)+".log"), args...)
	if err != nil {
		return nil, err
	}
	c.Proc = p
	if err := waitFor(ctx, p, 30*time.Second, func() bool {
		resp, err := http.Get(c.APIURL + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}); err != nil {
		p.Kill()
		return nil, fmt.Errorf("cloud did not become ready: %w\n%s", err, p.Tail(30))
	}
	if c.Token, err = server.ReadDevToken(o.DataDir); err != nil {
		p.Kill()
		return nil, fmt.Errorf("cloud API token: %w", err)
	}
	return c, nil
}

// Options returns options that restart this cloud on the same data and ports.
func (c *Cloud) Options(sinkURL string) CloudOptions {
	sp, _ := strconv.Atoi(c.SyncAddr[strings.LastIndexByte(c.SyncAddr, ':')+1:])
	ap, _ := strconv.Atoi(c.APIURL[strings.LastIndexByte(c.APIURL, ':')+1:])
	return CloudOptions{DataDir: c.DataDir, SyncPort: sp, APIPort: ap, SinkURL: sinkURL}
}

// Edge is a tributary-edge child with its addresses.
type Edge struct {
	*Proc
	DataDir  string
	MQTTAddr string
}

// EdgeOptions start an edge gateway.
type EdgeOptions struct {
	GatewayID string
	DataDir   string
	// MQTTPort is reused across restarts; 0 picks a free one.
	MQTTPort  int
	CloudAddr string
	DevCADir  string
	ExtraArgs []string
}

// StartEdge runs tributary-edge and waits until its MQTT port accepts.
func StartEdge(ctx context.Context, b Binaries, o EdgeOptions) (*Edge, error) {
	var err error
	if o.MQTTPort == 0 {
		if o.MQTTPort, err = FreePort("tcp"); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(o.DataDir, 0o755); err != nil {
		return nil, err
	}
	e := &Edge{DataDir: o.DataDir, MQTTAddr: "127.0.0.1:" + strconv.Itoa(o.MQTTPort)}
	args := []string{"-gateway-id", o.GatewayID, "-data-dir", o.DataDir, "-mqtt-listen", e.MQTTAddr,
		"-cloud", o.CloudAddr, "-dev-ca-dir", o.DevCADir, "-log-level", "info"}
	args = append(args, o.ExtraArgs...)
	p, err := Start("edge-"+o.GatewayID, b.Edge, filepath.Join(o.DataDir, "..", filepath.Base(o.DataDir)+".log"), args...)
	if err != nil {
		return nil, err
	}
	e.Proc = p
	if err := waitFor(ctx, p, 30*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", e.MQTTAddr, time.Second)
		if err != nil {
			return false
		}
		c.Close()
		return true
	}); err != nil {
		p.Kill()
		return nil, fmt.Errorf("edge did not become ready: %w\n%s", err, p.Tail(30))
	}
	return e, nil
}

// Options returns options that restart this edge on the same data and port.
func (e *Edge) Options(o EdgeOptions) EdgeOptions {
	o.DataDir = e.DataDir
	o.MQTTPort, _ = strconv.Atoi(e.MQTTAddr[strings.LastIndexByte(e.MQTTAddr, ':')+1:])
	return o
}

func waitFor(ctx context.Context, p *Proc, limit time.Duration, ready func() bool) error {
	deadline := time.Now().Add(limit)
	for {
		if ready() {
			return nil
		}
		if exited, err := p.Exited(); exited {
			return fmt.Errorf("%s exited: %v", p.Name, err)
		}
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// ReadLog pages through the cloud's whole central log over its HTTP API and
// calls fn for every record.
func (c *Cloud) ReadLog(fn func(server.LogEntry) error) error {
	from := uint64(0)
	for {
		resp, err := c.Get(fmt.Sprintf("/v1/events?from=%d&limit=5000", from))
		if err != nil {
			return err
		}
		var page server.EventsPage
		err = json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if err != nil {
			return fmt.Errorf("GET /v1/events: %w", err)
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /v1/events: %s", resp.Status)
		}
		for _, e := range page.Events {
			if err := fn(e); err != nil {
				return err
			}
		}
		if len(page.Events) == 0 || page.Next >= page.End {
			return nil
		}
		from = page.Next
	}
}
