package devicestate

import (
	"fmt"
	"testing"

	"github.com/tributary-io/tributary/cloud/commitlog"
)

// Records retention removed before the Store read them are skipped and
// counted; the Store goes on from the oldest retained record.
func TestRetentionSkipsUnreadRecords(t *testing.T) {
	l, err := commitlog.Open(t.TempDir(), commitlog.Options{NoPreallocate: true, SegmentBytes: 2048, RetentionBytes: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s, err := Open(l, Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	// The Store is not running while the log grows and is trimmed.
	for i := range 200 {
		appendValues(t, l, stateValue(t, "gw", "d", fmt.Sprint("e", i), t0, fmt.Sprintf(`{"n":%d}`, i)))
	}
	if err := l.EnforceRetention(); err != nil {
		t.Fatal(err)
	}
	first := l.FirstOffset()
	if first == 0 {
		t.Fatal("retention removed nothing; the test needs it to")
	}
	running(t, s)
	caughtUp(t, s, l)
	m, st := reported(t, s, "gw", "d")
	if m["n"] != 199.0 || st.Version != 200-first {
		t.Fatalf("state %s version %d, want n=199 version %d", st.Reported, st.Version, 200-first)
	}
	if got := s.Stats().SkippedByRetention; got != first {
		t.Fatalf("SkippedByRetention %d, want %d", got, first)
	}
}
