package broker

import (
	"errors"
	"strings"
	"testing"
)

func TestMatchTopic(t *testing.T) {
	tests := []struct {
		filter, topic string
		want          bool
	}{
		{"sensors/#", "sensors", true}, // '#' includes the parent level
		{"sensors/#", "sensors/", true},
		{"sensors/#", "sensors/a/b/c", true},
		{"sensors/#", "sensorsx/a", false},
		{"sensors/#", "other/a", false},
		{"#", "a", true},
		{"#", "/", true},
		{"#", "a/b/c", true},
		{"#", "$SYS/broker/uptime", false}, // no wildcard at level 1 matches '$'
		{"+", "$SYS", false},
		{"+/broker/uptime", "$SYS/broker/uptime", false},
		{"$SYS/#", "$SYS/broker/uptime", true},
		{"$SYS/+/uptime", "$SYS/broker/uptime", true},
		{"a/$x/#", "a/$x/b", true}, // '$' only matters at the first level
		{"a/+/#", "a/$x/b", true},
		{"+", "a", true},
		{"+", "a/b", false},
		{"+", "", true},
		{"+", "/", false},
		{"+/+", "/", true}, // two empty levels
		{"/+", "/a", true},
		{"/+", "a", false},
		{"a/+", "a/", true}, // '+' matches an empty level
		{"a/+", "a", false},
		{"a/+/c", "a/b/c", true},
		{"a/+/c", "a/b/d", false},
		{"a/+/#", "a", false}, // '+' needs a level to match
		{"a/+/#", "a/b", true},
		{"a/b", "a/b", true},
		{"a/b", "a/B", false}, // case-sensitive
		{"a/b", "a/b/", false},
		{"a/b/", "a/b", false},
		{"a//b", "a//b", true},
		{"a/#", "a//b", true},
		{"sport/tennis/+", "sport/tennis/player1", true},
		{"sport/tennis/+", "sport/tennis/player1/ranking", false},
		{"sport/+", "sport", false},
		{"sport/+", "sport/", true},
	}
	for _, tt := range tests {
		if got := MatchTopic(tt.filter, tt.topic); got != tt.want {
			t.Errorf("MatchTopic(%q, %q) = %v, want %v", tt.filter, tt.topic, got, tt.want)
		}
		if got := modelMatch(tt.filter, tt.topic); got != tt.want {
			t.Errorf("model(%q, %q) = %v, want %v (the model is wrong)", tt.filter, tt.topic, got, tt.want)
		}
	}
}

func TestValidateFilter(t *testing.T) {
	good := []string{"#", "+", "a", "a/b", "a/+", "+/+", "a/#", "/", "//", "+/#", "$SYS/#", "a/+/c/#", "ü/+"}
	for _, f := range good {
		if err := ValidateFilter(f); err != nil {
			t.Errorf("ValidateFilter(%q) = %v, want nil", f, err)
		}
	}
	bad := []string{"", "a#", "#/a", "a/#/b", "a+", "+a", "a/b+", "a/+b/c", "##", "a/##", "\xff", "a\x00b", strings.Repeat("a", 65536)}
	for _, f := range bad {
		err := ValidateFilter(f)
		if !errors.Is(err, ErrBadFilter) {
			t.Errorf("ValidateFilter(%q) = %v, want ErrBadFilter", f, err)
		}
	}
}

// modelMatch is a deliberately plain reading of MQTT §4.7: split into levels
// and compare level by level.
func modelMatch(filter, topic string) bool {
	f := strings.Split(filter, "/")
	tp := strings.Split(topic, "/")
	if strings.HasPrefix(topic, "$") && (f[0] == "+" || f[0] == "#") {
		return false
	}
	for i, level := range f {
		if level == "#" {
			return i == len(f)-1
		}
		if i >= len(tp) {
			return false
		}
		if level != "+" && level != tp[i] {
			return false
		}
	}
	return len(f) == len(tp)
}

// FuzzMatchTopic checks MatchTopic against the model for every valid filter
// and any topic name (topic names come from devices: untrusted).
func FuzzMatchTopic(f *testing.F) {
	seeds := [][2]string{
		{"sensors/#", "sensors/a"}, {"#", "$SYS/x"}, {"+/+", "/"}, {"a/+/#", "a"},
		{"$SYS/#", "$SYS"}, {"a//b", "a//b"}, {"+", ""}, {"a/#", "a"},
	}
	for _, s := range seeds {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, filter, topic string) {
		got := MatchTopic(filter, topic) // must not panic on any input
		if ValidateFilter(filter) != nil || strings.ContainsAny(topic, "+#") {
			return
		}
		if want := modelMatch(filter, topic); got != want {
			t.Fatalf("MatchTopic(%q, %q) = %v, model says %v", filter, topic, got, want)
		}
	})
}

func TestRouter(t *testing.T) {
	rules := []Rule{
		{Filter: "sensors/debug/#", Local: true},
		{Filter: "sensors/+/alarm", Type: "io.tributary.alarm", Priority: 0},
		{Filter: "sensors/#", Type: "io.tributary.telemetry", Priority: 3},
		{Filter: "cmd/#", Type: "never.used", Local: true},
		{Filter: "#"}, // empty type: the default
	}
	r := newRouter(rules)
	tests := []struct {
		topic string
		want  Route
	}{
		{"sensors/debug/x", Route{}},                               // first match wins, even before a broader forward rule
		{"sensors/t1/alarm", Route{true, "io.tributary.alarm", 0}}, // more specific rule listed first
		{"sensors/t1/temp", Route{true, "io.tributary.telemetry", 3}},
		{"sensors", Route{true, "io.tributary.telemetry", 3}},
		{"cmd/reboot", Route{}},
		{"other", Route{true, DefaultEventType, 0}},
		{"$SYS/x", Route{}}, // '#' does not match '$' topics and nothing else does: local
		{"$share/x", Route{}},
	}
	for _, tt := range tests {
		if got := r.route(tt.topic); got != tt.want {
			t.Errorf("route(%q) = %+v, want %+v", tt.topic, got, tt.want)
		}
	}

	def := newRouter(nil)
	for topic, want := range map[string]Route{
		"a":           {true, DefaultEventType, 0},
		"a/b/c":       {true, DefaultEventType, 0},
		"$SYS":        {},
		"$SYS/broker": {},
		"$SYSTEM/x":   {true, DefaultEventType, 0}, // only $SYS is excluded by default
		"$other/x":    {true, DefaultEventType, 0},
	} {
		if got := def.route(topic); got != want {
			t.Errorf("default route(%q) = %+v, want %+v", topic, got, want)
		}
	}

	// A configured list that matches nothing keeps the topic local.
	only := newRouter([]Rule{{Filter: "sensors/#"}})
	if got := only.route("other/topic"); got.Forward {
		t.Errorf("unmatched topic forwarded: %+v", got)
	}
}
