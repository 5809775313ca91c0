package fleet

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/tributary-io/tributary/simulations/scenarios"
)

// TestTimeline runs a timeline of sink faults against real sinks: each
// fault starts and ends at its time, on its own (an overlapping fault on
// another sink is not held up), and is recorded.
func TestTimeline(t *testing.T) {
	sc := scenarios.Scenario{
		Duration:      scenarios.Duration(time.Minute),
		Sinks:         []scenarios.Sink{{Name: "a"}, {Name: "b"}},
		Subscriptions: []scenarios.Subscription{{ID: "x", Sink: "a"}},
		Faults: []scenarios.Fault{
			{Kind: scenarios.SinkFail, Targets: []string{"a"}, At: scenarios.Duration(50 * time.Millisecond), For: scenarios.Duration(300 * time.Millisecond), Status: 502},
			{Kind: scenarios.SinkHang, Targets: []string{"b"}, At: scenarios.Duration(100 * time.Millisecond), For: scenarios.Duration(100 * time.Millisecond)},
		},
	}
	if err := sc.Validate(); err != nil {
		t.Fatal(err)
	}
	r := &runner{sc: sc.WithDefaults(), active: map[int]bool{}, sinks: map[string]*sinkServer{}}
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
		r.faults = append(r.faults, FaultRecord{Index: i, Kind: f.Kind, Targets: scenarios.MatchTargets(f, nil), StartS: -1, EndS: -1})
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
