// Package gateway assembles the edge gateway: the MQTT broker devices talk
// to, the durable outbox it commits to before acknowledging, and the QUIC
// link that forwards the outbox to the cloud. tributary-edge runs one; the
// fleet simulator runs several in one process.
package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/tributary-io/tributary/edge/broker"
	"github.com/tributary-io/tributary/edge/outbox"
	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
	"github.com/tributary-io/tributary/sync/link"
	"github.com/tributary-io/tributary/sync/pki"
)

// Gateway is a running edge gateway.
type Gateway struct {
	cfg     Config
	id      string
	dataDir string
	log     *slog.Logger
	outbox  *outbox.Outbox
	broker  *broker.Broker
	client  *link.Client
	metrics *metricsServer

	commands *commandStore // commands.go
}

// New opens the outbox, starts the MQTT broker (devices may publish at once;
// messages are buffered durably while the cloud is unreachable) and prepares
// the cloud link, which Run drives. logger may be nil.
func New(cfg Config, logger *slog.Logger) (*Gateway, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	g := &Gateway{cfg: cfg, dataDir: cfg.DataDir, log: logger}
	if g.dataDir == "" {
		g.dataDir = DefaultDataDir
	}
	if err := os.MkdirAll(g.dataDir, 0o750); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	tlsConf, id, err := g.clientTLS()
	if err != nil {
		return nil, err
	}
	g.id = id

	obOpts := cfg.Outbox.options()
	obOpts.Logger = logger.With("part", "outbox")
	ob, err := outbox.Open(filepath.Join(g.dataDir, "outbox.db"), obOpts)
	if err != nil {
		return nil, fmt.Errorf("open outbox: %w", err)
	}
	g.outbox = ob

	mqttCfg := cfg.MQTT
	if mqttCfg.Sessions.File == "" {
		// Persistent sessions, subscriptions, retained and in-flight
		// messages survive a restart, beside the outbox.
		mqttCfg.Sessions.File = filepath.Join(g.dataDir, "sessions.db")
	}
	b, err := broker.New(mqttCfg, ob, logger.With("part", "mqtt"))
	if err != nil {
		ob.Close()
		return nil, fmt.Errorf("mqtt: %w", err)
	}
	if err := g.openCommands(b); err != nil { // commands.go
		ob.Close()
		return nil, err
	}
	if err := b.Start(); err != nil {
		g.commands.close()
		ob.Close()
		return nil, fmt.Errorf("mqtt: %w", err)
	}
	g.broker = b

	g.client = link.NewClient(link.ClientConfig{
		Addr:            cfg.Cloud.Address,
		TLS:             tlsConf,
		GatewayID:       id,
		Window:          cfg.Cloud.Window,
		MaxBatchBytes:   cfg.Cloud.MaxBatchBytes,
		Linger:          cfg.Cloud.Linger,
		Lanes:           clientLanes(ob), // lanes.go
		KeepAlivePeriod: cfg.Cloud.KeepAlive,
		MaxIdleTimeout:  cfg.Cloud.IdleTimeout,
		Logger:          logger.With("part", "link"),
		Commands:        g.commands,
	}, &source{ob: ob, gw: id})
	g.commands.start(b, g.client.SendCommandStatus)

	if cfg.MetricsListen != "" {
		m, err := startMetrics(cfg.MetricsListen, g)
		if err != nil {
			g.Close()
			return nil, err
		}
		g.metrics = m
	}
	return g, nil
}

// clientTLS loads (or, with a development CA, mints) the gateway's
// certificate and returns the link's TLS configuration and the gateway id.
func (g *Gateway) clientTLS() (*tls.Config, string, error) {
	cl := g.cfg.Cloud
	caFile, certFile, keyFile := cl.CAFile, cl.CertFile, cl.KeyFile
	if cl.DevCADir != "" && certFile == "" {
		if g.cfg.GatewayID == "" {
			return nil, "", fmt.Errorf("%w: gateway_id: required with cloud.dev_ca_dir (the certificate is minted for it)", ErrConfig)
		}
		var err error
		certFile, keyFile, err = ensureDevCertificate(cl.DevCADir, filepath.Join(g.dataDir, "pki"), g.cfg.GatewayID)
		if err != nil {
			return nil, "", fmt.Errorf("development certificate: %w", err)
		}
		if caFile == "" {
			caFile = filepath.Join(cl.DevCADir, pki.CACertFile)
		}
	}
	kp, err := pki.LoadKeyPair(certFile, keyFile)
	if err != nil {
		return nil, "", fmt.Errorf("gateway certificate: %w", err)
	}
	id, err := pki.GatewayID(kp.Cert)
	if err != nil {
		return nil, "", fmt.Errorf("gateway certificate %s: %w", certFile, err)
	}
	if g.cfg.GatewayID != "" && g.cfg.GatewayID != id {
		return nil, "", fmt.Errorf("%w: gateway_id %q does not match the certificate's %q", ErrConfig, g.cfg.GatewayID, id)
	}
	ca, err := pki.LoadCert(caFile)
	if err != nil {
		return nil, "", fmt.Errorf("cloud CA: %w", err)
	}
	serverName := cl.ServerName
	if serverName == "" {
		serverName, _, _ = net.SplitHostPort(cl.Address)
	}
	conf, err := pki.ClientTLS(ca, kp, serverName, link.ALPN)
	if err != nil {
		return nil, "", err
	}
	return conf, id, nil
}

// ensureDevCertificate mints, on first start, a certificate for gateway id
// from the development CA in caDir into dir, and reuses it afterwards.
func ensureDevCertificate(caDir, dir, id string) (certFile, keyFile string, err error) {
	certFile, keyFile = filepath.Join(dir, "gateway.crt"), filepath.Join(dir, "gateway.key")
	if kp, err := pki.LoadKeyPair(certFile, keyFile); err == nil {
		if got, err := pki.GatewayID(kp.Cert); err == nil && got == id {
			return certFile, keyFile, nil
		}
	}
	ca, err := pki.LoadKeyPair(filepath.Join(caDir, pki.CACertFile), filepath.Join(caDir, pki.CAKeyFile))
	if err != nil {
		return "", "", err
	}
	kp, err := pki.IssueGateway(ca, id)
	if err != nil {
		return "", "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", err
	}
	if err := pki.SaveKeyPair(kp, certFile, keyFile); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

// ID is the gateway's id (from its certificate).
func (g *Gateway) ID() string { return g.id }

// DataDir is where the outbox lives.
func (g *Gateway) DataDir() string { return g.dataDir }

// MQTTAddr is the plain TCP listener's address ("" if disabled).
func (g *Gateway) MQTTAddr() string {
	if a := g.broker.Addr().TCP; a != nil {
		return a.String()
	}
	return ""
}

// Run forwards the outbox to the cloud until ctx ends, reconnecting as
// needed. The broker keeps serving devices whether or not the cloud is
// reachable.
func (g *Gateway) Run(ctx context.Context) error {
	err := g.client.Run(ctx)
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return nil
	}
	return err
}

// Stats is a snapshot of the gateway's parts.
type Stats struct {
	Broker broker.Stats
	Outbox outbox.Stats
	Link   link.ClientStats
}

// Stats returns the current counters.
func (g *Gateway) Stats() Stats {
	return Stats{Broker: g.broker.Stats(), Outbox: g.outbox.Stats(), Link: g.client.Stats()}
}

// Close stops the broker (devices are disconnected and will resend what was
// not acknowledged), then commits what is queued and closes the outbox. Call
// it after Run returned.
func (g *Gateway) Close() error {
	var errs []error
	if g.metrics != nil {
		errs = append(errs, g.metrics.close())
	}
	if g.broker != nil {
		errs = append(errs, g.broker.Close())
	}
	if g.commands != nil {
		errs = append(errs, g.commands.close())
	}
	if g.outbox != nil {
		errs = append(errs, g.outbox.Close())
	}
	return errors.Join(errs...)
}

// source adapts the outbox to the link: committed records become CloudEvents.
type source struct {
	ob *outbox.Outbox
	gw string
}

var _ link.Source = (*source)(nil)

func (s *source) Read(after uint64, maxRecords, maxBytes int) ([]*syncv1.Record, error) {
	recs, err := s.ob.Read(after, maxRecords, maxBytes)
	if err != nil {
		return nil, err
	}
	out := make([]*syncv1.Record, len(recs))
	for i := range recs {
		out[i] = ToRecord(s.gw, &recs[i])
	}
	return out, nil
}

func (s *source) Wait(ctx context.Context, after uint64) error { return s.ob.Wait(ctx, after) }

func (s *source) Ack(upTo uint64) error { return s.ob.Ack(upTo) }

// ParseLevel maps a log_level to a slog level (info for "").
func ParseLevel(s string) slog.Level {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}
