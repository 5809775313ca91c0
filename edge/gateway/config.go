package gateway

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/tributary-io/tributary/edge/broker"
	"github.com/tributary-io/tributary/edge/outbox"
)

// Config is the gateway's whole configuration: the YAML file given to
// tributary-edge with -config. Every field documents its zero-value default.
type Config struct {
	// GatewayID names this gateway in the cloud. It must equal the identity
	// in the gateway's certificate. "" (the zero value): taken from the
	// certificate.
	GatewayID string `yaml:"gateway_id"`
	// DataDir holds the outbox database and, in development, the minted
	// certificate. "" means /var/lib/tributary/edge.
	DataDir string `yaml:"data_dir"`
	// LogLevel is debug, info, warn or error. "" means info.
	LogLevel string `yaml:"log_level"`
	// MetricsListen serves Prometheus metrics at /metrics and health at
	// /healthz. "" (the zero value): not served.
	MetricsListen string `yaml:"metrics_listen"`
	// MQTT is the device-facing broker. mqtt.sessions.file "" (the zero
	// value) means <data_dir>/sessions.db: persistent sessions survive a
	// restart.
	MQTT broker.Config `yaml:"mqtt"`
	// Outbox tunes the durable SQLite buffer.
	Outbox OutboxConfig `yaml:"outbox"`
	// Cloud is where the gateway forwards to.
	Cloud CloudConfig `yaml:"cloud"`
}

// OutboxConfig tunes the outbox.
type OutboxConfig struct {
	// Synchronous is SQLite's durability level for commits: full (fsync at
	// every commit; survives power loss), extra, or normal (survives a
	// process crash only). "" means full.
	Synchronous string `yaml:"synchronous"`
	// MaxBatchRows caps the rows of one group commit. 0 means 1000.
	MaxBatchRows int `yaml:"max_batch_rows"`
	// QueueLimit is how many messages may wait for the commit before
	// publishers are slowed down. 0 means 10000.
	QueueLimit int `yaml:"queue_limit"`
	// QuotaBytes bounds what the outbox holds while the cloud is
	// unreachable (payload, topic, ids and 64 bytes of overhead a record).
	// 0 (the zero value): no quota, the disk is the limit.
	QuotaBytes int64 `yaml:"quota_bytes"`
	// Overflow is what a full quota does: reject-new (refuse the publish:
	// MQTT 5 reason 0x97, MQTT 3.1.1 disconnect; nothing acknowledged is
	// ever lost) or drop-oldest (delete the oldest records of this or a
	// lower-priority drop-oldest class, counted). "" means reject-new.
	Overflow string `yaml:"overflow"`
	// TTL deletes records older than this that the cloud has not taken,
	// counted as expired. 0 (the zero value): records never expire.
	TTL time.Duration `yaml:"ttl"`
	// MinFreeBytes is the free-space reserve on the data directory's file
	// system: when less than this is free (the database's own free pages
	// count as free), the outbox behaves as if its quota were reached, so
	// drop-oldest classes drop their oldest records and reject-new classes
	// refuse (MQTT 5 reason 0x97), each counted by reason disk_full, before
	// the disk is really full. It must cover the WAL's growth between
	// checkpoints (a few MiB). Unset (nil, the zero value): 64 MiB or 5% of
	// the file system, whichever is smaller. 0 turns the reserve off: a full
	// disk then refuses every publish, whatever the overflow policy.
	MinFreeBytes *int64 `yaml:"min_free_bytes"`
	// Classes overrides overflow and ttl per priority class (the forwarding
	// rules' priority; 0 is the highest). Empty: every class uses the
	// settings above.
	Classes map[uint8]ClassConfig `yaml:"classes"`
}

// ClassConfig is one priority class's outbox policy.
type ClassConfig struct {
	// Overflow: reject-new or drop-oldest. "" means outbox.overflow.
	Overflow string `yaml:"overflow"`
	// TTL: 0 means outbox.ttl; negative means never expire.
	TTL time.Duration `yaml:"ttl"`
	// Lane is the priority lane the class's records travel on to the
	// cloud, 0 to 7: each lane is a stream of its own and lower lanes go
	// first, so a class in lane 0 (alarms) overtakes a backlog in lane 2
	// (telemetry). A record keeps the lane it was committed with. 0 (the
	// zero value): lane 0, where every class is unless configured.
	Lane uint8 `yaml:"lane"`
}

// CloudConfig is the link to the cloud.
type CloudConfig struct {
	// Address is the cloud's sync endpoint, host:port (UDP, QUIC). Required.
	Address string `yaml:"address"`
	// ServerName is the name checked in the cloud's certificate. "" means the
	// host part of Address.
	ServerName string `yaml:"server_name"`
	// CAFile is the PEM CA bundle the cloud's certificate must chain to.
	// CertFile and KeyFile are this gateway's certificate and key. All three
	// are required unless DevCADir is set.
	CAFile   string `yaml:"ca_file"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// DevCADir is for development only: a directory holding the cloud's
	// development CA (ca.crt and ca.key, made by tributary-cloud on first
	// start). On first start the gateway mints its own certificate from it
	// into <data_dir>/pki. "" (the zero value): not used.
	DevCADir string `yaml:"dev_ca_dir"`
	// Window is how many batches may await the cloud's ack. 0 means the
	// link's default (the cloud may lower it).
	Window int `yaml:"window"`
	// MaxBatchBytes caps one batch. 0 means the link's default (1 MiB).
	MaxBatchBytes int `yaml:"max_batch_bytes"`
	// Linger is how long a batch waits to fill once records are waiting. 0
	// means the link's default.
	Linger time.Duration `yaml:"linger"`
	// KeepAlive is how often the gateway pings a quiet link, which keeps
	// the NAT bindings on the way open (UDP bindings often expire after
	// 30 s) and lets the gateway notice a dead cloud. 0 means the link's
	// default (15 s).
	KeepAlive time.Duration `yaml:"keep_alive"`
	// IdleTimeout ends a connection that heard nothing from the cloud for
	// this long; the gateway then reconnects. QUIC uses the smaller of the
	// gateway's and the cloud's. A restarted cloud resets old connections
	// at once (stateless reset), so this bounds only silent failures. 0
	// means the link's default (30 s).
	IdleTimeout time.Duration `yaml:"idle_timeout"`
}

// DefaultDataDir is where a packaged gateway keeps its state.
const DefaultDataDir = "/var/lib/tributary/edge"

var gatewayIDRe = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// ErrConfig marks configuration errors.
var ErrConfig = errors.New("invalid configuration")

// LoadConfig reads, decodes (unknown keys are errors) and validates a YAML
// configuration file.
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

// ParseConfig decodes YAML, rejecting unknown keys. It does not validate:
// flags may still change the result; call Validate after.
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
	if c.GatewayID != "" && !gatewayIDRe.MatchString(c.GatewayID) {
		return bad("gateway_id", "%q: use 1 to 64 letters, digits, '.', '_' or '-'", c.GatewayID)
	}
	switch c.LogLevel {
	case "", "debug", "info", "warn", "error":
	default:
		return bad("log_level", "%q is not debug, info, warn or error", c.LogLevel)
	}
	if c.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(c.MetricsListen); err != nil {
			return bad("metrics_listen", "%q is not host:port: %v", c.MetricsListen, err)
		}
	}
	if err := c.MQTT.Validate(); err != nil {
		return fmt.Errorf("%w: mqtt: %w", ErrConfig, err)
	}
	switch c.Outbox.Synchronous {
	case "", "full", "extra", "normal":
	default:
		return bad("outbox.synchronous", "%q is not full, extra or normal", c.Outbox.Synchronous)
	}
	if c.Outbox.MaxBatchRows < 0 {
		return bad("outbox.max_batch_rows", "%d is negative", c.Outbox.MaxBatchRows)
	}
	if c.Outbox.QueueLimit < 0 {
		return bad("outbox.queue_limit", "%d is negative", c.Outbox.QueueLimit)
	}
	if c.Outbox.QuotaBytes < 0 {
		return bad("outbox.quota_bytes", "%d is negative", c.Outbox.QuotaBytes)
	}
	if c.Outbox.MinFreeBytes != nil && *c.Outbox.MinFreeBytes < 0 {
		return bad("outbox.min_free_bytes", "%d is negative (0 turns the reserve off; leave it out for the default)", *c.Outbox.MinFreeBytes)
	}
	if c.Outbox.TTL < 0 {
		return bad("outbox.ttl", "%v is negative", c.Outbox.TTL)
	}
	if err := validOverflow(c.Outbox.Overflow); err != nil {
		return bad("outbox.overflow", "%v", err)
	}
	for p, cl := range c.Outbox.Classes {
		if err := validOverflow(cl.Overflow); err != nil {
			return bad(fmt.Sprintf("outbox.classes.%d.overflow", p), "%v", err)
		}
		if cl.Lane >= outbox.MaxLanes {
			return bad(fmt.Sprintf("outbox.classes.%d.lane", p), "%d: lanes are 0 to %d", cl.Lane, outbox.MaxLanes-1)
		}
	}
	cl := c.Cloud
	if cl.Address == "" {
		return bad("cloud.address", "required (host:port of the cloud's sync endpoint)")
	}
	if _, _, err := net.SplitHostPort(cl.Address); err != nil {
		return bad("cloud.address", "%q is not host:port: %v", cl.Address, err)
	}
	if cl.DevCADir == "" {
		for _, f := range []struct{ name, v string }{{"cloud.ca_file", cl.CAFile}, {"cloud.cert_file", cl.CertFile}, {"cloud.key_file", cl.KeyFile}} {
			if f.v == "" {
				return bad(f.name, "required (or set cloud.dev_ca_dir for a development certificate)")
			}
		}
	}
	if cl.Window < 0 || cl.MaxBatchBytes < 0 || cl.Linger < 0 {
		return bad("cloud", "window, max_batch_bytes and linger must not be negative")
	}
	if cl.KeepAlive < 0 || cl.IdleTimeout < 0 {
		return bad("cloud", "keep_alive and idle_timeout must not be negative")
	}
	if cl.IdleTimeout > 0 && cl.KeepAlive >= cl.IdleTimeout {
		return bad("cloud.keep_alive", "%v is not below idle_timeout (%v): a quiet link would time out", cl.KeepAlive, cl.IdleTimeout)
	}
	return nil
}

func validOverflow(s string) error {
	switch s {
	case "", string(outbox.RejectNew), string(outbox.DropOldest):
		return nil
	}
	return fmt.Errorf("%q is not %s or %s", s, outbox.RejectNew, outbox.DropOldest)
}

// outboxOptions maps the outbox section to outbox.Options.
func (c OutboxConfig) options() outbox.Options {
	o := outbox.Options{
		Synchronous:  c.Synchronous,
		MaxBatchRows: c.MaxBatchRows,
		QueueLimit:   c.QueueLimit,
		QuotaBytes:   c.QuotaBytes,
		Overflow:     outbox.Overflow(c.Overflow),
		TTL:          c.TTL,
	}
	switch {
	case c.MinFreeBytes == nil: // the outbox's default
	case *c.MinFreeBytes == 0:
		o.MinFreeBytes = -1 // off
	default:
		o.MinFreeBytes = *c.MinFreeBytes
	}
	if len(c.Classes) > 0 {
		o.Classes = make(map[uint8]outbox.ClassPolicy, len(c.Classes))
		for p, cl := range c.Classes {
			o.Classes[p] = outbox.ClassPolicy{Overflow: outbox.Overflow(cl.Overflow), TTL: cl.TTL, Lane: cl.Lane}
		}
	}
	return o
}
