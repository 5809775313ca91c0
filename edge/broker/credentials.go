package broker

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/crypto/bcrypt"
	"gopkg.in/yaml.v3"
)

// CredentialsFile is the YAML document Credentials is loaded from:
//
//	allow_anonymous: false
//	devices:
//	  - username: sensor-17
//	    password_hash: "$2a$10$…"      # bcrypt
//	    acl: [{topic: "config/sensor-17/#", access: read}]
//	acl:                                 # for every authenticated device
//	  - {topic: "sensors/%c/#", access: write}
//	  - {topic: "commands/%u/#", access: read}
type CredentialsFile struct {
	// AllowAnonymous lets devices without a user name connect; they get only
	// the shared ACL rules, with %u matching nothing. Zero value: refused.
	AllowAnonymous bool `yaml:"allow_anonymous"`
	// Devices are the known user names and their bcrypt password hashes.
	Devices []DeviceCredential `yaml:"devices"`
	// ACL rules apply to every device that connected.
	ACL []ACLRule `yaml:"acl"`
}

// DeviceCredential is one device login.
type DeviceCredential struct {
	Username string `yaml:"username"` // required, unique
	// PasswordHash is a bcrypt hash ("$2a$…", "$2b$…", "$2y$…"). Required.
	PasswordHash string `yaml:"password_hash"`
	// ACL rules that apply to this user name only, in addition to the
	// shared ones.
	ACL []ACLRule `yaml:"acl"`
}

// ACLRule allows access to the topics a filter matches. In Topic, %c stands
// for the client id and %u for the user name; a rule whose placeholder
// would be replaced by an id or name containing '+', '#' or '/' (which could
// widen it) or by an empty name allows nothing.
type ACLRule struct {
	Topic string `yaml:"topic"` // a topic filter, required
	// Access is "read" (subscribe and receive), "write" (publish) or
	// "readwrite". Required.
	Access string `yaml:"access"`
}

// Credentials is an Authorizer backed by a CredentialsFile: bcrypt
// passwords and allow-only ACLs (anything no rule allows is refused).
type Credentials struct {
	anonymous bool
	hashes    map[string][]byte
	shared    []aclRule
	perUser   map[string][]aclRule
}

type aclRule struct {
	filter      string
	read, write bool
}

var _ Authorizer = (*Credentials)(nil)

// LoadCredentials reads and parses a credentials file.
func LoadCredentials(path string) (*Credentials, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: credentials: %w", ErrConfig, err)
	}
	c, err := ParseCredentials(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// ParseCredentials parses a CredentialsFile, rejecting unknown keys. Errors
// wrap ErrConfig and name the offending entry.
func ParseCredentials(data []byte) (*Credentials, error) {
	var f CredentialsFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: credentials: %w", ErrConfig, err)
	}
	c := &Credentials{anonymous: f.AllowAnonymous, hashes: map[string][]byte{}, perUser: map[string][]aclRule{}}
	var err error
	if c.shared, err = compileACL("acl", f.ACL); err != nil {
		return nil, err
	}
	for i, d := range f.Devices {
		field := fmt.Sprintf("devices[%d]", i)
		if d.Username == "" {
			return nil, fmt.Errorf("%w: credentials: %s.username: required", ErrConfig, field)
		}
		if _, dup := c.hashes[d.Username]; dup {
			return nil, fmt.Errorf("%w: credentials: %s.username: %q listed twice", ErrConfig, field, d.Username)
		}
		if _, err := bcrypt.Cost([]byte(d.PasswordHash)); err != nil {
			return nil, fmt.Errorf("%w: credentials: %s.password_hash: not a bcrypt hash: %w", ErrConfig, field, err)
		}
		c.hashes[d.Username] = []byte(d.PasswordHash)
		if c.perUser[d.Username], err = compileACL(field+".acl", d.ACL); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func compileACL(field string, rules []ACLRule) ([]aclRule, error) {
	out := make([]aclRule, len(rules))
	for i, r := range rules {
		f := fmt.Sprintf("%s[%d]", field, i)
		// Validate with the placeholders filled by a harmless level.
		probe := strings.NewReplacer("%c", "x", "%u", "x").Replace(r.Topic)
		if err := ValidateFilter(probe); err != nil {
			return nil, fmt.Errorf("%w: credentials: %s.topic %q: %w", ErrConfig, f, r.Topic, err)
		}
		out[i].filter = r.Topic
		switch r.Access {
		case "read":
			out[i].read = true
		case "write":
			out[i].write = true
		case "readwrite":
			out[i].read, out[i].write = true, true
		default:
			return nil, fmt.Errorf("%w: credentials: %s.access: %q is not read, write or readwrite", ErrConfig, f, r.Access)
		}
	}
	return out, nil
}

// Authenticate checks the password of a known user name with bcrypt (slow
// on purpose: this runs once per CONNECT). A device without a user name is
// admitted only with allow_anonymous.
func (c *Credentials) Authenticate(cl ClientInfo, password []byte) bool {
	if cl.Username == "" {
		return c.anonymous
	}
	hash, ok := c.hashes[cl.Username]
	if !ok {
		return false
	}
	return bcrypt.CompareHashAndPassword(hash, password) == nil
}

// Authorize allows a publish to a topic (write) or a subscription to a
// filter and the deliveries it brings (read) when some rule for the client
// covers it: every topic the requested filter can match is matched by the
// rule's filter.
func (c *Credentials) Authorize(cl ClientInfo, topic string, write bool) bool {
	for _, rules := range [2][]aclRule{c.shared, c.perUser[cl.Username]} {
		for _, r := range rules {
			if (write && !r.write) || (!write && !r.read) {
				continue
			}
			f, ok := expandACL(r.filter, cl)
			if ok && FilterCovers(f, topic) {
				return true
			}
		}
	}
	return false
}

// expandACL substitutes %c and %u. It fails when a value is empty or holds a
// character that would change the filter's structure.
func expandACL(filter string, cl ClientInfo) (string, bool) {
	if !strings.Contains(filter, "%") {
		return filter, true
	}
	for _, p := range [...]struct{ key, val string }{{"%c", cl.ID}, {"%u", cl.Username}} {
		if !strings.Contains(filter, p.key) {
			continue
		}
		if p.val == "" || strings.ContainsAny(p.val, "+#/") {
			return "", false
		}
		filter = strings.ReplaceAll(filter, p.key, p.val)
	}
	return filter, true
}

// FilterCovers reports whether every topic that filter sub can match is also
// matched by filter acl. For a topic name (no wildcards) it equals
// MatchTopic(acl, sub). A '+' in sub is covered only by '+' or '#' in acl, a
// '#' in sub only by '#'; a wildcard at acl's first level does not cover a
// sub whose first level starts with '$'.
func FilterCovers(acl, sub string) bool {
	if sub != "" && sub[0] == '$' && acl != "" && (acl[0] == '+' || acl[0] == '#') {
		return false
	}
	for {
		al, arest, amore := strings.Cut(acl, "/")
		if al == "#" && !amore {
			return true
		}
		sl, srest, smore := strings.Cut(sub, "/")
		switch {
		case sl == "#":
			return false // only '#' (handled above) covers '#'
		case al == "+":
		case al != sl || sl == "+":
			return false
		}
		switch {
		case !amore && !smore:
			return true
		case !smore:
			return arest == "#" // "a/#" covers "a"
		case !amore:
			return false
		}
		acl, sub = arest, srest
	}
}
