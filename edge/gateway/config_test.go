package gateway

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestShippedConfigIsValid(t *testing.T) {
	c, err := LoadConfig(filepath.Join("..", "..", "deploy", "config", "edge.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("deploy/config/edge.yaml: %v", err)
	}
	if c.Cloud.Address == "" || len(c.MQTT.Forwarding) == 0 {
		t.Fatalf("example config lost its content: %+v", c)
	}
}

func TestConfigErrorsNameTheField(t *testing.T) {
	valid := "cloud:\n  address: 127.0.0.1:7443\n  dev_ca_dir: /tmp/ca\n"
	for _, tc := range []struct {
		yaml, want string
	}{
		{valid + "colud: {}\n", "colud"},                     // unknown key
		{valid + "log_level: loud\n", "log_level"},           // bad value
		{valid + "gateway_id: 'has space'\n", "gateway_id"},  // bad id
		{"cloud:\n  dev_ca_dir: /tmp/ca\n", "cloud.address"}, // missing
		{"cloud:\n  address: nohostport\n  dev_ca_dir: x\n", "cloud.address"},
		{"cloud:\n  address: h:1\n", "cloud.ca_file"}, // no certs, no dev CA
		{valid + "outbox:\n  synchronous: sometimes\n", "outbox.synchronous"},
		{valid + "mqtt:\n  ack_mode: later\n", "ack_mode"},
		{valid + "metrics_listen: nope\n", "metrics_listen"},
	} {
		c, err := ParseConfig([]byte(tc.yaml))
		if err == nil {
			err = c.Validate()
		}
		if err == nil {
			t.Errorf("%q: accepted", tc.yaml)
			continue
		}
		if !errors.Is(err, ErrConfig) && !strings.Contains(err.Error(), "invalid") {
			t.Errorf("%q: error %v does not mark a config error", tc.yaml, err)
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %q does not name %q", tc.yaml, err, tc.want)
		}
	}
	if c, err := ParseConfig([]byte(valid)); err != nil || c.Validate() != nil {
		t.Fatalf("minimal config refused: %v", err)
	}
}

func TestLoadConfigUnreadable(t *testing.T) {
	_, err := LoadConfig(filepath.Join(t.TempDir(), "missing.yaml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("want a not-exist error, got %v", err)
	}
}

func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{"", "cloud: {address: 'a:1'}", "mqtt: {forwarding: [{filter: '#'}]}", "{{{", "gateway_id: [1,2]"} {
		f.Add([]byte(s))
	}
	if b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "config", "edge.yaml")); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if err != nil {
			return
		}
		_ = c.Validate() // must not panic
	})
}
