// Command tributary-edge is the Tributary edge gateway: an MQTT broker for
// devices that commits every forwarded message to a durable SQLite outbox
// before acknowledging it, and a QUIC link that store-and-forwards the outbox
// to the Tributary cloud.
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
	"syscall"

	"github.com/tributary-io/tributary/edge/gateway"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `tributary-edge: the Tributary edge gateway.

Devices publish over MQTT (3.1.1 or 5) to this gateway. Every message a
forwarding rule sends to the cloud is committed to a SQLite outbox in the data
directory before its PUBACK goes out, then forwarded over QUIC (mutual TLS) to
tributary-cloud and deleted only once the cloud holds it durably.

Usage:
  tributary-edge [-config edge.yaml] [flags]

Configuration comes from the YAML file given with -config (unknown keys are
errors; see deploy/config/edge.yaml for every key), then flags override it.

Quick development setup next to a local tributary-cloud (whose first start
created a development CA in <cloud data dir>/pki):
  tributary-edge -gateway-id gw-1 -data-dir ./data/gw-1 \
    -cloud 127.0.0.1:7443 -dev-ca-dir ./data/cloud/pki

Flags:
`

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("tributary-edge", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	configPath := fs.String("config", "", "YAML configuration `file` (optional; flags override it)")
	gatewayID := fs.String("gateway-id", "", "gateway `id` (default: from the config, else from the certificate)")
	dataDir := fs.String("data-dir", "", "data `directory` for the outbox (default: from the config, else "+gateway.DefaultDataDir+")")
	mqttAddr := fs.String("mqtt-listen", "", "MQTT TCP listen `address` (default: from the config, else :1883)")
	cloudAddr := fs.String("cloud", "", "cloud sync endpoint `host:port`")
	caFile := fs.String("cloud-ca", "", "PEM `file` of the CA the cloud's certificate chains to")
	certFile := fs.String("cloud-cert", "", "PEM `file` with this gateway's certificate")
	keyFile := fs.String("cloud-key", "", "PEM `file` with this gateway's private key")
	devCA := fs.String("dev-ca-dir", "", "development only: `directory` with the cloud's dev CA; the gateway mints its own certificate from it")
	metrics := fs.String("metrics-listen", "", "serve /metrics and /healthz on this `address`")
	logLevel := fs.String("log-level", "", "debug, info, warn or error (default info)")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *showVersion {
		fmt.Println("tributary-edge", version)
		return 0
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "tributary-edge: unexpected argument %q (see -h)\n", fs.Arg(0))
		return 2
	}

	var cfg gateway.Config
	if *configPath != "" {
		c, err := gateway.LoadConfig(*configPath)
		if err != nil {
			fmt.Fprintf(stderr, "tributary-edge: %v\n", err)
			return 2
		}
		cfg = c
	}
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&cfg.GatewayID, *gatewayID)
	set(&cfg.DataDir, *dataDir)
	set(&cfg.MQTT.Listeners.TCP.Address, *mqttAddr)
	set(&cfg.Cloud.Address, *cloudAddr)
	set(&cfg.Cloud.CAFile, *caFile)
	set(&cfg.Cloud.CertFile, *certFile)
	set(&cfg.Cloud.KeyFile, *keyFile)
	set(&cfg.Cloud.DevCADir, *devCA)
	set(&cfg.MetricsListen, *metrics)
	set(&cfg.LogLevel, *logLevel)
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "tributary-edge: %v\n", err)
		return 2
	}

	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: gateway.ParseLevel(cfg.LogLevel)}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	gw, err := gateway.New(cfg, logger)
	if err != nil {
		logger.Error("start failed", "err", err)
		return 1
	}
	logger.Info("tributary-edge started", "version", version, "gateway", gw.ID(), "mqtt", gw.MQTTAddr(), "cloud", cfg.Cloud.Address, "data_dir", gw.DataDir())
	err = gw.Run(ctx)
	if cerr := gw.Close(); cerr != nil && err == nil {
		err = cerr
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		logger.Error("stopped with error", "err", err)
		return 1
	}
	logger.Info("tributary-edge stopped")
	return 0
}
