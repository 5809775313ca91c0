// Package pki holds the certificates of sync links: a CA, the cloud's server
// certificate and one client certificate per gateway (ECDSA P-256, crypto/x509).
//
// A gateway's identity is its certificate: the gateway id is the Subject
// CommonName and a URI SAN tributary://gateway/<id>, and the cloud reads it
// with GatewayID after verifying the chain. EnsureDevPKI creates a working
// set on a developer machine; production deployments issue the same shapes
// from their own CA.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"regexp"
	"time"
)

// Sentinel errors. Compare with errors.Is.
var (
	// ErrInvalidGatewayID means an id outside [A-Za-z0-9._-]{1,64}.
	ErrInvalidGatewayID = errors.New("pki: invalid gateway id")
	// ErrNoGatewayID means a certificate without a consistent gateway
	// identity (no tributary://gateway/ URI SAN, several, or one that
	// disagrees with the CommonName).
	ErrNoGatewayID = errors.New("pki: certificate has no gateway identity")
)

// URIScheme and uriHost make the URI SAN tributary://gateway/<id>.
const (
	URIScheme = "tributary"
	uriHost   = "gateway"
)

// backdate keeps freshly issued certificates valid on a peer whose clock is
// a little behind.
const backdate = time.Hour

var gatewayIDPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// ValidateGatewayID reports whether id is a valid gateway id.
func ValidateGatewayID(id string) error {
	if !gatewayIDPattern.MatchString(id) {
		return fmt.Errorf("%w: %q", ErrInvalidGatewayID, id)
	}
	return nil
}

// KeyPair is a certificate and its private key. A CA is a KeyPair whose
// certificate is a CA certificate.
type KeyPair struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// TLSCertificate returns kp as a tls.Certificate (leaf only).
func (kp *KeyPair) TLSCertificate() tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{kp.Cert.Raw}, PrivateKey: kp.Key, Leaf: kp.Cert}
}

// NewCA creates a self-signed CA valid for validity from now.
func NewCA(commonName string, validity time.Duration) (*KeyPair, error) {
	if validity <= 0 {
		return nil, fmt.Errorf("pki: CA validity must be positive, got %v", validity)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"Tributary"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	return issue(tmpl, nil)
}

// IssueServer issues the cloud's server certificate for hosts (DNS names or
// IP addresses, at least one), valid until the CA expires.
func IssueServer(ca *KeyPair, hosts []string) (*KeyPair, error) {
	if len(hosts) == 0 {
		return nil, errors.New("pki: server certificate needs at least one host")
	}
	tmpl := leafTemplate(ca, hosts[0], x509.ExtKeyUsageServerAuth)
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	return issue(tmpl, ca)
}

// IssueGateway issues the client certificate of gatewayID, valid until the
// CA expires.
func IssueGateway(ca *KeyPair, gatewayID string) (*KeyPair, error) {
	if err := ValidateGatewayID(gatewayID); err != nil {
		return nil, err
	}
	tmpl := leafTemplate(ca, gatewayID, x509.ExtKeyUsageClientAuth)
	tmpl.URIs = []*url.URL{GatewayURI(gatewayID)}
	return issue(tmpl, ca)
}

// GatewayURI returns the URI SAN naming gatewayID.
func GatewayURI(gatewayID string) *url.URL {
	return &url.URL{Scheme: URIScheme, Host: uriHost, Path: "/" + gatewayID}
}

// GatewayID returns the gateway id a certificate names. It does not verify
// the certificate: call it on a verified chain's leaf.
func GatewayID(cert *x509.Certificate) (string, error) {
	if cert == nil {
		return "", fmt.Errorf("%w: no certificate", ErrNoGatewayID)
	}
	var id string
	found := 0
	for _, u := range cert.URIs {
		if u.Scheme != URIScheme || u.Host != uriHost {
			continue
		}
		found++
		if len(u.Path) > 1 {
			id = u.Path[1:]
		}
	}
	if found != 1 {
		return "", fmt.Errorf("%w: %d gateway URIs", ErrNoGatewayID, found)
	}
	if err := ValidateGatewayID(id); err != nil {
		return "", fmt.Errorf("%w: %w", ErrNoGatewayID, err)
	}
	if cert.Subject.CommonName != id {
		return "", fmt.Errorf("%w: CommonName %q differs from URI id %q", ErrNoGatewayID, cert.Subject.CommonName, id)
	}
	return id, nil
}

func leafTemplate(ca *KeyPair, cn string, usage x509.ExtKeyUsage) *x509.Certificate {
	return &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn, Organization: []string{"Tributary"}},
		NotBefore:   time.Now().Add(-backdate),
		NotAfter:    ca.Cert.NotAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}
}

// issue signs tmpl with a new P-256 key, by ca or self-signed if ca is nil.
func issue(tmpl *x509.Certificate, ca *KeyPair) (*KeyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: generate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("pki: serial: %w", err)
	}
	tmpl.SerialNumber = serial
	parent, signer := tmpl, key
	if ca != nil {
		if ca.Cert == nil || ca.Key == nil || !ca.Cert.IsCA {
			return nil, errors.New("pki: issuer is not a CA key pair")
		}
		parent, signer = ca.Cert, ca.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		return nil, fmt.Errorf("pki: sign certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: parse issued certificate: %w", err)
	}
	return &KeyPair{Cert: cert, Key: key}, nil
}
