package pki

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"os"
	"strings"
	"sync"
	"time"
)

// ErrRevoked is returned by a RevocationList check for a revoked
// certificate.
var ErrRevoked = errors.New("pki: certificate revoked")

// RevocationList is the cloud's list of revoked gateway certificates, kept
// in a text file: one certificate serial number (hex) per line, then
// optionally a comment ("# gw-7 revoked 2026-11-22T16:40:00Z"); blank lines
// and lines starting with # are ignored. The file is read again whenever
// its size or modification time changes, so `tributary-cloud gateway
// revoke` takes effect on the next connection without a restart. A missing
// file revokes nothing. Serials are unique per CA (IssueGateway draws 128
// random bits), so a gateway re-provisioned under the same id with a new
// certificate is not affected by the old one's revocation.
type RevocationList struct {
	path string

	mu      sync.Mutex
	size    int64
	mtime   time.Time
	loaded  bool
	serials map[string]bool
}

// NewRevocationList returns the list kept in path.
func NewRevocationList(path string) *RevocationList {
	return &RevocationList{path: path}
}

// Check returns an error wrapping ErrRevoked if cert is revoked, and an
// error if the list cannot be read or parsed: a cloud that cannot tell
// refuses rather than admits.
func (r *RevocationList) Check(cert *x509.Certificate) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.refresh(); err != nil {
		return err
	}
	if r.serials[serialKey(cert.SerialNumber)] {
		id, _ := GatewayID(cert)
		return fmt.Errorf("%w: serial %s (gateway %q) is listed in %s", ErrRevoked, serialKey(cert.SerialNumber), id, r.path)
	}
	return nil
}

func (r *RevocationList) refresh() error {
	st, err := os.Stat(r.path)
	if errors.Is(err, os.ErrNotExist) {
		r.serials, r.loaded, r.size, r.mtime = nil, true, -1, time.Time{}
		return nil
	}
	if err != nil {
		return fmt.Errorf("pki: revocation list: %w", err)
	}
	if r.loaded && st.Size() == r.size && st.ModTime().Equal(r.mtime) {
		return nil
	}
	data, err := os.ReadFile(r.path)
	if err != nil {
		return fmt.Errorf("pki: revocation list: %w", err)
	}
	serials, err := parseRevocations(data)
	if err != nil {
		return fmt.Errorf("pki: revocation list %s: %w", r.path, err)
	}
	r.serials, r.loaded, r.size, r.mtime = serials, true, st.Size(), st.ModTime()
	return nil
}

func parseRevocations(data []byte) (map[string]bool, error) {
	serials := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = strings.TrimSpace(line[:i])
		}
		if line == "" {
			continue
		}
		v, ok := new(big.Int).SetString(strings.TrimPrefix(strings.ToLower(line), "0x"), 16)
		if !ok || v.Sign() <= 0 {
			return nil, fmt.Errorf("line %d: %q is not a certificate serial number in hex", n, line)
		}
		serials[serialKey(v)] = true
	}
	return serials, sc.Err()
}

func serialKey(n *big.Int) string { return n.Text(16) }

// Revoke adds cert's serial number to the list in path (creating it),
// with a comment naming the gateway and the time, and fsyncs it. Revoking
// a certificate twice is not an error.
func Revoke(path string, cert *x509.Certificate, now time.Time) error {
	if data, err := os.ReadFile(path); err == nil {
		serials, err := parseRevocations(data)
		if err != nil {
			return fmt.Errorf("pki: revocation list %s: %w", path, err)
		}
		if serials[serialKey(cert.SerialNumber)] {
			return nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("pki: revocation list: %w", err)
	}
	id, _ := GatewayID(cert)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("pki: revocation list: %w", err)
	}
	_, err = fmt.Fprintf(f, "%s # %s revoked %s\n", serialKey(cert.SerialNumber), id, now.UTC().Format(time.RFC3339))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("pki: revocation list: %w", err)
	}
	return nil
}
