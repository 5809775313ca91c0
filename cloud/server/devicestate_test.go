package server

import (
	"context"
	"testing"
	"time"

	format "github.com/cloudevents/sdk-go/binding/format/protobuf/v2"
	"github.com/cloudevents/sdk-go/v2/event"
	"google.golang.org/protobuf/proto"

	"github.com/tributary-io/tributary/cloud/commitlog"
	"github.com/tributary-io/tributary/cloud/devicestate"
)

// appendState appends a state event as a gateway forwards it and waits
// until the device-state view reflects it.
func appendState(t *testing.T, s *Server, gw, dev, id, patch string) {
	t.Helper()
	ev := event.New()
	ev.SetID(id)
	ev.SetType(devicestate.EventType)
	ev.SetSource("/gateways/" + gw + "/devices/" + dev)
	ev.SetTime(time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC))
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
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.Log().Append(ctx, []commitlog.Record{{Topic: "$tributary/state/" + dev, Value: b}}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeviceState().WaitApplied(ctx, s.Log().NextOffset()); err != nil {
		t.Fatal(err)
	}
}

func TestDeviceStateAPI(t *testing.T) {
	dir := t.TempDir()
	s, stop := startStoppable(t, dir, testTokens)
	appendState(t, s, "gw1", "d1", "e1", `{"fw":"1.0","uptime_s":5}`)
	appendState(t, s, "gw1", "d1", "e2", `{"uptime_s":null,"reboots":1}`)
	appendState(t, s, "gw1", "d2", "e3", `{"fw":"2.0"}`)

	st, body := call(t, s, "GET", "/v1/gateways/gw1/devices/d1/state", readTok, nil)
	if st != 200 {
		t.Fatalf("state: %d %v", st, body)
	}
	rep, _ := body["reported"].(map[string]any)
	if len(rep) != 2 || rep["fw"] != "1.0" || rep["reboots"] != 1.0 || body["version"] != 2.0 ||
		body["last_event_id"] != "e2" || body["gateway"] != "gw1" || body["device"] != "d1" || body["last_updated"] != "2026-11-22T12:00:00Z" {
		t.Fatalf("state %v", body)
	}
	for _, path := range []string{"/v1/gateways/gw1/devices/nope/state", "/v1/gateways/gw2/devices/d1/state"} {
		st, body := call(t, s, "GET", path, readTok, nil)
		if msg, _ := body["error"].(string); st != 404 || msg == "" {
			t.Fatalf("%s: %d %v, want 404 with an error", path, st, body)
		}
	}
	if st, _ := call(t, s, "GET", "/v1/gateways/gw1/devices/d1/state", "", nil); st != 401 {
		t.Fatalf("without a token: %d", st)
	}
	st, body = call(t, s, "GET", "/v1/gateways/gw1/devices", readTok, nil)
	devs, _ := body["devices"].([]any)
	if st != 200 || len(devs) != 2 || devs[0].(map[string]any)["device"] != "d1" || devs[1].(map[string]any)["version"] != 1.0 {
		t.Fatalf("list: %d %v", st, body)
	}
	if st, body := call(t, s, "GET", "/v1/gateways/gw9/devices", readTok, nil); st != 200 || len(body["devices"].([]any)) != 0 {
		t.Fatalf("list of an unknown gateway: %d %v", st, body)
	}

	// A restart keeps the state and applies nothing twice.
	stop()
	s2, _ := startStoppable(t, dir, testTokens)
	appendState(t, s2, "gw1", "d1", "e4", `{"reboots":2}`)
	st, body = call(t, s2, "GET", "/v1/gateways/gw1/devices/d1/state", readTok, nil)
	if rep, _ := body["reported"].(map[string]any); st != 200 || body["version"] != 3.0 || rep["reboots"] != 2.0 || rep["fw"] != "1.0" {
		t.Fatalf("after restart: %d %v", st, body)
	}
}
