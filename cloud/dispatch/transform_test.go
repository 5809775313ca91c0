package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/tributary-io/tributary/cloud/commitlog"
)

// reading is the event the transformation tests start from.
func reading() *event.Event {
	e := event.New()
	e.SetID("r-1")
	e.SetSource("urn:tributary:gw-1/dev-7")
	e.SetType("io.tributary.telemetry")
	e.SetSubject("plant/7/temp")
	e.SetTime(baseTime)
	e.SetExtension("partitionkey", "dev-7")
	e.SetExtension("qos", int32(1))
	_ = e.SetData(event.ApplicationJSON, map[string]any{"t": 21.5, "site": 4, "tags": []string{"a", "b"}})
	return &e
}

func mustTransform(t *testing.T, tf Transform) *transformer {
	t.Helper()
	tr, err := compileTransform(&tf)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func TestTransformApply(t *testing.T) {
	textEvent := func() *event.Event {
		e := reading()
		_ = e.SetData("text/plain", "hello")
		return e
	}
	binEvent := func() *event.Event {
		e := reading()
		_ = e.SetData("application/octet-stream", []byte{1, 2, 3})
		return e
	}
	for _, tc := range []struct {
		name      string
		in        func() *event.Event
		tf        Transform
		wantData  string // exact bytes
		wantType  string // datacontenttype
		checkAttr func(t *testing.T, e *event.Event)
	}{
		{name: "pick and rename", in: reading,
			tf:       Transform{Data: `{"celsius": data.t, "device": event.source, "first_tag": data.tags[0]}`},
			wantData: `{"celsius":21.5,"device":"urn:tributary:gw-1/dev-7","first_tag":"a"}`, wantType: "application/json"},
		{name: "template text", in: reading,
			tf:       Transform{Data: `"%s reports %.1f C".format([event.subject, data.t])`},
			wantData: "plant/7/temp reports 21.5 C", wantType: "text/plain; charset=utf-8"},
		{name: "arithmetic and optional", in: reading,
			tf:       Transform{Data: `{"f": data.t * 1.8 + 32.0, "missing": data.?nope.orValue("none"), "n": int(data.site) + 1}`},
			wantData: `{"f":70.7,"missing":"none","n":5}`, wantType: "application/json"},
		{name: "remove data", in: reading, tf: Transform{Data: `null`}, wantData: "", wantType: ""},
		{name: "text in", in: textEvent, tf: Transform{Data: `data.upperAscii()`}, wantData: "HELLO", wantType: "text/plain"},
		{name: "bytes in", in: binEvent, tf: Transform{Data: `{"size": size(data), "b64": base64.encode(data)}`},
			wantData: `{"b64":"AQID","size":3}`, wantType: "application/json"},
		{name: "bytes out", in: reading, tf: Transform{Data: `b"\x00\x01"`}, wantData: "\x00\x01", wantType: "application/octet-stream"},
		{name: "attributes", in: reading,
			tf: Transform{Attributes: map[string]string{
				"type":         `"com.acme." + event.type`,
				"subject":      `null`,
				"site":         `"plant-" + string(int(data.site))`,
				"qos":          `null`,
				"level":        `data.t > 20.0 ? 2 : 1`,
				"time":         `timestamp("2025-01-01T00:00:00Z")`,
				"partitionkey": `event.partitionkey + "!"`,
			}},
			wantData: `{"site":4,"t":21.5,"tags":["a","b"]}`, wantType: "application/json",
			checkAttr: func(t *testing.T, e *event.Event) {
				ext := e.Extensions()
				if e.Type() != "com.acme.io.tributary.telemetry" || e.Subject() != "" || ext["site"] != "plant-4" ||
					ext["qos"] != nil || ext["level"] != int32(2) || ext["partitionkey"] != "dev-7!" ||
					!e.Time().Equal(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)) {
					t.Fatalf("attributes: %v", e)
				}
			}},
		{name: "content type override", in: reading,
			tf:       Transform{Data: `"a,b"`, Attributes: map[string]string{"datacontenttype": `"text/csv"`}},
			wantData: "a,b", wantType: "text/csv"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.in()
			before := in.Clone()
			out, err := mustTransform(t, tc.tf).apply(context.Background(), in)
			if err != nil {
				t.Fatal(err)
			}
			if string(out.Data()) != tc.wantData || out.DataContentType() != tc.wantType {
				t.Fatalf("data %q (%q), want %q (%q)", out.Data(), out.DataContentType(), tc.wantData, tc.wantType)
			}
			if out.ID() != in.ID() || out.SpecVersion() != "1.0" {
				t.Fatalf("id %q, want %q", out.ID(), in.ID())
			}
			if tc.checkAttr != nil {
				tc.checkAttr(t, out)
			}
			if in.String() != before.String() {
				t.Fatal("apply changed its input")
			}
		})
	}
}

func TestTransformCompileErrors(t *testing.T) {
	for _, tc := range []struct {
		tf        Transform
		field     string
		substring string
	}{
		{Transform{}, "transform", "set data"},
		{Transform{Data: `{"a": `}, "transform.data", "line 1:7"},
		{Transform{Data: `evnt.source`}, "transform.data", "undeclared reference to 'evnt'"},
		{Transform{Data: `"x".nosuch()`}, "transform.data", "line 1:"},
		{Transform{Data: strings.Repeat("1+", MaxTransformExprLen)}, "transform.data", "longer than"},
		{Transform{Attributes: map[string]string{"id": `"x"`}}, "transform.attributes.id", "cannot be set"},
		{Transform{Attributes: map[string]string{"specversion": `"2"`}}, "transform.attributes.specversion", "cannot be set"},
		{Transform{Attributes: map[string]string{"Type": `"x"`}}, "transform.attributes.Type", "lower-case"},
		{Transform{Attributes: map[string]string{"data": `"x"`}}, "transform.attributes.data", "transform.data"},
		{Transform{Attributes: map[string]string{"type": ` `}}, "transform.attributes.type", "empty"},
		{Transform{Attributes: map[string]string{"type": `1 +`}}, "transform.attributes.type", "line 1:"},
	} {
		sub := Subscription{ID: "x", Sink: "http://127.0.0.1:1/", Transform: &tc.tf}
		err := sub.Validate()
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field || !strings.Contains(err.Error(), tc.substring) {
			t.Errorf("%+v: %v, want an error on %s containing %q", tc.tf, err, tc.field, tc.substring)
		}
	}
	// JSON decoding of a subscription with a transform.
	sub, err := ParseJSON([]byte(`{"id":"j","sink":"http://h/","transform":{"data":"{\"t\": data.t}","attributes":{"type":"\"x\""}}}`))
	if err != nil || sub.Transform == nil || sub.Transform.Attributes["type"] != `"x"` {
		t.Fatalf("ParseJSON: %+v %v", sub, err)
	}
	if _, err := ParseJSON([]byte(`{"id":"j","sink":"http://h/","transform":{"template":"x"}}`)); err == nil {
		t.Fatal("unknown transform field accepted")
	}
}

func TestTransformRuntimeErrors(t *testing.T) {
	big := reading()
	_ = big.SetData(event.ApplicationJSON, map[string]any{"s": strings.Repeat("x", 600<<10)})
	nested := `[1,2,3,4,5,6,7,8,9,10].map(a, [1,2,3,4,5,6,7,8,9,10].map(b, [1,2,3,4,5,6,7,8,9,10].map(c, [1,2,3,4,5,6,7,8,9,10].map(d, [1,2,3,4,5,6,7,8,9,10].map(e, a+b+c+d+e)))))`
	for _, tc := range []struct {
		name      string
		in        *event.Event
		tf        Transform
		substring string
	}{
		{"missing key", reading(), Transform{Data: `data.nope`}, "no such key"},
		{"int plus double", reading(), Transform{Data: `data.t + 1`}, "no such overload"},
		{"cost limit", reading(), Transform{Data: nested}, "cost limit"},
		{"output too large", big, Transform{Data: `[data.s, data.s]`}, "limit"},
		{"double extension", reading(), Transform{Attributes: map[string]string{"temp": `data.t`}}, "not a double"},
		{"type removed", reading(), Transform{Attributes: map[string]string{"type": `null`}}, "required"},
		{"type not a string", reading(), Transform{Attributes: map[string]string{"type": `1`}}, "want a string"},
		{"int overflow", reading(), Transform{Attributes: map[string]string{"big": `9999999999`}}, "32 bits"},
		{"bad time", reading(), Transform{Attributes: map[string]string{"time": `"noon"`}}, "cannot parse"},
		{"invalid result", reading(), Transform{Attributes: map[string]string{"source": `""`}}, "not valid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := mustTransform(t, tc.tf).apply(context.Background(), tc.in)
			if !errors.Is(err, ErrTransform) || !strings.Contains(err.Error(), tc.substring) {
				t.Fatalf("apply = %v, want ErrTransform containing %q", err, tc.substring)
			}
		})
	}
	// A stopped lane interrupts a long evaluation and gets ctx's error.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := mustTransform(t, Transform{Data: nested}).apply(ctx, reading()); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled apply = %v", err)
	}
}

// TestTransformDelivered runs a transformation in a subscription: the sink
// gets reshaped events with their ids; an event the transformation fails on
// is dead-lettered at once as it was logged.
func TestTransformDelivered(t *testing.T) {
	lg := commitlog.NewMemory(nil)
	fillLog(t, lg, 12, 3)
	bad := makeEvent(12, 3)
	_ = bad.SetData(event.ApplicationJSON, map[string]any{"other": 1})
	appendAt(t, lg, time.Now(), bad)
	s := newSink(t, nil)
	d := mustNew(t, lg, t.TempDir(), Options{})
	sub := Subscription{ID: "tf", Sink: s.URL, Parallelism: 2, Transform: &Transform{
		Data:       `{"n": data.i, "device": event.partitionkey}`,
		Attributes: map[string]string{"type": `"com.acme.reading"`, "seq": `null`},
	}}
	if err := d.Add(sub); err != nil {
		t.Fatal(err)
	}
	started(t, d)
	waitFor(t, "delivered and dead-lettered", func() bool { st, _ := d.Stats("tf"); return st.Delivered == 12 && st.DeadLettered == 1 })
	for _, r := range s.snapshot() {
		i := indexOf(t, r.ev)
		var got map[string]any
		if err := json.Unmarshal(r.ev.Data(), &got); err != nil {
			t.Fatal(err)
		}
		if r.ev.Type() != "com.acme.reading" || got["n"] != float64(i) || got["device"] != makeEvent(i, 3).Extensions()["partitionkey"] ||
			r.ev.Extensions()["seq"] != nil || r.header.Get("Content-Type") != "application/json" {
			t.Fatalf("delivered %v with data %v", r.ev, got)
		}
	}
	dls := deadLetters(t, lg, "$deadletter/tf")
	if len(dls) != 1 || dls[0].ID() != bad.ID() || dls[0].Type() != bad.Type() || string(dls[0].Data()) != string(bad.Data()) ||
		!strings.Contains(extString(t, dls[0], ExtDLReason), "transform: data: no such key: i") || extString(t, dls[0], ExtDLAttempts) != "0" {
		t.Fatalf("dead letter: %v", dls)
	}
}

// FuzzTransform compiles untrusted expressions (from the subscription API)
// and applies them: nothing may panic, every rejection is a FieldError or
// an ErrTransform.
func FuzzTransform(f *testing.F) {
	for _, s := range []string{
		`{"t": data.t}`, `"%s".format([event.id])`, `data.?x.orValue(1)`, `null`, `b"\xff"`,
		`[1,2].map(x, x * 2)`, `{"a": `, `data.tags.filter(t, t == "a")`, `event.time + duration("1h")`,
		`math.greatest([1, 2])`, `"abc".substring(1)`, `base64.decode("!!")`, `1 / 0`, `int("x")`,
		`[[[[[[[[[[]]]]]]]]]]`, `"\u0000"`, `timestamp("x")`, `dyn(data).t.u.v`, `data[0]`,
	} {
		f.Add(s, "type")
	}
	f.Fuzz(func(t *testing.T, expr, attr string) {
		for _, tf := range []Transform{{Data: expr}, {Attributes: map[string]string{attr: expr}}} {
			sub := Subscription{ID: "f", Sink: "http://127.0.0.1:1/", Transform: &tf}
			c, err := sub.compile()
			if err != nil {
				var fe *FieldError
				if !errors.As(err, &fe) {
					t.Fatalf("compile error is not a FieldError: %v", err)
				}
				continue
			}
			out, err := c.transform.apply(context.Background(), reading())
			if err != nil {
				if !errors.Is(err, ErrTransform) {
					t.Fatalf("apply error is not ErrTransform: %v", err)
				}
				continue
			}
			if out.ID() != "r-1" || out.Validate() != nil {
				t.Fatalf("transformed event: %v", out)
			}
		}
	})
}
