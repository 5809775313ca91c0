package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
)

// ServerTLS returns the cloud side's TLS configuration: TLS 1.3 only, ALPN
// alpn, server certificate srv, and a client certificate required, verified
// against ca and carrying a gateway identity (see GatewayID). A client
// without one fails the handshake.
func ServerTLS(ca *x509.Certificate, srv *KeyPair, alpn string) (*tls.Config, error) {
	if ca == nil || srv == nil || srv.Cert == nil || srv.Key == nil {
		return nil, errors.New("pki: ServerTLS needs a CA certificate and a server key pair")
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		NextProtos:   []string{alpn},
		Certificates: []tls.Certificate{srv.TLSCertificate()},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
				return errors.New("pki: client certificate not verified")
			}
			leaf := cs.VerifiedChains[0][0]
			if !hasUsage(leaf, x509.ExtKeyUsageClientAuth) {
				return errors.New("pki: client certificate is not for client auth")
			}
			if _, err := GatewayID(leaf); err != nil {
				return err
			}
			return nil
		},
	}, nil
}

// ClientTLS returns a gateway's TLS configuration: TLS 1.3 only, ALPN alpn,
// client certificate gw, and the server verified against ca for serverName
// (a DNS name or IP address the server certificate names).
func ClientTLS(ca *x509.Certificate, gw *KeyPair, serverName, alpn string) (*tls.Config, error) {
	if ca == nil || gw == nil || gw.Cert == nil || gw.Key == nil {
		return nil, errors.New("pki: ClientTLS needs a CA certificate and a gateway key pair")
	}
	if _, err := GatewayID(gw.Cert); err != nil {
		return nil, fmt.Errorf("pki: ClientTLS: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		NextProtos:   []string{alpn},
		Certificates: []tls.Certificate{gw.TLSCertificate()},
		RootCAs:      pool,
		ServerName:   serverName,
	}, nil
}

func hasUsage(cert *x509.Certificate, u x509.ExtKeyUsage) bool {
	for _, have := range cert.ExtKeyUsage {
		if have == u || have == x509.ExtKeyUsageAny {
			return true
		}
	}
	return false
}
