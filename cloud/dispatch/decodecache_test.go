package dispatch

import (
	"testing"

	"github.com/tributary-io/tributary/cloud/commitlog"
)

// TestDecodeCache: a hit returns the event decoded before (shared), and an
// offset that maps to the same slot gets its own event, never its
// neighbour's. Undecodable records are cached as errors.
func TestDecodeCache(t *testing.T) {
	var c decodeCache
	a := commitlog.Record{Offset: 7, Value: encode(t, makeEvent(1, 1))}
	b := commitlog.Record{Offset: 7 + decodeSlots, Value: encode(t, makeEvent(2, 1))}
	e1, err := c.decode(a)
	if err != nil || e1.ID() != "ev-1" {
		t.Fatalf("first decode: %v %v", e1, err)
	}
	if e2, _ := c.decode(a); e2 != e1 {
		t.Fatal("second decode of the same offset did not hit the cache")
	}
	if e3, err := c.decode(b); err != nil || e3.ID() != "ev-2" {
		t.Fatalf("colliding offset: %v %v, want ev-2", e3, err)
	}
	if e4, _ := c.decode(a); e4 == e1 || e4.ID() != "ev-1" {
		t.Fatalf("after eviction: %v (same pointer %v), want a fresh ev-1", e4, e4 == e1)
	}
	bad := commitlog.Record{Offset: 9, Value: []byte{0xff, 0xff}}
	if _, err := c.decode(bad); err == nil {
		t.Fatal("undecodable record decoded")
	}
	if _, err := c.decode(bad); err == nil {
		t.Fatal("undecodable record decoded from the cache")
	}
}
