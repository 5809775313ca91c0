package broker

import (
	"math/rand/v2"
	"sync"
	"testing"
)

// TestDeliveryMarksModel drives deliveryMarks and a plain model (a set of
// undelivered seqs) with the same random events: commits in seq order with
// some out-of-order callbacks within a group, deliveries in any order, and
// seqs that need no delivery. floor must always be the model's answer.
func TestDeliveryMarksModel(t *testing.T) {
	for seed := range uint64(30) {
		rng := rand.New(rand.NewPCG(seed, 99))
		base := uint64(rng.IntN(1000))
		m := newDeliveryMarks(base)
		pending := map[uint64]bool{}
		maxSeen := base
		next := base + 1
		var undelivered []uint64
		for step := range 2000 {
			switch r := rng.IntN(10); {
			case r < 3: // a group commits: its callbacks, maybe out of order
				n := 1 + rng.IntN(4)
				group := make([]uint64, n)
				for i := range group {
					group[i] = next
					next++
				}
				if rng.IntN(3) == 0 {
					rng.Shuffle(n, func(i, j int) { group[i], group[j] = group[j], group[i] })
				}
				for _, seq := range group {
					if rng.IntN(5) == 0 {
						m.seen(seq) // QoS 0 or a will: delivered already
					} else {
						m.committed(seq)
						pending[seq] = true
						undelivered = append(undelivered, seq)
					}
					maxSeen = max(maxSeen, seq)
				}
			case r < 9 && len(undelivered) > 0: // some delivery completes
				i := rng.IntN(len(undelivered))
				if rng.IntN(2) == 0 {
					i = 0 // mostly in order
				}
				seq := undelivered[i]
				undelivered = append(undelivered[:i], undelivered[i+1:]...)
				m.delivered(seq)
				delete(pending, seq)
			default:
				m.delivered(next + 100) // unknown seqs are ignored
			}
			want := maxSeen
			for seq := range pending {
				want = min(want, seq-1)
			}
			if got := m.floor(); got != want {
				t.Fatalf("seed %d step %d: floor %d, want %d", seed, step, got, want)
			}
		}
	}
}

// TestDeliveryMarksNil: a broker without a marker calls the methods on nil.
func TestDeliveryMarksNil(t *testing.T) {
	var m *deliveryMarks
	m.committed(1)
	m.seen(2)
	m.delivered(1)
}

// TestDeliveryMarksConcurrent runs committers and deliverers at once (for
// -race) and checks the floor reaches the last seq.
func TestDeliveryMarksConcurrent(t *testing.T) {
	m := newDeliveryMarks(0)
	const n = 20000
	ch := make(chan uint64, 64)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := range ch {
				m.delivered(seq)
			}
		}()
	}
	for seq := uint64(1); seq <= n; seq++ {
		m.committed(seq)
		ch <- seq
	}
	close(ch)
	wg.Wait()
	if f := m.floor(); f != n {
		t.Fatalf("floor %d, want %d", f, n)
	}
}
