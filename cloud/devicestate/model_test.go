package devicestate

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"reflect"
	"testing"
	"time"
)

// The Store against a model (every patch merged in log order, counted)
// under random updates, snapshots and crashes: a crash restarts from the
// snapshot file as it was on disk, and the Store must end equal to the
// model, neither missing nor double-applying an update.
func TestStoreAgainstModel(t *testing.T) {
	for seed := range uint64(4) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { storeModelRun(t, seed) })
	}
}

func storeModelRun(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 7))
	l := openLog(t, t.TempDir())
	dir := t.TempDir()
	s, err := Open(l, Options{Dir: dir, SnapshotInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	stop := running(t, s)
	model := map[string]any{}    // device -> reported (decoded JSON)
	versions := map[string]int{} // device -> updates
	devices := []string{"a", "b", "c"}
	keys := []string{"x", "y", "z"}
	randValue := func(depth int) any {
		switch rng.IntN(5) {
		case 0:
			return nil
		case 1:
			return float64(rng.IntN(100))
		case 2:
			return fmt.Sprint("s", rng.IntN(10))
		case 3:
			if depth < 2 {
				m := map[string]any{}
				for _, k := range keys[:rng.IntN(len(keys))+1] {
					m[k] = float64(rng.IntN(3))
				}
				if rng.IntN(2) == 0 {
					m[keys[rng.IntN(len(keys))]] = nil
				}
				return m
			}
			return true
		default:
			return []any{float64(rng.IntN(3)), nil}
		}
	}
	for i := range 150 {
		switch op := rng.IntN(10); {
		case op < 7: // an update
			dev := devices[rng.IntN(len(devices))]
			patch := map[string]any{}
			for range rng.IntN(3) + 1 {
				patch[keys[rng.IntN(len(keys))]] = randValue(0)
			}
			b, _ := json.Marshal(patch)
			appendValues(t, l, stateValue(t, "gw", dev, fmt.Sprint("e", i), t0, string(b)))
			var p any
			_ = json.Unmarshal(b, &p) // a fresh copy for the model
			prev, ok := model[dev]
			if !ok {
				prev = map[string]any{}
			}
			model[dev] = mergePatch(prev, p)
			versions[dev]++
		case op < 9: // a snapshot
			caughtUp(t, s, l)
			if err := s.Snapshot(); err != nil {
				t.Fatal(err)
			}
		default: // a crash: a new Store from the snapshot on disk, the old one abandoned
			crashDir := t.TempDir()
			if b, err := os.ReadFile(snapshotPath(dir)); err == nil {
				if err := os.WriteFile(snapshotPath(crashDir), b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			stop()
			dir = crashDir
			if s, err = Open(l, Options{Dir: dir, SnapshotInterval: time.Hour}); err != nil {
				t.Fatal(err)
			}
			stop = running(t, s)
		}
	}
	caughtUp(t, s, l)
	for _, dev := range devices {
		want, ok := model[dev]
		st, err := s.Get("gw", dev)
		if !ok {
			if err == nil {
				t.Fatalf("device %s has a state but was never updated", dev)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		var got any
		if err := json.Unmarshal(st.Reported, &got); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) || st.Version != uint64(versions[dev]) {
			t.Fatalf("device %s: %s version %d, model %v version %d", dev, st.Reported, st.Version, want, versions[dev])
		}
	}
}
