package fleet

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/tributary-io/tributary/simulations/scenarios"
)

// TestShippedScenarios loads every shipped scenario: each validates, is
// named after its file, says what it rehearses, and the seven are
// all there.
func TestShippedScenarios(t *testing.T) {
	names := ShippedScenarios()
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
		s, err := LoadScenario(n)
		if err != nil {
			t.Errorf("%s: %v", n, err)
			continue
		}
		if s.Name != n || s.Description == "" {
			t.Errorf("%s: name %q, description %q", n, s.Name, s.Description)
		}
	}
	if s, _ := LoadScenario("fleet-10k"); s.Devices() != 10000 {
		t.Errorf("fleet-10k has %d devices", s.Devices())
	}
	if _, err := LoadScenario("no-such-scenario"); !errors.Is(err, ErrScenario) || !errors.Is(err, scenarios.ErrUnknown) {
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
	s, err := LoadScenario(p)
	if err != nil || s.Name != "my-test" || s.Duration.D() != 5*time.Second {
		t.Fatalf("%+v, %v", s, err)
	}
	if _, err := LoadScenario(filepath.Join(t.TempDir(), "missing.yaml")); !errors.Is(err, ErrScenario) || !errors.Is(err, os.ErrNotExist) {
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
		_, err := ParseScenario([]byte(tc.yaml))
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
		{"duration: 30\n", "duration", "missing unit"},
		{"gateways:\n  count: many\n", "gateways.count", "cannot unmarshal"},
		{"faults:\n  - kind: kill\n    targets: [cloud, 7s]\n    for: 1\n", "faults[0].for", "missing unit"},
	} {
		_, err := ParseScenario([]byte(tc.yaml))
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
		_, err := ParseScenario([]byte(tc.yaml))
		if !errors.Is(err, ErrScenario) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want an error mentioning %q", tc.yaml, err, tc.want)
		}
	}
}

// TestScenarioDefaults: an empty mapping is the quickstart-like default.
func TestScenarioDefaults(t *testing.T) {
	s, err := ParseScenario([]byte("{}"))
	if err != nil {
		t.Fatal(err)
	}
	d := s.withDefaults()
	if d.Mode != InProcess || d.Gateways.Count != 2 || d.Devices() != 50 || len(d.Streams) != 1 || d.Streams[0].Rate != 10 ||
		d.Streams[0].PayloadBytes != 200 || d.Subscriptions[0].Sink != "sink" || d.Subscriptions[0].Parallelism != 16 || d.Duration.D() != 30*time.Second {
		t.Fatalf("defaults: %+v", d)
	}
	if got := (Options{Devices: 7, Gateways: 3}).Scenario().Devices(); got != 7 {
		t.Fatalf("quickstart with 7 devices has %d", got)
	}
}

func TestTopics(t *testing.T) {
	if got := topicFilter("fleet/{gateway}/{device}/t"); got != "fleet/+/+/t" {
		t.Fatal(got)
	}
	if got := topicFor("fleet/{gateway}/{device}/t", "dev-1", "gw-2"); got != "fleet/gw-2/dev-1/t" {
		t.Fatal(got)
	}
	sub := Subscription{SubjectPrefix: "fleet/", SubjectSuffix: "/t"}
	if !sub.matches("fleet/gw-2/dev-1/t") || sub.matches("fleet/gw-2/dev-1/u") || sub.matches("x/fleet/t") {
		t.Fatal("subject filter")
	}
}

// TestTimeline runs a timeline of sink faults against real sinks: each
// fault starts and ends at its time, on its own (an overlapping fault on
// another sink is not held up), and is recorded.
func TestTimeline(t *testing.T) {
	sc := Scenario{
		Duration:      Duration(time.Minute),
		Sinks:         []Sink{{Name: "a"}, {Name: "b"}},
		Subscriptions: []Subscription{{ID: "x", Sink: "a"}},
		Faults: []Fault{
			{Kind: SinkFail, Targets: []string{"a"}, At: Duration(50 * time.Millisecond), For: Duration(300 * time.Millisecond), Status: 502},
			{Kind: SinkHang, Targets: []string{"b"}, At: Duration(100 * time.Millisecond), For: Duration(100 * time.Millisecond)},
		},
	}
	if err := sc.Validate(); err != nil {
		t.Fatal(err)
	}
	r := &runner{sc: sc.withDefaults(), active: map[int]bool{}, sinks: map[string]*sinkServer{}}
	r.log = slog.New(slog.DiscardHandler)
	for _, name := range []string{"a", "b"} {
		s, err := startSink(name, nil, func(int, *event.Event, time.Time) {})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		r.sinks[name] = s
	}
	for i, f := range r.sc.Faults {
		r.faults = append(r.faults, FaultRecord{Index: i, Kind: f.Kind, Targets: matchTargets(f, nil), StartS: -1, EndS: -1})
	}
	start := time.Now()
	done := make(chan struct{})
	go func() { defer close(done); r.runTimeline(context.Background(), start) }()
	// While both are on: a fails, b hangs.
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.mu.Lock()
		both := len(r.active) == 2
		r.mu.Unlock()
		if both {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the two faults were never on together")
		}
		time.Sleep(time.Millisecond)
	}
	a, b := r.sinks["a"], r.sinks["b"]
	a.mu.Lock()
	status := a.status
	a.mu.Unlock()
	b.mu.Lock()
	hanging := b.hang != nil
	b.mu.Unlock()
	if status != 502 || !hanging {
		t.Fatalf("sink a status %d, sink b hanging %v", status, hanging)
	}
	<-done
	if len(r.active) != 0 || a.status != 0 || b.hang != nil {
		t.Fatalf("faults still on after the timeline: active %v", r.active)
	}
	for i, f := range r.faults {
		planned := r.sc.Faults[i]
		if f.StartS < planned.At.D().Seconds() || f.EndS < planned.End().Seconds() || f.Error != "" {
			t.Fatalf("fault %d recorded %+v, planned %v–%v", i, f, planned.At, planned.End())
		}
	}
	if r.faults[1].EndS > r.faults[0].EndS {
		t.Fatalf("the hang ended after the failure although planned before it: %+v", r.faults)
	}
}

func TestMatchTargets(t *testing.T) {
	gws := []string{"gw-1", "gw-2", "gw-10", "gw-11"}
	got := matchTargets(Fault{Kind: LinkDown, Targets: []string{"gw-1?", "gw-1", "gw-10"}}, gws)
	if strings.Join(got, ",") != "gw-10,gw-11,gw-1" {
		t.Fatal(got)
	}
	if got := matchTargets(Fault{Kind: Kill, Targets: []string{"cloud", "gw-2"}}, gws); strings.Join(got, ",") != "cloud,gw-2" {
		t.Fatal(got)
	}
	if got := matchTargets(Fault{Kind: SinkHang, Targets: []string{"gw-1"}}, gws); strings.Join(got, ",") != "gw-1" {
		t.Fatal(got) // sink names stand for themselves, even if they look like gateways
	}
}

// FuzzParseScenario: no input panics the decoder or the validator, and an
// accepted scenario has sane defaults.
func FuzzParseScenario(f *testing.F) {
	for _, n := range ShippedScenarios() {
		b, err := scenarios.Get(n)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("faults: [{kind: kill, targets: ['*'], for: 0s}]"))
	f.Add([]byte("streams: [{rate: .nan}]"))
	f.Add([]byte("gateways: {count: -1}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParseScenario(data)
		if err != nil {
			if !errors.Is(err, ErrScenario) {
				t.Fatalf("error without ErrScenario: %v", err)
			}
			return
		}
		d := s.withDefaults()
		if d.Devices() < 1 || d.Devices() > maxDevices || len(d.Streams) == 0 || len(d.Subscriptions) == 0 {
			t.Fatalf("accepted a scenario with %d devices, %d streams, %d subscriptions", d.Devices(), len(d.Streams), len(d.Subscriptions))
		}
		for _, st := range d.Streams {
			if !(st.Rate > 0) || st.Rate > maxRate {
				t.Fatalf("accepted rate %v", st.Rate)
			}
		}
		for _, f := range d.Faults {
			if f.At.D() >= d.Duration.D() || len(matchTargets(f, d.GatewayIDs())) == 0 {
				t.Fatalf("accepted fault %+v", f)
			}
		}
	})
}
