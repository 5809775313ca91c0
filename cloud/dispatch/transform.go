package dispatch

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"mime"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	cetypes "github.com/cloudevents/sdk-go/v2/types"
	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
	"github.com/google/cel-go/ext"
	"google.golang.org/protobuf/types/known/structpb"
)

// Transformation: reshaping an event before delivery.
//
// The language is CEL, the Common Expression Language
// (https://cel.dev), for these reasons:
//
//   - Users know it: it is the expression language of Kubernetes (CRD
//     validation rules, ValidatingAdmissionPolicy, MutatingAdmissionPolicy),
//     Envoy and Google Cloud (IAM conditions, and Eventarc Advanced, which
//     transforms CloudEvents with it, much as we do). Its syntax is the
//     C/JavaScript family: data.temp * 1.8 + 32.0, event.subject + "/x",
//     {"id": event.id, "t": data.t}, "%s at %.1f".format([event.source, data.t]).
//   - It is a sandbox by design: no loops or recursion, no I/O, no clock or
//     randomness (a transformation is deterministic, so a redelivery sends
//     the same bytes), and the runtime counts the cost of every operation,
//     string and list sizes included, and stops at a limit. That bounds CPU
//     and memory per event with a number, not a wall clock, so a loaded
//     machine never turns a good transformation into a failure.
//   - Expressions are parsed and type-checked when the subscription is
//     created, with line and column in the error.
//
// Rejected: jq (gojq) is the best-known JSON reshaping language, but it is
// Turing-complete and a single operation can allocate gigabytes ("x" *
// 1e9), so only a wall-clock timeout could stop it. Go's text/template only
// makes text (JSON by string pasting is fragile), and a range over a large
// number cannot be interrupted. JSONata has no maintained Go
// implementation.
//
// What the expressions see: event, a map of the event's context attributes
// and extensions (time as a timestamp), and data, the event's data: parsed
// JSON for a JSON content type (objects, lists, strings, booleans, null,
// and numbers as doubles, as in JSON: write 1.0, or int(data.n)), a string
// for text/*, bytes otherwise, null when the event has none.

// Transform reshapes events before delivery with CEL expressions (see the
// comment above). Every expression sees the event as logged; the results
// are applied together. The dead letter of a transformed event holds the
// event as logged.
type Transform struct {
	// Data, if set, is an expression whose value becomes the event's data:
	// a map or list (or number, boolean) is sent as JSON with content type
	// application/json, a string as text (text/plain; charset=utf-8 unless
	// the event's content type was text/*), bytes as they are, null removes
	// the data. An attribute expression for datacontenttype overrides the
	// content type chosen here. Empty keeps the data.
	Data string `json:"data,omitempty" yaml:"data,omitempty"`
	// Attributes sets context attributes and extensions, by name, to the
	// value of an expression: a string (type, source, subject,
	// datacontenttype, dataschema and string extensions), a timestamp or
	// RFC 3339 string (time), an int, bool, bytes or timestamp
	// (extensions); null removes an optional attribute or an extension.
	// id and specversion cannot be set: the id stays the logged one, so
	// redeliveries carry the same id. Empty sets nothing.
	Attributes map[string]string `json:"attributes,omitempty" yaml:"attributes,omitempty"`
}

// Transformation limits.
const (
	// MaxTransformCost is the CEL runtime cost one expression may spend on
	// one event (about one unit per operation, more for operations on long
	// strings and lists); beyond it the event is dead-lettered.
	MaxTransformCost = 100_000
	// MaxTransformExprLen bounds the source of one expression, in bytes.
	MaxTransformExprLen = 16 << 10
	// MaxTransformOutput bounds the data a transformation produces, in bytes.
	MaxTransformOutput = 1 << 20
	// maxTransformAttrs bounds the number of attribute expressions.
	maxTransformAttrs = 64
)

// ErrTransform is matched (errors.Is) by every error a transformation
// returns for an event.
var ErrTransform = errors.New("transform")

type transformer struct {
	data  cel.Program // nil: keep the data
	attrs []attrProgram
}

type attrProgram struct {
	name string
	prg  cel.Program
}

var (
	celEnvOnce sync.Once
	celEnv     *cel.Env
	celEnvErr  error
	celMu      sync.Mutex // serialises compiles (rare; keeps the shared env simple)
)

func transformEnv() (*cel.Env, error) {
	celEnvOnce.Do(func() {
		celEnv, celEnvErr = cel.NewEnv(
			cel.Variable("event", cel.MapType(cel.StringType, cel.DynType)),
			cel.Variable("data", cel.DynType),
			cel.OptionalTypes(),
			ext.Strings(),
			ext.Encoders(),
			ext.Math(),
			ext.Lists(),
		)
	})
	return celEnv, celEnvErr
}

// compileTransform checks every expression; errors are *FieldError naming
// "transform.data" or "transform.attributes.<name>".
func compileTransform(t *Transform) (*transformer, error) {
	if t.Data == "" && len(t.Attributes) == 0 {
		return nil, fieldErr("transform", "set data, attributes or both (or leave transform out)")
	}
	if len(t.Attributes) > maxTransformAttrs {
		return nil, fieldErr("transform.attributes", "more than %d attributes", maxTransformAttrs)
	}
	tr := &transformer{}
	if t.Data != "" {
		prg, err := compileExpr(t.Data)
		if err != nil {
			return nil, &FieldError{Field: "transform.data", Err: err}
		}
		tr.data = prg
	}
	names := make([]string, 0, len(t.Attributes))
	for name := range t.Attributes {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		field := "transform.attributes." + name
		if err := checkSettableAttribute(name); err != nil {
			return nil, &FieldError{Field: field, Err: err}
		}
		prg, err := compileExpr(t.Attributes[name])
		if err != nil {
			return nil, &FieldError{Field: field, Err: err}
		}
		tr.attrs = append(tr.attrs, attrProgram{name: name, prg: prg})
	}
	return tr, nil
}

func checkSettableAttribute(name string) error {
	switch name {
	case "id", "specversion":
		return fmt.Errorf("%s cannot be set: redeliveries must carry the logged event's %s", name, name)
	case "data", "data_base64":
		return errors.New("set the data with transform.data")
	}
	if name == "" || len(name) > 20 {
		return fmt.Errorf("attribute name must have 1 to 20 characters, has %d", len(name))
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return fmt.Errorf("attribute name %q: only lower-case letters a-z and digits are allowed", name)
		}
	}
	return nil
}

// compileExpr parses and checks one expression; the error lists the
// problems as "line L:C: message".
func compileExpr(src string) (prg cel.Program, err error) {
	if strings.TrimSpace(src) == "" {
		return nil, errors.New("empty expression")
	}
	if len(src) > MaxTransformExprLen {
		return nil, fmt.Errorf("expression longer than %d bytes", MaxTransformExprLen)
	}
	env, err := transformEnv()
	if err != nil {
		return nil, fmt.Errorf("CEL environment: %w", err)
	}
	celMu.Lock()
	defer celMu.Unlock()
	defer func() {
		if r := recover(); r != nil {
			prg, err = nil, fmt.Errorf("expression not supported by the CEL compiler: %v", r)
		}
	}()
	ast, iss := env.Compile(src)
	if iss != nil && iss.Err() != nil {
		var msgs []string
		for _, e := range iss.Errors() {
			if len(msgs) == 5 {
				break
			}
			loc := e.Location
			msgs = append(msgs, fmt.Sprintf("line %d:%d: %s", loc.Line(), loc.Column()+1, e.Message))
		}
		return nil, errors.New(strings.Join(msgs, "; "))
	}
	prg, err = env.Program(ast, cel.CostLimit(MaxTransformCost), cel.InterruptCheckFrequency(64))
	if err != nil {
		return nil, err
	}
	return prg, nil
}

// apply returns the transformed copy of e; e is not changed. An error wraps
// ErrTransform and names the expression that failed, unless ctx ended (then
// it is ctx's error).
func (t *transformer) apply(ctx context.Context, e *event.Event) (*event.Event, error) {
	vars := map[string]any{"event": eventVars(e), "data": dataVar(e)}
	out := e.Clone()
	eval := func(prg cel.Program) (ref.Val, error) {
		v, _, err := safeEval(ctx, prg, vars)
		if err != nil && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return v, err
	}
	contentTypeSet := false
	for _, a := range t.attrs {
		v, err := eval(a.prg)
		if err == nil {
			err = setAttribute(&out, a.name, v)
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, err
			}
			return nil, fmt.Errorf("%w: attributes.%s: %w", ErrTransform, a.name, err)
		}
		contentTypeSet = contentTypeSet || a.name == "datacontenttype"
	}
	if t.data != nil {
		v, err := eval(t.data)
		if err == nil {
			err = setData(&out, e.DataContentType(), v, !contentTypeSet)
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, err
			}
			return nil, fmt.Errorf("%w: data: %w", ErrTransform, err)
		}
	}
	if err := out.Validate(); err != nil {
		return nil, fmt.Errorf("%w: the transformed event is not valid: %w", ErrTransform, err)
	}
	return &out, nil
}

func safeEval(ctx context.Context, prg cel.Program, vars map[string]any) (v ref.Val, det *cel.EvalDetails, err error) {
	defer func() {
		if r := recover(); r != nil {
			v, det, err = nil, nil, fmt.Errorf("evaluation panicked: %v", r)
		}
	}()
	return prg.ContextEval(ctx, vars)
}

// eventVars is the event variable: attributes and extensions by name.
func eventVars(e *event.Event) map[string]any {
	m := map[string]any{
		"specversion": e.SpecVersion(),
		"id":          e.ID(),
		"source":      e.Source(),
		"type":        e.Type(),
	}
	if s := e.Subject(); s != "" {
		m["subject"] = s
	}
	if t := e.Time(); !t.IsZero() {
		m["time"] = t
	}
	if s := e.DataContentType(); s != "" {
		m["datacontenttype"] = s
	}
	if s := e.DataSchema(); s != "" {
		m["dataschema"] = s
	}
	for k, v := range e.Extensions() {
		switch v := v.(type) {
		case cetypes.Timestamp:
			m[k] = v.Time
		case *cetypes.Timestamp:
			m[k] = v.Time
		case cetypes.URI, *cetypes.URI, cetypes.URIRef, *cetypes.URIRef:
			m[k] = fmt.Sprint(v)
		default:
			m[k] = v
		}
	}
	return m
}

// dataVar is the data variable (see the package comment on transformation).
func dataVar(e *event.Event) any {
	b := e.Data()
	if len(b) == 0 {
		return nil
	}
	switch mediaType(e.DataContentType()) {
	case "json":
		var v any
		dec := json.NewDecoder(bytes.NewReader(b))
		if dec.Decode(&v) == nil && !dec.More() {
			return v
		}
		return b // declared JSON but is not: the raw bytes
	case "text":
		return string(b)
	}
	return b
}

// mediaType sorts a content type into "json", "text" or "" (anything else).
func mediaType(ct string) string {
	if ct == "" {
		return "json" // the CloudEvents default for a structured event's data
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return ""
	}
	switch {
	case mt == "application/json", mt == "text/json", strings.HasSuffix(mt, "+json"):
		return "json"
	case strings.HasPrefix(mt, "text/"):
		return "text"
	}
	return ""
}

var structValueType = reflect.TypeFor[*structpb.Value]()

// setData replaces out's data with the value v; origType is the logged
// content type, and setType says whether the content type follows v.
func setData(out *event.Event, origType string, v ref.Val, setType bool) error {
	var b []byte
	ct := ""
	switch v.Type() {
	case types.NullType:
		out.DataEncoded, out.DataBase64 = nil, false
		if setType {
			out.SetDataContentType("")
		}
		return nil
	case types.StringType:
		b = []byte(v.Value().(string))
		ct = "text/plain; charset=utf-8"
		if mediaType(origType) == "text" && origType != "" {
			ct = origType
		}
	case types.BytesType:
		b = v.Value().([]byte)
		ct = origType
		if mediaType(origType) != "" {
			ct = "application/octet-stream"
		}
	default:
		pv, err := v.ConvertToNative(structValueType)
		if err != nil {
			return fmt.Errorf("a %s cannot be sent as data: %w", v.Type().TypeName(), err)
		}
		if b, err = json.Marshal(pv.(*structpb.Value).AsInterface()); err != nil {
			return fmt.Errorf("encode data as JSON: %w", err)
		}
		ct = "application/json"
	}
	if len(b) > MaxTransformOutput {
		return fmt.Errorf("data of %d bytes is above the %d-byte limit", len(b), MaxTransformOutput)
	}
	out.DataEncoded, out.DataBase64 = b, false
	if setType {
		out.SetDataContentType(ct)
	}
	return nil
}

// setAttribute sets attribute name of out to v (null removes it).
func setAttribute(out *event.Event, name string, v ref.Val) error {
	null := v.Type() == types.NullType
	str := func() (string, error) {
		s, ok := v.Value().(string)
		if !ok || v.Type() != types.StringType {
			return "", fmt.Errorf("want a string, got %s", v.Type().TypeName())
		}
		if len(s) > 4096 {
			return "", fmt.Errorf("value of %d bytes is above the 4096-byte limit", len(s))
		}
		return s, nil
	}
	switch name {
	case "type", "source":
		if null {
			return fmt.Errorf("%s is required and cannot be removed", name)
		}
		s, err := str()
		if err != nil {
			return err
		}
		if name == "type" {
			out.SetType(s)
		} else {
			out.SetSource(s)
		}
		return nil
	case "subject", "datacontenttype", "dataschema":
		s := ""
		if !null {
			var err error
			if s, err = str(); err != nil {
				return err
			}
		}
		switch name {
		case "subject":
			out.SetSubject(s)
		case "datacontenttype":
			out.SetDataContentType(s)
		default:
			out.SetDataSchema(s)
		}
		return nil
	case "time":
		switch {
		case null:
			out.SetTime(time.Time{})
		case v.Type() == types.TimestampType:
			out.SetTime(v.Value().(time.Time))
		default:
			s, err := str()
			if err != nil {
				return fmt.Errorf("want a timestamp or an RFC 3339 string, got %s", v.Type().TypeName())
			}
			t, err := time.Parse(time.RFC3339Nano, s)
			if err != nil {
				return err
			}
			out.SetTime(t)
		}
		return nil
	}
	if null {
		out.SetExtension(name, nil)
		return nil
	}
	var x any
	switch v.Type() {
	case types.StringType:
		s, err := str()
		if err != nil {
			return err
		}
		x = s
	case types.IntType:
		n := v.Value().(int64)
		if n < math.MinInt32 || n > math.MaxInt32 {
			return fmt.Errorf("%d does not fit a CloudEvents integer (32 bits)", n)
		}
		x = int32(n)
	case types.BoolType:
		x = v.Value().(bool)
	case types.BytesType:
		x = v.Value().([]byte)
	case types.TimestampType:
		x = v.Value().(time.Time)
	default:
		return fmt.Errorf("an extension holds a string, int, bool, bytes or timestamp, not a %s (use string() or int())", v.Type().TypeName())
	}
	return out.Context.SetExtension(name, x)
}
