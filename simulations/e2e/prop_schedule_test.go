package e2e_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tributary-io/tributary/sync/faultnet"
)

// faultKind is one thing a fault schedule does.
type faultKind int

const (
	faultImpair     faultKind = iota // set loss, duplication, reorder, delay and jitter both ways
	faultClear                       // forward untouched
	faultPartition                   // blackhole both ways for Hold
	faultRebind                      // the relay's NAT mapping changes
	faultOneWay                      // one direction loses everything until the next impairment step
	faultKillEdge                    // SIGKILL the gateway
	faultStartEdge                   // start it again on the same data
	faultKillCloud                   // SIGKILL the cloud
	faultStartCloud                  // start it again on the same data and ports
)

// fault is one step of a schedule, At after the schedule starts.
type fault struct {
	At       time.Duration
	Kind     faultKind
	Up, Down faultnet.Impairment // faultImpair
	Hold     time.Duration       // faultPartition
}

func (f fault) String() string {
	at := f.At.Truncate(time.Millisecond)
	switch f.Kind {
	case faultImpair:
		return fmt.Sprintf("%v impair up{%s} down{%s}", at, impString(f.Up), impString(f.Down))
	case faultClear:
		return fmt.Sprintf("%v clear", at)
	case faultPartition:
		return fmt.Sprintf("%v partition %v", at, f.Hold.Truncate(time.Millisecond))
	case faultRebind:
		return fmt.Sprintf("%v rebind", at)
	case faultOneWay:
		if f.Up.Loss == 1 {
			return fmt.Sprintf("%v one-way partition: gateway->cloud lost", at)
		}
		return fmt.Sprintf("%v one-way partition: cloud->gateway lost", at)
	case faultKillEdge:
		return fmt.Sprintf("%v SIGKILL edge", at)
	case faultStartEdge:
		return fmt.Sprintf("%v start edge", at)
	case faultKillCloud:
		return fmt.Sprintf("%v SIGKILL cloud", at)
	case faultStartCloud:
		return fmt.Sprintf("%v start cloud", at)
	}
	return fmt.Sprintf("%v fault(%d)", at, int(f.Kind))
}

func impString(i faultnet.Impairment) string {
	return fmt.Sprintf("loss=%.0f%% dup=%.0f%% reorder=%.0f%% delay=%v jitter=%v",
		100*i.Loss, 100*i.Duplicate, 100*i.Reorder, i.Delay, i.Jitter)
}

// scheduleString lists a schedule one step a line.
func scheduleString(s []fault) string {
	var b strings.Builder
	for _, f := range s {
		b.WriteString("  " + f.String() + "\n")
	}
	return b.String()
}

// randomImpairment is loss up to 20 %, duplication up to 10 %, reordering
// up to 30 % (held 2-10 ms), delay up to 10 ms and jitter up to 10 ms.
func randomImpairment(r *rand.Rand) faultnet.Impairment {
	return faultnet.Impairment{
		Loss:         0.2 * r.Float64(),
		Duplicate:    0.1 * r.Float64(),
		Reorder:      0.3 * r.Float64(),
		ReorderDelay: time.Duration(2+r.IntN(9)) * time.Millisecond,
		Delay:        time.Duration(r.IntN(11)) * time.Millisecond,
		Jitter:       time.Duration(r.IntN(11)) * time.Millisecond,
	}
}

// makeSchedule draws a fault schedule lasting about span from seed. It is a
// pure function of its arguments, so a seed names a schedule. Every
// schedule kills the gateway and the cloud at least once each and holds
// at least one partition and one impairment; the rest (more impairments
// and partitions, one-way partitions, NAT rebinding, kills) is drawn freely. A
// killed process is started again 0-1.5 s later; the other side may be
// killed meanwhile. The schedule ends with everything up and untouched.
func makeSchedule(seed uint64, span time.Duration) []fault {
	r := rand.New(rand.NewPCG(seed, seed^0x5eed))
	var s []fault
	edgeDownUntil, cloudDownUntil := time.Duration(-1), time.Duration(-1)
	kill := func(at time.Duration, edge bool) {
		down := time.Duration(r.IntN(1500)) * time.Millisecond
		if edge {
			s = append(s, fault{At: at, Kind: faultKillEdge}, fault{At: at + down, Kind: faultStartEdge})
			edgeDownUntil = at + down
		} else {
			s = append(s, fault{At: at, Kind: faultKillCloud}, fault{At: at + down, Kind: faultStartCloud})
			cloudDownUntil = at + down
		}
	}
	// The compulsory steps at random times in the first 80 %.
	point := func() time.Duration { return time.Duration(r.Int64N(int64(span) * 8 / 10)) }
	s = append(s, fault{At: point(), Kind: faultImpair, Up: randomImpairment(r), Down: randomImpairment(r)})
	s = append(s, fault{At: point(), Kind: faultPartition, Hold: time.Duration(300+r.IntN(2700)) * time.Millisecond})
	kill(point(), true)
	kill(point(), false)
	// Free steps every 200-1200 ms.
	for at := time.Duration(r.IntN(500)) * time.Millisecond; at < span; at += time.Duration(200+r.IntN(1000)) * time.Millisecond {
		switch x := r.IntN(100); {
		case x < 30:
			s = append(s, fault{At: at, Kind: faultImpair, Up: randomImpairment(r), Down: randomImpairment(r)})
		case x < 42:
			s = append(s, fault{At: at, Kind: faultClear})
		case x < 56:
			s = append(s, fault{At: at, Kind: faultPartition, Hold: time.Duration(300+r.IntN(2700)) * time.Millisecond})
		case x < 62:
			s = append(s, fault{At: at, Kind: faultRebind})
		case x < 74:
			f := fault{At: at, Kind: faultOneWay}
			if r.IntN(2) == 0 {
				f.Up.Loss = 1
			} else {
				f.Down.Loss = 1
			}
			s = append(s, f)
		case x < 86:
			if at > edgeDownUntil {
				kill(at, true)
			}
		default:
			if at > cloudDownUntil {
				kill(at, false)
			}
		}
	}
	slices.SortStableFunc(s, func(a, b fault) int { return int(a.At - b.At) })
	// Kills drawn at different times may overlap: a kill of a process that
	// is down is dropped, and so is a start of one that is up (a process
	// killed twice over comes back at the first start due).
	var out []fault
	edgeUp, cloudUp := true, true
	for _, f := range s {
		up := &edgeUp
		if f.Kind == faultKillCloud || f.Kind == faultStartCloud {
			up = &cloudUp
		}
		switch f.Kind {
		case faultKillEdge, faultKillCloud:
			if !*up {
				continue
			}
			*up = false
		case faultStartEdge, faultStartCloud:
			if *up {
				continue
			}
			*up = true
		}
		out = append(out, f)
	}
	end := out[len(out)-1].At
	if !edgeUp {
		out = append(out, fault{At: end, Kind: faultStartEdge})
	}
	if !cloudUp {
		out = append(out, fault{At: end, Kind: faultStartCloud})
	}
	return append(out, fault{At: end, Kind: faultClear})
}

// TestMakeSchedule checks the schedule generator itself, for many seeds: a
// seed always gives the same schedule; steps are in time order; each
// process is killed at least once and alternates kill/start, ending up; at
// least one partition and one impairment; the last step clears the relay.
func TestMakeSchedule(t *testing.T) {
	for seed := uint64(1); seed <= 500; seed++ {
		s := makeSchedule(seed, 8*time.Second)
		if again := makeSchedule(seed, 8*time.Second); !slices.Equal(s, again) {
			t.Fatalf("seed %d: two different schedules", seed)
		}
		count := map[faultKind]int{}
		up := map[faultKind]bool{faultKillEdge: true, faultKillCloud: true}
		for i, f := range s {
			if i > 0 && f.At < s[i-1].At {
				t.Fatalf("seed %d: step %d (%v) before step %d", seed, i, f, i-1)
			}
			count[f.Kind]++
			switch f.Kind {
			case faultKillEdge, faultKillCloud:
				if !up[f.Kind] {
					t.Fatalf("seed %d: %v while it is down:\n%s", seed, f, scheduleString(s))
				}
				up[f.Kind] = false
			case faultStartEdge, faultStartCloud:
				k := faultKillEdge
				if f.Kind == faultStartCloud {
					k = faultKillCloud
				}
				if up[k] {
					t.Fatalf("seed %d: %v while it is up:\n%s", seed, f, scheduleString(s))
				}
				up[k] = true
			case faultImpair:
				for _, imp := range []faultnet.Impairment{f.Up, f.Down} {
					if imp.Loss < 0 || imp.Loss > 0.2 || imp.Duplicate > 0.1 || imp.Reorder > 0.3 {
						t.Fatalf("seed %d: impairment out of bounds: %v", seed, f)
					}
				}
			}
		}
		if !up[faultKillEdge] || !up[faultKillCloud] {
			t.Fatalf("seed %d: a process is left down:\n%s", seed, scheduleString(s))
		}
		for _, k := range []faultKind{faultKillEdge, faultKillCloud, faultPartition, faultImpair} {
			if count[k] == 0 {
				t.Fatalf("seed %d: no step of kind %d:\n%s", seed, k, scheduleString(s))
			}
		}
		if s[len(s)-1].Kind != faultClear {
			t.Fatalf("seed %d: the schedule does not end clear:\n%s", seed, scheduleString(s))
		}
	}
}
