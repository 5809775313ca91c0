package fleet

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tributary-io/tributary/simulations/scenarios"
	"github.com/tributary-io/tributary/sync/faultnet"
)

// action is one step of the fault timeline: a fault starting or ending.
type action struct {
	at    time.Duration // from the start of publishing
	fault int
	start bool
}

// FaultRecord is one fault as it happened, for the report.
type FaultRecord struct {
	Index   int                 `json:"index"`
	Kind    scenarios.FaultKind `json:"kind"`
	Targets []string            `json:"targets"`
	// PlannedAtS and PlannedEndS are the timeline's times; StartS and EndS
	// when the simulator applied them (-1 if it did not), all in seconds
	// from the start of publishing.
	PlannedAtS  float64 `json:"planned_at_s"`
	PlannedEndS float64 `json:"planned_end_s"`
	StartS      float64 `json:"start_s"`
	EndS        float64 `json:"end_s"`
	// Detail says what was done ("SIGKILL", "ballast 27.0 MiB", …).
	Detail string `json:"detail,omitempty"`
	// Error is why applying it failed, if it did.
	Error string `json:"error,omitempty"`
}

// Label is a short description: "link-down gw-1, gw-2".
func (f FaultRecord) Label() string {
	t := f.Targets
	if len(t) > 4 {
		t = append(slices.Clone(t[:3]), fmt.Sprintf("… (%d)", len(f.Targets)))
	}
	return string(f.Kind) + " " + strings.Join(t, ", ")
}

// runTimeline applies the scenario's faults at their times from start, and
// returns when every fault ended or ctx ended. Each fault runs on its own
// goroutine, so a slow step (a restart) does not delay the others; a fault
// whose start was late ends at its planned time all the same (the report
// keeps the actual times). A fault that cannot be applied is recorded; a
// failed restart also fails the run.
func (r *runner) runTimeline(ctx context.Context, start time.Time) {
	var wg sync.WaitGroup
	for i := range r.sc.Faults {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f := r.sc.Faults[i]
			for _, a := range []action{{f.At.D(), i, true}, {f.End(), i, false}} {
				if !r.step(ctx, start, a) {
					return
				}
			}
		}()
	}
	wg.Wait()
}

// step waits for a's time and applies it. It reports whether the fault's
// timeline should go on.
func (r *runner) step(ctx context.Context, start time.Time, a action) bool {
	t := time.NewTimer(time.Until(start.Add(a.at)))
	select {
	case <-ctx.Done():
		t.Stop()
		return false
	case <-t.C:
	}
	err := r.apply(ctx, a)
	r.mu.Lock()
	rec := &r.faults[a.fault]
	now := time.Since(start).Seconds()
	if a.start {
		rec.StartS = now
		r.active[a.fault] = true
	} else {
		rec.EndS = now
		delete(r.active, a.fault)
	}
	if err != nil {
		rec.Error = strings.TrimPrefix(rec.Error+"; "+err.Error(), "; ")
	}
	kind := rec.Kind
	r.mu.Unlock()
	if err != nil {
		r.log.Error("fault", "kind", kind, "start", a.start, "err", err)
		if kind == scenarios.Kill && !a.start {
			r.fail(fmt.Errorf("fault %d (%s): restart: %w", a.fault, kind, err))
			return false
		}
	}
	return true
}

// apply starts or ends one fault on every target.
func (r *runner) apply(ctx context.Context, a action) error {
	f := r.sc.Faults[a.fault]
	targets := r.faults[a.fault].Targets
	var errs []string
	var detail []string
	for _, t := range targets {
		var err error
		switch f.Kind {
		case scenarios.LinkDown:
			relay := r.relays[r.gwIndex[t]]
			if a.start {
				relay.Blackhole(f.For.D())
			} else {
				relay.Blackhole(0)
			}
		case scenarios.Lossy:
			relay := r.relays[r.gwIndex[t]]
			if a.start {
				imp := faultnet.Impairment{Loss: f.Loss, Delay: f.Delay.D(), Jitter: f.Jitter.D(), Duplicate: f.Duplicate, Reorder: f.Reorder}
				relay.SetImpairment(imp, imp)
			} else {
				relay.SetImpairment(faultnet.Impairment{}, faultnet.Impairment{})
			}
		case scenarios.Kill:
			var node interface {
				Kill() error
				Start(context.Context) error
			}
			if t == scenarios.CloudTarget {
				node = r.cloud
			} else {
				node = r.edges[r.gwIndex[t]]
			}
			if a.start {
				err = node.Kill()
				if r.sc.Mode == scenarios.Processes {
					detail = appendOnce(detail, "SIGKILL")
				} else {
					detail = appendOnce(detail, "abrupt close in process")
				}
			} else {
				err = node.Start(ctx)
			}
		case scenarios.DiskFull:
			dir := r.gwDirs[r.gwIndex[t]]
			if a.start {
				var n int64
				n, err = fillDisk(dir)
				detail = append(detail, fmt.Sprintf("%s: ballast %.1f MiB", t, float64(n)/(1<<20)))
			} else {
				err = freeDisk(dir)
			}
		case scenarios.SinkFail:
			if a.start {
				r.sinks[t].FailWith(f.Status)
				detail = appendOnce(detail, fmt.Sprintf("HTTP %d", f.Status))
			} else {
				r.sinks[t].FailWith(0)
			}
		case scenarios.SinkHang:
			if a.start {
				r.sinks[t].Hang()
			} else {
				r.sinks[t].Unhang()
			}
		}
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", t, err))
		}
	}
	if len(detail) > 0 {
		r.mu.Lock()
		r.faults[a.fault].Detail = strings.Join(detail, "; ")
		r.mu.Unlock()
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

func appendOnce(s []string, v string) []string {
	if slices.Contains(s, v) {
		return s
	}
	return append(s, v)
}
