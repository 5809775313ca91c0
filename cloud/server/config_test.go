package server

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestShippedConfigIsValid(t *testing.T) {
	c, err := LoadConfig(filepath.Join("..", "..", "deploy", "config", "cloud.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("deploy/config/cloud.yaml: %v", err)
	}
	if len(c.Subscriptions) == 0 {
		t.Fatal("example config lost its subscription")
	}
}

func TestConfigErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct {
		yaml, want string
	}{
		{"sycn: {}\n", "sycn"},
		{"log_level: chatty\n", "log_level"},
		{"sync:\n  listen: nope\n", "sync.listen"},
		{"sync:\n  cert_file: a.crt\n", "sync"},
		{"api:\n  listen: nope\n", "api.listen"},
		{"log:\n  retention_bytes: -1\n", "log"},
		{"subscriptions:\n  - id: a\n    sink: http://x/\n  - id: a\n    sink: http://y/\n", "used twice"},
		{"subscriptions:\n  - id: a\n", "subscriptions[0]"},
	} {
		c, err := ParseConfig([]byte(tc.yaml))
		if err == nil {
			err = c.Validate()
		}
		if err == nil {
			t.Errorf("%q: accepted", tc.yaml)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %q does not name %q", tc.yaml, err, tc.want)
		}
	}
}
