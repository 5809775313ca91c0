package scenarios

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestShippedScenarios loads every shipped scenario: each validates, is
// named after its file, says what it rehearses, and the seven are
// all there.
func TestShippedScenarios(t *testing.T) {
	names := Names()
	for _, want := range []string{"steady", "outage-and-drain", "cloud-crash", "lossy-cellular", "disk-full", "sink-down", "fleet-10k"} {
		found := false
		for _, n := range names {
			found = found || n == want
		}
		if !found {
			t.Errorf("scenario %q is not shipped (have %v)", want, names)
		}
	}
	for _, n := range names {
		s, err := Load(n)
		if err != nil {
			t.Errorf("%s: %v", n, err)
			continue
		}
		if s.Name != n || s.Description == "" {
			t.Errorf("%s: name %q, description %q", n, s.Name, s.Description)
		}
	}
	if s, _ := Load("fleet-10k"); s.Devices() != 10000 {
		t.Errorf("fleet-10k has %d devices", s.Devices())
	}
	if _, err := Load("no-such-scenario"); !errors.Is(err, ErrScenario) || !errors.Is(err, ErrUnknown) {
		t.Errorf("unknown name: %v", err)
	}
}

// TestLoadScenarioFromFile reads a path and names the scenario after the
// file when the YAML does not.
func TestLoadScenarioFromFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "my-test.yaml")
	if err := os.WriteFile(p, []byte("duration: 5s\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := Load(p)
	if err != nil || s.Name != "my-test" || s.Duration.D() != 5*time.Second {
		t.Fatalf("%+v, %v", s, err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); !errors.Is(err, ErrScenario) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

// TestScenarioErrorsNameTheField feeds broken scenarios and requires each
// error to name the offending field.
func TestScenarioErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct {
		yaml, field string
	}{
		{"mode: sideways", "mode"},
		{"duration: -1s", "duration"},
		{"gateways: {count: 5000}", "gateways.count"},
		{"gateways: {disk_mb: 2}", "gateways.disk_mb"},
		{"gateways: {synchronous: sometimes}", "gateways.synchronous"},
		{"gateways: {ack_mode: never}", "gateways.ack_mode"},
		{"gateways: {count: 100, devices_per_gateway: 5000}", "gateways.devices_per_gateway"},
		{"streams: [{rate: 0}]", "streams[0].rate"},
		{"streams: [{rate: 1, payload_bytes: 10}]", "streams[0].payload_bytes"},
		{"streams: [{rate: 1, priority: 300}]", "streams[0].priority"},
		{"streams: [{rate: 1, share: 1.5}]", "streams[0].share"},
		{"streams: [{rate: 1, topic: 'a/+/b'}]", "streams[0].topic"},
		{"streams: [{rate: 1, topic: 'a//b'}]", "streams[0].topic"},
		{"streams: [{rate: 1, topic: 'a/{device}'}, {rate: 1, topic: 'a/{gateway}'}]", "streams[1].topic"},
		{"sinks: [{name: a}, {name: a}]", "sinks[1].name"},
		{"sinks: [{name: 'a b'}]", "sinks[0].name"},
		{"subscriptions: [{id: x, sink: nowhere}]", "subscriptions[0].sink"},
		{"subscriptions: [{id: x}, {id: x}]", "subscriptions[1].id"},
		{"subscriptions: [{id: 'bad id'}]", "subscriptions[0].id"},
		{"subscriptions: [{id: x, retry: {max_attempts: -1}}]", "subscriptions[0].retry.max_attempts"},
		{"subscriptions: [{id: x, parallelism: 5000}]", "subscriptions[0].parallelism"},
		{"subscriptions: [{id: .x}]", "subscriptions[0].id"},
		{"subscriptions: [{id: x, timeout: 11m}]", "subscriptions[0].timeout"},
		{"subscriptions: [{id: x, retry: {min_backoff: 2s, max_backoff: 1s}}]", "subscriptions[0].retry.min_backoff"},
		{"subscriptions: [{id: x, retry: {max_age: -1s}}]", "subscriptions[0].retry.max_age"},
		{"faults: [{kind: meteor, targets: [gw-1], for: 1s}]", "faults[0].kind"},
		{"faults: [{kind: link-down, targets: [gw-1], at: 40s, for: 1s}]", "faults[0].at"},
		{"faults: [{kind: link-down, targets: [gw-1]}]", "faults[0].for"},
		{"faults: [{kind: link-down, for: 1s}]", "faults[0].targets"},
		{"faults: [{kind: link-down, targets: [gw-9], for: 1s}]", "faults[0].targets[0]"},
		{"faults: [{kind: link-down, targets: ['gw-['], for: 1s}]", "faults[0].targets[0]"},
		{"faults: [{kind: link-down, targets: [cloud], for: 1s}]", "faults[0].targets[0]"},
		{"faults: [{kind: sink-fail, targets: [gw-1], for: 1s}]", "faults[0].targets[0]"},
		{"faults: [{kind: sink-fail, targets: [sink], for: 1s, status: 200}]", "faults[0].status"},
		{"faults: [{kind: link-down, targets: [gw-1], for: 1s, loss: 0.5}]", "faults[0].loss"},
		{"faults: [{kind: link-down, targets: [gw-1], for: 1s, status: 500}]", "faults[0].status"},
		{"faults: [{kind: lossy, targets: [gw-1], for: 1s}]", "faults[0]"},
		{"faults: [{kind: lossy, targets: [gw-1], for: 1s, loss: 2}]", "faults[0].loss"},
		{"faults: [{kind: disk-full, targets: [gw-1], for: 1s}]", "faults[0].kind"},
		{"faults: [{kind: kill, targets: ['*'], at: 1s, for: 5s}, {kind: kill, targets: [gw-2], at: 3s, for: 1s}]", "faults[1]"},
	} {
		_, err := Parse([]byte(tc.yaml))
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field || !errors.Is(err, ErrScenario) {
			t.Errorf("%s:\n  got %v\n  want an error on field %s", tc.yaml, err, tc.field)
		}
	}
	// Decoding errors (unknown keys, wrong types) name the field, from the
	// line yaml.v3 reports.
	for _, tc := range []struct{ yaml, field, want string }{
		{"gateways:\n  count: 2\n  colour: blue\n", "gateways.colour", "not found"},
		{"streams:\n  - rate: 1\n    topics: x\n", "streams[0].topics", "not found"},
		{"duration: 30\n", "duration", "must be a string"},
		{"duration: 30x\n", "duration", "unknown unit"},
		{"gateways:\n  count: many\n", "gateways.count", "cannot unmarshal"},
		{"faults:\n  - kind: kill\n    targets: [cloud, 7s]\n    for: 1\n", "faults[0].for", "must be a string"},
		{"subscriptions:\n  - id: x\n    retry:\n      max_age: [1]\n", "subscriptions[0].retry.max_age", "must be a string"},
	} {
		_, err := Parse([]byte(tc.yaml))
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field || !errors.Is(err, ErrScenario) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want an error on field %s mentioning %q", tc.yaml, err, tc.field, tc.want)
		}
	}
	for _, tc := range []struct{ yaml, want string }{
		{"name: a\n---\nname: b\n", "one YAML document"},
		{"", "empty document"},
		{"[1, 2]", "cannot unmarshal"},
	} {
		_, err := Parse([]byte(tc.yaml))
		if !errors.Is(err, ErrScenario) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want an error mentioning %q", tc.yaml, err, tc.want)
		}
	}
}

// TestScenarioDefaults: an empty mapping is the quickstart-like default.
func TestScenarioDefaults(t *testing.T) {
	s, err := Parse([]byte("{}"))
	if err != nil {
		t.Fatal(err)
	}
	d := s.WithDefaults()
	if d.Mode != InProcess || d.Gateways.Count != 2 || d.Devices() != 50 || len(d.Streams) != 1 || d.Streams[0].Rate != 10 ||
		d.Streams[0].PayloadBytes != 200 || d.Subscriptions[0].Sink != "sink" || d.Subscriptions[0].Parallelism != 16 || d.Duration.D() != 30*time.Second {
		t.Fatalf("defaults: %+v", d)
	}
	if got := (Scenario{TotalDevices: 7, Gateways: Gateways{Count: 3}}).Devices(); got != 7 {
		t.Fatalf("7 devices spread over 3 gateways: %d", got)
	}
}

func TestTopics(t *testing.T) {
	if got := TopicFilter("fleet/{gateway}/{device}/t"); got != "fleet/+/+/t" {
		t.Fatal(got)
	}
	if got := TopicFor("fleet/{gateway}/{device}/t", "dev-1", "gw-2"); got != "fleet/gw-2/dev-1/t" {
		t.Fatal(got)
	}
	sub := Subscription{SubjectPrefix: "fleet/", SubjectSuffix: "/t"}
	if !sub.Matches("fleet/gw-2/dev-1/t") || sub.Matches("fleet/gw-2/dev-1/u") || sub.Matches("x/fleet/t") {
		t.Fatal("subject filter")
	}
}

func TestMatchTargets(t *testing.T) {
	gws := []string{"gw-1", "gw-2", "gw-10", "gw-11"}
	got := MatchTargets(Fault{Kind: LinkDown, Targets: []string{"gw-1?", "gw-1", "gw-10"}}, gws)
	if strings.Join(got, ",") != "gw-10,gw-11,gw-1" {
		t.Fatal(got)
	}
	if got := MatchTargets(Fault{Kind: Kill, Targets: []string{"cloud", "gw-2"}}, gws); strings.Join(got, ",") != "cloud,gw-2" {
		t.Fatal(got)
	}
	if got := MatchTargets(Fault{Kind: SinkHang, Targets: []string{"gw-1"}}, gws); strings.Join(got, ",") != "gw-1" {
		t.Fatal(got) // sink names stand for themselves, even if they look like gateways
	}
}

// FuzzParseScenario: no input panics the decoder or the validator, and an
// accepted scenario has sane defaults.
func FuzzParse(f *testing.F) {
	for _, n := range Names() {
		b, err := Get(n)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("faults: [{kind: kill, targets: ['*'], for: 0s}]"))
	f.Add([]byte("streams: [{rate: .nan}]"))
	f.Add([]byte("gateways: {count: -1}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrScenario) {
				t.Fatalf("error without ErrScenario: %v", err)
			}
			return
		}
		d := s.WithDefaults()
		if d.Devices() < 1 || d.Devices() > maxDevices || len(d.Streams) == 0 || len(d.Subscriptions) == 0 {
			t.Fatalf("accepted a scenario with %d devices, %d streams, %d subscriptions", d.Devices(), len(d.Streams), len(d.Subscriptions))
		}
		for _, st := range d.Streams {
			if !(st.Rate > 0) || st.Rate > maxRate {
				t.Fatalf("accepted rate %v", st.Rate)
			}
		}
		for _, f := range d.Faults {
			if f.At.D() >= d.Duration.D() || len(MatchTargets(f, d.GatewayIDs())) == 0 {
				t.Fatalf("accepted fault %+v", f)
			}
		}
	})
}
