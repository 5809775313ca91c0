// Command bench is Tributary's benchmark command:
//
//	go run ./simulations/cmd/bench <scenario> [flags]
//
// Each scenario prints progress to stderr and, as its last line on stdout,
// RESULT {json} with its figures (and, where a peer ran beside it in the same
// run, the peer's figures and the ratio).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/tributary-io/tributary/simulations/bench"
)

func main() {
	os.Exit(run())
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: go run ./simulations/cmd/bench <scenario> [flags]\n\nscenarios:")
	for _, s := range bench.All() {
		fmt.Fprintf(os.Stderr, "  %-12s %s\n", s.Name, s.Brief)
	}
	fmt.Fprintln(os.Stderr, "\n<scenario> -h lists its flags.")
}

func run() int {
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		usage()
		if len(os.Args) < 2 {
			return 2
		}
		return 0
	}
	s, ok := bench.Lookup(os.Args[1])
	if !ok {
		fmt.Fprintf(os.Stderr, "bench: unknown scenario %q\n\n", os.Args[1])
		usage()
		return 2
	}
	fs := flag.NewFlagSet("bench "+s.Name, flag.ContinueOnError)
	runFn := s.Flags(fs)
	if err := fs.Parse(os.Args[2:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := runFn(ctx, os.Stderr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench %s: %v\n", s.Name, err)
		return 1
	}
	res["scenario"] = s.Name
	b, _ := json.Marshal(res)
	fmt.Printf("RESULT %s\n", b)
	return 0
}
