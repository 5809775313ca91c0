package devicestate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	format "github.com/cloudevents/sdk-go/binding/format/protobuf/v2"
	"github.com/cloudevents/sdk-go/v2/event"
	"google.golang.org/protobuf/proto"

	"github.com/tributary-io/tributary/cloud/commitlog"
)

var t0 = time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)

// stateValue is a log value as a gateway makes it of a state publish.
func stateValue(t testing.TB, gw, dev, id string, at time.Time, patch string) []byte {
	t.Helper()
	ev := event.New()
	ev.SetID(id)
	ev.SetType(EventType)
	ev.SetSource("/gateways/" + gw + "/devices/" + dev)
	ev.SetSubject("$tributary/state/" + dev)
	ev.SetTime(at)
	ev.SetDataContentType("application/json")
	ev.DataEncoded = []byte(patch)
	pe, err := format.ToProto(&ev)
	if err != nil {
		t.Fatal(err)
	}
	b, err := proto.Marshal(pe)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func openLog(t *testing.T, dir string) *commitlog.FileLog {
	t.Helper()
	l, err := commitlog.Open(dir, commitlog.Options{NoPreallocate: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func appendValues(t *testing.T, l commitlog.Log, vals ...[]byte) {
	t.Helper()
	recs := make([]commitlog.Record, len(vals))
	for i, v := range vals {
		recs[i] = commitlog.Record{Topic: "t", Value: v}
	}
	if _, err := l.Append(context.Background(), recs); err != nil {
		t.Fatal(err)
	}
}

// running starts Run and returns a stop function that ends it and returns
// its error.
func running(t *testing.T, s *Store) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- s.Run(ctx) }()
	stopped := false
	stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		return <-errc
	}
	t.Cleanup(func() { stop() })
	return stop
}

// caughtUp waits until s reflects everything in l.
func caughtUp(t *testing.T, s *Store, l commitlog.Log) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.WaitApplied(ctx, l.NextOffset()); err != nil {
		t.Fatalf("store at %d, log at %d: %v", s.Stats().Next, l.NextOffset(), err)
	}
}

func reported(t *testing.T, s *Store, gw, dev string) (map[string]any, State) {
	t.Helper()
	st, err := s.Get(gw, dev)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(st.Reported, &m); err != nil {
		t.Fatal(err)
	}
	return m, st
}

func TestMergesUpdates(t *testing.T) {
	l := openLog(t, t.TempDir())
	s, err := Open(l, Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	running(t, s)
	appendValues(t, l,
		stateValue(t, "gw1", "d1", "e1", t0, `{"fw":"1.0","net":{"rssi":-60,"ssid":"x"},"big":12345678901234567890}`),
		[]byte("telemetry that is not even protobuf"),
		stateValue(t, "gw1", "d2", "e2", t0.Add(time.Second), `{"on":true}`),
		stateValue(t, "gw1", "d1", "e3", t0.Add(2*time.Second), `{"fw":null,"net":{"ssid":null,"ch":6},"list":[1,null]}`),
		stateValue(t, "gw2", "d1", "e4", t0.Add(3*time.Second), `{"other":"gateway"}`),
	)
	caughtUp(t, s, l)
	m, st := reported(t, s, "gw1", "d1")
	want := map[string]any{"net": map[string]any{"rssi": -60.0, "ch": 6.0}, "big": 12345678901234567890.0, "list": []any{1.0, nil}}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("reported %s, want %v", st.Reported, want)
	}
	// Numbers are kept as sent, not rounded through float64.
	if !json.Valid(st.Reported) || !strings.Contains(string(st.Reported), `"big":12345678901234567890`) {
		t.Fatalf("reported %s lost the big number's digits", st.Reported)
	}
	if st.Version != 2 || st.LastEventID != "e3" || !st.LastUpdated.Equal(t0.Add(2*time.Second)) || st.LastOffset != 3 {
		t.Fatalf("state %+v", st)
	}
	if _, err := s.Get("gw1", "nope"); !errors.Is(err, ErrUnknownDevice) {
		t.Fatalf("unknown device: %v", err)
	}
	if _, err := s.Get("gw3", "d1"); !errors.Is(err, ErrUnknownDevice) {
		t.Fatalf("unknown gateway: %v", err)
	}
	list := s.List("gw1")
	if len(list) != 2 || list[0].Device != "d1" || list[1].Device != "d2" || list[1].Version != 1 || !list[1].LastUpdated.Equal(t0.Add(time.Second)) {
		t.Fatalf("list %+v", list)
	}
	if st := s.Stats(); st.Applied != 4 || st.Devices != 3 || st.Invalid != 0 || st.Next != 5 {
		t.Fatalf("stats %+v", st)
	}
}

func TestInvalidEventsSkipped(t *testing.T) {
	l := openLog(t, t.TempDir())
	s, err := Open(l, Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	running(t, s)
	appendValues(t, l,
		stateValue(t, "gw", "d", "e1", t0, `{"a":1}`),
		stateValue(t, "gw", "d", "e2", t0, `[1,2]`),
		stateValue(t, "gw", "d", "e3", t0, `{"a":`),
		stateValue(t, "gw", "d", "e4", t0, `{"a":1} {"b":2}`),
		stateValue(t, "gw", "d/x", "e5", t0, `{"a":2}`),
		stateValue(t, "", "d", "e6", t0, `{"a":3}`),
		stateValue(t, "gw", "d", "e1", t0, `{"a":4}`), // the last event again
	)
	other := event.New()
	other.SetID("x")
	other.SetType("io.tributary.telemetry")
	other.SetSource("/gateways/gw/devices/d")
	pe, _ := format.ToProto(&other)
	ob, _ := proto.Marshal(pe)
	appendValues(t, l, ob)
	caughtUp(t, s, l)
	m, st := reported(t, s, "gw", "d")
	if !reflect.DeepEqual(m, map[string]any{"a": 1.0}) || st.Version != 1 {
		t.Fatalf("reported %s version %d", st.Reported, st.Version)
	}
	if got := s.Stats(); got.Invalid != 5 || got.Duplicates != 1 || got.Applied != 1 {
		t.Fatalf("stats %+v", got)
	}
}

// A restart resumes at the snapshot's offset: updates before it are not
// applied again, updates after it are applied once. The snapshot copied
// while the first Store still runs is the disk a crash would leave.
func TestRestartResumesWithoutDoubleApplying(t *testing.T) {
	logDir, dir := t.TempDir(), t.TempDir()
	l := openLog(t, logDir)
	s, err := Open(l, Options{Dir: dir, SnapshotInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	running(t, s)
	for i, p := range []string{`{"n":1}`, `{"n":2,"a":"x"}`, `{"n":3}`} {
		appendValues(t, l, stateValue(t, "gw", "d", "a"+string(rune('0'+i)), t0, p))
	}
	caughtUp(t, s, l)
	if err := s.Snapshot(); err != nil {
		t.Fatal(err)
	}
	appendValues(t, l, stateValue(t, "gw", "d", "b0", t0, `{"n":4,"a":null}`), stateValue(t, "gw", "d", "b1", t0, `{"n":5}`))
	caughtUp(t, s, l)
	crashDir := t.TempDir()
	b, err := os.ReadFile(snapshotPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(snapshotPath(crashDir), b, 0o644); err != nil {
		t.Fatal(err)
	}

	s2, err := Open(l, Options{Dir: crashDir})
	if err != nil {
		t.Fatal(err)
	}
	if got := s2.Stats().Next; got != 3 {
		t.Fatalf("reopened at offset %d, want 3 (the snapshot's)", got)
	}
	running(t, s2)
	caughtUp(t, s2, l)
	m, st := reported(t, s2, "gw", "d")
	if !reflect.DeepEqual(m, map[string]any{"n": 5.0}) || st.Version != 5 || st.LastEventID != "b1" {
		t.Fatalf("after the crash: %s version %d last %s", st.Reported, st.Version, st.LastEventID)
	}
}

// Run's return (ctx ended) writes a final snapshot and Close after it is
// a no-op write; a reopened Store resumes at the end.
func TestCleanStopSnapshots(t *testing.T) {
	logDir, dir := t.TempDir(), t.TempDir()
	l := openLog(t, logDir)
	s, err := Open(l, Options{Dir: dir, SnapshotInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	stop := running(t, s)
	appendValues(t, l, stateValue(t, "gw", "d", "e1", t0, `{"v":1}`), stateValue(t, "gw", "d", "e2", t0, `{"w":2}`))
	caughtUp(t, s, l)
	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Run(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Run after Close: %v", err)
	}
	s2, err := Open(l, Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if got := s2.Stats().Next; got != 2 {
		t.Fatalf("reopened at %d, want 2", got)
	}
	m, st := reported(t, s2, "gw", "d")
	if !reflect.DeepEqual(m, map[string]any{"v": 1.0, "w": 2.0}) || st.Version != 2 {
		t.Fatalf("reopened state %s v%d", st.Reported, st.Version)
	}
}

// While updates keep coming, snapshots are written every SnapshotInterval
// without stopping.
func TestPeriodicSnapshot(t *testing.T) {
	l := openLog(t, t.TempDir())
	dir := t.TempDir()
	s, err := Open(l, Options{Dir: dir, SnapshotInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	snapped := make(chan uint64, 100)
	s.afterSnapshot = func(next uint64) { snapped <- next }
	running(t, s)
	for i := range 3 {
		appendValues(t, l, stateValue(t, "gw", "d", fmt.Sprint("e", i), t0, `{"v":1}`))
		for next := uint64(0); next != uint64(i+1); {
			select {
			case next = <-snapped:
			case <-time.After(30 * time.Second):
				t.Fatalf("no snapshot of offset %d was written while running", i+1)
			}
		}
		b, err := os.ReadFile(snapshotPath(dir))
		if err != nil {
			t.Fatal(err)
		}
		if snap, err := decodeSnapshot(b); err != nil || snap.Next != uint64(i+1) || snap.Devices[0].Version != uint64(i+1) {
			t.Fatalf("snapshot %s: %v", b, err)
		}
	}
}

func TestSnapshotAheadOfLogRebuilds(t *testing.T) {
	dir := t.TempDir()
	l1 := openLog(t, t.TempDir())
	s, err := Open(l1, Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	stop := running(t, s)
	appendValues(t, l1, stateValue(t, "gw", "old", "e1", t0, `{}`), stateValue(t, "gw", "old", "e2", t0, `{}`))
	caughtUp(t, s, l1)
	stop()
	// A new, shorter log: the snapshot is not of it.
	l2 := openLog(t, t.TempDir())
	appendValues(t, l2, stateValue(t, "gw", "new", "f1", t0, `{"x":1}`))
	s2, err := Open(l2, Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	running(t, s2)
	caughtUp(t, s2, l2)
	if _, err := s2.Get("gw", "old"); !errors.Is(err, ErrUnknownDevice) {
		t.Fatalf("state of the other log kept: %v", err)
	}
	if _, err := s2.Get("gw", "new"); err != nil {
		t.Fatal(err)
	}
}

func TestCorruptSnapshotRefused(t *testing.T) {
	l := openLog(t, t.TempDir())
	for _, content := range []string{
		`{`, `{"version":2,"next":0,"devices":[]}`, `{"version":1,"next":1,"devices":[{"gateway":"g","device":"d","reported":null,"version":1}]}`,
		`{"version":1,"next":1,"devices":[],"extra":1}`,
	} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, snapshotFile), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(l, Options{Dir: dir}); !errors.Is(err, ErrCorruptSnapshot) {
			t.Errorf("Open with snapshot %s: %v, want ErrCorruptSnapshot", content, err)
		}
	}
	if _, err := Open(l, Options{}); err == nil {
		t.Error("Open without Dir succeeded")
	}
}

// The examples of RFC 7386 Appendix A.
func TestMergePatchRFC7386(t *testing.T) {
	for _, tc := range [][3]string{
		{`{"a":"b"}`, `{"a":"c"}`, `{"a":"c"}`},
		{`{"a":"b"}`, `{"b":"c"}`, `{"a":"b","b":"c"}`},
		{`{"a":"b"}`, `{"a":null}`, `{}`},
		{`{"a":"b","b":"c"}`, `{"a":null}`, `{"b":"c"}`},
		{`{"a":["b"]}`, `{"a":"c"}`, `{"a":"c"}`},
		{`{"a":"c"}`, `{"a":["b"]}`, `{"a":["b"]}`},
		{`{"a":{"b":"c"}}`, `{"a":{"b":"d","c":null}}`, `{"a":{"b":"d"}}`},
		{`{"a":[{"b":"c"}]}`, `{"a":[1]}`, `{"a":[1]}`},
		{`["a","b"]`, `["c","d"]`, `["c","d"]`},
		{`{"a":"b"}`, `["c"]`, `["c"]`},
		{`{"a":"foo"}`, `null`, `null`},
		{`{"a":"foo"}`, `"bar"`, `"bar"`},
		{`{"e":null}`, `{"a":1}`, `{"a":1,"e":null}`},
		{`[1,2]`, `{"a":"b","c":null}`, `{"a":"b"}`},
		{`{}`, `{"a":{"bb":{"ccc":null}}}`, `{"a":{"bb":{}}}`},
	} {
		var target, patch, want any
		for i, p := range []*any{&target, &patch, &want} {
			if err := json.Unmarshal([]byte(tc[i]), p); err != nil {
				t.Fatal(err)
			}
		}
		if got := mergePatch(target, patch); !reflect.DeepEqual(got, want) {
			t.Errorf("merge %s with %s = %v, want %s", tc[0], tc[1], got, tc[2])
		}
	}
}

func FuzzDecodeUpdate(f *testing.F) {
	f.Add(stateValue(f, "gw", "d", "e1", t0, `{"a":1}`))
	f.Add(stateValue(f, "g%2Fw", "d%20x", "e1", t0, `{"a":{"b":null}}`))
	f.Add(stateValue(f, "gw", "d", "e1", t0, `[1]`))
	f.Add([]byte(EventType))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, v []byte) {
		u, isState, err := decodeUpdate(v)
		if !isState || err != nil {
			return
		}
		if u.gateway == "" || u.device == "" || u.id == "" || u.patch == nil {
			t.Fatalf("accepted an incomplete update %+v", u)
		}
		// Applying it must not panic, and must leave an object.
		if _, ok := mergePatch(map[string]any{"k": "v"}, u.patch).(map[string]any); !ok {
			t.Fatal("merge of an object patch is not an object")
		}
	})
}

func FuzzDecodeSnapshot(f *testing.F) {
	f.Add([]byte(`{"version":1,"next":3,"devices":[{"gateway":"g","device":"d","reported":{"a":1},"version":2,"last_updated":"2026-11-22T12:00:00Z","last_event_id":"e","last_offset":2}]}`))
	f.Add([]byte(`{"version":1,"next":0,"devices":[]}`))
	f.Add([]byte(`{"version":1}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		snap, err := decodeSnapshot(b)
		if err != nil {
			return
		}
		// What loads must encode and load again to the same thing.
		out, err := json.Marshal(snap)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		again, err := decodeSnapshot(out)
		if err != nil {
			t.Fatalf("re-decode %s: %v", out, err)
		}
		if len(again.Devices) != len(snap.Devices) || again.Next != snap.Next {
			t.Fatalf("round trip changed the snapshot: %s", out)
		}
	})
}
