package scenarios

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/tributary-io/tributary/simulations/ledger"
)

// This file is the scenario model: decoding, defaults and validation. It
// imports nothing of the fabric, so the decoder can be fuzzed quickly;
// simulations/fleet turns a Scenario into a running fleet.

// Duration is a time.Duration written as a Go duration string ("1.5s",
// "10m") in YAML; a bare number is refused (it would silently mean
// nanoseconds).
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

// MarshalText writes the duration string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalYAML accepts only duration strings.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!int" || n.Tag == "!!float" {
		return fmt.Errorf("line %d: duration must be a string such as 10s", n.Line)
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*d = Duration(v)
	return nil
}

// Scenario describes a fleet simulation: the fleet, what its devices publish,
// who subscribes, and a timeline of faults. It is decoded from YAML with
// Parse (unknown keys are errors) and checked with Validate, whose errors
// name the field. Every field documents its zero-value default.
type Scenario struct {
	// Name names the scenario in output and report file names. "" means
	// the file's base name (Load), else "custom".
	Name string `yaml:"name"`
	// Description says what the scenario rehearses, for the report. "":
	// none.
	Description string `yaml:"description"`
	// Mode runs the cloud and the gateways in this process ("in-process",
	// the default for "") or as separate tributary-cloud and
	// tributary-edge child processes ("processes"), where a kill fault is a
	// real SIGKILL. The -processes flag overrides it.
	Mode Mode `yaml:"mode"`
	// Seed seeds the fault relays' randomness. 0 means 1.
	Seed uint64 `yaml:"seed"`
	// Duration is how long devices create messages. 0 means 30 s.
	Duration Duration `yaml:"duration"`
	// DrainTimeout bounds the wait, after publishing stopped and the last
	// fault ended, for every message to be settled. 0 means 60 s.
	DrainTimeout Duration `yaml:"drain_timeout"`
	// Gateways is the fleet.
	Gateways Gateways `yaml:"gateways"`
	// Streams are what every device publishes. Empty means one stream on
	// devices/{device}/telemetry at 10 msg/s of 200 bytes.
	Streams []Stream `yaml:"streams"`
	// Sinks are the CloudEvents HTTP receivers, run in this process. Empty
	// means one sink named "sink".
	Sinks []Sink `yaml:"sinks"`
	// Subscriptions push the central log to the sinks (at most
	// ledger.MaxSubscriptions). Empty means one ordered subscription
	// "fleetsim" of every event to the first sink with 16 lanes.
	Subscriptions []Subscription `yaml:"subscriptions"`
	// Faults is the fault timeline. Empty means none.
	Faults []Fault `yaml:"faults"`

	// TotalDevices, when positive, spreads that many devices over the
	// gateways round-robin instead of DevicesPerGateway each (the
	// quickstart's -devices flag). Not read from files. 0: unused.
	TotalDevices int `yaml:"-"`
}

// Mode says where the cloud and the gateways run.
type Mode string

// Modes.
const (
	InProcess Mode = "in-process"
	Processes Mode = "processes"
)

// Gateways describe the fleet's gateways, gw-1 … gw-<count>.
type Gateways struct {
	// Count is the number of gateways. 0 means 2.
	Count int `yaml:"count"`
	// DevicesPerGateway is how many devices connect to each gateway, each
	// with its own MQTT connection. 0 means 25.
	DevicesPerGateway int `yaml:"devices_per_gateway"`
	// Synchronous is the outbox's SQLite durability level (full, extra or
	// normal). "" means full.
	Synchronous string `yaml:"synchronous"`
	// AckMode is the broker's durable-ack mode (async or sync). "" means
	// async.
	AckMode string `yaml:"ack_mode"`
	// MaxClientWritesPending is the broker's per-connection outbound queue
	// (see broker.Limits); simulated devices only receive PUBACKs, so large
	// fleets lower it to save memory. 0 means the broker's default.
	MaxClientWritesPending int `yaml:"max_client_writes_pending"`
	// DiskMB, when positive, gives each gateway its own tmpfs of that many
	// MiB as its data directory, so a disk-full fault can fill a real file
	// system (Linux; mounting needs root or CAP_SYS_ADMIN). 0 (the zero
	// value): data directories on the ordinary disk; disk-full faults are
	// refused.
	DiskMB int `yaml:"disk_mb"`
}

// Stream is one kind of message every device (or a share of them)
// publishes with QoS 1, one message in flight per device: a device queues
// what it creates while its gateway does not acknowledge, as a device with a
// sensor buffer does.
type Stream struct {
	// Topic is the MQTT topic; {device} and {gateway} are replaced by the
	// device's and its gateway's ids. "" means devices/{device}/telemetry.
	Topic string `yaml:"topic"`
	// Rate is messages per second per device. Required, above 0.
	Rate float64 `yaml:"rate"`
	// PayloadBytes is each message's size, at least 64. 0 means 200.
	PayloadBytes int `yaml:"payload_bytes"`
	// Priority is the outbox priority class (0 = highest, up to 255) given
	// by a forwarding rule for this stream's topics. Zero value: 0.
	Priority int `yaml:"priority"`
	// Type is the CloudEvent type given by the forwarding rule. "" means
	// the gateway's default type.
	Type string `yaml:"type"`
	// Share is the fraction of devices that publish this stream, in (0, 1],
	// spread evenly over the fleet (rounded down, at least one device for a
	// share of 1/n of n devices). 0 means 1 (every device).
	Share float64 `yaml:"share"`
}

// Sink is a CloudEvents HTTP receiver the simulator runs and accounts.
type Sink struct {
	// Name identifies it for subscriptions and faults. Required, unique.
	Name string `yaml:"name"`
}

// Subscription is a push subscription configured on the cloud. The
// simulator works out which messages each should deliver from its subject
// filters, independently of the cloud's filter engine.
type Subscription struct {
	// ID is the subscription id. Required, unique.
	ID string `yaml:"id"`
	// Sink is the name of the sink it pushes to. "" means the first sink.
	Sink string `yaml:"sink"`
	// SubjectPrefix and SubjectSuffix select events whose subject (the MQTT
	// topic) starts or ends with them. "" (the zero value): no condition.
	SubjectPrefix string `yaml:"subject_prefix"`
	SubjectSuffix string `yaml:"subject_suffix"`
	// Parallelism is the number of delivery lanes. 0 means 16.
	Parallelism int `yaml:"parallelism"`
	// Ordered keeps per-device order (checked by the simulator). nil means
	// true.
	Ordered *bool `yaml:"ordered"`
	// Timeout bounds one delivery attempt. 0 means the cloud's default
	// (10 s).
	Timeout Duration `yaml:"timeout"`
	// Retry is the retry policy before dead-lettering. The zero value uses
	// the cloud's defaults (10 attempts, up to an hour).
	Retry RetryPolicy `yaml:"retry"`
}

// RetryPolicy bounds how the cloud retries a failed delivery (the
// subscription's retry policy, cloud/dispatch.RetryPolicy). Zero values
// take the cloud's defaults.
type RetryPolicy struct {
	// MaxAttempts counts every attempt, the first included. 0 means 10.
	MaxAttempts int `yaml:"max_attempts"`
	// MinBackoff is the first retry's delay ceiling. 0 means 1 s.
	MinBackoff Duration `yaml:"min_backoff"`
	// MaxBackoff caps the delay ceiling as it doubles. 0 means 10 min.
	MaxBackoff Duration `yaml:"max_backoff"`
	// MaxAge is how long an event is retried. 0 means 1 hour.
	MaxAge Duration `yaml:"max_age"`
}

// FaultKind names what a fault does.
type FaultKind string

// Fault kinds.
const (
	// LinkDown blackholes the targeted gateways' uplinks (every datagram,
	// both ways) through their fault relays.
	LinkDown FaultKind = "link-down"
	// Lossy impairs the uplinks with Loss, Delay, Jitter, Duplicate and
	// Reorder.
	Lossy FaultKind = "lossy"
	// Kill crashes the targeted gateways or the cloud ("cloud") and starts
	// them again on the same data after For. With Mode processes it is a
	// SIGKILL; in process it is an abrupt Close (buffers are still
	// flushed: Go cannot kill part of a process).
	Kill FaultKind = "kill"
	// DiskFull fills the targeted gateways' file systems (Gateways.DiskMB)
	// with a ballast file, removed after For.
	DiskFull FaultKind = "disk-full"
	// SinkFail makes the targeted sinks answer Status to every request.
	SinkFail FaultKind = "sink-fail"
	// SinkHang makes the targeted sinks hold every request without an
	// answer until the fault ends (or the sender gives up).
	SinkHang FaultKind = "sink-hang"
)

var faultKinds = []FaultKind{LinkDown, Lossy, Kill, DiskFull, SinkFail, SinkHang}

// CloudTarget is the target name of the cloud in kill faults.
const CloudTarget = "cloud"

// Fault is one entry of the fault timeline.
type Fault struct {
	// At is when the fault starts, counted from the start of publishing;
	// it must be before Duration. Zero value: at once.
	At Duration `yaml:"at"`
	// For is how long it lasts (for kill: how long the target stays down).
	// Required above 0, except for kill, where 0 restarts at once.
	For Duration `yaml:"for"`
	// Kind is what happens. Required.
	Kind FaultKind `yaml:"kind"`
	// Targets name what it happens to: gateway ids or patterns ("gw-1",
	// "gw-1?", "*"; path.Match syntax), "cloud" (kill only) or sink names
	// (sink faults). Required; each must match something.
	Targets []string `yaml:"targets"`
	// Loss, Duplicate and Reorder are probabilities in [0, 1]; Delay and
	// Jitter add latency. Lossy only; applied in both directions. Zero
	// values: none.
	Loss      float64  `yaml:"loss"`
	Delay     Duration `yaml:"delay"`
	Jitter    Duration `yaml:"jitter"`
	Duplicate float64  `yaml:"duplicate"`
	Reorder   float64  `yaml:"reorder"`
	// Status is the HTTP status a failing sink answers (sink-fail only,
	// 400-599). 0 means 503.
	Status int `yaml:"status"`
}

// End is when the fault ends, from the start of publishing.
func (f Fault) End() time.Duration { return f.At.D() + f.For.D() }

// ErrScenario is matched (errors.Is) by every error Parse, Validate and
// Load return for a bad scenario.
var ErrScenario = errors.New("invalid scenario")

// FieldError is a scenario error pinned to a field, named by its YAML path
// ("faults[2].targets[0]").
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return "scenario field " + e.Field + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrScenario) true.
func (e *FieldError) Is(target error) bool { return target == ErrScenario }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Err: fmt.Errorf(format, args...)}
}

// Parse decodes a YAML scenario, rejecting unknown keys and trailing
// documents, and validates it.
func Parse(data []byte) (Scenario, error) {
	var s Scenario
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&s); err != nil {
		if errors.Is(err, io.EOF) {
			err = errors.New("empty document")
		}
		if field := fieldAt(data, err); field != "" {
			return Scenario{}, &FieldError{Field: field, Err: err}
		}
		return Scenario{}, fmt.Errorf("%w: %w", ErrScenario, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return Scenario{}, fmt.Errorf("%w: a scenario file holds one YAML document", ErrScenario)
	}
	return s, s.Validate()
}

var lineRe = regexp.MustCompile(`line (\d+):`)

// fieldAt names the field a decoding error points at: yaml.v3 reports the
// line only ("line 3: cannot unmarshal !!str into int"), so the YAML is
// walked to the key or item on that line. "" if none is found.
func fieldAt(data []byte, err error) string {
	m := lineRe.FindStringSubmatch(err.Error())
	if m == nil {
		return ""
	}
	line, _ := strconv.Atoi(m[1])
	var root yaml.Node
	if yaml.Unmarshal(data, &root) != nil || len(root.Content) == 0 {
		return ""
	}
	var walk func(n *yaml.Node, path string) string
	walk = func(n *yaml.Node, path string) string {
		switch n.Kind {
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := k.Value
				if path != "" {
					p = path + "." + k.Value
				}
				if f := walk(v, p); f != "" {
					return f
				}
				if k.Line == line {
					return p
				}
			}
		case yaml.SequenceNode:
			if n.Style&yaml.FlowStyle != 0 && n.Line == line {
				return path // [a, b] on the line: the field itself
			}
			for i, v := range n.Content {
				p := fmt.Sprintf("%s[%d]", path, i)
				if f := walk(v, p); f != "" {
					return f
				}
				if v.Line == line && v.Kind == yaml.ScalarNode {
					return p
				}
			}
		}
		return ""
	}
	return walk(root.Content[0], "")
}

// Load returns a shipped scenario by name (see Names) or reads the YAML file
// at nameOrPath (anything containing a path separator or ending in .yaml or
// .yml).
func Load(nameOrPath string) (Scenario, error) {
	isPath := strings.ContainsRune(nameOrPath, filepath.Separator) || strings.ContainsRune(nameOrPath, '/') ||
		strings.HasSuffix(nameOrPath, ".yaml") || strings.HasSuffix(nameOrPath, ".yml")
	var data []byte
	var err error
	name := nameOrPath
	if isPath {
		data, err = os.ReadFile(nameOrPath)
		name = strings.TrimSuffix(strings.TrimSuffix(filepath.Base(nameOrPath), ".yaml"), ".yml")
	} else {
		data, err = Get(nameOrPath)
	}
	if err != nil {
		return Scenario{}, fmt.Errorf("%w: %w", ErrScenario, err)
	}
	s, err := Parse(data)
	if err != nil {
		return Scenario{}, fmt.Errorf("scenario %s: %w", nameOrPath, err)
	}
	if s.Name == "" {
		s.Name = name
	}
	return s, nil
}

// Limits enforced by Validate: generous for this machine, small enough that
// a typo (a rate of 1e9) is refused rather than attempted.
const (
	maxGateways     = 1000
	maxDevices      = 100_000
	maxStreams      = 16
	maxRate         = 10_000
	maxPayloadBytes = 256 << 10
	minPayloadBytes = 64
)

// WithDefaults returns s with every zero field replaced by its default.
func (s Scenario) WithDefaults() Scenario {
	if s.Name == "" {
		s.Name = "custom"
	}
	if s.Mode == "" {
		s.Mode = InProcess
	}
	if s.Seed == 0 {
		s.Seed = 1
	}
	if s.Duration == 0 {
		s.Duration = Duration(30 * time.Second)
	}
	if s.DrainTimeout == 0 {
		s.DrainTimeout = Duration(60 * time.Second)
	}
	if s.Gateways.Count == 0 {
		s.Gateways.Count = 2
	}
	if s.Gateways.DevicesPerGateway == 0 {
		s.Gateways.DevicesPerGateway = 25
	}
	s.Streams = slices.Clone(s.Streams)
	if len(s.Streams) == 0 {
		s.Streams = []Stream{{Rate: 10}}
	}
	for i := range s.Streams {
		st := &s.Streams[i]
		if st.Topic == "" {
			st.Topic = "devices/{device}/telemetry"
		}
		if st.PayloadBytes == 0 {
			st.PayloadBytes = 200
		}
		if st.Share == 0 {
			st.Share = 1
		}
	}
	s.Sinks = slices.Clone(s.Sinks)
	if len(s.Sinks) == 0 {
		s.Sinks = []Sink{{Name: "sink"}}
	}
	s.Subscriptions = slices.Clone(s.Subscriptions)
	if len(s.Subscriptions) == 0 {
		s.Subscriptions = []Subscription{{ID: "fleetsim"}}
	}
	for i := range s.Subscriptions {
		sub := &s.Subscriptions[i]
		if sub.Sink == "" {
			sub.Sink = s.Sinks[0].Name
		}
		if sub.Parallelism == 0 {
			sub.Parallelism = 16
		}
	}
	s.Faults = slices.Clone(s.Faults)
	for i := range s.Faults {
		if s.Faults[i].Kind == SinkFail && s.Faults[i].Status == 0 {
			s.Faults[i].Status = 503
		}
	}
	return s
}

// GatewayIDs are the gateways' ids, gw-1 … gw-<count>.
func (s Scenario) GatewayIDs() []string {
	n := s.WithDefaults().Gateways.Count
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("gw-%d", i+1)
	}
	return ids
}

// Devices is the total number of simulated devices.
func (s Scenario) Devices() int {
	d := s.WithDefaults()
	if d.TotalDevices > 0 {
		return d.TotalDevices
	}
	return d.Gateways.Count * d.Gateways.DevicesPerGateway
}

// Validate reports the first invalid field as a *FieldError naming it.
func (s Scenario) Validate() error {
	switch s.Mode {
	case "", InProcess, Processes:
	default:
		return fieldErr("mode", "%q: want %q or %q", s.Mode, InProcess, Processes)
	}
	for _, f := range []struct {
		name string
		v    Duration
	}{{"duration", s.Duration}, {"drain_timeout", s.DrainTimeout}} {
		if f.v < 0 {
			return fieldErr(f.name, "%v is negative", f.v)
		}
	}
	g := s.Gateways
	switch {
	case g.Count < 0 || g.Count > maxGateways:
		return fieldErr("gateways.count", "%d: want 1 to %d", g.Count, maxGateways)
	case g.DevicesPerGateway < 0:
		return fieldErr("gateways.devices_per_gateway", "%d is negative", g.DevicesPerGateway)
	case g.MaxClientWritesPending < 0:
		return fieldErr("gateways.max_client_writes_pending", "%d is negative", g.MaxClientWritesPending)
	case g.DiskMB < 0:
		return fieldErr("gateways.disk_mb", "%d is negative", g.DiskMB)
	case g.DiskMB > 0 && g.DiskMB < 8:
		return fieldErr("gateways.disk_mb", "%d MiB is too small for an outbox (at least 8)", g.DiskMB)
	}
	switch g.Synchronous {
	case "", "full", "extra", "normal":
	default:
		return fieldErr("gateways.synchronous", "%q: want full, extra or normal", g.Synchronous)
	}
	switch g.AckMode {
	case "", "async", "sync":
	default:
		return fieldErr("gateways.ack_mode", "%q: want async or sync", g.AckMode)
	}
	d := s.WithDefaults()
	if n := d.Devices(); n > maxDevices {
		return fieldErr("gateways.devices_per_gateway", "%d devices in all: at most %d", n, maxDevices)
	}
	if len(s.Streams) > maxStreams {
		return fieldErr("streams", "%d streams: at most %d", len(s.Streams), maxStreams)
	}
	topics := map[string]int{}
	for i, st := range d.Streams {
		field := fmt.Sprintf("streams[%d]", i)
		switch {
		case !(st.Rate > 0) || st.Rate > maxRate || math.IsInf(st.Rate, 0):
			return fieldErr(field+".rate", "%v: want a rate above 0 and at most %d messages per second per device", st.Rate, maxRate)
		case st.PayloadBytes < minPayloadBytes || st.PayloadBytes > maxPayloadBytes:
			return fieldErr(field+".payload_bytes", "%d: want %d to %d", st.PayloadBytes, minPayloadBytes, maxPayloadBytes)
		case st.Priority < 0 || st.Priority > 255:
			return fieldErr(field+".priority", "%d: want 0 (highest) to 255", st.Priority)
		case !(st.Share > 0) || st.Share > 1:
			return fieldErr(field+".share", "%v: want a fraction above 0 and at most 1", st.Share)
		}
		if err := checkTopic(st.Topic); err != nil {
			return &FieldError{Field: field + ".topic", Err: err}
		}
		f := TopicFilter(st.Topic)
		if j, dup := topics[f]; dup {
			return fieldErr(field+".topic", "%q overlaps streams[%d] (both match the filter %q)", st.Topic, j, f)
		}
		topics[f] = i
	}
	sinks := map[string]bool{}
	for i, sk := range d.Sinks {
		field := fmt.Sprintf("sinks[%d].name", i)
		if err := checkName(sk.Name); err != nil {
			return &FieldError{Field: field, Err: err}
		}
		if sinks[sk.Name] {
			return fieldErr(field, "%q is used twice", sk.Name)
		}
		sinks[sk.Name] = true
	}
	if len(d.Subscriptions) > ledger.MaxSubscriptions {
		return fieldErr("subscriptions", "%d subscriptions: at most %d", len(d.Subscriptions), ledger.MaxSubscriptions)
	}
	ids := map[string]bool{}
	for i, sub := range d.Subscriptions {
		field := fmt.Sprintf("subscriptions[%d]", i)
		if ids[sub.ID] {
			return fieldErr(field+".id", "%q is used twice", sub.ID)
		}
		ids[sub.ID] = true
		if !sinks[sub.Sink] {
			return fieldErr(field+".sink", "%q is not a sink of this scenario", sub.Sink)
		}
		if err := sub.validate(); err != nil {
			var fe *FieldError
			if errors.As(err, &fe) {
				fe.Field = field + "." + fe.Field
			}
			return err
		}
	}
	return d.validateFaults(sinks)
}

func (d Scenario) validateFaults(sinks map[string]bool) error {
	gws := d.GatewayIDs()
	type span struct {
		kind   FaultKind
		target string
		from   time.Duration
		to     time.Duration
		index  int
	}
	var spans []span
	for i, f := range d.Faults {
		field := fmt.Sprintf("faults[%d]", i)
		if !slices.Contains(faultKinds, f.Kind) {
			return fieldErr(field+".kind", "%q: want one of %s", f.Kind, joinKinds())
		}
		switch {
		case f.At < 0:
			return fieldErr(field+".at", "%v is negative", f.At)
		case f.At >= d.Duration:
			return fieldErr(field+".at", "%v is not before the end of publishing (duration %v)", f.At, d.Duration)
		case f.For < 0 || (f.For == 0 && f.Kind != Kill):
			return fieldErr(field+".for", "%v: want a duration above 0", f.For)
		case len(f.Targets) == 0:
			return fieldErr(field+".targets", "required: name at least one target")
		}
		if f.Kind != Lossy {
			for _, x := range []struct {
				name string
				set  bool
			}{{"loss", f.Loss != 0}, {"delay", f.Delay != 0}, {"jitter", f.Jitter != 0}, {"duplicate", f.Duplicate != 0}, {"reorder", f.Reorder != 0}} {
				if x.set {
					return fieldErr(field+"."+x.name, "applies to lossy faults only, not %s", f.Kind)
				}
			}
		} else {
			for _, p := range []struct {
				name string
				v    float64
			}{{"loss", f.Loss}, {"duplicate", f.Duplicate}, {"reorder", f.Reorder}} {
				if !(p.v >= 0 && p.v <= 1) {
					return fieldErr(field+"."+p.name, "%v: want a probability from 0 to 1", p.v)
				}
			}
			if f.Delay < 0 || f.Jitter < 0 {
				return fieldErr(field+".delay", "delay and jitter must not be negative")
			}
			if f.Loss == 0 && f.Delay == 0 && f.Jitter == 0 && f.Duplicate == 0 && f.Reorder == 0 {
				return fieldErr(field, "a lossy fault needs at least one of loss, delay, jitter, duplicate, reorder")
			}
		}
		if f.Kind != SinkFail && f.Status != 0 {
			return fieldErr(field+".status", "applies to sink-fail faults only, not %s", f.Kind)
		}
		if f.Kind == SinkFail && (f.Status < 400 || f.Status > 599) {
			return fieldErr(field+".status", "%d: want an HTTP error status from 400 to 599", f.Status)
		}
		if f.Kind == DiskFull && d.Gateways.DiskMB == 0 {
			return fieldErr(field+".kind", "disk-full needs gateways.disk_mb (each gateway's own small file system to fill)")
		}
		for j, pat := range f.Targets {
			tfield := fmt.Sprintf("%s.targets[%d]", field, j)
			var matched []string
			switch f.Kind {
			case SinkFail, SinkHang:
				if !sinks[pat] {
					return fieldErr(tfield, "%q is not a sink of this scenario", pat)
				}
				matched = []string{pat}
			default:
				if pat == CloudTarget {
					if f.Kind != Kill {
						return fieldErr(tfield, "the cloud can only be a target of kill faults")
					}
					matched = []string{pat}
					break
				}
				if _, err := path.Match(pat, ""); err != nil {
					return fieldErr(tfield, "%q: %v", pat, err)
				}
				for _, id := range gws {
					if ok, _ := path.Match(pat, id); ok {
						matched = append(matched, id)
					}
				}
				if len(matched) == 0 {
					return fieldErr(tfield, "%q matches no gateway (they are gw-1 … gw-%d)", pat, len(gws))
				}
			}
			for _, t := range matched {
				spans = append(spans, span{f.Kind, t, f.At.D(), f.End(), i})
			}
		}
	}
	for a := range spans {
		for b := a + 1; b < len(spans); b++ {
			x, y := spans[a], spans[b]
			if x.kind == y.kind && x.target == y.target && x.from <= y.to && y.from <= x.to {
				return fieldErr(fmt.Sprintf("faults[%d]", y.index), "%s of %s overlaps faults[%d]: faults of one kind on one target must not overlap or touch",
					y.kind, y.target, x.index)
			}
		}
	}
	return nil
}

func joinKinds() string {
	s := make([]string, len(faultKinds))
	for i, k := range faultKinds {
		s[i] = string(k)
	}
	return strings.Join(s, ", ")
}

// checkName accepts ids usable in URLs and file names.
func checkName(n string) error {
	if n == "" {
		return errors.New("required")
	}
	if len(n) > 64 {
		return errors.New("longer than 64 characters")
	}
	for _, c := range n {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("%q: use letters, digits, '-', '_' and '.'", n)
		}
	}
	return nil
}

// checkTopic accepts a topic template: non-empty levels without wildcards,
// and placeholders only as whole levels.
func checkTopic(t string) error {
	if t == "" || len(t) > 256 {
		return errors.New("want 1 to 256 characters")
	}
	if strings.HasPrefix(t, "$") {
		return fmt.Errorf("%q: topics starting with $ are not forwarded", t)
	}
	for _, lvl := range strings.Split(t, "/") {
		switch {
		case lvl == "{device}" || lvl == "{gateway}":
		case lvl == "":
			return fmt.Errorf("%q has an empty level", t)
		case strings.ContainsAny(lvl, "+#{}\x00"):
			return fmt.Errorf("%q: level %q may not hold wildcards or braces ({device} and {gateway} are whole levels)", t, lvl)
		}
	}
	return nil
}

// TopicFilter is the MQTT filter matching every topic of a template.
func TopicFilter(t string) string {
	lv := strings.Split(t, "/")
	for i, l := range lv {
		if l == "{device}" || l == "{gateway}" {
			lv[i] = "+"
		}
	}
	return strings.Join(lv, "/")
}

// TopicFor fills a template in.
func TopicFor(t, device, gateway string) string {
	return strings.NewReplacer("{device}", device, "{gateway}", gateway).Replace(t)
}

// IsOrdered is the effective Ordered setting.
func (s Subscription) IsOrdered() bool { return s.Ordered == nil || *s.Ordered }

// Matches reports whether the subscription should deliver a message on
// topic (the event's subject).
func (s Subscription) Matches(topic string) bool {
	return strings.HasPrefix(topic, s.SubjectPrefix) && strings.HasSuffix(topic, s.SubjectSuffix)
}

// Limits of the cloud's subscriptions (cloud/dispatch), checked here so a
// scenario fails before anything starts.
const (
	maxParallelism = 1024
	maxTimeout     = 10 * time.Minute
)

// validate checks what the cloud would refuse, with field names relative to
// the subscription.
func (s Subscription) validate() error {
	if err := checkSubscriptionID(s.ID); err != nil {
		return &FieldError{Field: "id", Err: err}
	}
	switch {
	case s.Parallelism < 0 || s.Parallelism > maxParallelism:
		return fieldErr("parallelism", "%d: want 1 to %d", s.Parallelism, maxParallelism)
	case s.Timeout < 0 || s.Timeout.D() > maxTimeout:
		return fieldErr("timeout", "%v: want 0 to %v", s.Timeout, maxTimeout)
	case s.Retry.MaxAttempts < 0:
		return fieldErr("retry.max_attempts", "%d is negative", s.Retry.MaxAttempts)
	case s.Retry.MinBackoff < 0:
		return fieldErr("retry.min_backoff", "%v is negative", s.Retry.MinBackoff)
	case s.Retry.MaxBackoff < 0:
		return fieldErr("retry.max_backoff", "%v is negative", s.Retry.MaxBackoff)
	case s.Retry.MaxAge < 0:
		return fieldErr("retry.max_age", "%v is negative", s.Retry.MaxAge)
	case s.Retry.MaxBackoff > 0 && s.Retry.MinBackoff > s.Retry.MaxBackoff:
		return fieldErr("retry.min_backoff", "%v is above max_backoff %v", s.Retry.MinBackoff, s.Retry.MaxBackoff)
	}
	return nil
}

// checkSubscriptionID accepts what the cloud accepts as a subscription id:
// 1-128 characters of A-Z a-z 0-9 . _ -, not starting with a dot.
func checkSubscriptionID(id string) error {
	switch {
	case id == "":
		return errors.New("required")
	case len(id) > 128:
		return errors.New("longer than 128 characters")
	case id[0] == '.':
		return errors.New("must not start with a dot")
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("%q: only A-Z a-z 0-9 . _ - are allowed", id)
		}
	}
	return nil
}

// MatchTargets resolves a fault's target patterns against the gateway ids
// (sink names and "cloud" stand for themselves), in order, without repeats.
func MatchTargets(f Fault, gateways []string) []string {
	var out []string
	add := func(t string) {
		if !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	for _, pat := range f.Targets {
		switch {
		case f.Kind == SinkFail || f.Kind == SinkHang || pat == CloudTarget:
			add(pat)
		default:
			for _, id := range gateways {
				if ok, _ := path.Match(pat, id); ok {
					add(id)
				}
			}
		}
	}
	return out
}
