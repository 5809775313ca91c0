package devicesdk

import (
	"testing"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func publishPacket(id uint16, qos byte) *packets.PublishPacket {
	p := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	p.MessageID, p.Qos, p.TopicName, p.Payload = id, qos, "t", []byte{byte(id)}
	return p
}

// The store signals a QoS 1 publish when paho deletes its outbound entry
// (the PUBACK), and nothing else: not inbound deletes, not other ids, not
// a reset, not a re-put by paho's resend.
func TestAckStoreSignalsOnlyOutboundPublishDelete(t *testing.T) {
	s := newAckStore(mqtt.NewOrderedMemoryStore())
	s.Open()
	s.Put("o.5", publishPacket(5, 1))
	s.Put("o.6", publishPacket(6, 1))
	sub := packets.NewControlPacket(packets.Subscribe).(*packets.SubscribePacket)
	sub.MessageID, sub.Qos = 7, 1
	s.Put("o.7", sub)
	s.Put("i.5", publishPacket(5, 1)) // an inbound message with the same id

	a5, a6 := s.acked(5), s.acked(6)
	if isClosed(a5) || isClosed(a6) {
		t.Fatal("acked before any delete")
	}
	if !isClosed(s.acked(7)) {
		t.Fatal("a subscribe is not a pending publish: acked(7) should report nothing pending")
	}
	s.Del("i.5")
	if isClosed(a5) {
		t.Fatal("an inbound delete acknowledged outbound 5")
	}
	s.Put("o.5", publishPacket(5, 1)) // re-put: still the same wait
	if s.acked(5) != a5 {
		t.Fatal("a re-put of a pending id replaced its channel")
	}
	s.Del("o.5")
	if !isClosed(a5) || isClosed(a6) {
		t.Fatalf("after deleting o.5: acked 5 %v, 6 %v; want true, false", isClosed(a5), isClosed(a6))
	}
	if s.Get("o.5") != nil || s.Get("o.6") == nil {
		t.Fatal("the wrapped store does not hold what it should")
	}
	s.Del("o.5") // a second PUBACK for a duplicate: no double close
	s.Reset()
	if isClosed(a6) {
		t.Fatal("a reset (forgotten) acknowledged 6")
	}
	s.Put("o.6", publishPacket(6, 1))
	if s.acked(6) == a6 {
		t.Fatal("after a reset a new publish with id 6 waits on the forgotten one's channel")
	}
}

// A publish is stored as a copy, like paho's FileStore would: resume()
// setting Dup on the stored packet must not touch the packet a Publish
// call may still be writing to the connection.
func TestAckStoreStoresPublishCopies(t *testing.T) {
	s := newAckStore(mqtt.NewOrderedMemoryStore())
	s.Open()
	p := publishPacket(3, 1)
	s.Put("o.3", p)
	stored, ok := s.Get("o.3").(*packets.PublishPacket)
	if !ok || stored == p {
		t.Fatalf("stored %T %p, original %p: want a distinct *PublishPacket", s.Get("o.3"), stored, p)
	}
	stored.Dup = true
	if p.Dup {
		t.Fatal("setting Dup on the stored packet changed the original")
	}
	if stored.TopicName != p.TopicName || stored.MessageID != p.MessageID || string(stored.Payload) != string(p.Payload) || stored.Qos != 1 {
		t.Fatalf("stored copy %v differs from %v", stored, p)
	}
}
