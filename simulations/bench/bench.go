// Package bench holds the scenarios of Tributary's benchmark command
// (simulations/cmd/bench). Each scenario measures one part of the fabric,
// beside a peer where one applies, and returns figures that the command
// prints as the last line: RESULT {json}.
package bench

import (
	"context"
	"flag"
	"io"
	"sort"
)

// Scenario is one benchmark.
type Scenario struct {
	Name  string
	Brief string
	// Flags registers the scenario's flags; Run runs it with them parsed.
	Flags func(fs *flag.FlagSet) func(ctx context.Context, progress io.Writer) (map[string]any, error)
}

var registry = map[string]Scenario{}

// Register adds a scenario; scenarios call it from init.
func Register(s Scenario) { registry[s.Name] = s }

// Lookup finds a scenario by name.
func Lookup(name string) (Scenario, bool) {
	s, ok := registry[name]
	return s, ok
}

// All lists the scenarios by name.
func All() []Scenario {
	out := make([]Scenario, 0, len(registry))
	for _, s := range registry {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
