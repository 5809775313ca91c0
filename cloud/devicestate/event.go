package devicestate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/cloudevents/sdk-go/binding/format/protobuf/v2/pb"
	"google.golang.org/protobuf/proto"
)

// update is one decoded state event.
type update struct {
	gateway, device string
	id              string
	time            time.Time // zero if the event had none
	patch           map[string]any
}

var eventTypeBytes = []byte(EventType)

// decodeUpdate decodes a log value. isState is false for anything that is
// not a state event (not protobuf, another type): those are not the Store's
// business. For a state event err says what is wrong with it. It never
// panics.
func decodeUpdate(value []byte) (u update, isState bool, err error) {
	// Most records are telemetry: skip them without decoding.
	if !bytes.Contains(value, eventTypeBytes) {
		return update{}, false, nil
	}
	var ce pb.CloudEvent
	if err := proto.Unmarshal(value, &ce); err != nil || ce.GetType() != EventType {
		return update{}, false, nil
	}
	u.id = ce.GetId()
	if u.id == "" {
		return update{}, true, errors.New("event has no id")
	}
	u.gateway, u.device, err = parseSource(ce.GetSource())
	if err != nil {
		return update{}, true, err
	}
	if a := ce.GetAttributes()["time"]; a != nil {
		if ts := a.GetCeTimestamp(); ts != nil {
			if err := ts.CheckValid(); err != nil {
				return update{}, true, fmt.Errorf("event %s: time: %w", u.id, err)
			}
			u.time = ts.AsTime()
		}
	}
	var data []byte
	switch d := ce.GetData().(type) {
	case *pb.CloudEvent_BinaryData:
		data = d.BinaryData
	case *pb.CloudEvent_TextData:
		data = []byte(d.TextData)
	default:
		return update{}, true, fmt.Errorf("event %s: data is not JSON text or bytes", u.id)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var patch any
	if err := dec.Decode(&patch); err != nil {
		return update{}, true, fmt.Errorf("event %s: data is not JSON: %w", u.id, err)
	}
	if dec.More() {
		return update{}, true, fmt.Errorf("event %s: data holds more than one JSON value", u.id)
	}
	obj, ok := patch.(map[string]any)
	if !ok {
		return update{}, true, fmt.Errorf("event %s: data is not a JSON object", u.id)
	}
	u.patch = obj
	return u, true, nil
}

// parseSource splits /gateways/<gateway>/devices/<device>, path-escaped as
// edge/gateway.EventSource makes it.
func parseSource(src string) (gateway, device string, err error) {
	rest, ok := strings.CutPrefix(src, "/gateways/")
	gwEsc, devEsc, ok2 := strings.Cut(rest, "/devices/")
	if !ok || !ok2 || strings.Contains(devEsc, "/") {
		return "", "", fmt.Errorf("source %q is not /gateways/<gateway>/devices/<device>", src)
	}
	if gateway, err = url.PathUnescape(gwEsc); err != nil {
		return "", "", fmt.Errorf("source %q: gateway: %w", src, err)
	}
	if device, err = url.PathUnescape(devEsc); err != nil {
		return "", "", fmt.Errorf("source %q: device: %w", src, err)
	}
	if gateway == "" || device == "" {
		return "", "", fmt.Errorf("source %q: empty gateway or device", src)
	}
	return gateway, device, nil
}
