package gateway

import (
	"net/url"
	"strconv"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/tributary-io/tributary/edge/outbox"
	"github.com/tributary-io/tributary/sync/link"
	"github.com/tributary-io/tributary/sync/wire"
)

// The link's fast path (link.EncodedSource): AppendRecord writes the
// encoding of ToRecord's Record straight from the outbox record, without
// building the protobuf messages, the attribute map and its sorting that
// the generic encoder needs for every record of a drain. The bytes are those
// the generic encoder (wire.EncodeBatch) makes of ToRecord's Record:
// fields in number order, attributes sorted by key, BinaryData always
// present (encode_test.go holds both to that).

// Field numbers of syncv1.Record, CloudEvent (sdk-go's pb), its attribute
// value and google.protobuf.Timestamp.
const (
	recSeq, recEvent, recPriority                 = 1, 2, 3
	evID, evSource, evSpecVersion, evType, evAttr = 1, 2, 3, 4, 5
	evBinaryData                                  = 6
	entryKey, entryValue                          = 1, 2
	attrString, attrTimestamp                     = 3, 7
	tsSeconds, tsNanos                            = 1, 2
)

func bytesFieldLen(n int) int { return 1 + protowire.SizeVarint(uint64(n)) + n } // field numbers < 16

func appendString(b []byte, num protowire.Number, s string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// stringAttrLen is the size of a map entry holding a string attribute.
func stringAttrLen(key, v string) int {
	return bytesFieldLen(bytesFieldLen(len(key)) + bytesFieldLen(bytesFieldLen(len(v))))
}

func appendStringAttr(b []byte, key, v string) []byte {
	val := bytesFieldLen(len(v))
	b = protowire.AppendTag(b, evAttr, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(bytesFieldLen(len(key))+bytesFieldLen(val)))
	b = appendString(b, entryKey, key)
	b = protowire.AppendTag(b, entryValue, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(val))
	return appendString(b, attrString, v)
}

// AppendRecord appends the protobuf encoding of ToRecord(gw, r) to dst.
func AppendRecord(dst []byte, gw string, r *outbox.Record) []byte {
	typ := r.EventType
	if typ == "" {
		typ = DefaultEventType
	}
	ct := r.ContentType
	if ct == "" {
		if validJSON(r.Payload) {
			ct = "application/json"
		} else {
			ct = "application/octet-stream"
		}
	}
	// The id and the source, built in one buffer as ToRecord does.
	var idBuf [128]byte
	ids := append(idBuf[:0], gw...)
	ids = append(ids, '-')
	ids = strconv.AppendUint(ids, r.Seq, 10)
	idLen := len(ids)
	ids = append(ids, "/gateways/"...)
	ids = append(ids, url.PathEscape(gw)...)
	ids = append(ids, "/devices/"...)
	ids = append(ids, url.PathEscape(r.ClientID)...)
	id, source := ids[:idLen], ids[idLen:]

	sec, nanos := r.Received.Unix(), int64(r.Received.Nanosecond())
	ts := 0
	if sec != 0 {
		ts += 1 + protowire.SizeVarint(uint64(sec))
	}
	if nanos != 0 {
		ts += 1 + protowire.SizeVarint(uint64(nanos))
	}
	timeValue := bytesFieldLen(ts)
	timeEntry := bytesFieldLen(bytesFieldLen(len("time")) + bytesFieldLen(timeValue))

	ev := bytesFieldLen(len(id)) + bytesFieldLen(len(source)) + bytesFieldLen(len("1.0")) + bytesFieldLen(len(typ)) +
		stringAttrLen("datacontenttype", ct) + stringAttrLen("partitionkey", r.ClientID) +
		stringAttrLen("subject", r.Topic) + timeEntry + bytesFieldLen(len(r.Payload))

	b := dst
	if r.Seq != 0 {
		b = protowire.AppendTag(b, recSeq, protowire.VarintType)
		b = protowire.AppendVarint(b, r.Seq)
	}
	b = protowire.AppendTag(b, recEvent, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(ev))
	b = protowire.AppendTag(b, evID, protowire.BytesType)
	b = protowire.AppendBytes(b, id)
	b = protowire.AppendTag(b, evSource, protowire.BytesType)
	b = protowire.AppendBytes(b, source)
	b = appendString(b, evSpecVersion, "1.0")
	b = appendString(b, evType, typ)
	// Attributes in key order, as the generic encoder sorts them.
	b = appendStringAttr(b, "datacontenttype", ct)
	b = appendStringAttr(b, "partitionkey", r.ClientID)
	b = appendStringAttr(b, "subject", r.Topic)
	b = protowire.AppendTag(b, evAttr, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(bytesFieldLen(len("time"))+bytesFieldLen(timeValue)))
	b = appendString(b, entryKey, "time")
	b = protowire.AppendTag(b, entryValue, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(timeValue))
	b = protowire.AppendTag(b, attrTimestamp, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(ts))
	if sec != 0 {
		b = protowire.AppendTag(b, tsSeconds, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(sec))
	}
	if nanos != 0 {
		b = protowire.AppendTag(b, tsNanos, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(nanos))
	}
	b = protowire.AppendTag(b, evBinaryData, protowire.BytesType)
	b = protowire.AppendBytes(b, r.Payload)
	if r.Priority != 0 {
		b = protowire.AppendTag(b, recPriority, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(r.Priority))
	}
	return b
}

var _ link.EncodedSource = (*source)(nil)

// ReadEncoded implements link.EncodedSource: lane < 0 reads every lane.
// The encodings of one call share one buffer.
func (s *source) ReadEncoded(lane int, after uint64, maxRecords, maxBytes int) ([]wire.EncodedRecord, error) {
	if lane >= outbox.MaxLanes {
		return nil, laneError(uint32(lane))
	}
	recs, err := s.ob.ReadSync(lane, after, maxRecords, maxBytes)
	if err != nil {
		return nil, err
	}
	size := 0
	for i := range recs {
		r := &recs[i]
		size += len(r.Payload) + len(r.Topic) + 2*len(r.ClientID) + len(r.ContentType) + len(r.EventType) + 3*len(s.gw) + 160
	}
	buf := make([]byte, 0, size)
	out := make([]wire.EncodedRecord, len(recs))
	for i := range recs {
		start := len(buf)
		buf = AppendRecord(buf, s.gw, &recs[i])
		out[i] = wire.EncodedRecord{Seq: recs[i].Seq, Bytes: buf[start:len(buf):len(buf)]}
	}
	return out, nil
}

// NewSource returns the gateway's adapter from ob to the link, as a gateway
// named gw uses it: records become CloudEvents (ToRecord, or AppendRecord on
// the link's fast path), read and acknowledged per lane or all together. The
// sync-drain benchmark drains through it.
func NewSource(ob *outbox.Outbox, gw string) link.LaneSource { return &source{ob: ob, gw: gw} }
