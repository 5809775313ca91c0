package broker

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"
)

// FuzzStoredRows feeds arbitrary bytes to the decoders of stored session
// rows: none may panic, what they accept must hold their invariants, and
// mochi's conversion of an accepted message must not panic either.
func FuzzStoredRows(f *testing.F) {
	for _, v := range []any{
		storage.Client{ID: "dev", ProtocolVersion: 4},
		storage.Client{ID: "dev5", ProtocolVersion: 5, Properties: storage.ClientProperties{SessionExpiryInterval: 60, User: []packets.UserProperty{{Key: "k", Val: "v"}}}},
		storage.Subscription{Client: "dev", Filter: "sensors/+/temp", Qos: 1},
		storage.Subscription{Client: "dev", Filter: "a/#/b", Qos: 1},
		storage.Message{Client: "dev", TopicName: "sensors/a", Payload: []byte("x"), PacketID: 7,
			FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, Properties: storage.MessageProperties{User: []packets.UserProperty{{Key: "a", Val: "b"}}}},
		storage.Message{Client: "dev", PacketID: 9, FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}},
	} {
		b, err := json.Marshal(v)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{{{`))
	f.Add([]byte(`{"fixedheader":{"type":3,"qos":7},"topic_name":"a/+"}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if c, err := decodeClient(data); err == nil {
			if c.ID == "" || c.ProtocolVersion < 3 || c.ProtocolVersion > 5 {
				t.Fatalf("accepted client %+v", c)
			}
		} else if !errors.Is(err, errBadRow) {
			t.Fatalf("client error %v does not wrap errBadRow", err)
		}
		if s, err := decodeSubscription(data); err == nil {
			if ValidateFilter(s.Filter) != nil || s.Client == "" || s.Qos > 2 {
				t.Fatalf("accepted subscription %+v", s)
			}
		} else if !errors.Is(err, errBadRow) {
			t.Fatalf("subscription error %v does not wrap errBadRow", err)
		}
		if m, err := decodeMessage(data); err == nil {
			pk := m.ToPacket()
			if pk.FixedHeader.Qos > 2 {
				t.Fatalf("accepted message %+v", m)
			}
		} else if !errors.Is(err, errBadRow) {
			t.Fatalf("message error %v does not wrap errBadRow", err)
		}
	})
}
