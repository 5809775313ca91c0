package deploy

import (
	"bytes"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/tributary-io/tributary/edge/gateway"
)

const testCert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
const testKey = "-----BEGIN EC PRIVATE KEY-----\nMHcC\n-----END EC PRIVATE KEY-----\n"

// provisionEnv is a gateway's /etc/tributary and boot-partition bundle in
// temporary directories, with the packaged edge.yaml installed.
type provisionEnv struct {
	etc, bundle string
	group       string
}

func newProvisionEnv(t *testing.T) provisionEnv {
	t.Helper()
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	// The key's group: the packaged script uses tributary; the test uses
	// this process's own group, which it may chgrp to without root.
	g, err := user.LookupGroupId(strconv.Itoa(os.Getgid()))
	if err != nil {
		t.Skipf("cannot name this process's group: %v", err)
	}
	e := provisionEnv{etc: filepath.Join(t.TempDir(), "etc"), bundle: filepath.Join(t.TempDir(), "boot", "tributary"), group: g.Name}
	for _, d := range []string{e.etc, e.bundle} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(t, filepath.Join("config", "edge.yaml"), filepath.Join(e.etc, "edge.yaml"))
	return e
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// writeBundle writes a bundle as `tributary-cloud gateway add` plus
// cloud-address make it; files maps a name to its content ("" = leave out).
func (e provisionEnv) writeBundle(t *testing.T, files map[string]string) {
	t.Helper()
	for name, content := range files {
		if content == "" {
			continue
		}
		if err := os.WriteFile(filepath.Join(e.bundle, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func goodBundle(addr string) map[string]string {
	return map[string]string{"cloud-address": addr + "\n", "ca.crt": testCert, "gateway.crt": testCert, "gateway.key": testKey}
}

// run runs the real script, as the unit's ExecStartPre does.
func (e provisionEnv) run(t *testing.T) (int, string) {
	t.Helper()
	cmd := exec.Command("sh", filepath.Join("provision", "tributary-edge-provision"))
	cmd.Env = append(os.Environ(), "TRIBUTARY_ETC="+e.etc, "TRIBUTARY_BUNDLE_DIR="+e.bundle, "TRIBUTARY_GROUP="+e.group)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if cmd.ProcessState == nil {
		t.Fatalf("provision did not run: %v", err)
	}
	return cmd.ProcessState.ExitCode(), out.String()
}

// config loads the resulting edge.yaml with the gateway's own parser.
func (e provisionEnv) config(t *testing.T) gateway.Config {
	t.Helper()
	c, err := gateway.LoadConfig(filepath.Join(e.etc, "edge.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return c
}

func mode(t *testing.T, p string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestProvisionAppliesBundle(t *testing.T) {
	e := newProvisionEnv(t)
	before := e.config(t)
	original, err := os.ReadFile(filepath.Join(e.etc, "edge.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	e.writeBundle(t, goodBundle("10.1.2.3:7443"))
	if code, out := e.run(t); code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	after := e.config(t)
	if after.Cloud.Address != "10.1.2.3:7443" {
		t.Fatalf("cloud.address %q, want 10.1.2.3:7443", after.Cloud.Address)
	}
	// Everything else in the operator's file is as it was.
	after.Cloud.Address = before.Cloud.Address
	if a, b := strings.TrimSpace(strings.ReplaceAll(toString(after), " ", "")), strings.TrimSpace(strings.ReplaceAll(toString(before), " ", "")); a != b {
		t.Fatalf("provisioning changed more than cloud.address:\n%s\n%s", a, b)
	}
	var key []byte
	for name, want := range map[string]os.FileMode{"ca.crt": 0o644, "gateway.crt": 0o644, "gateway.key": 0o640, "edge.yaml": 0o644} {
		if got := mode(t, filepath.Join(e.etc, name)); got != want {
			t.Errorf("%s: mode %#o, want %#o", name, got, want)
		}
	}
	key, err = os.ReadFile(filepath.Join(e.etc, "gateway.key"))
	if err != nil || string(key) != testKey {
		t.Fatalf("gateway.key = %q, %v", key, err)
	}
	// The bundle is gone from the boot partition; a receipt is left.
	left, _ := os.ReadDir(e.bundle)
	if len(left) != 1 || left[0].Name() != "APPLIED.txt" {
		t.Fatalf("boot partition holds %v after provisioning, want only APPLIED.txt", left)
	}
	// Without a bundle, nothing happens.
	if code, out := e.run(t); code != 0 || out != "" {
		t.Fatalf("second run: exit %d, %q", code, out)
	}
	if e.config(t).Cloud.Address != "10.1.2.3:7443" {
		t.Fatal("a run without a bundle changed the address")
	}
	// A new bundle re-provisions (a gateway moved to another cloud).
	e.writeBundle(t, goodBundle("cloud-2.example.net:443"))
	if code, out := e.run(t); code != 0 {
		t.Fatalf("re-provision: exit %d: %s", code, out)
	}
	if got := e.config(t).Cloud.Address; got != "cloud-2.example.net:443" {
		t.Fatalf("after re-provisioning cloud.address = %q", got)
	}
	data, _ := os.ReadFile(filepath.Join(e.etc, "edge.yaml"))
	if got, want := strings.Count(string(data), "address:"), strings.Count(string(original), "address:"); got != want {
		t.Fatalf("edge.yaml has %d address lines after two provisionings, had %d:\n%s", got, want, data)
	}
}

func toString(c gateway.Config) string {
	var b strings.Builder
	b.WriteString(c.GatewayID + c.DataDir + c.LogLevel + c.MetricsListen + c.Cloud.Address + c.Cloud.CAFile + c.Cloud.CertFile + c.Cloud.KeyFile)
	b.WriteString(c.MQTT.Listeners.TCP.Address + c.Outbox.Synchronous + c.Outbox.Overflow)
	for _, f := range c.MQTT.Forwarding {
		b.WriteString(f.Filter + f.Type)
	}
	return b.String()
}

// TestProvisionBundleConfig: a bundle may carry a whole edge.yaml.
func TestProvisionBundleConfig(t *testing.T) {
	e := newProvisionEnv(t)
	files := goodBundle("127.0.0.1:7443")
	files["edge.yaml"] = "log_level: debug\ncloud:\n  ca_file: /etc/tributary/ca.crt\n  cert_file: /etc/tributary/gateway.crt\n  key_file: /etc/tributary/gateway.key\n"
	e.writeBundle(t, files)
	if code, out := e.run(t); code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	c := e.config(t)
	if c.LogLevel != "debug" || c.Cloud.Address != "127.0.0.1:7443" || c.Cloud.KeyFile != "/etc/tributary/gateway.key" {
		t.Fatalf("config %+v", c)
	}
}

func TestProvisionRefusesBadBundles(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  func(map[string]string)
		wants string
	}{
		{"no key", func(f map[string]string) { f["gateway.key"] = "" }, "gateway.key"},
		{"no address", func(f map[string]string) { f["cloud-address"] = "" }, "cloud-address"},
		{"address without port", func(f map[string]string) { f["cloud-address"] = "cloud.example.com\n" }, "host:port"},
		{"address with shell", func(f map[string]string) { f["cloud-address"] = "a$(reboot):1\n" }, "characters"},
		{"address with slash", func(f map[string]string) { f["cloud-address"] = "a/b:1\n" }, "characters"},
		{"key is a certificate", func(f map[string]string) { f["gateway.key"] = testCert }, "private key"},
		{"cert is garbage", func(f map[string]string) { f["gateway.crt"] = "hello\n" }, "gateway.crt"},
		{"config without cloud", func(f map[string]string) { f["edge.yaml"] = "log_level: info\n" }, "edge.yaml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newProvisionEnv(t)
			before, _ := os.ReadFile(filepath.Join(e.etc, "edge.yaml"))
			files := goodBundle("10.1.2.3:7443")
			tc.edit(files)
			e.writeBundle(t, files)
			code, out := e.run(t)
			if code != 1 || !strings.Contains(out, tc.wants) || !strings.Contains(out, "nothing changed") {
				t.Fatalf("exit %d, output %q; want 1 and an error naming %s", code, out, tc.wants)
			}
			after, _ := os.ReadFile(filepath.Join(e.etc, "edge.yaml"))
			if !bytes.Equal(before, after) {
				t.Fatal("a refused bundle changed edge.yaml")
			}
			if _, err := os.Stat(filepath.Join(e.etc, "gateway.crt")); !os.IsNotExist(err) {
				t.Fatal("a refused bundle installed a certificate")
			}
		})
	}
}

// TestProvisionAddsMissingAddress: a hand-written edge.yaml whose cloud
// block has no address line, or no cloud block, gets one.
func TestProvisionAddsMissingAddress(t *testing.T) {
	for name, cfg := range map[string]string{
		"no address line": "cloud:\n  ca_file: /etc/tributary/ca.crt\n  cert_file: /etc/tributary/gateway.crt\n  key_file: /etc/tributary/gateway.key\nlog_level: info\n",
		"no cloud block":  "log_level: info\n",
	} {
		t.Run(name, func(t *testing.T) {
			e := newProvisionEnv(t)
			// (A bundle's own edge.yaml without cloud: is refused; the
			// installed file is the operator's, and is completed.)
			if err := os.WriteFile(filepath.Join(e.etc, "edge.yaml"), []byte(cfg), 0o644); err != nil {
				t.Fatal(err)
			}
			e.writeBundle(t, goodBundle("[::1]:7443"))
			if code, out := e.run(t); code != 0 {
				t.Fatalf("exit %d: %s", code, out)
			}
			c, err := gateway.LoadConfig(filepath.Join(e.etc, "edge.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			if c.Cloud.Address != "[::1]:7443" {
				data, _ := os.ReadFile(filepath.Join(e.etc, "edge.yaml"))
				t.Fatalf("cloud.address %q in:\n%s", c.Cloud.Address, data)
			}
		})
	}
}
