package broker

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// testPKI is a CA with a server certificate for 127.0.0.1 and a client
// certificate, written as PEM files.
type testPKI struct {
	caFile, serverCert, serverKey string
	pool                          *x509.CertPool
	client                        tls.Certificate
}

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	issue := func(serial int64, usage x509.ExtKeyUsage) (certPEM, keyPEM []byte) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: "leaf"},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(time.Hour),
			IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
			KeyUsage:     x509.KeyUsageDigitalSignature,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, _ := x509.MarshalECPrivateKey(key)
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
			pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	}
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	p := testPKI{pool: x509.NewCertPool()}
	p.pool.AddCert(ca)
	p.caFile = write("ca.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))
	sc, sk := issue(2, x509.ExtKeyUsageServerAuth)
	p.serverCert, p.serverKey = write("server.pem", sc), write("server.key", sk)
	cc, ck := issue(3, x509.ExtKeyUsageClientAuth)
	if p.client, err = tls.X509KeyPair(cc, ck); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestListeners: TCP, mutual TLS and WebSocket listeners on ":0" report their
// real ports, and a paho client on each one publishes through the outbox to
// a subscriber on another.
func TestListeners(t *testing.T) {
	pki := newTestPKI(t)
	ob := newFakeOutbox(t)
	b := startBroker(t, Config{Listeners: Listeners{
		TLS:       &TLSListener{Address: "127.0.0.1:0", CertFile: pki.serverCert, KeyFile: pki.serverKey, ClientCAFile: pki.caFile},
		WebSocket: &WebSocketListener{Address: "127.0.0.1:0"},
	}}, ob)
	a := b.Addr()
	for name, addr := range map[string]net.Addr{"tcp": a.TCP, "tls": a.TLS, "websocket": a.WebSocket} {
		if addr == nil || addr.(*net.TCPAddr).Port == 0 {
			t.Fatalf("%s address %v", name, addr)
		}
	}

	got := make(chan string, 8)
	sub := pahoClient(t, tcpURL(b), "sub")
	if err := waitToken(t, sub.Subscribe("sensors/#", 1, func(_ paho.Client, m paho.Message) { got <- string(m.Payload()) })); err != nil {
		t.Fatal(err)
	}
	viaTLS := pahoClient(t, "ssl://"+a.TLS.String(), "tls-dev", func(o *paho.ClientOptions) {
		o.SetTLSConfig(&tls.Config{RootCAs: pki.pool, Certificates: []tls.Certificate{pki.client}})
	})
	viaWS := pahoClient(t, "ws://"+a.WebSocket.String()+"/mqtt", "ws-dev")
	if err := waitToken(t, viaTLS.Publish("sensors/tls", 1, false, "over-tls")); err != nil {
		t.Fatal(err)
	}
	if err := waitToken(t, viaWS.Publish("sensors/ws", 1, false, "over-ws")); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"over-tls": true, "over-ws": true}
	for len(want) > 0 {
		select {
		case p := <-got:
			delete(want, p)
		case <-time.After(safetyTimeout):
			t.Fatalf("not delivered: %v", want)
		}
	}
	if !ob.isCommitted([]byte("over-tls")) || !ob.isCommitted([]byte("over-ws")) {
		t.Fatal("not committed")
	}

	// Without a client certificate the TLS listener refuses the device.
	noCert := paho.NewClient(paho.NewClientOptions().AddBroker("ssl://" + a.TLS.String()).
		SetClientID("anon").SetConnectRetry(false).SetAutoReconnect(false).
		SetTLSConfig(&tls.Config{RootCAs: pki.pool}))
	if tok := noCert.Connect(); tok.WaitTimeout(safetyTimeout) && tok.Error() == nil {
		noCert.Disconnect(0)
		t.Fatal("TLS client without a certificate was accepted")
	}
}

func TestStartErrors(t *testing.T) {
	ob := newFakeOutbox(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	freeAddr := free.Addr().String()
	free.Close()
	b, err := New(Config{
		Listeners: Listeners{
			TCP:       TCPListener{Address: freeAddr},
			WebSocket: &WebSocketListener{Address: taken.Addr().String()},
		},
	}, ob, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err == nil {
		t.Fatal("Start succeeded on a port in use")
	}
	if a := b.Addr(); a != (Addrs{}) {
		t.Errorf("Addr after a failed Start: %+v", a)
	}
	// The TCP listener bound before the failure was released.
	l, err := net.Listen("tcp", freeAddr)
	if err != nil {
		t.Fatalf("TCP port still held after a failed Start: %v", err)
	}
	l.Close()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	b2, _ := New(Config{Listeners: Listeners{TLS: &TLSListener{Address: "127.0.0.1:0", CertFile: "/nonexistent.pem", KeyFile: "/nonexistent.key"}}}, ob, nil)
	if err := b2.Start(); err == nil {
		t.Fatal("Start succeeded without the TLS certificate")
	}
	b2.Close()
	if _, err := New(Config{AckMode: "eventually"}, ob, nil); err == nil {
		t.Fatal("New accepted an invalid config")
	}
}

// TestDeadlineConn: every write has its own deadline and a timed-out
// connection is closed; mochi's keepalive SetDeadline reaches only the read
// side.
func TestDeadlineConn(t *testing.T) {
	a, peer := net.Pipe() // unbuffered: a write blocks until the peer reads
	defer peer.Close()
	c := &deadlineConn{Conn: a, timeout: 20 * time.Millisecond}
	if _, err := c.Write([]byte("x")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write to a peer that never reads: %v, want deadline exceeded", err)
	}
	if _, err := peer.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("peer read after the timeout: %v, want EOF (connection closed)", err)
	}

	a, peer = net.Pipe()
	defer a.Close()
	defer peer.Close()
	c = &deadlineConn{Conn: a, timeout: safetyTimeout}
	if err := c.SetDeadline(time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read after SetDeadline in the past: %v", err)
	}
	go func() { _, _ = io.ReadFull(peer, make([]byte, 3)) }()
	if _, err := c.Write([]byte("abc")); err != nil {
		t.Fatalf("write after SetDeadline in the past: %v (the read deadline leaked to writes)", err)
	}
}
