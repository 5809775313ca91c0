package server

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/tributary-io/tributary/cloud/dispatch"
)

// Config is the cloud's whole configuration: the YAML file given to
// tributary-cloud with -config. Every field documents its zero-value default.
type Config struct {
	// DataDir holds the central log, subscription cursors and, in
	// development, the generated PKI. "" means /var/lib/tributary/cloud.
	DataDir string `yaml:"data_dir"`
	// LogLevel is debug, info, warn or error. "" means info.
	LogLevel string `yaml:"log_level"`
	// Sync is the QUIC endpoint gateways connect to.
	Sync SyncConfig `yaml:"sync"`
	// API is the HTTP API (events, gateways, metrics, health).
	API APIConfig `yaml:"api"`
	// Log tunes the central log.
	Log LogConfig `yaml:"log"`
	// Subscriptions push events from the log to sinks.
	Subscriptions []dispatch.Subscription `yaml:"subscriptions"`
}

// SyncConfig configures the gateway-facing QUIC endpoint.
type SyncConfig struct {
	// Listen is the UDP address. "" means ":7443".
	Listen string `yaml:"listen"`
	// CertFile and KeyFile are the server's certificate and key; ClientCAFile
	// the CA gateway certificates must chain to. All three "" (the zero
	// value): a development PKI is created on first start in
	// <data_dir>/pki (ca.crt, ca.key, server.crt, server.key) and reused.
	CertFile     string `yaml:"cert_file"`
	KeyFile      string `yaml:"key_file"`
	ClientCAFile string `yaml:"client_ca_file"`
	// Hosts are the DNS names and IPs in the development server
	// certificate. Empty means localhost, 127.0.0.1, ::1 and the host name.
	Hosts []string `yaml:"hosts"`
	// Window is how many batches a gateway may have unacknowledged. 0 means
	// the link's default.
	Window int `yaml:"window"`
	// IdleTimeout closes a gateway's connection after this long without a
	// packet from it. QUIC uses the smaller of the cloud's and the
	// gateway's. 0 means the link's default (30 s).
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// KeepAlive is how often the cloud pings a quiet connection. 0 means
	// the link's default (15 s); it should stay below half the idle
	// timeout and below the shortest UDP NAT binding timeout on the way
	// (often 30 s).
	KeepAlive time.Duration `yaml:"keep_alive"`
}

// APIConfig configures the HTTP API.
type APIConfig struct {
	// Listen is the TCP address. "" means ":8080".
	Listen string `yaml:"listen"`
	// Pprof serves Go's profiler at /debug/pprof/ (admin scope) on the API
	// listener. false (the zero value): not served.
	Pprof bool `yaml:"pprof"`
	// Tokens are the bearer tokens the API accepts. Empty (the zero value):
	// a development admin token is generated on first start into
	// <data_dir>/api-token (mode 0600) and logged where to find it.
	Tokens []TokenConfig `yaml:"tokens"`
	// TLS serves the API over HTTPS. Nil (the zero value): plain HTTP.
	TLS *APITLS `yaml:"tls"`
}

// APITLS is the API's certificate.
type APITLS struct {
	// CertFile and KeyFile are PEM files. Both required.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// LogConfig tunes the central log.
type LogConfig struct {
	// SegmentBytes is the size at which a segment file rolls. 0 means the
	// log's default (64 MiB).
	SegmentBytes int64 `yaml:"segment_bytes"`
	// RetentionAge deletes segments whose newest record is older. 0 keeps
	// records forever.
	RetentionAge time.Duration `yaml:"retention_age"`
	// RetentionBytes deletes the oldest segments while the log is larger. 0
	// means no size limit.
	RetentionBytes int64 `yaml:"retention_bytes"`
}

// DefaultDataDir is where a packaged cloud keeps its state.
const DefaultDataDir = "/var/lib/tributary/cloud"

// ErrConfig marks configuration errors.
var ErrConfig = errors.New("invalid configuration")

// LoadConfig reads and decodes a YAML configuration file (unknown keys are
// errors). Call Validate after applying flags.
func LoadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	c, err := ParseConfig(data)
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// ParseConfig decodes YAML, rejecting unknown keys.
func ParseConfig(data []byte) (Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return Config{}, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return c, nil
}

// Validate reports the first invalid field, named by its YAML path.
func (c Config) Validate() error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrConfig, field, fmt.Sprintf(format, args...))
	}
	switch c.LogLevel {
	case "", "debug", "info", "warn", "error":
	default:
		return bad("log_level", "%q is not debug, info, warn or error", c.LogLevel)
	}
	for _, a := range []struct{ name, v string }{{"sync.listen", c.Sync.Listen}, {"api.listen", c.API.Listen}} {
		if a.v == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a.v); err != nil {
			return bad(a.name, "%q is not host:port: %v", a.v, err)
		}
	}
	names := map[string]bool{}
	for i, t := range c.API.Tokens {
		if err := t.validate(); err != nil {
			return bad(fmt.Sprintf("api.tokens[%d]", i), "%v", err)
		}
		if names[t.Name] {
			return bad(fmt.Sprintf("api.tokens[%d].name", i), "%q is used twice", t.Name)
		}
		names[t.Name] = true
	}
	if t := c.API.TLS; t != nil && (t.CertFile == "" || t.KeyFile == "") {
		return bad("api.tls", "cert_file and key_file are both required")
	}
	s := c.Sync
	if set := btoi(s.CertFile != "") + btoi(s.KeyFile != "") + btoi(s.ClientCAFile != ""); set != 0 && set != 3 {
		return bad("sync", "cert_file, key_file and client_ca_file go together: set all three, or none for a development PKI")
	}
	if s.Window < 0 {
		return bad("sync.window", "%d is negative", s.Window)
	}
	if s.IdleTimeout < 0 || s.KeepAlive < 0 {
		return bad("sync", "idle_timeout and keep_alive must not be negative")
	}
	if s.IdleTimeout > 0 && s.KeepAlive >= s.IdleTimeout {
		return bad("sync.keep_alive", "%v is not below idle_timeout (%v): quiet connections would time out", s.KeepAlive, s.IdleTimeout)
	}
	if c.Log.SegmentBytes < 0 || c.Log.RetentionAge < 0 || c.Log.RetentionBytes < 0 {
		return bad("log", "segment_bytes, retention_age and retention_bytes must not be negative")
	}
	ids := map[string]bool{}
	for i, sub := range c.Subscriptions {
		if err := sub.Validate(); err != nil {
			return fmt.Errorf("%w: subscriptions[%d]: %w", ErrConfig, i, err)
		}
		if ids[sub.ID] {
			return bad(fmt.Sprintf("subscriptions[%d].id", i), "%q is used twice", sub.ID)
		}
		ids[sub.ID] = true
	}
	return nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
