package broker

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// ErrBadFilter is returned (wrapped) for a topic filter that MQTT does not
// allow.
var ErrBadFilter = errors.New("invalid topic filter")

// ValidateFilter reports whether filter is a valid MQTT topic filter
// (MQTT 3.1.1 §4.7, MQTT 5 §4.7): non-empty UTF-8 without NUL, at most
// 65,535 bytes, '+' alone in its level, '#' alone in the last level. The error
// wraps ErrBadFilter and names the offending position.
func ValidateFilter(filter string) error {
	if filter == "" {
		return fmt.Errorf("%w: empty", ErrBadFilter)
	}
	if len(filter) > 65535 {
		return fmt.Errorf("%w: %d bytes, more than 65535", ErrBadFilter, len(filter))
	}
	if !utf8.ValidString(filter) {
		return fmt.Errorf("%w: not UTF-8", ErrBadFilter)
	}
	if i := strings.IndexByte(filter, 0); i >= 0 {
		return fmt.Errorf("%w: NUL at byte %d", ErrBadFilter, i)
	}
	for i := 0; i < len(filter); i++ {
		switch filter[i] {
		case '+':
			if (i > 0 && filter[i-1] != '/') || (i+1 < len(filter) && filter[i+1] != '/') {
				return fmt.Errorf("%w: '+' at byte %d does not fill its level", ErrBadFilter, i)
			}
		case '#':
			if (i > 0 && filter[i-1] != '/') || i != len(filter)-1 {
				return fmt.Errorf("%w: '#' at byte %d is not the whole last level", ErrBadFilter, i)
			}
		}
	}
	return nil
}

// MatchTopic reports whether the topic name matches the topic filter, with
// MQTT's rules: '+' matches exactly one level (which may be empty), '#'
// matches the parent level and any number of levels below it, and a wildcard
// in the first level never matches a topic that starts with '$' (MQTT 5
// §4.7.2), so "#" does not match "$SYS/x" but "$SYS/#" does. Matching is
// case-sensitive. The filter is assumed valid (see ValidateFilter); an
// invalid filter matches nothing it should not, and never panics.
func MatchTopic(filter, topic string) bool {
	if topic != "" && topic[0] == '$' && filter != "" && (filter[0] == '+' || filter[0] == '#') {
		return false
	}
	for {
		fl, frest, fmore := strings.Cut(filter, "/")
		if fl == "#" && !fmore {
			return true // matches this level and everything below, including "a" for "a/#"
		}
		tl, trest, tmore := strings.Cut(topic, "/")
		if fl != "+" && fl != tl {
			return false
		}
		switch {
		case !fmore && !tmore:
			return true
		case !tmore:
			// The topic ended; only a trailing "/#" may still match.
			return frest == "#"
		case !fmore:
			return false
		}
		filter, topic = frest, trest
	}
}
