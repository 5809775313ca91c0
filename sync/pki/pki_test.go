package pki

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func mustCA(t *testing.T) *KeyPair {
	t.Helper()
	ca, err := NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func TestValidateGatewayID(t *testing.T) {
	ok := []string{"a", "gw-1", "Gate.Way_07", strings.Repeat("x", 64)}
	bad := []string{"", "gw/1", "gw 1", "gw:1", "é", strings.Repeat("x", 65), "../x"}
	for _, id := range ok {
		if err := ValidateGatewayID(id); err != nil {
			t.Errorf("%q: %v", id, err)
		}
	}
	for _, id := range bad {
		if err := ValidateGatewayID(id); !errors.Is(err, ErrInvalidGatewayID) {
			t.Errorf("%q: got %v", id, err)
		}
	}
}

func TestGatewayIdentity(t *testing.T) {
	ca := mustCA(t)
	gw, err := IssueGateway(ca, "gw-7")
	if err != nil {
		t.Fatal(err)
	}
	if id, err := GatewayID(gw.Cert); err != nil || id != "gw-7" {
		t.Fatalf("GatewayID = %q, %v", id, err)
	}
	if _, err := IssueGateway(ca, "bad/id"); !errors.Is(err, ErrInvalidGatewayID) {
		t.Fatalf("bad id issued: %v", err)
	}
	srv, err := IssueServer(ca, []string{"localhost", "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := GatewayID(srv.Cert); !errors.Is(err, ErrNoGatewayID) {
		t.Fatalf("server cert has a gateway id: %v", err)
	}
	// Tampered shapes: CN disagreeing with the URI, two URIs.
	mismatch := *gw.Cert
	mismatch.Subject.CommonName = "other"
	if _, err := GatewayID(&mismatch); !errors.Is(err, ErrNoGatewayID) {
		t.Fatalf("CN mismatch accepted: %v", err)
	}
	two := *gw.Cert
	two.URIs = []*url.URL{GatewayURI("gw-7"), GatewayURI("gw-8")}
	if _, err := GatewayID(&two); !errors.Is(err, ErrNoGatewayID) {
		t.Fatalf("two URIs accepted: %v", err)
	}
	if _, err := GatewayID(nil); !errors.Is(err, ErrNoGatewayID) {
		t.Fatalf("nil accepted: %v", err)
	}
}

func TestSaveLoadModes(t *testing.T) {
	dir := t.TempDir()
	ca := mustCA(t)
	cp, kp := filepath.Join(dir, "c.crt"), filepath.Join(dir, "c.key")
	if err := SaveKeyPair(ca, cp, kp); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(kp)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %v, want 0600", st.Mode().Perm())
	}
	got, err := LoadKeyPair(cp, kp)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Cert.Raw, ca.Cert.Raw) || !got.Key.Equal(ca.Key) {
		t.Fatal("loaded pair differs")
	}
	other := mustCA(t)
	if err := SaveKeyPair(other, filepath.Join(dir, "o.crt"), filepath.Join(dir, "o.key")); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKeyPair(cp, filepath.Join(dir, "o.key")); err == nil {
		t.Fatal("mismatched key accepted")
	}
}

func TestEnsureDevPKI(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	first, err := EnsureDevPKI(dir, []string{"127.0.0.1", "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{CACertFile, CAKeyFile, ServerCertFile, ServerKeyFile} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
	again, err := EnsureDevPKI(dir, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first.CA.Cert.Raw, again.CA.Cert.Raw) || !bytes.Equal(first.Server.Cert.Raw, again.Server.Cert.Raw) {
		t.Fatal("second start did not reuse the files")
	}
	// A new host forces a new server certificate from the same CA.
	more, err := EnsureDevPKI(dir, []string{"127.0.0.1", "cloud.example"})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first.CA.Cert.Raw, more.CA.Cert.Raw) || bytes.Equal(first.Server.Cert.Raw, more.Server.Cert.Raw) {
		t.Fatal("expected same CA, new server certificate")
	}
	if err := more.Server.Cert.VerifyHostname("cloud.example"); err != nil {
		t.Fatal(err)
	}
	// Half a CA is refused rather than replaced.
	if err := os.Remove(filepath.Join(dir, CAKeyFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := EnsureDevPKI(dir, []string{"127.0.0.1"}); err == nil {
		t.Fatal("CA certificate without key accepted")
	}
}

// handshake runs a real TLS 1.3 handshake over a loopback TCP connection and
// returns the server's and the client's errors.
func handshake(t *testing.T, srv, cli *tls.Config) (serverErr, clientErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		tc := tls.Server(c, srv)
		err = tc.Handshake()
		if err == nil {
			_, err = tc.Write([]byte{1}) // let the client see a late rejection
		}
		done <- err
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tc := tls.Client(c, cli)
	clientErr = tc.Handshake()
	if clientErr == nil {
		var b [1]byte
		_, clientErr = tc.Read(b[:])
	}
	return <-done, clientErr
}

func TestTLSConfigs(t *testing.T) {
	ca := mustCA(t)
	srv, err := IssueServer(ca, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	gw, err := IssueGateway(ca, "gw-1")
	if err != nil {
		t.Fatal(err)
	}
	stc, err := ServerTLS(ca.Cert, srv, "test/1")
	if err != nil {
		t.Fatal(err)
	}
	ctc, err := ClientTLS(ca.Cert, gw, "127.0.0.1", "test/1")
	if err != nil {
		t.Fatal(err)
	}
	if se, ce := handshake(t, stc, ctc); se != nil || ce != nil {
		t.Fatalf("good pair: server %v, client %v", se, ce)
	}

	rogueCA := mustCA(t)
	rogue, err := IssueGateway(rogueCA, "gw-1")
	if err != nil {
		t.Fatal(err)
	}
	rtc, err := ClientTLS(ca.Cert, rogue, "127.0.0.1", "test/1")
	if err != nil {
		t.Fatal(err)
	}
	if se, _ := handshake(t, stc, rtc); se == nil {
		t.Fatal("gateway from another CA accepted")
	}

	// A client certificate from the right CA but without gateway identity.
	anon, err := IssueServer(ca, []string{"x"})
	if err != nil {
		t.Fatal(err)
	}
	atc := ctc.Clone()
	atc.Certificates = []tls.Certificate{anon.TLSCertificate()}
	if se, _ := handshake(t, stc, atc); se == nil {
		t.Fatal("server certificate accepted as a client certificate")
	}
	noID, err := issue(leafTemplate(ca, "gw-1", x509.ExtKeyUsageClientAuth), ca)
	if err != nil {
		t.Fatal(err)
	}
	atc.Certificates = []tls.Certificate{noID.TLSCertificate()}
	if se, _ := handshake(t, stc, atc); !errors.Is(se, ErrNoGatewayID) {
		t.Fatalf("client certificate without gateway URI: server error %v", se)
	}

	// The client refuses a server from another CA.
	rogueSrv, err := IssueServer(rogueCA, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	rstc, err := ServerTLS(ca.Cert, rogueSrv, "test/1")
	if err != nil {
		t.Fatal(err)
	}
	var uae x509.UnknownAuthorityError
	if _, ce := handshake(t, rstc, ctc); !errors.As(ce, &uae) {
		t.Fatalf("rogue server: client error %v", ce)
	}
}
