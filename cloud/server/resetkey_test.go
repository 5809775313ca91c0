package server

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestResetKeyStable: the first call creates the key file with mode 0600,
// later calls (a restarted cloud) return the same key, and a damaged file
// is refused rather than silently replaced.
func TestResetKeyStable(t *testing.T) {
	dir := t.TempDir()
	k1, err := ensureResetKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, ResetKeyFile)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Fatalf("%s has mode %v, want 0600", path, perm)
	}
	k2, err := ensureResetKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	if *k1 != *k2 {
		t.Fatal("the key changed across calls: a restarted cloud could not reset old connections")
	}
	other, err := ensureResetKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if *other == *k1 {
		t.Fatal("two data directories got the same key: it is not random")
	}
	for _, bad := range []string{"", "zz", "00112233", string(make([]byte, 64))} {
		if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := ensureResetKey(dir); !errors.Is(err, errResetKey) {
			t.Errorf("file %q: got %v, want an errResetKey", bad, err)
		}
	}
}

// TestServerKeepsResetKey: a cloud started twice on one data directory
// writes the key once and keeps it.
func TestServerKeepsResetKey(t *testing.T) {
	dir := t.TempDir()
	start := func() []byte {
		cfg := Config{DataDir: dir}
		cfg.Sync.Listen = "127.0.0.1:0"
		cfg.API.Listen = "127.0.0.1:0"
		s, err := New(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(dir, ResetKeyFile))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	if a, b := start(), start(); string(a) != string(b) {
		t.Fatalf("the reset key file changed across restarts:\n%s\n%s", a, b)
	}
}

// TestSyncTimeoutsValidated: a keep-alive that is not below the idle
// timeout, or a negative one, is a config error.
func TestSyncTimeoutsValidated(t *testing.T) {
	for _, tc := range []struct {
		idle, keep time.Duration
		ok         bool
	}{
		{0, 0, true},
		{time.Minute, 20 * time.Second, true},
		{0, 10 * time.Second, true},
		{time.Minute, time.Minute, false},
		{-time.Second, 0, false},
		{0, -time.Second, false},
	} {
		var c Config
		c.Sync.IdleTimeout, c.Sync.KeepAlive = tc.idle, tc.keep
		if err := c.Validate(); (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrConfig)) {
			t.Errorf("idle %v keep-alive %v: got %v, want ok=%v", tc.idle, tc.keep, err, tc.ok)
		}
	}
}
