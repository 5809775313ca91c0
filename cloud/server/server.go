// Package server assembles the Tributary cloud: the QUIC endpoint gateways
// forward to, the central log, push delivery to subscriptions, and the HTTP
// API. tributary-cloud runs one; the fleet simulator runs one in process.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tributary-io/tributary/cloud/commitlog"
	"github.com/tributary-io/tributary/cloud/dispatch"
	"github.com/tributary-io/tributary/cloud/ingest"
	"github.com/tributary-io/tributary/sync/link"
	"github.com/tributary-io/tributary/sync/pki"
)

// Server is a running cloud.
type Server struct {
	cfg      Config
	dataDir  string
	log      *slog.Logger
	clog     *commitlog.FileLog
	sync     *link.Server
	syncPC   net.PacketConn
	subs     *subStore
	auth     *authenticator
	dispatch *dispatch.Dispatcher
	devstate *deviceState
	api      *http.Server
	apiLn    net.Listener
	cmds     *commandHub    // commands.go
	stream   *streamHandler // stream.go; set by routes

	closeOnce sync.Once
	closeErr  error
}

// New opens the central log, binds the sync and API listeners and prepares
// delivery; Run serves. logger may be nil.
func New(cfg Config, logger *slog.Logger) (*Server, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, dataDir: cfg.DataDir, log: logger}
	if s.dataDir == "" {
		s.dataDir = DefaultDataDir
	}
	if err := os.MkdirAll(s.dataDir, 0o750); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	tlsConf, err := s.serverTLS()
	if err != nil {
		return nil, err
	}
	clog, err := commitlog.Open(filepath.Join(s.dataDir, "log"), commitlog.Options{
		SegmentBytes:   cfg.Log.SegmentBytes,
		RetentionAge:   cfg.Log.RetentionAge,
		RetentionBytes: cfg.Log.RetentionBytes,
		Logger:         logger.With("part", "log"),
	})
	if err != nil {
		return nil, fmt.Errorf("open central log: %w", err)
	}
	s.clog = clog

	d, err := dispatch.New(clog, filepath.Join(s.dataDir, "subscriptions"), dispatch.Options{Logger: logger.With("part", "dispatch")})
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("dispatch: %w", err)
	}
	s.dispatch = d
	for _, sub := range cfg.Subscriptions {
		if err := d.Add(sub); err != nil {
			s.Close()
			return nil, fmt.Errorf("subscription %q: %w", sub.ID, err)
		}
	}
	if s.subs, err = openSubStore(s.dataDir, cfg.Subscriptions); err != nil {
		s.Close()
		return nil, fmt.Errorf("stored subscriptions: %w", err)
	}
	for _, sub := range s.subs.list() {
		if err := d.Add(sub); err != nil {
			s.Close()
			return nil, fmt.Errorf("stored subscription %q: %w", sub.ID, err)
		}
	}

	if err := s.openDeviceState(); err != nil {
		s.Close()
		return nil, err
	}

	tokens := cfg.API.Tokens
	if len(tokens) == 0 {
		tok, created, err := ensureDevToken(s.dataDir)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("development API token: %w", err)
		}
		if created {
			logger.Warn("no api.tokens configured: generated a development admin token", "file", filepath.Join(s.dataDir, DevTokenFile))
		}
		tokens = []TokenConfig{{Name: "development", Token: tok, Scopes: []string{ScopeAdmin}}}
	}
	s.auth = newAuthenticator(tokens)

	listen := cfg.Sync.Listen
	if listen == "" {
		listen = ":7443"
	}
	s.syncPC, err = net.ListenPacket("udp", listen)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("sync listen %s: %w", listen, err)
	}
	resetKey, err := ensureResetKey(s.dataDir)
	if err != nil {
		s.Close()
		return nil, err
	}
	s.cmds = newCommandHub(clog, logger.With("part", "commands")) // commands.go
	s.sync = link.NewServer(link.ServerConfig{
		OnCommandStatus:   s.cmds.onStatus,
		TLS:               tlsConf,
		Window:            cfg.Sync.Window,
		MaxIdleTimeout:    cfg.Sync.IdleTimeout,
		KeepAlivePeriod:   cfg.Sync.KeepAlive,
		StatelessResetKey: resetKey,
		Logger:            logger.With("part", "sync"),
	}, &ingest.Sink{Log: clog})

	apiAddr := cfg.API.Listen
	if apiAddr == "" {
		apiAddr = ":8080"
	}
	s.apiLn, err = net.Listen("tcp", apiAddr)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("api listen %s: %w", apiAddr, err)
	}
	mux := http.NewServeMux()
	s.routes(mux)
	s.deviceStateRoutes(mux)
	s.commandRoutes(mux)
	if cfg.API.Pprof {
		mux.HandleFunc("/debug/pprof/", s.auth.require(ScopeAdmin, pprof.Index))
		mux.HandleFunc("/debug/pprof/profile", s.auth.require(ScopeAdmin, pprof.Profile))
		mux.HandleFunc("/debug/pprof/trace", s.auth.require(ScopeAdmin, pprof.Trace))
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), &collector{s: s}, logCollector{s.clog})
	reg.MustRegister(s.cmds.collectors()...)
	reg.MustRegister(s.stream)
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	s.api = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return s, nil
}

// serverTLS loads the configured certificates or creates/reuses the
// development PKI in <data_dir>/pki.
func (s *Server) serverTLS() (*tls.Config, error) {
	sc := s.cfg.Sync
	if sc.CertFile == "" {
		hosts := sc.Hosts
		if len(hosts) == 0 {
			hosts = []string{"localhost", "127.0.0.1", "::1"}
			if h, err := os.Hostname(); err == nil && h != "" {
				hosts = append(hosts, h)
			}
		}
		dev, err := pki.EnsureDevPKI(s.PKIDir(), hosts)
		if err != nil {
			return nil, fmt.Errorf("development PKI: %w", err)
		}
		s.log.Warn("using the development PKI: configure sync.cert_file, key_file and client_ca_file in production", "dir", s.PKIDir())
		return s.withRevocations(pki.ServerTLS(dev.CA.Cert, dev.Server, link.ALPN))
	}
	srv, err := pki.LoadKeyPair(sc.CertFile, sc.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("sync server certificate: %w", err)
	}
	ca, err := pki.LoadCert(sc.ClientCAFile)
	if err != nil {
		return nil, fmt.Errorf("sync client CA: %w", err)
	}
	return s.withRevocations(pki.ServerTLS(ca, srv, link.ALPN))
}

// RevokedFile, in the data directory, lists revoked gateway certificates
// (see pki.RevocationList; `tributary-cloud gateway revoke` appends to it).
const RevokedFile = "revoked-gateways.txt"

// withRevocations makes the sync handshake refuse certificates listed in
// <data_dir>/revoked-gateways.txt, read again whenever it changes: a revoked
// gateway fails the handshake exactly like one the CA never signed.
func (s *Server) withRevocations(cfg *tls.Config, err error) (*tls.Config, error) {
	if err != nil {
		return nil, err
	}
	rl := pki.NewRevocationList(filepath.Join(s.dataDir, RevokedFile))
	verify := cfg.VerifyConnection
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if err := verify(cs); err != nil {
			return err
		}
		if err := rl.Check(cs.VerifiedChains[0][0]); err != nil {
			s.log.Warn("gateway refused at the sync handshake", "err", err)
			return err
		}
		return nil
	}
	return cfg, nil
}

// PKIDir is where the development PKI lives.
func (s *Server) PKIDir() string { return filepath.Join(s.dataDir, "pki") }

// DataDir is the cloud's data directory.
func (s *Server) DataDir() string { return s.dataDir }

// SyncAddr is the bound QUIC address.
func (s *Server) SyncAddr() net.Addr { return s.syncPC.LocalAddr() }

// APIAddr is the bound HTTP API address.
func (s *Server) APIAddr() net.Addr { return s.apiLn.Addr() }

// Log is the central log (for in-process simulations and tests).
func (s *Server) Log() commitlog.Log { return s.clog }

// Dispatcher runs the subscriptions.
func (s *Server) Dispatcher() *dispatch.Dispatcher { return s.dispatch }

// Run serves gateways, the API and delivery until ctx ends or a part fails.
func (s *Server) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.runDeviceState(ctx)
	errc := make(chan error, 3)
	go func() { errc <- s.sync.Serve(ctx, s.syncPC) }()
	go func() { errc <- s.dispatch.Run(ctx) }()
	go func() {
		var err error
		if t := s.cfg.API.TLS; t != nil {
			err = s.api.ServeTLS(s.apiLn, t.CertFile, t.KeyFile)
		} else {
			err = s.api.Serve(s.apiLn)
		}
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		errc <- err
	}()
	var first error
	select {
	case <-ctx.Done():
	case first = <-errc:
		if first != nil {
			s.log.Error("cloud part failed", "err", first)
		}
	}
	cancel()
	shut, cancelShut := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelShut()
	_ = s.api.Shutdown(shut)
	for i := 0; i < 2; i++ { // the two others (one may already have returned)
		select {
		case err := <-errc:
			if first == nil && err != nil && !errors.Is(err, context.Canceled) {
				first = err
			}
		case <-shut.Done():
		}
	}
	if first == nil {
		first = ctx.Err()
	}
	return first
}

// Close releases everything; call it after Run returned.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		var errs []error
		errs = append(errs, s.closeDeviceState()) // before the log closes
		s.cmds.close()                            // commands.go
		if s.sync != nil {
			errs = append(errs, s.sync.Close())
		}
		if s.syncPC != nil {
			_ = s.syncPC.Close()
		}
		if s.apiLn != nil {
			_ = s.apiLn.Close()
		}
		if s.clog != nil {
			errs = append(errs, s.clog.Close())
		}
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

// AddGateway mints a certificate for gateway id from the CA in pkiDir and
// writes the gateway's files to outDir: ca.crt (the CA to trust the cloud
// with), gateway.crt and gateway.key. It returns the paths written.
func AddGateway(pkiDir, id, outDir string) ([]string, error) {
	if err := pki.ValidateGatewayID(id); err != nil {
		return nil, err
	}
	ca, err := pki.LoadKeyPair(filepath.Join(pkiDir, pki.CACertFile), filepath.Join(pkiDir, pki.CAKeyFile))
	if err != nil {
		return nil, fmt.Errorf("load the CA (start tributary-cloud once to create a development CA): %w", err)
	}
	kp, err := pki.IssueGateway(ca, id)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(outDir, 0o700); err != nil {
		return nil, err
	}
	caOut, certOut, keyOut := filepath.Join(outDir, "ca.crt"), filepath.Join(outDir, "gateway.crt"), filepath.Join(outDir, "gateway.key")
	if err := pki.SaveCert(ca.Cert, caOut); err != nil {
		return nil, err
	}
	if err := pki.SaveKeyPair(kp, certOut, keyOut); err != nil {
		return nil, err
	}
	return []string{caOut, certOut, keyOut}, nil
}

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

// collector exposes the cloud's counters to Prometheus at scrape time, so
// hot paths keep plain atomic counters.
type collector struct{ s *Server }

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

var (
	descLogNext      = desc("tributary_cloud_log_next_offset", "Offset the next appended record gets (records ever appended).")
	descLogFirst     = desc("tributary_cloud_log_first_offset", "Oldest retained offset.")
	descSyncSessions = desc("tributary_cloud_sync_sessions", "Live gateway sessions.")
	descSyncCounters = desc("tributary_cloud_sync_total", "Sync link counters by kind.", "kind")
	descSyncBacklog  = desc("tributary_cloud_sync_backlog_bytes", "Record bytes handed to the log and not yet durable.")
	descSubCounters  = desc("tributary_cloud_subscription_events_total", "Events per subscription by outcome.", "subscription", "outcome")
	descSubLag       = desc("tributary_cloud_subscription_lag", "Log offsets not yet completed by the subscription.", "subscription")
	descSubInFlight  = desc("tributary_cloud_subscription_in_flight", "Events held by the subscription's lanes.", "subscription")
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descLogNext, descLogFirst, descSyncSessions, descSyncCounters, descSyncBacklog, descSubCounters, descSubLag, descSubInFlight} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	next := s.clog.NextOffset()
	ch <- prometheus.MustNewConstMetric(descLogNext, prometheus.CounterValue, float64(next))
	ch <- prometheus.MustNewConstMetric(descLogFirst, prometheus.GaugeValue, float64(s.clog.FirstOffset()))
	st := s.sync.Stats()
	ch <- prometheus.MustNewConstMetric(descSyncSessions, prometheus.GaugeValue, float64(st.Sessions))
	ch <- prometheus.MustNewConstMetric(descSyncBacklog, prometheus.GaugeValue, float64(st.Backlog))
	for kind, v := range map[string]uint64{
		"sessions_accepted": st.Accepted, "sessions_superseded": st.Superseded, "sessions_refused": st.Refused,
		"batches": st.Batches, "records": st.Records, "bytes": st.Bytes, "batches_acked": st.AckedBatches,
		"protocol_errors": st.ProtocolErrors, "sink_errors": st.SinkErrors,
	} {
		ch <- prometheus.MustNewConstMetric(descSyncCounters, prometheus.CounterValue, float64(v), kind)
	}
	for _, sub := range s.dispatch.List() {
		ds, err := s.dispatch.Stats(sub.ID)
		if err != nil {
			continue
		}
		for outcome, v := range map[string]uint64{
			"delivered": ds.Delivered, "retried": ds.Retries, "dead_lettered": ds.DeadLettered, "filtered": ds.Filtered,
			"skipped_by_retention": ds.SkippedByRetention,
		} {
			ch <- prometheus.MustNewConstMetric(descSubCounters, prometheus.CounterValue, float64(v), sub.ID, outcome)
		}
		lag := float64(0)
		if next > ds.LowWater {
			lag = float64(next - ds.LowWater)
		}
		ch <- prometheus.MustNewConstMetric(descSubLag, prometheus.GaugeValue, lag, sub.ID)
		ch <- prometheus.MustNewConstMetric(descSubInFlight, prometheus.GaugeValue, float64(ds.InFlight), sub.ID)
	}
}
