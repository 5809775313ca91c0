package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	devicesdk "github.com/tributary-io/tributary/device-sdk"

	"github.com/tributary-io/tributary/cloud/server"
	"github.com/tributary-io/tributary/simulations/procs"
)

// Cloud-to-device commands through real processes: the cloud's HTTP API,
// the QUIC link, tributary-edge's broker and command store, and paho
// devices. No sink: the command audit events would be foreign to the
// ledger's sink.

type cmdReply struct {
	RequestID   string          `json:"request_id"`
	Status      string          `json:"status"`
	Reason      string          `json:"reason"`
	ReplyStatus int             `json:"reply_status"`
	Payload     json.RawMessage `json:"payload"`
	Code        string          `json:"code"`
	Error       string          `json:"error"`
}

func startCommandFabric(t *testing.T) *fabric {
	t.Helper()
	f := &fabric{t: t, dir: t.TempDir()}
	f.startCloud(procs.CloudOptions{DataDir: filepath.Join(f.dir, "cloud")})
	f.startEdge(procs.EdgeOptions{DataDir: filepath.Join(f.dir, "gw-1")})
	return f
}

// postCommand calls the command API and returns the HTTP status and body.
func postCommand(t *testing.T, c *procs.Cloud, gw, dev, name, query string, body string) (int, cmdReply) {
	t.Helper()
	url := fmt.Sprintf("%s/v1/gateways/%s/devices/%s/commands/%s?%s", c.APIURL, gw, dev, name, query)
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var r cmdReply
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatalf("POST %s: %d %q", url, resp.StatusCode, raw)
	}
	return resp.StatusCode, r
}

func getCommand(t *testing.T, c *procs.Cloud, id string) cmdReply {
	t.Helper()
	resp, err := c.Get("/v1/commands/" + id)
	if err != nil {
		t.Fatal(err)
	}
	var r cmdReply
	decodeJSON(t, resp, &r)
	return r
}

// waitGatewayLinked sends probe commands (not waited for) until the cloud
// has the gateway's session.
func waitGatewayLinked(t *testing.T, c *procs.Cloud, gw string) {
	t.Helper()
	waitUntil(t, time.Minute, "the gateway's link", func() bool {
		code, _ := postCommand(t, c, gw, "probe", "ping", "wait=false&expiry=1s", `{}`)
		return code == http.StatusAccepted
	})
}

// commandDevice is a paho device (MQTT 3.1.1) that answers every command
// with {"status":200,"payload":{"device":..,"command":..,"echo":<body>}}.
func commandDevice(t *testing.T, addr, id string, clean bool) mqtt.Client {
	t.Helper()
	handler := func(c mqtt.Client, m mqtt.Message) {
		parts := strings.Split(m.Topic(), "/") // $tributary/commands/<id>/<name>/<request>
		if len(parts) != 5 {
			return
		}
		reply, _ := json.Marshal(map[string]any{"status": 200, "payload": map[string]any{
			"device": id, "command": parts[3], "echo": json.RawMessage(m.Payload())}})
		c.Publish("$tributary/replies/"+id+"/"+parts[4], 1, false, reply)
	}
	// The handler is in place before the connection: a resumed session's
	// held command arrives right after CONNACK, before Subscribe returns.
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).
		SetCleanSession(clean).SetAutoReconnect(false).SetOrderMatters(false).SetConnectTimeout(5 * time.Second).
		SetDefaultPublishHandler(handler))
	if tok := c.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("%s connect: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	if tok := c.Subscribe("$tributary/commands/"+id+"/#", 1, handler); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("%s subscribe: %v", id, tok.Error())
	}
	return c
}

// TestCommandThroughProcesses: API → link → gateway → device → reply → 200,
// the command's state readable afterwards and its reply an event in the
// log; a gateway that is not connected is a 503; bad bodies are refused.
func TestCommandThroughProcesses(t *testing.T) {
	f := startCommandFabric(t)
	waitGatewayLinked(t, f.cloud, "gw-1")
	// This device is the device SDK's Client with a handler.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sdk, err := devicesdk.Connect(ctx, devicesdk.Config{
		Broker: "tcp://" + f.edge.MQTTAddr, DeviceID: "dev-1",
		Commands: map[string]devicesdk.CommandHandler{
			"reboot": func(_ context.Context, cmd devicesdk.Command) (int, any, error) {
				return 200, map[string]any{"device": "dev-1", "command": cmd.Name, "echo": json.RawMessage(cmd.Payload)}, nil
			},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sdk.Close(time.Second)

	code, r := postCommand(t, f.cloud, "gw-1", "dev-1", "reboot", "timeout=20s", `{"delay":3}`)
	if code != http.StatusOK || r.Status != "replied" || r.ReplyStatus != 200 {
		t.Fatalf("POST: %d %+v", code, r)
	}
	var payload struct {
		Device, Command string
		Echo            json.RawMessage
	}
	if err := json.Unmarshal(r.Payload, &payload); err != nil || payload.Device != "dev-1" || payload.Command != "reboot" || string(payload.Echo) != `{"delay":3}` {
		t.Fatalf("reply payload %s (%v)", r.Payload, err)
	}
	if g := getCommand(t, f.cloud, r.RequestID); g.Status != "replied" || g.ReplyStatus != 200 {
		t.Fatalf("GET: %+v", g)
	}

	// The reply and the audit trail are events in the central log.
	wantTypes := map[string]bool{"io.tributary.command.reply": false, "io.tributary.command.request": false, "io.tributary.command.status": false}
	waitUntil(t, time.Minute, "the command's events in the log", func() bool {
		err := f.cloud.ReadLog(func(e server.LogEntry) error {
			var ev struct {
				Type string `json:"type"`
			}
			if json.Unmarshal(e.Event, &ev) == nil && bytes.Contains(e.Event, []byte(r.RequestID)) {
				if _, ok := wantTypes[ev.Type]; ok {
					wantTypes[ev.Type] = true
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, seen := range wantTypes {
			if !seen {
				return false
			}
		}
		return true
	})

	if code, r := postCommand(t, f.cloud, "gw-nowhere", "dev-1", "reboot", "", `{}`); code != http.StatusServiceUnavailable || r.Code != "gateway_offline" {
		t.Fatalf("unknown gateway: %d %+v", code, r)
	}
	if code, r := postCommand(t, f.cloud, "gw-1", "dev-1", "reboot", "", `not json`); code != http.StatusBadRequest || !strings.Contains(r.Error, "not JSON") {
		t.Fatalf("bad body: %d %+v", code, r)
	}
	if code, _ := postCommand(t, f.cloud, "gw-1", "dev-1", "reboot", "timeout=10m", `{}`); code != http.StatusBadRequest {
		t.Fatalf("timeout over 5m: %d", code)
	}
}

// TestCommandWaitsForOfflineDevice: a command to an offline device waits on
// the gateway and is delivered when the device connects within its expiry;
// one whose expiry passes first answers 504 "expired" with the reason.
func TestCommandWaitsForOfflineDevice(t *testing.T) {
	f := startCommandFabric(t)
	waitGatewayLinked(t, f.cloud, "gw-1")

	code, r := postCommand(t, f.cloud, "gw-1", "dev-2", "reboot", "wait=false&expiry=120s", `{}`)
	if code != http.StatusAccepted || r.Status != "sent" && r.Status != "accepted" {
		t.Fatalf("POST wait=false: %d %+v", code, r)
	}
	waitUntil(t, time.Minute, "the command accepted by the gateway", func() bool { return getCommand(t, f.cloud, r.RequestID).Status == "accepted" })
	commandDevice(t, f.edge.MQTTAddr, "dev-2", true)
	waitUntil(t, time.Minute, "the reply of the device that came online", func() bool {
		g := getCommand(t, f.cloud, r.RequestID)
		return g.Status == "replied" && g.ReplyStatus == 200
	})

	code, r = postCommand(t, f.cloud, "gw-1", "dev-absent", "reboot", "timeout=30s&expiry=1s", `{}`)
	if code != http.StatusGatewayTimeout || r.Status != "expired" || r.Reason != "device offline until expiry" {
		t.Fatalf("expired: %d %+v", code, r)
	}
}

// TestCommandSurvivesGatewayKill: a command pending on the gateway survives
// a SIGKILL of the gateway and is delivered after its restart.
func TestCommandSurvivesGatewayKill(t *testing.T) {
	f := startCommandFabric(t)
	waitGatewayLinked(t, f.cloud, "gw-1")
	code, r := postCommand(t, f.cloud, "gw-1", "dev-3", "reboot", "wait=false&expiry=5m", `{"n":1}`)
	if code != http.StatusAccepted {
		t.Fatalf("POST: %d %+v", code, r)
	}
	waitUntil(t, time.Minute, "accepted", func() bool { return getCommand(t, f.cloud, r.RequestID).Status == "accepted" })

	f.edge.Kill()
	opts := f.edge.Options(procs.EdgeOptions{})
	f.startEdge(opts)
	commandDevice(t, f.edge.MQTTAddr, "dev-3", true)
	waitUntil(t, 2*time.Minute, "replied after the restart", func() bool {
		g := getCommand(t, f.cloud, r.RequestID)
		return g.Status == "replied" && g.ReplyStatus == 200
	})
}

// TestCommandACL: a device cannot subscribe to another device's commands,
// publish a command, or reply for another device.
func TestCommandACL(t *testing.T) {
	f := startCommandFabric(t)
	waitGatewayLinked(t, f.cloud, "gw-1")

	dial := func(id string) (mqtt.Client, chan error) {
		lost := make(chan error, 1)
		c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("tcp://" + f.edge.MQTTAddr).SetClientID(id).
			SetAutoReconnect(false).SetConnectionLostHandler(func(_ mqtt.Client, err error) { lost <- err }))
		if tok := c.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
			t.Fatalf("%s connect: %v", id, tok.Error())
		}
		t.Cleanup(func() { c.Disconnect(0) })
		return c, lost
	}
	a, lostA := dial("dev-a")
	for _, filter := range []string{"$tributary/commands/dev-b/#", "$tributary/#", "$tributary/commands/+/#"} {
		tok := a.Subscribe(filter, 1, func(mqtt.Client, mqtt.Message) {})
		if !tok.WaitTimeout(20 * time.Second) {
			t.Fatalf("subscribe %s: no SUBACK", filter)
		}
		if got := tok.(*mqtt.SubscribeToken).Result()[filter]; got != 0x80 {
			t.Errorf("subscribe %s: granted %#x, want 0x80", filter, got)
		}
	}

	// dev-b has a command waiting; dev-a replying for it is refused (MQTT
	// 3.1.1: disconnected) and the command stays unanswered.
	code, r := postCommand(t, f.cloud, "gw-1", "dev-b", "reboot", "wait=false&expiry=5m", `{}`)
	if code != http.StatusAccepted {
		t.Fatalf("POST: %d %+v", code, r)
	}
	waitUntil(t, time.Minute, "accepted", func() bool { return getCommand(t, f.cloud, r.RequestID).Status == "accepted" })
	a.Publish("$tributary/replies/dev-b/"+r.RequestID, 1, false, `{"status":200}`)
	select {
	case <-lostA:
	case <-time.After(30 * time.Second):
		t.Fatal("a reply for another device did not disconnect the publisher")
	}
	if g := getCommand(t, f.cloud, r.RequestID); g.Status != "accepted" {
		t.Fatalf("after the forged reply: %+v", g)
	}

	// Publishing a command is refused too.
	a2, lostA2 := dial("dev-a2")
	a2.Publish("$tributary/commands/dev-b/reboot/forged", 1, false, `{}`)
	select {
	case <-lostA2:
	case <-time.After(30 * time.Second):
		t.Fatal("publishing a command did not disconnect the publisher")
	}

	// The real dev-b still gets its command, once, and answers it.
	commandDevice(t, f.edge.MQTTAddr, "dev-b", true)
	waitUntil(t, time.Minute, "dev-b's reply", func() bool { return getCommand(t, f.cloud, r.RequestID).Status == "replied" })
}
