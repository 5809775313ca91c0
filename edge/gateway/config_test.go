package gateway

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tributary-io/tributary/edge/broker"
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
	// What the package ships must forward device messages: a rule that
	// kept them local by default once made a fresh gateway acknowledge and
	// keep every message to itself.
	for _, tc := range []struct {
		topic    string
		typ      string
		priority uint8
	}{
		{"sensors/dev-1/temp", "io.tributary.telemetry", 1},
		{"alarms/dev-1/fire", "io.tributary.alarm", 0},
	} {
		var hit *broker.Rule
		for i := range c.MQTT.Forwarding {
			if broker.MatchTopic(c.MQTT.Forwarding[i].Filter, tc.topic) {
				hit = &c.MQTT.Forwarding[i]
				break
			}
		}
		if hit == nil || hit.Local || hit.Type != tc.typ || hit.Priority != tc.priority {
			t.Errorf("deploy/config/edge.yaml: %s goes by rule %+v, want forwarded as %s with priority %d", tc.topic, hit, tc.typ, tc.priority)
		}
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
