// Package filter holds the filter expressions of the CloudEvents Subscriptions
// API: the dialects exact, prefix, suffix, all, any, not and sql (CESQL).
//
// A Filter is configuration: it decodes from JSON or YAML in the API's shape
// ({"prefix": {"type": "com.example."}}), and Compile turns it into a Matcher
// or an *Error that names the path of the bad expression (for example
// "filters[1].all[0].sql: line 1:7: mismatched input ..."), so a bad filter can
// be answered with a 400 that points at it. Compile never panics, whatever the
// input; CESQL's parser does on some inputs, and that is recovered here.
package filter

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cloudevents/sdk-go/v2/binding/spec"
	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/types"
)

// Limits that keep hostile filters cheap to reject and to evaluate.
const (
	// MaxDepth is the deepest nesting of all/any/not accepted.
	MaxDepth = 32
	// MaxSQLLen is the longest CESQL expression accepted, in bytes.
	MaxSQLLen = 4096
	// MaxAttributeLen bounds attribute names in exact/prefix/suffix.
	MaxAttributeLen = 64
)

// ErrInvalid is matched (errors.Is) by every error Compile and the decoders
// return for a bad filter.
var ErrInvalid = errors.New("invalid filter")

// Error is a bad filter: Path locates it ("filters[2].not.sql"), Err says
// what is wrong with it.
type Error struct {
	Path string
	Err  error
}

func (e *Error) Error() string {
	if e.Path == "" {
		return e.Err.Error()
	}
	return e.Path + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrInvalid) true for every *Error.
func (e *Error) Is(target error) bool { return target == ErrInvalid }

func errorf(path, format string, args ...any) *Error {
	return &Error{Path: path, Err: fmt.Errorf(format, args...)}
}

// Filter is one filter expression. Exactly one field must be set; which one
// is the dialect.
//
// The zero Filter is invalid (no dialect). Go code builds filters directly;
// JSON and YAML decode through UnmarshalJSON/UnmarshalYAML, which reject
// unknown dialects and objects with more than one.
type Filter struct {
	// Exact matches when every named attribute exists and its string form
	// equals the value (case sensitive). Names and values must be non-empty.
	Exact map[string]string `json:"exact,omitempty" yaml:"exact,omitempty"`
	// Prefix matches when every named attribute exists and starts with the value.
	Prefix map[string]string `json:"prefix,omitempty" yaml:"prefix,omitempty"`
	// Suffix matches when every named attribute exists and ends with the value.
	Suffix map[string]string `json:"suffix,omitempty" yaml:"suffix,omitempty"`
	// All matches when every nested filter matches (at least one required).
	All []Filter `json:"all,omitempty" yaml:"all,omitempty"`
	// Any matches when at least one nested filter matches (at least one required).
	Any []Filter `json:"any,omitempty" yaml:"any,omitempty"`
	// Not matches when the nested filter does not.
	Not *Filter `json:"not,omitempty" yaml:"not,omitempty"`
	// SQL is a CloudEvents SQL expression. The event matches when the result,
	// coerced to boolean, is TRUE; an evaluation error (a missing attribute,
	// a division by zero) means no match, as the Subscriptions API says.
	SQL string `json:"sql,omitempty" yaml:"sql,omitempty"`
}

// Matcher decides whether an event passes a filter. Implementations are safe
// for concurrent use and never panic.
type Matcher interface {
	Match(e *event.Event) bool
}

// Compile checks f and returns its matcher. The error is an *Error whose path
// starts at path (pass "" or, say, "filters[3]").
func (f Filter) Compile(path string) (Matcher, error) {
	return f.compile(path, 0)
}

// CompileAll compiles a subscription's filter list: an event passes when every
// filter matches, and an empty list passes everything. Paths are
// "filters[i]...".
func CompileAll(filters []Filter) (Matcher, error) {
	ms := make(allMatcher, 0, len(filters))
	for i, f := range filters {
		m, err := f.compile(fmt.Sprintf("filters[%d]", i), 1)
		if err != nil {
			return nil, err
		}
		ms = append(ms, m)
	}
	return ms, nil
}

func (f Filter) dialects() []string {
	var ds []string
	if f.Exact != nil {
		ds = append(ds, "exact")
	}
	if f.Prefix != nil {
		ds = append(ds, "prefix")
	}
	if f.Suffix != nil {
		ds = append(ds, "suffix")
	}
	if f.All != nil {
		ds = append(ds, "all")
	}
	if f.Any != nil {
		ds = append(ds, "any")
	}
	if f.Not != nil {
		ds = append(ds, "not")
	}
	if f.SQL != "" {
		ds = append(ds, "sql")
	}
	return ds
}

func join(path, elem string) string {
	if path == "" {
		return elem
	}
	return path + "." + elem
}

func (f Filter) compile(path string, depth int) (Matcher, error) {
	if depth > MaxDepth {
		return nil, errorf(path, "filters nested deeper than %d", MaxDepth)
	}
	ds := f.dialects()
	switch len(ds) {
	case 0:
		return nil, errorf(path, "no filter dialect set (want one of exact, prefix, suffix, all, any, not, sql)")
	case 1:
	default:
		return nil, errorf(path, "more than one filter dialect in one expression: %s", strings.Join(ds, ", "))
	}
	switch ds[0] {
	case "exact":
		return compileAttrs(join(path, "exact"), f.Exact, func(v, want string) bool { return v == want })
	case "prefix":
		return compileAttrs(join(path, "prefix"), f.Prefix, strings.HasPrefix)
	case "suffix":
		return compileAttrs(join(path, "suffix"), f.Suffix, strings.HasSuffix)
	case "all", "any":
		list, name := f.All, "all"
		if ds[0] == "any" {
			list, name = f.Any, "any"
		}
		if len(list) == 0 {
			return nil, errorf(join(path, name), "needs at least one filter expression")
		}
		ms := make([]Matcher, 0, len(list))
		for i, sub := range list {
			m, err := sub.compile(fmt.Sprintf("%s[%d]", join(path, name), i), depth+1)
			if err != nil {
				return nil, err
			}
			ms = append(ms, m)
		}
		if name == "all" {
			return allMatcher(ms), nil
		}
		return anyMatcher(ms), nil
	case "not":
		m, err := f.Not.compile(join(path, "not"), depth+1)
		if err != nil {
			return nil, err
		}
		return notMatcher{m}, nil
	default: // "sql"
		return compileSQL(join(path, "sql"), f.SQL)
	}
}

type allMatcher []Matcher

func (ms allMatcher) Match(e *event.Event) bool {
	for _, m := range ms {
		if !m.Match(e) {
			return false
		}
	}
	return true
}

type anyMatcher []Matcher

func (ms anyMatcher) Match(e *event.Event) bool {
	for _, m := range ms {
		if m.Match(e) {
			return true
		}
	}
	return false
}

type notMatcher struct{ m Matcher }

func (n notMatcher) Match(e *event.Event) bool { return !n.m.Match(e) }

type attrTest struct{ name, value string }

type attrMatcher struct {
	tests []attrTest
	cmp   func(v, want string) bool
}

func compileAttrs(path string, attrs map[string]string, cmp func(v, want string) bool) (Matcher, error) {
	if len(attrs) == 0 {
		return nil, errorf(path, "needs at least one attribute")
	}
	m := attrMatcher{cmp: cmp}
	for name, value := range attrs {
		if err := checkAttrName(name); err != nil {
			return nil, &Error{Path: path, Err: err}
		}
		if value == "" {
			return nil, errorf(path+"."+name, "value must not be empty")
		}
		m.tests = append(m.tests, attrTest{name, value})
	}
	return m, nil
}

// checkAttrName enforces the CloudEvents naming rule: lower-case letters and
// digits only.
func checkAttrName(name string) error {
	if name == "" {
		return errors.New("attribute name must not be empty")
	}
	if len(name) > MaxAttributeLen {
		return fmt.Errorf("attribute name longer than %d bytes", MaxAttributeLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return fmt.Errorf("attribute name %q: only lower-case letters a-z and digits are allowed", name)
		}
	}
	return nil
}

func (m attrMatcher) Match(e *event.Event) bool {
	for _, t := range m.tests {
		v, ok := Attribute(e, t.name)
		if !ok || !m.cmp(v, t.value) {
			return false
		}
	}
	return true
}

// Attribute returns the canonical string form of a context attribute or
// extension of e (times in RFC 3339, binary in base64), and false if e does
// not have it.
func Attribute(e *event.Event, name string) (string, bool) {
	var v any
	if a := spec.V1.Attribute(name); a != nil {
		v = a.Get(e.Context)
	} else {
		v = e.Extensions()[name]
	}
	if v == nil {
		return "", false
	}
	s, err := types.Format(v)
	if err != nil {
		return "", false
	}
	return s, true
}
