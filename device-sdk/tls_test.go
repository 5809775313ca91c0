package devicesdk

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/tributary-io/tributary/edge/broker"
	"github.com/tributary-io/tributary/edge/outbox"
	"github.com/tributary-io/tributary/sync/pki"
)

// startSecureEdge starts the real edge broker with a TLS listener that
// requires a client certificate from ca, and bcrypt credentials for user
// "dev-user" with password "s3cret" (no anonymous devices). It returns the
// ssl:// URL, the plain tcp:// URL and the number of committed records.
func startSecureEdge(t *testing.T, ca *pki.KeyPair) (sslURL, tcpURL string, committed func() int) {
	t.Helper()
	dir := t.TempDir()
	srv, err := pki.IssueServer(ca, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, caFile := filepath.Join(dir, "srv.crt"), filepath.Join(dir, "srv.key"), filepath.Join(dir, "ca.crt")
	if err := pki.SaveKeyPair(srv, certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	if err := pki.SaveCert(ca.Cert, caFile); err != nil {
		t.Fatal(err)
	}
	ob, err := outbox.Open(filepath.Join(dir, "outbox.db"), outbox.Options{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(broker.Config{
		Listeners: broker.Listeners{
			TCP: broker.TCPListener{Address: "127.0.0.1:0"},
			TLS: &broker.TLSListener{Address: "127.0.0.1:0", CertFile: certFile, KeyFile: keyFile, ClientCAFile: caFile},
		},
		Forwarding: []broker.Rule{{Filter: "sensors/#"}},
	}, ob, nil)
	if err != nil {
		t.Fatal(err)
	}
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := broker.ParseCredentials([]byte(fmt.Sprintf(
		"devices:\n  - username: dev-user\n    password_hash: %q\nacl:\n  - {topic: \"sensors/#\", access: write}\n", hash)))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.SetAuthorizer(creds); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(); ob.Close() })
	committed = func() int {
		recs, err := ob.Read(0, 1000, 0)
		if err != nil {
			t.Errorf("outbox read: %v", err)
		}
		return len(recs)
	}
	return "ssl://" + b.Addr().TLS.String(), "tcp://" + b.Addr().TCP.String(), committed
}

// Connecting with a client certificate (and credentials) over a real TLS
// listener works; without the certificate, or with a wrong password, the
// gateway refuses the device.
func TestConnectWithClientCertificateAndCredentials(t *testing.T) {
	ca, err := pki.NewCA("test device CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	sslURL, tcpURL, committed := startSecureEdge(t, ca)
	devCert, err := pki.IssueGateway(ca, "device-1") // a client certificate from the device CA
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	withCert := &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{devCert.TLSCertificate()}}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Connect(ctx, Config{Broker: sslURL, DeviceID: "device-1", Username: "dev-user", Password: "s3cret", TLS: withCert})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Publish(ctx, "sensors/tls", []byte(`{"ok":true}`)); err != nil {
		t.Fatal(err)
	}
	c.Close(time.Second)
	if n := committed(); n != 1 {
		t.Fatalf("outbox has %d records, want 1", n)
	}

	// A Device connects the same way (its buffer sends over TLS).
	dcfg := testDeviceConfig(t, sslURL, t.TempDir())
	dcfg.Username, dcfg.Password, dcfg.TLS = "dev-user", "s3cret", withCert
	d, err := Open(dcfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Enqueue("sensors/tls", []byte(`{"n":2}`)); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if n := committed(); n != 2 {
		t.Fatalf("outbox has %d records, want 2", n)
	}

	refused := []struct {
		name string
		cfg  Config
	}{
		{"no client certificate", Config{Broker: sslURL, DeviceID: "device-2", Username: "dev-user", Password: "s3cret",
			TLS: &tls.Config{RootCAs: roots}}},
		{"untrusted server", Config{Broker: sslURL, DeviceID: "device-3", Username: "dev-user", Password: "s3cret",
			TLS: &tls.Config{Certificates: []tls.Certificate{devCert.TLSCertificate()}}}},
		{"wrong password", Config{Broker: tcpURL, DeviceID: "device-4", Username: "dev-user", Password: "nope"}},
		{"no credentials", Config{Broker: tcpURL, DeviceID: "device-5"}},
	}
	for _, tc := range refused {
		tc.cfg.ConnectTimeout, tc.cfg.ReconnectInterval = time.Second, 50*time.Millisecond
		rctx, rcancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
		c, err := Connect(rctx, tc.cfg)
		rcancel()
		if err == nil {
			c.Close(0)
			t.Errorf("%s: connected", tc.name)
		}
	}
	// The right password over plain TCP is accepted.
	c, err = Connect(ctx, Config{Broker: tcpURL, DeviceID: "device-6", Username: "dev-user", Password: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	c.Close(0)
}
