package filter

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"gopkg.in/yaml.v3"
)

// UnmarshalJSON decodes one filter expression in the Subscriptions API's
// shape: an object with exactly one key, the dialect. Unknown dialects and
// objects with several keys are rejected with ErrInvalid.
func (f *Filter) UnmarshalJSON(b []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return &Error{Err: fmt.Errorf("filter expression must be an object with one dialect key: %w", err)}
	}
	if raw == nil {
		return &Error{Err: fmt.Errorf("filter expression must be an object, not null")}
	}
	if err := checkOneKey(keysOf(raw)); err != nil {
		return err
	}
	var g Filter
	for dialect, v := range raw {
		var dst any
		switch dialect {
		case "exact":
			dst = &g.Exact
		case "prefix":
			dst = &g.Prefix
		case "suffix":
			dst = &g.Suffix
		case "all":
			dst = &g.All
		case "any":
			dst = &g.Any
		case "not":
			dst = &g.Not
		case "sql":
			dst = &g.SQL
		}
		if dialect == "all" || dialect == "any" {
			// Element by element, so an error names its position.
			var elems []json.RawMessage
			if err := json.Unmarshal(v, &elems); err != nil {
				return &Error{Path: dialect, Err: err}
			}
			list := make([]Filter, len(elems))
			for i, e := range elems {
				if err := json.Unmarshal(e, &list[i]); err != nil {
					return nestErr(fmt.Sprintf("%s[%d]", dialect, i), err)
				}
			}
			if elems != nil {
				*dst.(*[]Filter) = list
			}
		} else {
			dec := json.NewDecoder(bytes.NewReader(v))
			dec.DisallowUnknownFields()
			if err := dec.Decode(dst); err != nil {
				return nestErr(dialect, err)
			}
		}
		if err := checkPresent(dialect, g); err != nil {
			return err
		}
	}
	*f = g
	return nil
}

// UnmarshalYAML is UnmarshalJSON for YAML documents.
func (f *Filter) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.MappingNode {
		return &Error{Err: fmt.Errorf("line %d: filter expression must be a mapping with one dialect key", n.Line)}
	}
	var keys []string
	for i := 0; i+1 < len(n.Content); i += 2 {
		keys = append(keys, n.Content[i].Value)
	}
	if err := checkOneKey(keys); err != nil {
		return err
	}
	dialect, v := n.Content[0].Value, n.Content[1]
	var g Filter
	var err error
	switch dialect {
	case "exact":
		err = v.Decode(&g.Exact)
	case "prefix":
		err = v.Decode(&g.Prefix)
	case "suffix":
		err = v.Decode(&g.Suffix)
	case "all":
		err = v.Decode(&g.All)
	case "any":
		err = v.Decode(&g.Any)
	case "not":
		err = v.Decode(&g.Not)
	case "sql":
		err = v.Decode(&g.SQL)
	}
	if err != nil {
		return &Error{Path: dialect, Err: err}
	}
	if err := checkPresent(dialect, g); err != nil {
		return err
	}
	*f = g
	return nil
}

func keysOf(m map[string]json.RawMessage) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

func checkOneKey(keys []string) error {
	if len(keys) != 1 {
		return &Error{Err: fmt.Errorf("filter expression must have exactly one dialect key, has %d %q", len(keys), keys)}
	}
	switch keys[0] {
	case "exact", "prefix", "suffix", "all", "any", "not", "sql":
		return nil
	}
	return &Error{Err: fmt.Errorf("unsupported filter dialect %q (want one of exact, prefix, suffix, all, any, not, sql)", keys[0])}
}

// checkPresent rejects a dialect given as null or empty, which would
// otherwise decode to a Filter with no dialect and a vaguer error.
func checkPresent(dialect string, g Filter) error {
	if len(g.dialects()) == 1 {
		return nil
	}
	switch dialect {
	case "all", "any":
		return errorf(dialect, "needs at least one filter expression")
	case "sql":
		return errorf(dialect, "empty expression")
	case "not":
		return errorf(dialect, "needs a filter expression")
	}
	return errorf(dialect, "needs at least one attribute")
}

// nestErr puts path in front of err's own path (a nested filter's error),
// or wraps err at path.
func nestErr(path string, err error) error {
	var fe *Error
	if errors.As(err, &fe) {
		if fe.Path != "" {
			path += "." + fe.Path
		}
		return &Error{Path: path, Err: fe.Err}
	}
	return &Error{Path: path, Err: err}
}
