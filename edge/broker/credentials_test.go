package broker

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/crypto/bcrypt"
)

func bcryptHash(t testing.TB, password string) string {
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

func credentialsYAML(t testing.TB) string {
	return fmt.Sprintf(`
devices:
  - username: alice
    password_hash: %q
    acl: [{topic: "config/alice/#", access: read}]
  - username: bob
    password_hash: %q
acl:
  - {topic: "sensors/%%c/#", access: write}
  - {topic: "commands/%%u/+", access: read}
  - {topic: "broadcast/#", access: readwrite}
`, bcryptHash(t, "alice-pw"), bcryptHash(t, "bob-pw"))
}

func TestCredentials(t *testing.T) {
	c, err := ParseCredentials([]byte(credentialsYAML(t)))
	if err != nil {
		t.Fatal(err)
	}
	alice := ClientInfo{ID: "dev-1", Username: "alice"}
	for _, tt := range []struct {
		who  ClientInfo
		pw   string
		want bool
	}{
		{alice, "alice-pw", true},
		{alice, "bob-pw", false},
		{ClientInfo{ID: "x", Username: "bob"}, "bob-pw", true},
		{ClientInfo{ID: "x", Username: "carol"}, "carol-pw", false},
		{ClientInfo{ID: "x"}, "", false}, // anonymous not allowed
	} {
		if got := c.Authenticate(tt.who, []byte(tt.pw)); got != tt.want {
			t.Errorf("Authenticate(%+v, %q) = %v", tt.who, tt.pw, got)
		}
	}

	for _, tt := range []struct {
		who   ClientInfo
		topic string
		write bool
		want  bool
	}{
		{alice, "sensors/dev-1/temp", true, true},   // %c
		{alice, "sensors/dev-2/temp", true, false},  // someone else's id
		{alice, "sensors/dev-1/temp", false, false}, // write-only rule
		{alice, "sensors/dev-1/#", false, false},
		{alice, "commands/alice/reboot", false, true}, // %u
		{alice, "commands/alice/+", false, true},      // a filter the rule covers
		{alice, "commands/alice/#", false, false},     // wider than the rule
		{alice, "commands/+/reboot", false, false},
		{alice, "commands/bob/reboot", false, false},
		{alice, "config/alice/x", false, true}, // per-user rule
		{ClientInfo{ID: "x", Username: "bob"}, "config/alice/x", false, false},
		{alice, "broadcast/a/b", true, true},
		{alice, "broadcast/#", false, true},
		{alice, "#", false, false},
		{alice, "$SYS/broker/uptime", false, false},
		// Placeholders never widen a rule.
		{ClientInfo{ID: "+", Username: "alice"}, "sensors/x/t", true, false},
		{ClientInfo{ID: "#", Username: "alice"}, "sensors/x/t", true, false},
		{ClientInfo{ID: "a/b", Username: "alice"}, "sensors/a/b/t", true, false},
		{ClientInfo{ID: "dev-1"}, "commands//reboot", false, false}, // empty user name
	} {
		if got := c.Authorize(tt.who, tt.topic, tt.write); got != tt.want {
			t.Errorf("Authorize(%+v, %q, write=%v) = %v, want %v", tt.who, tt.topic, tt.write, got, tt.want)
		}
	}

	anon, err := ParseCredentials([]byte("allow_anonymous: true\nacl: [{topic: 'public/#', access: readwrite}]"))
	if err != nil {
		t.Fatal(err)
	}
	if !anon.Authenticate(ClientInfo{ID: "x"}, nil) || !anon.Authorize(ClientInfo{ID: "x"}, "public/a", true) {
		t.Error("anonymous access refused")
	}
}

func TestCredentialsErrors(t *testing.T) {
	h := bcryptHash(t, "pw")
	for _, tt := range []struct{ yaml, field string }{
		{"devices: [{password_hash: '" + h + "'}]", "devices[0].username"},
		{"devices: [{username: a, password_hash: plain}]", "devices[0].password_hash"},
		{"devices: [{username: a, password_hash: '" + h + "'}, {username: a, password_hash: '" + h + "'}]", "devices[1].username"},
		{"acl: [{topic: 'a/#/b', access: read}]", "acl[0].topic"},
		{"acl: [{topic: 'a', access: all}]", "acl[0].access"},
		{"devices: [{username: a, password_hash: '" + h + "', acl: [{topic: '', access: read}]}]", "devices[0].acl[0].topic"},
		{"allow_anonymus: true", "allow_anonymus"},
	} {
		_, err := ParseCredentials([]byte(tt.yaml))
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tt.field) {
			t.Errorf("ParseCredentials(%q) = %v, want ErrConfig naming %q", tt.yaml, err, tt.field)
		}
	}
}

func TestFilterCovers(t *testing.T) {
	for _, tt := range []struct {
		acl, sub string
		want     bool
	}{
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"a/#", "a/#", true},
		{"a/#", "a/+", true},
		{"a/+", "a/b", true},
		{"a/+", "a/+", true},
		{"a/+", "a/#", false},
		{"a/+", "a/b/c", false},
		{"a/b", "a/+", false},
		{"#", "#", true},
		{"#", "$SYS/a", false},
		{"+/a", "$x/a", false},
		{"$SYS/#", "$SYS/a", true},
		{"+/+", "a/+", true},
		{"a", "a", true},
		{"a", "b", false},
	} {
		if got := FilterCovers(tt.acl, tt.sub); got != tt.want {
			t.Errorf("FilterCovers(%q, %q) = %v, want %v", tt.acl, tt.sub, got, tt.want)
		}
	}
}

// FuzzFilterCovers: whenever acl covers sub, every topic built by filling
// sub's wildcards is matched by acl; and a valid filter covers itself.
func FuzzFilterCovers(f *testing.F) {
	f.Add("a/#", "a/+/c", "x")
	f.Add("+/+", "+/b", "")
	f.Add("#", "$SYS/#", "y/z")
	f.Add("a/+/#", "a/+", "q")
	f.Fuzz(func(t *testing.T, acl, sub, fill string) {
		covers := FilterCovers(acl, sub) // never panics
		if ValidateFilter(acl) != nil || ValidateFilter(sub) != nil || strings.ContainsAny(fill, "+#") {
			return
		}
		if !FilterCovers(sub, sub) {
			t.Fatalf("%q does not cover itself", sub)
		}
		if !covers {
			return
		}
		levels := strings.Split(sub, "/")
		for i, l := range levels {
			switch l {
			case "+":
				levels[i] = strings.ReplaceAll(fill, "/", "")
			case "#":
				levels[i] = fill
			}
		}
		topic := strings.Join(levels, "/")
		if strings.HasSuffix(sub, "/#") && fill == "" {
			topic = strings.TrimSuffix(sub, "/#") // '#' also matches the parent
			topic = strings.ReplaceAll(topic, "+", "")
		}
		if MatchTopic(sub, topic) && !MatchTopic(acl, topic) {
			t.Fatalf("FilterCovers(%q, %q) but %q matches only the second", acl, sub, topic)
		}
	})
}

// TestCredentialsEndToEnd: a broker configured with a credentials file
// refuses a wrong password, refuses unauthorised publishes and subscriptions,
// and forwards only what the ACL allows.
func TestCredentialsEndToEnd(t *testing.T) {
	path := filepath.Join(t.TempDir(), "credentials.yaml")
	if err := os.WriteFile(path, []byte(credentialsYAML(t)), 0o600); err != nil {
		t.Fatal(err)
	}
	ob := newFakeOutbox(t)
	b := startBroker(t, Config{Auth: Auth{CredentialsFile: path}}, ob)

	bad := paho.NewClient(paho.NewClientOptions().AddBroker(tcpURL(b)).SetClientID("dev-1").
		SetUsername("alice").SetPassword("wrong").SetAutoReconnect(false).SetConnectRetry(false))
	if tok := bad.Connect(); !tok.WaitTimeout(safetyTimeout) || tok.Error() == nil {
		bad.Disconnect(0)
		t.Fatal("wrong password accepted")
	}

	c := pahoClient(t, tcpURL(b), "dev-1", func(o *paho.ClientOptions) { o.SetUsername("alice").SetPassword("alice-pw") })
	if err := waitToken(t, c.Publish("sensors/dev-1/t", 1, false, "allowed")); err != nil {
		t.Fatal(err)
	}
	tok := c.Subscribe("sensors/#", 1, nil)
	if err := waitToken(t, tok); err != nil {
		t.Fatal(err)
	}
	if code := tok.(*paho.SubscribeToken).Result()["sensors/#"]; code != 0x80 {
		t.Errorf("unauthorised subscription granted with code %#x", code)
	}
	// MQTT 5: an unauthorised QoS 1 publish gets 0x87 and is not forwarded.
	c5, _ := dialRawUser(t, b.Addr().TCP, "dev-2", "bob", "bob-pw", 5, packets.Properties{})
	c5.publish(1, 1, "sensors/dev-1/t", []byte("spoofed"), packets.Properties{})
	c5.publish(2, 1, "sensors/dev-2/t", []byte("own"), packets.Properties{})
	if pk := c5.mustRead(packets.Puback); pk.PacketID != 1 || pk.ReasonCode != packets.ErrNotAuthorized.Code {
		t.Fatalf("PUBACK %d reason %#x, want 1 and 0x87", pk.PacketID, pk.ReasonCode)
	}
	if pk := c5.mustRead(packets.Puback); pk.PacketID != 2 || pk.ReasonCode != 0 {
		t.Fatalf("PUBACK %d reason %#x", pk.PacketID, pk.ReasonCode)
	}
	// MQTT 3.1.1 has no negative PUBACK: mochi disconnects (after a
	// DISCONNECT packet that 3.1.1 does not define).
	c4, _ := dialRawUser(t, b.Addr().TCP, "dev-3", "bob", "bob-pw", 4, packets.Properties{})
	c4.publish(1, 1, "sensors/dev-1/t", []byte("spoofed-v3"), packets.Properties{})
	for {
		pk, err := c4.read()
		if err != nil {
			break
		}
		if pk.FixedHeader.Type == packets.Puback {
			t.Fatal("unauthorised 3.1.1 publish acknowledged")
		}
	}
	records, _ := ob.snapshot()
	var got []string
	for _, r := range records {
		got = append(got, string(r.Payload))
	}
	if fmt.Sprint(got) != "[allowed own]" {
		t.Fatalf("outbox holds %v", got)
	}
}

// FuzzParseCredentials: any bytes parse to a usable Authorizer or fail with
// ErrConfig; the result never panics on lookups.
func FuzzParseCredentials(f *testing.F) {
	f.Add([]byte(credentialsYAML(f)))
	f.Add([]byte("allow_anonymous: true\nacl: [{topic: '%c/%u/#', access: readwrite}]"))
	f.Add([]byte("devices: [{username: a, password_hash: x}]"))
	f.Add([]byte("acl: [{topic: '+', access: read}, {topic: '#', access: write}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseCredentials(data)
		if err != nil {
			if !errors.Is(err, ErrConfig) {
				t.Fatalf("error without ErrConfig: %v", err)
			}
			return
		}
		who := ClientInfo{ID: "dev", Username: "a"}
		c.Authenticate(who, []byte("pw"))
		c.Authorize(who, "dev/a/x", true)
		c.Authorize(who, "#", false)
	})
}
