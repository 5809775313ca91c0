package gateway

import (
	"bytes"
	"context"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tributary-io/tributary/edge/outbox"
	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
	"github.com/tributary-io/tributary/sync/link"
	"github.com/tributary-io/tributary/sync/wire"
)

// genericEncoding is the Record encoding the link's generic path sends for
// ToRecord(gw, r): the bytes wire.EncodeBatch puts in its RecordList.
func genericEncoding(t *testing.T, gw string, r *outbox.Record) []byte {
	t.Helper()
	b, _, err := wire.EncodeBatch([]*syncv1.Record{ToRecord(gw, r)}, 0)
	if err != nil {
		t.Fatal(err)
	}
	var list syncv1.RecordList
	if err := proto.Unmarshal(b.GetRecords(), &list); err != nil || len(list.GetRecords()) != 1 {
		t.Fatalf("list: %v", err)
	}
	// The list is one field 1 holding the record: strip its tag and length.
	raw := b.GetRecords()
	n := proto.Size(list.GetRecords()[0])
	return raw[len(raw)-n:]
}

// TestAppendRecord: AppendRecord's bytes are the generic encoder's, byte for
// byte, for hand-picked and random records, and decode to ToRecord's Record.
func TestAppendRecord(t *testing.T) {
	at := time.Date(2026, 5, 4, 3, 2, 1, 987654321, time.UTC)
	recs := []outbox.Record{
		{Seq: 1, Message: outbox.Message{ClientID: "d1", Topic: "t/1", Payload: []byte(`{"a":1}`), Received: at}},
		{Seq: 1 << 62, Message: outbox.Message{ClientID: "dev/ä ?", Topic: "t", Payload: []byte{0xff, 0}, Received: at, Priority: 7}},
		{Seq: 9, Message: outbox.Message{ClientID: "d", Topic: "x", Payload: []byte(`[1, "two"]`), ContentType: "text/csv", EventType: "io.x.alarm"}},
		{Seq: 10, Message: outbox.Message{ClientID: "", Topic: "", Payload: nil, Received: time.Unix(-5, 7)}},
		{Seq: 11, Message: outbox.Message{ClientID: "d", Topic: "x", Payload: []byte(`{"a":1`), Received: time.Unix(0, 5)}},
		{Seq: 12, Message: outbox.Message{ClientID: "d", Topic: "x", Payload: bytes.Repeat([]byte("x"), 70000), Received: time.Unix(7, 0)}},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	word := func(n int) string {
		var sb strings.Builder
		for range rng.IntN(n) {
			alphabet := []string{" ", "a", "/", "é", "%", "?", "#", "+", "\x00", "z", "ü"}
			sb.WriteString(alphabet[rng.IntN(len(alphabet))])
		}
		return sb.String()
	}
	for i := range 300 {
		p := make([]byte, rng.IntN(300))
		for j := range p {
			p[j] = byte(rng.IntN(256))
		}
		if i%3 == 0 {
			p = []byte(`{"n":` + word(5) + `1}`)
		}
		recs = append(recs, outbox.Record{Seq: rng.Uint64N(1 << 40), Message: outbox.Message{
			ClientID: word(30), Topic: word(200), Payload: p, ContentType: word(3), EventType: word(3),
			Priority: uint8(rng.IntN(3)), Received: time.Unix(rng.Int64N(1<<34)-1<<33, rng.Int64N(2)*rng.Int64N(1e9)),
		}})
	}
	for _, gw := range []string{"gw-1", "gw 2/ü", strings.Repeat("g", 64)} {
		for i := range recs {
			r := &recs[i]
			got := AppendRecord([]byte("prefix"), gw, r)
			if string(got[:6]) != "prefix" {
				t.Fatal("AppendRecord overwrote dst")
			}
			got = got[6:]
			if want := genericEncoding(t, gw, r); !bytes.Equal(got, want) {
				t.Fatalf("%s record %d: AppendRecord\n%x\nwant\n%x", gw, i, got, want)
			}
			var dec syncv1.Record
			if err := proto.Unmarshal(got, &dec); err != nil || !proto.Equal(&dec, ToRecord(gw, r)) {
				t.Fatalf("%s record %d decodes to %v (%v)", gw, i, &dec, err)
			}
		}
	}
}

// TestSourceReadEncoded: the source's fast path returns, lane by lane or
// for every lane, the records Read and ReadLane return, encoded.
func TestSourceReadEncoded(t *testing.T) {
	ob, err := outbox.Open(filepath.Join(t.TempDir(), "outbox.db"), outbox.Options{
		Classes: map[uint8]outbox.ClassPolicy{2: {Lane: 1}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ob.Close()
	for i := range 50 {
		m := outbox.Message{ClientID: "d", Topic: "t", Payload: []byte(`{"i":1}`), Priority: uint8(i % 3), Received: time.Unix(int64(i), 0)}
		if _, err := ob.AppendWait(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	src := NewSource(ob, "gw-e")
	es := src.(link.EncodedSource)
	for _, lane := range []int{-1, 0, 1} {
		var recs []outbox.Record
		if lane < 0 {
			recs, err = ob.Read(0, 100, 0)
		} else {
			recs, err = ob.ReadLane(uint8(lane), 0, 100, 0)
		}
		if err != nil {
			t.Fatal(err)
		}
		enc, err := es.ReadEncoded(lane, 0, 100, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(enc) != len(recs) || len(recs) == 0 {
			t.Fatalf("lane %d: %d encoded, %d records", lane, len(enc), len(recs))
		}
		for i := range recs {
			if enc[i].Seq != recs[i].Seq || !bytes.Equal(enc[i].Bytes, genericEncoding(t, "gw-e", &recs[i])) {
				t.Fatalf("lane %d record %d differs", lane, i)
			}
		}
	}
	if _, err := es.ReadEncoded(outbox.MaxLanes, 0, 1, 0); err == nil {
		t.Fatal("lane out of range read")
	}
}
