package broker

import (
	"fmt"
	"strings"

	"gopkg.in/yaml.v3"
)

// DefaultEventType is the CloudEvent type given to forwarded messages when
// no forwarding rules are configured.
const DefaultEventType = "io.tributary.telemetry"

// Rule is one forwarding rule. Rules are tried in order; the first whose
// Filter matches a publish's topic decides what happens to it. A listed rule
// forwards unless it says Local: a rule is how an operator names what goes to
// the cloud, so forgetting a key must not silently keep everything at the edge.
type Rule struct {
	// Filter is an MQTT topic filter ('+' and '#' allowed). Required.
	Filter string `yaml:"filter"`
	// Type is the CloudEvent type of forwarded messages. "" means
	// DefaultEventType.
	Type string `yaml:"type"`
	// Priority is the outbox priority class, 0 = highest. Zero value: 0.
	Priority uint8 `yaml:"priority"`
	// Local keeps matching messages at the edge: they reach local
	// subscribers only and never enter the outbox. The zero value (false)
	// forwards them to the cloud. In YAML, "local: true" or the equivalent
	// "forward: false"; giving both is an error.
	Local bool `yaml:"local"`
}

// UnmarshalYAML reads a rule, accepting "forward: <bool>" as the opposite of
// "local" so configs can say what they mean either way.
func (r *Rule) UnmarshalYAML(n *yaml.Node) error {
	var raw struct {
		Filter   string `yaml:"filter"`
		Type     string `yaml:"type"`
		Priority uint8  `yaml:"priority"`
		Local    *bool  `yaml:"local"`
		Forward  *bool  `yaml:"forward"`
	}
	if n.Kind == yaml.MappingNode {
		// n.Decode does not inherit the file decoder's KnownFields.
		for i := 0; i+1 < len(n.Content); i += 2 {
			switch k := n.Content[i]; k.Value {
			case "filter", "type", "priority", "local", "forward":
			default:
				return fmt.Errorf("line %d: field %s not found in a forwarding rule (filter, type, priority, local)", k.Line, k.Value)
			}
		}
	}
	if err := n.Decode(&raw); err != nil {
		return err
	}
	if raw.Local != nil && raw.Forward != nil {
		return fmt.Errorf("line %d: a forwarding rule has both local and forward: keep one (local: true = forward: false)", n.Line)
	}
	*r = Rule{Filter: raw.Filter, Type: raw.Type, Priority: raw.Priority}
	switch {
	case raw.Local != nil:
		r.Local = *raw.Local
	case raw.Forward != nil:
		r.Local = !*raw.Forward
	}
	return nil
}

// Route is what the rules decided for one topic.
type Route struct {
	Forward   bool
	EventType string
	Priority  uint8
}

// router applies an ordered rule list. It is immutable after construction
// and safe for concurrent use.
type router struct {
	rules []Rule // nil: the default policy
}

func newRouter(rules []Rule) *router {
	r := &router{rules: append([]Rule(nil), rules...)}
	for i := range r.rules {
		if r.rules[i].Type == "" {
			r.rules[i].Type = DefaultEventType
		}
	}
	return r
}

// route returns the decision for topic. With no rules configured every topic
// except those under $SYS is forwarded as DefaultEventType with priority 0.
// With rules configured, a topic no rule matches stays local.
func (r *router) route(topic string) Route {
	if len(r.rules) == 0 {
		if topic == "$SYS" || strings.HasPrefix(topic, "$SYS/") {
			return Route{}
		}
		return Route{Forward: true, EventType: DefaultEventType}
	}
	for _, rule := range r.rules {
		if MatchTopic(rule.Filter, topic) {
			if rule.Local {
				return Route{}
			}
			return Route{Forward: true, EventType: rule.Type, Priority: rule.Priority}
		}
	}
	return Route{}
}
