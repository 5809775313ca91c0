package server

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
)

// Scopes of API tokens. Each includes the ones before it: admin can do
// everything, write can read.
const (
	ScopeRead  = "read"
	ScopeWrite = "write"
	ScopeAdmin = "admin"
)

var scopeRank = map[string]int{ScopeRead: 1, ScopeWrite: 2, ScopeAdmin: 3}

// TokenConfig is one API bearer token.
type TokenConfig struct {
	// Name identifies the token in logs. Required.
	Name string `yaml:"name"`
	// Token is the secret itself, or TokenSHA256 its SHA-256 in hex (so the
	// config file need not hold secrets). Exactly one is required.
	Token       string `yaml:"token"`
	TokenSHA256 string `yaml:"token_sha256"`
	// Scopes: read, write or admin (admin ⊇ write ⊇ read). Required.
	Scopes []string `yaml:"scopes"`
}

func (t TokenConfig) validate() error {
	if t.Name == "" {
		return errors.New("name: required")
	}
	if (t.Token == "") == (t.TokenSHA256 == "") {
		return errors.New("set exactly one of token and token_sha256")
	}
	if t.TokenSHA256 != "" {
		if b, err := hex.DecodeString(t.TokenSHA256); err != nil || len(b) != sha256.Size {
			return errors.New("token_sha256: want 64 hex digits")
		}
	}
	if t.Token != "" && len(t.Token) < 16 {
		return errors.New("token: use at least 16 characters")
	}
	if len(t.Scopes) == 0 {
		return errors.New("scopes: required (read, write or admin)")
	}
	for _, s := range t.Scopes {
		if scopeRank[s] == 0 {
			return fmt.Errorf("scopes: %q is not read, write or admin", s)
		}
	}
	return nil
}

// authToken is a token ready for checking.
type authToken struct {
	name string
	hash [sha256.Size]byte
	rank int
}

// authenticator checks bearer tokens in constant time per token.
type authenticator struct {
	tokens []authToken
}

func newAuthenticator(cfg []TokenConfig) *authenticator {
	a := &authenticator{}
	for _, t := range cfg {
		at := authToken{name: t.Name}
		if t.Token != "" {
			at.hash = sha256.Sum256([]byte(t.Token))
		} else {
			b, _ := hex.DecodeString(t.TokenSHA256)
			copy(at.hash[:], b)
		}
		for _, s := range t.Scopes {
			at.rank = max(at.rank, scopeRank[s])
		}
		a.tokens = append(a.tokens, at)
	}
	return a
}

// require wraps h so it runs only for a bearer token holding scope: no or an
// unknown token is 401, a token without the scope 403 (RFC 6750).
func (a *authenticator) require(scope string, h http.HandlerFunc) http.HandlerFunc {
	need := scopeRank[scope]
	return func(w http.ResponseWriter, r *http.Request) {
		auth := r.Header.Get("Authorization")
		scheme, secret, ok := strings.Cut(auth, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || secret == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="tributary"`)
			writeError(w, http.StatusUnauthorized, "a bearer token is required (Authorization: Bearer <token>)")
			return
		}
		sum := sha256.Sum256([]byte(strings.TrimSpace(secret)))
		found := -1
		for i, t := range a.tokens {
			if subtle.ConstantTimeCompare(sum[:], t.hash[:]) == 1 {
				found = i
			}
		}
		if found < 0 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="tributary", error="invalid_token"`)
			writeError(w, http.StatusUnauthorized, "the bearer token is not valid")
			return
		}
		if a.tokens[found].rank < need {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="tributary", error="insufficient_scope", scope=%q`, scope))
			writeError(w, http.StatusForbidden, "token %q lacks the %s scope", a.tokens[found].name, scope)
			return
		}
		h(w, r)
	}
}

// DevTokenFile is where a cloud with no configured API tokens keeps the
// admin token it generated on first start (mode 0600).
const DevTokenFile = "api-token"

// ensureDevToken returns the development admin token in dir, creating it on
// first use.
func ensureDevToken(dir string) (string, bool, error) {
	path := filepath.Join(dir, DevTokenFile)
	if b, err := os.ReadFile(path); err == nil {
		tok := strings.TrimSpace(string(b))
		if len(tok) < 16 {
			return "", false, fmt.Errorf("%s: token too short; delete the file to make a new one", path)
		}
		return tok, false, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", false, err
	}
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", false, err
	}
	tok := hex.EncodeToString(b[:])
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(tok+"\n"), 0o600); err != nil {
		return "", false, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", false, err
	}
	return tok, true, nil
}

// ReadDevToken returns the development admin token of the cloud whose data
// directory is dataDir (for tools and tests running beside it).
func ReadDevToken(dataDir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, DevTokenFile))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}
