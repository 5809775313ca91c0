package dispatch

import (
	"encoding/json"
	"fmt"
	"slices"
)

// intervals is a set of log offsets kept as sorted, disjoint, non-adjacent
// half-open ranges [lo, hi). A redrive of "every dead letter" or of a range
// is then one entry however many offsets it covers, and redriving dead
// letters one by one in order merges back into a single range.
//
// It is a plain value: the redriver guards it with its mutex.
type intervals []span

// span is [lo, hi): lo included, hi excluded.
type span struct{ lo, hi uint64 }

// MarshalJSON writes [lo, hi) as a two-element array.
func (s span) MarshalJSON() ([]byte, error) { return json.Marshal([2]uint64{s.lo, s.hi}) }

// UnmarshalJSON reads a two-element array with lo < hi.
func (s *span) UnmarshalJSON(b []byte) error {
	var v [2]uint64
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	if v[0] >= v[1] {
		return fmt.Errorf("empty or inverted offset range [%d, %d)", v[0], v[1])
	}
	s.lo, s.hi = v[0], v[1]
	return nil
}

// normalize sorts and merges spans read from a file.
func (iv intervals) normalize() intervals {
	slices.SortFunc(iv, func(a, b span) int {
		switch {
		case a.lo < b.lo:
			return -1
		case a.lo > b.lo:
			return 1
		}
		return 0
	})
	out := iv[:0]
	for _, s := range iv {
		if n := len(out); n > 0 && s.lo <= out[n-1].hi {
			out[n-1].hi = max(out[n-1].hi, s.hi)
			continue
		}
		out = append(out, s)
	}
	return out
}

// search returns the index of the first span whose hi is above off.
func (iv intervals) search(off uint64) int {
	i, _ := slices.BinarySearchFunc(iv, off, func(s span, off uint64) int {
		if s.hi <= off {
			return -1
		}
		return 1
	})
	return i
}

// contains reports whether off is in the set.
func (iv intervals) contains(off uint64) bool {
	i := iv.search(off)
	return i < len(iv) && iv[i].lo <= off
}

// add inserts [lo, hi) and returns the set.
func (iv intervals) add(lo, hi uint64) intervals {
	if lo >= hi {
		return iv
	}
	i := iv.search(lo)
	if i > 0 && iv[i-1].hi == lo { // adjacent on the left
		i--
	}
	j := i
	for j < len(iv) && iv[j].lo <= hi {
		lo, hi = min(lo, iv[j].lo), max(hi, iv[j].hi)
		j++
	}
	return slices.Replace(iv, i, j, span{lo, hi})
}

// remove deletes [lo, hi) and returns the set.
func (iv intervals) remove(lo, hi uint64) intervals {
	if lo >= hi {
		return iv
	}
	i := iv.search(lo)
	var keep []span
	j := i
	for ; j < len(iv) && iv[j].lo < hi; j++ {
		if iv[j].lo < lo {
			keep = append(keep, span{iv[j].lo, lo})
		}
		if iv[j].hi > hi {
			keep = append(keep, span{hi, iv[j].hi})
		}
	}
	return slices.Replace(iv, i, j, keep...)
}

// minus returns the parts of [lo, hi) not in the set.
func (iv intervals) minus(lo, hi uint64) intervals {
	var out intervals
	for i := iv.search(lo); lo < hi; i++ {
		if i >= len(iv) || iv[i].lo >= hi {
			out = append(out, span{lo, hi})
			break
		}
		if iv[i].lo > lo {
			out = append(out, span{lo, iv[i].lo})
		}
		lo = iv[i].hi
	}
	return out
}

// next returns the smallest offset in the set at or above off.
func (iv intervals) next(off uint64) (uint64, bool) {
	i := iv.search(off)
	if i == len(iv) {
		return 0, false
	}
	return max(off, iv[i].lo), true
}

// count is the number of offsets in the set.
func (iv intervals) count() uint64 {
	var n uint64
	for _, s := range iv {
		n += s.hi - s.lo
	}
	return n
}

// clone returns a copy that shares nothing with iv.
func (iv intervals) clone() intervals { return slices.Clone(iv) }
