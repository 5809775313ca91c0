package dispatch

import (
	"encoding/json"
	"math/rand/v2"
	"testing"
)

// TestIntervalsModel checks the interval set against a plain set of offsets
// under random operations, and that it stays normalized (sorted, disjoint,
// never adjacent) and survives a JSON round trip.
func TestIntervalsModel(t *testing.T) {
	const universe = 80
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 7))
		var iv intervals
		model := map[uint64]bool{}
		for step := range 60 {
			lo := rng.Uint64N(universe)
			hi := lo + rng.Uint64N(12)
			switch rng.IntN(3) {
			case 0, 1:
				iv = iv.add(lo, hi)
				for o := lo; o < hi; o++ {
					model[o] = true
				}
			case 2:
				iv = iv.remove(lo, hi)
				for o := lo; o < hi; o++ {
					delete(model, o)
				}
			}
			for i, s := range iv {
				if s.lo >= s.hi || (i > 0 && iv[i-1].hi >= s.lo) {
					t.Fatalf("seed %d step %d: not normalized: %v", seed, step, iv)
				}
			}
			if iv.count() != uint64(len(model)) {
				t.Fatalf("seed %d step %d: count %d, model %d (%v)", seed, step, iv.count(), len(model), iv)
			}
			for o := range uint64(universe + 12) {
				if iv.contains(o) != model[o] {
					t.Fatalf("seed %d step %d: contains(%d) = %v, model %v (%v)", seed, step, o, iv.contains(o), model[o], iv)
				}
				n, ok := iv.next(o)
				want, wantOK := uint64(0), false
				for p := o; p < universe+12; p++ {
					if model[p] {
						want, wantOK = p, true
						break
					}
				}
				if ok != wantOK || n != want {
					t.Fatalf("seed %d step %d: next(%d) = %d,%v want %d,%v", seed, step, o, n, ok, want, wantOK)
				}
			}
			// minus: [lo, hi) without the set.
			got := map[uint64]bool{}
			for _, s := range iv.minus(lo, hi) {
				for o := s.lo; o < s.hi; o++ {
					got[o] = true
				}
			}
			for o := lo; o < hi; o++ {
				if got[o] == model[o] {
					t.Fatalf("seed %d step %d: minus(%d,%d) wrong at %d", seed, step, lo, hi, o)
				}
			}
		}
		b, err := json.Marshal(iv)
		if err != nil {
			t.Fatal(err)
		}
		var back intervals
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		back = back.normalize()
		if len(back) != len(iv) || (len(iv) > 0 && back.count() != iv.count()) {
			t.Fatalf("JSON round trip: %s -> %v, want %v", b, back, iv)
		}
	}
}

func TestIntervalsRejectBadJSON(t *testing.T) {
	for _, s := range []string{`[[5,5]]`, `[[6,2]]`, `[[1]]`, `[["a","b"]]`, `[1,2]`} {
		var iv intervals
		if err := json.Unmarshal([]byte(s), &iv); err == nil {
			t.Errorf("%s: decoded to %v, want an error", s, iv)
		}
	}
	var iv intervals
	if err := json.Unmarshal([]byte(`[[4,9],[1,3],[3,5],[20,21]]`), &iv); err != nil {
		t.Fatal(err)
	}
	if iv = iv.normalize(); len(iv) != 2 || iv[0] != (span{1, 9}) || iv[1] != (span{20, 21}) {
		t.Fatalf("normalize: %v", iv)
	}
}
