package broker

import (
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// ClientInfo identifies a connecting or connected device to an Authorizer.
type ClientInfo struct {
	ID       string // MQTT client id
	Username string // MQTT user name, "" if none
	Listener string // "tcp", "tls" or "ws"
	Remote   string // remote address
}

// Authorizer decides which devices may connect and which topics they may
// use. Implementations must be safe for concurrent use and fast: Authorize
// runs on every publish and on every delivery to a subscriber.
type Authorizer interface {
	// Authenticate reports whether the device may connect; false refuses
	// the CONNECT with "bad user name or password".
	Authenticate(c ClientInfo, password []byte) bool
	// Authorize reports whether the client may publish to topic
	// (write=true), or subscribe to the filter topic and receive messages
	// on it (write=false). A refused QoS≥1 publish gets "not authorized"
	// (MQTT 5) or a disconnect (MQTT 3.1.1); a refused subscription gets
	// reason 0x87 in its SUBACK.
	Authorize(c ClientInfo, topic string, write bool) bool
}

// AllowAll is the Authorizer used until one is set: every device may connect
// and use every topic.
type AllowAll struct{}

func (AllowAll) Authenticate(ClientInfo, []byte) bool    { return true }
func (AllowAll) Authorize(ClientInfo, string, bool) bool { return true }

var _ Authorizer = AllowAll{}

// authHook adapts an Authorizer to mochi.
type authHook struct {
	mqtt.HookBase
	a Authorizer
}

func (h *authHook) ID() string { return "tributary-auth" }

// Provides is asked for every hook on every event mochi raises, several
// times per message: a switch, not a slice search.
func (h *authHook) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

func (h *authHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	return h.a.Authenticate(clientInfo(cl), pk.Connect.Password)
}

func (h *authHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	return h.a.Authorize(clientInfo(cl), topic, write)
}

func clientInfo(cl *mqtt.Client) ClientInfo {
	return ClientInfo{
		ID:       cl.ID,
		Username: string(cl.Properties.Username),
		Listener: cl.Net.Listener,
		Remote:   cl.Net.Remote,
	}
}
