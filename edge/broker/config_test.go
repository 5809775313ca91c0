package broker

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

func TestParseConfig(t *testing.T) {
	c, err := ParseConfig([]byte(`
listeners:
  tcp: {address: "127.0.0.1:0"}
  websocket: {address: "127.0.0.1:0"}
limits:
  max_payload_bytes: 1024
  receive_maximum: 16
  message_expiry: 10m
  write_timeout: 2s
forwarding:
  - {filter: "sensors/#", type: "io.tributary.telemetry", priority: 2, forward: true}
  - {filter: "debug/#", forward: false}
  - {filter: "local/#", local: true}
  - {filter: "#"}
ack_mode: sync
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.AckMode != AckSync || c.Limits.MaxPayloadBytes != 1024 || c.Limits.ReceiveMaximum != 16 ||
		c.Limits.MessageExpiry != 10*time.Minute || c.Limits.WriteTimeout != 2*time.Second ||
		c.Listeners.WebSocket == nil || c.Listeners.TLS != nil || len(c.Forwarding) != 4 ||
		c.Forwarding[0] != (Rule{Filter: "sensors/#", Type: "io.tributary.telemetry", Priority: 2}) ||
		!c.Forwarding[1].Local || !c.Forwarding[2].Local || c.Forwarding[3].Local {
		t.Fatalf("parsed %+v", c)
	}

	empty, err := ParseConfig(nil)
	if err != nil {
		t.Fatalf("empty config: %v", err)
	}
	d := empty.withDefaults()
	if d.Listeners.TCP.Address != ":1883" || d.AckMode != AckAsync || d.Limits.MaxPayloadBytes != 256<<10 ||
		d.Limits.MaxInflight != 65535 || d.Limits.MessageExpiry != time.Hour || d.Limits.SessionExpiry != time.Hour ||
		d.Limits.WriteTimeout != 10*time.Second || d.Limits.ReceiveMaximum != 1024 {
		t.Fatalf("defaults %+v", d)
	}
}

func TestConfigErrorsNameTheField(t *testing.T) {
	tests := []struct{ yaml, field string }{
		{"ack_mode: fast", "ack_mode"},
		{"listeners: {tcp: {disabled: true}}", "listeners"},
		{"listeners: {tls: {key_file: k.pem}}", "listeners.tls.cert_file"},
		{"listeners: {tls: {cert_file: c.pem}}", "listeners.tls.key_file"},
		{"listeners: {websocket: {cert_file: c.pem}}", "listeners.websocket"},
		{"limits: {max_payload_bytes: -1}", "limits.max_payload_bytes"},
		{"limits: {max_payload_bytes: 300000000}", "limits.max_payload_bytes"},
		{"limits: {max_connections: -3}", "limits.max_connections"},
		{"limits: {session_expiry: -1s}", "limits.session_expiry"},
		{"limits: {write_timeout: -1s}", "limits.write_timeout"},
		{"limits: {max_client_writes_pending: -1}", "limits.max_client_writes_pending"},
		{"forwarding: [{filter: 'a/#/b'}]", "forwarding[0].filter"},
		{"forwarding: [{filter: 'a'}, {filter: ''}]", "forwarding[1].filter"},
		{"forwarding: [{filter: 'a', local: true, forward: true}]", "both local and forward"},
		{"forwarding: [{filter: 'a', forwrd: true}]", "field forwrd not found"},
		{"limits: {max_payload: 3}", "max_payload"},    // unknown key
		{"listeners: {tcp: {adress: ':1'}}", "adress"}, // typo
		{"limits: {receive_maximum: 70000}", "limits.receive_maximum"},
		{"limits: {max_inflight: -1}", "limits.max_inflight"},
	}
	for _, tt := range tests {
		_, err := ParseConfig([]byte(tt.yaml))
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tt.field) {
			t.Errorf("ParseConfig(%q) = %v, want ErrConfig naming %q", tt.yaml, err, tt.field)
		}
	}
	if err := (Config{Forwarding: []Rule{{Filter: "a+"}}}).Validate(); !errors.Is(err, ErrBadFilter) {
		t.Errorf("bad filter: %v, want ErrBadFilter in the chain", err)
	}
}

// FuzzParseConfig: any bytes give a config that validates, or an ErrConfig
// error; never a panic.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte("ack_mode: async\nlimits: {max_payload_bytes: 10}\n"))
	f.Add([]byte("forwarding: [{filter: 'sensors/#', type: t, priority: 1, forward: true}]"))
	f.Add([]byte("listeners: {tls: {cert_file: a, key_file: b}, websocket: {}}"))
	f.Add([]byte("limits: {message_expiry: -1s, session_expiry: 5m}"))
	f.Add([]byte("{"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if err != nil {
			if !errors.Is(err, ErrConfig) {
				t.Fatalf("error without ErrConfig: %v", err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("parsed config fails Validate: %v", err)
		}
	})
}

// TestExampleConfig keeps testdata/broker.yaml, the documented example of
// every key, parseable and equal to the defaults it claims.
func TestExampleConfig(t *testing.T) {
	data, err := os.ReadFile("testdata/broker.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseConfig(data)
	if err != nil {
		t.Fatal(err)
	}
	got := c.withDefaults()
	got.Forwarding = nil
	want := Config{}.withDefaults()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("example differs from the defaults:\n got %+v\nwant %+v", got, want)
	}
}
