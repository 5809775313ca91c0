package pki

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// File names EnsureDevPKI uses in its directory.
const (
	CACertFile     = "ca.crt"
	CAKeyFile      = "ca.key"
	ServerCertFile = "server.crt"
	ServerKeyFile  = "server.key"
)

// SaveKeyPair writes kp's certificate (mode 0644) and key (mode 0600) as PEM.
// Each file is written to a temporary file and renamed into place.
func SaveKeyPair(kp *KeyPair, certPath, keyPath string) error {
	if err := SaveCert(kp.Cert, certPath); err != nil {
		return err
	}
	der, err := x509.MarshalECPrivateKey(kp.Key)
	if err != nil {
		return fmt.Errorf("pki: marshal key: %w", err)
	}
	return writeFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
}

// SaveCert writes cert as PEM with mode 0644.
func SaveCert(cert *x509.Certificate, path string) error {
	return writeFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o644)
}

func writeFile(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("pki: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("pki: sync %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	return nil
}

// LoadCert reads the first PEM CERTIFICATE block of path.
func LoadCert(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, fmt.Errorf("pki: %s: no PEM certificate", path)
		}
		if b.Type == "CERTIFICATE" {
			cert, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("pki: %s: %w", path, err)
			}
			return cert, nil
		}
	}
}

// LoadKeyPair reads a certificate and its ECDSA key (SEC 1 "EC PRIVATE KEY"
// or PKCS #8 "PRIVATE KEY") and checks that they match.
func LoadKeyPair(certPath, keyPath string) (*KeyPair, error) {
	cert, err := LoadCert(certPath)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, fmt.Errorf("pki: %s: no PEM key", keyPath)
	}
	var key *ecdsa.PrivateKey
	switch b.Type {
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(b.Bytes)
	case "PRIVATE KEY":
		var k any
		k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		if err == nil {
			var ok bool
			if key, ok = k.(*ecdsa.PrivateKey); !ok {
				err = fmt.Errorf("key is %T, want ECDSA", k)
			}
		}
	default:
		err = fmt.Errorf("unexpected PEM block %q", b.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", keyPath, err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("pki: %s does not match %s", keyPath, certPath)
	}
	return &KeyPair{Cert: cert, Key: key}, nil
}

// DevPKI is what EnsureDevPKI returns.
type DevPKI struct {
	CA     *KeyPair
	Server *KeyPair
}

// EnsureDevPKI makes dir hold a development CA and a server certificate for
// hosts (CACertFile, CAKeyFile, ServerCertFile, ServerKeyFile), creating dir
// (0700) and whichever files are missing and reusing those present. The CA is
// valid for ten years. The server certificate is reissued when it is not
// signed by the CA, has expired or does not cover every host. A CA
// certificate without its key (or the reverse) is an error: EnsureDevPKI
// never replaces a CA it cannot use.
func EnsureDevPKI(dir string, hosts []string) (*DevPKI, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	caCert, caKey := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	certExists, keyExists := exists(caCert), exists(caKey)
	var ca *KeyPair
	var err error
	switch {
	case certExists && keyExists:
		if ca, err = LoadKeyPair(caCert, caKey); err != nil {
			return nil, err
		}
		if !ca.Cert.IsCA {
			return nil, fmt.Errorf("pki: %s is not a CA certificate", caCert)
		}
	case certExists || keyExists:
		return nil, fmt.Errorf("pki: %s holds only half of the CA (%s or %s missing)", dir, CACertFile, CAKeyFile)
	default:
		if ca, err = NewCA("Tributary development CA", 10*365*24*time.Hour); err != nil {
			return nil, err
		}
		if err := SaveKeyPair(ca, caCert, caKey); err != nil {
			return nil, err
		}
	}
	srvCert, srvKey := filepath.Join(dir, ServerCertFile), filepath.Join(dir, ServerKeyFile)
	srv, err := LoadKeyPair(srvCert, srvKey)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if srv == nil || !serverCovers(ca, srv.Cert, hosts) {
		if srv, err = IssueServer(ca, hosts); err != nil {
			return nil, err
		}
		if err := SaveKeyPair(srv, srvCert, srvKey); err != nil {
			return nil, err
		}
	}
	return &DevPKI{CA: ca, Server: srv}, nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// serverCovers reports whether cert chains to ca, is valid now for server
// auth and names every host.
func serverCovers(ca *KeyPair, cert *x509.Certificate, hosts []string) bool {
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	opts := x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	if _, err := cert.Verify(opts); err != nil {
		return false
	}
	return !slices.ContainsFunc(hosts, func(h string) bool { return cert.VerifyHostname(h) != nil })
}
