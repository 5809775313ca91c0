// Package scenarios holds the fleet simulator's shipped scenarios, one YAML
// file each, embedded so that `go run ./simulations/cmd/fleetsim -scenario
// <name>` works from any directory. simulations/fleet decodes and validates
// them (fleet.ParseScenario); this package only stores them.
package scenarios

import (
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
)

//go:embed *.yaml
var files embed.FS

// ErrUnknown is returned (wrapped) by Get for a name that is not shipped.
var ErrUnknown = errors.New("no such shipped scenario")

// Names lists the shipped scenarios, sorted.
func Names() []string {
	entries, _ := fs.ReadDir(files, ".")
	var names []string
	for _, e := range entries {
		if n, ok := strings.CutSuffix(e.Name(), ".yaml"); ok {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	return names
}

// Get returns the YAML of the shipped scenario name.
func Get(name string) ([]byte, error) {
	if !slices.Contains(Names(), name) {
		return nil, fmt.Errorf("%w %q (shipped: %s)", ErrUnknown, name, strings.Join(Names(), ", "))
	}
	return files.ReadFile(name + ".yaml")
}
