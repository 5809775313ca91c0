package broker

import "strings"

// DefaultEventType is the CloudEvent type given to forwarded messages when
// no forwarding rules are configured.
const DefaultEventType = "io.tributary.telemetry"

// Rule is one forwarding rule. Rules are tried in order; the first whose
// Filter matches a publish's topic decides what happens to it.
type Rule struct {
	// Filter is an MQTT topic filter ('+' and '#' allowed). Required.
	Filter string `yaml:"filter"`
	// Type is the CloudEvent type of forwarded messages. "" means
	// DefaultEventType.
	Type string `yaml:"type"`
	// Priority is the outbox priority class, 0 = highest. Zero value: 0.
	Priority uint8 `yaml:"priority"`
	// Forward sends matching messages to the cloud through the outbox. When
	// false (the zero value) matching messages stay local: they reach local
	// subscribers only and never enter the outbox.
	Forward bool `yaml:"forward"`
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
			if !rule.Forward {
				return Route{}
			}
			return Route{Forward: true, EventType: rule.Type, Priority: rule.Priority}
		}
	}
	return Route{}
}
