package server

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/tributary-io/tributary/cloud/internal/atomicfile"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/quic-go/quic-go"
)

// ResetKeyFile is where the cloud keeps its QUIC stateless reset key, in its
// data directory (mode 0600, 64 hex digits).
//
// Why a stored key: after the cloud crashes or restarts, its gateways still
// hold QUIC connections the new process knows nothing about. Without a key
// it drops their packets silently and each gateway waits for its idle
// timeout (30 s by default) before it reconnects. With the same key as
// before, the new process answers those packets with a stateless reset
// (RFC 9000 §10.3) whose token the gateway learnt from the old process, and
// the gateway reconnects at once. A key derived from the TLS key was
// rejected: certificates rotate, and the reset key must not.
const ResetKeyFile = "sync-reset.key"

// errResetKey marks a reset key file that cannot be used.
var errResetKey = errors.New("stateless reset key")

// ensureResetKey returns the stateless reset key stored in dir, creating it
// on first use. A file that exists but does not hold a key is an error (a
// new key would make every gateway wait for its idle timeout once, and a
// corrupt file is worth a look), wrapping errResetKey.
func ensureResetKey(dir string) (*quic.StatelessResetKey, error) {
	path := filepath.Join(dir, ResetKeyFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		return parseResetKey(path, b)
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("%w: %w", errResetKey, err)
	}
	var key quic.StatelessResetKey
	if _, err := rand.Read(key[:]); err != nil {
		return nil, fmt.Errorf("%w: %w", errResetKey, err)
	}
	if err := atomicfile.Write(path, []byte(hex.EncodeToString(key[:])+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("%w: %w", errResetKey, err)
	}
	return &key, nil
}

func parseResetKey(path string, b []byte) (*quic.StatelessResetKey, error) {
	var key quic.StatelessResetKey
	s := strings.TrimSpace(string(b))
	raw, err := hex.DecodeString(s)
	if err != nil || len(raw) != len(key) {
		return nil, fmt.Errorf("%w: %s does not hold %d hex digits; delete it to make a new key", errResetKey, path, 2*len(key))
	}
	copy(key[:], raw)
	return &key, nil
}
