package gateway

import (
	"errors"
	"strings"
	"testing"
)

// TestKeepAliveConfig: keep_alive and idle_timeout are read, and a
// keep-alive not below the idle timeout, or a negative one, is refused
// naming the field.
func TestKeepAliveConfig(t *testing.T) {
	base := "cloud:\n  address: 127.0.0.1:7443\n  dev_ca_dir: /tmp/ca\n"
	c, err := ParseConfig([]byte(base + "  keep_alive: 5s\n  idle_timeout: 10m\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Cloud.KeepAlive.String() != "5s" || c.Cloud.IdleTimeout.String() != "10m0s" {
		t.Fatalf("parsed %v / %v", c.Cloud.KeepAlive, c.Cloud.IdleTimeout)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"  keep_alive: 30s\n  idle_timeout: 30s\n", "cloud.keep_alive"},
		{"  keep_alive: -1s\n", "keep_alive"},
		{"  idle_timeout: -1s\n", "idle_timeout"},
	} {
		c, err := ParseConfig([]byte(base + tc.yaml))
		if err == nil {
			err = c.Validate()
		}
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want a config error naming %s", tc.yaml, err, tc.want)
		}
	}
}
