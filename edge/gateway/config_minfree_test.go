package gateway

import (
	"errors"
	"strings"
	"testing"
)

// TestOutboxMinFreeBytes: outbox.min_free_bytes left out means the outbox's
// default reserve, 0 turns it off, a positive value is passed on, and a
// negative one is refused naming the key.
func TestOutboxMinFreeBytes(t *testing.T) {
	valid := "cloud:\n  address: 127.0.0.1:7443\n  dev_ca_dir: /tmp/ca\n"
	for _, tc := range []struct {
		yaml string
		want int64 // outbox.Options.MinFreeBytes
	}{
		{valid, 0}, // default
		{valid + "outbox:\n  min_free_bytes: 0\n", -1}, // off
		{valid + "outbox:\n  min_free_bytes: 1048576\n", 1 << 20},
	} {
		c, err := ParseConfig([]byte(tc.yaml))
		if err == nil {
			err = c.Validate()
		}
		if err != nil {
			t.Fatalf("%q: %v", tc.yaml, err)
		}
		if got := c.Outbox.options().MinFreeBytes; got != tc.want {
			t.Errorf("%q: outbox MinFreeBytes %d, want %d", tc.yaml, got, tc.want)
		}
	}
	c, err := ParseConfig([]byte(valid + "outbox:\n  min_free_bytes: -1\n"))
	if err != nil {
		t.Fatal(err)
	}
	err = c.Validate()
	if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "outbox.min_free_bytes") {
		t.Fatalf("negative min_free_bytes: %v, want a config error naming outbox.min_free_bytes", err)
	}
}
