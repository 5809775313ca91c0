// Command tributary-cloud is the Tributary cloud: the QUIC endpoint gateways
// forward to, the central log every message is appended to, and the push
// delivery of CloudEvents to subscribers' sinks.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/tributary-io/tributary/cloud/dispatch"
	"github.com/tributary-io/tributary/cloud/server"
	"github.com/tributary-io/tributary/sync/pki"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `tributary-cloud: the Tributary cloud.

Gateways connect over QUIC with mutual TLS and forward their outboxes; every
record is appended to the central log and fsync'd before the gateway is told
it may delete it. Subscriptions push the log's events as CloudEvents over HTTP.

Usage:
  tributary-cloud [-config cloud.yaml] [flags]      run the cloud
  tributary-cloud gateway add <id> [-out dir]       mint a gateway certificate
                                                    from the CA in <data dir>/pki
  tributary-cloud gateway revoke <gateway.crt>      refuse that certificate from the
                                                    next connection on (listed in
                                                    <data dir>/revoked-gateways.txt)

Configuration comes from the YAML file given with -config (unknown keys are
errors; see deploy/config/cloud.yaml for every key), then flags override it.
With no certificates configured, the first start creates a development PKI in
<data dir>/pki; gateways started with -dev-ca-dir <data dir>/pki trust it.

Quick start:
  tributary-cloud -data-dir ./data/cloud -sink http://127.0.0.1:9000/

Flags:
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "gateway" {
		return gatewayCmd(args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("tributary-cloud", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	configPath := fs.String("config", "", "YAML configuration `file` (optional; flags override it)")
	dataDir := fs.String("data-dir", "", "data `directory` (default: from the config, else "+server.DefaultDataDir+")")
	syncListen := fs.String("sync-listen", "", "QUIC listen `address` for gateways (default :7443)")
	apiListen := fs.String("api-listen", "", "HTTP API listen `address` (default :8080)")
	sinkURL := fs.String("sink", "", "add a subscription named \"default\" pushing every event to this `URL`")
	sinkLanes := fs.Int("sink-parallelism", 64, "ordered delivery lanes of the -sink subscription (per-device order is kept)")
	logLevel := fs.String("log-level", "", "debug, info, warn or error (default info)")
	pprofOn := fs.Bool("pprof", false, "serve Go's profiler at /debug/pprof/ on the API listener")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *showVersion {
		fmt.Fprintln(stdout, "tributary-cloud", version)
		return 0
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "tributary-cloud: unexpected argument %q (see -h)\n", fs.Arg(0))
		return 2
	}
	var cfg server.Config
	if *configPath != "" {
		c, err := server.LoadConfig(*configPath)
		if err != nil {
			fmt.Fprintf(stderr, "tributary-cloud: %v\n", err)
			return 2
		}
		cfg = c
	}
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&cfg.DataDir, *dataDir)
	set(&cfg.Sync.Listen, *syncListen)
	set(&cfg.API.Listen, *apiListen)
	set(&cfg.LogLevel, *logLevel)
	if *pprofOn {
		cfg.API.Pprof = true
	}
	if *sinkURL != "" {
		cfg.Subscriptions = append(cfg.Subscriptions, dispatch.Subscription{ID: "default", Sink: *sinkURL, Parallelism: *sinkLanes})
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "tributary-cloud: %v\n", err)
		return 2
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: server.ParseLevel(cfg.LogLevel)}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	srv, err := server.New(cfg, logger)
	if err != nil {
		logger.Error("start failed", "err", err)
		return 1
	}
	logger.Info("tributary-cloud started", "version", version, "sync", srv.SyncAddr(), "api", srv.APIAddr(), "data_dir", srv.DataDir())
	err = srv.Run(ctx)
	if cerr := srv.Close(); cerr != nil && err == nil {
		err = cerr
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		logger.Error("stopped with error", "err", err)
		return 1
	}
	logger.Info("tributary-cloud stopped")
	return 0
}

func gatewayCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "revoke" {
		return revokeCmd(args[1:], stdout, stderr)
	}
	if len(args) == 0 || args[0] != "add" {
		fmt.Fprintln(stderr, "usage: tributary-cloud gateway add <id> [-data-dir dir] [-out dir]")
		fmt.Fprintln(stderr, "       tributary-cloud gateway revoke <gateway.crt> [-data-dir dir]")
		return 2
	}
	fs := flag.NewFlagSet("tributary-cloud gateway add", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dataDir := fs.String("data-dir", server.DefaultDataDir, "the cloud's data `directory` (its CA is in <dir>/pki)")
	out := fs.String("out", "", "output `directory` for the gateway's files (default ./<id>)")
	// The id comes first (gateway add <id> -out x) or after the flags.
	rest := args[1:]
	var id string
	if len(rest) > 0 && len(rest[0]) > 0 && rest[0][0] != '-' {
		id, rest = rest[0], rest[1:]
	}
	if err := fs.Parse(rest); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if id == "" && fs.NArg() > 0 {
		id = fs.Arg(0)
	}
	if id == "" {
		fmt.Fprintln(stderr, "usage: tributary-cloud gateway add <id> [-data-dir dir] [-out dir]")
		return 2
	}
	dir := *out
	if dir == "" {
		dir = id
	}
	files, err := server.AddGateway(filepath.Join(*dataDir, "pki"), id, dir)
	if err != nil {
		fmt.Fprintf(stderr, "tributary-cloud: gateway add %s: %v\n", id, err)
		return 1
	}
	for _, f := range files {
		fmt.Fprintln(stdout, f)
	}
	return 0
}

// revokeCmd lists a gateway certificate in <data_dir>/revoked-gateways.txt:
// the running cloud refuses it from the next connection on.
func revokeCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("tributary-cloud gateway revoke", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dataDir := fs.String("data-dir", server.DefaultDataDir, "the cloud's data `directory`")
	var certFile string
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		certFile, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if certFile == "" && fs.NArg() > 0 {
		certFile = fs.Arg(0)
	}
	if certFile == "" {
		fmt.Fprintln(stderr, "usage: tributary-cloud gateway revoke <gateway.crt> [-data-dir dir]")
		return 2
	}
	cert, err := pki.LoadCert(certFile)
	if err != nil {
		fmt.Fprintf(stderr, "tributary-cloud: gateway revoke: %v\n", err)
		return 1
	}
	id, err := pki.GatewayID(cert)
	if err != nil {
		fmt.Fprintf(stderr, "tributary-cloud: gateway revoke %s: not a gateway certificate: %v\n", certFile, err)
		return 1
	}
	list := filepath.Join(*dataDir, server.RevokedFile)
	if err := pki.Revoke(list, cert, time.Now()); err != nil {
		fmt.Fprintf(stderr, "tributary-cloud: gateway revoke: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "revoked gateway %s certificate %s in %s\n", id, cert.SerialNumber.Text(16), list)
	return 0
}
