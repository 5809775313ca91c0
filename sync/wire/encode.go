package wire

import (
	"slices"
	"strings"

	"github.com/cloudevents/sdk-go/binding/format/protobuf/v2/pb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
)

// appendRecordList appends the protobuf encoding of RecordList{recs} to
// dst, byte for byte what proto.MarshalOptions{Deterministic: true}
// produces (attributes sorted by key, unknown fields kept).
//
// Why not proto.Marshal: on a gateway draining a backlog, marshalling
// through protobuf's reflection-driven map coder cost more CPU per record
// than everything else the link does except SQLite and zstd. These messages
// are fixed (proto/sync/v1 and the CloudEvents format), so the encoder is
// written out; TestAppendRecordListMatchesProto and FuzzAppendRecordList
// hold it to the library's bytes. Sorted keys also help zstd: every record
// lists its attributes in the same order.
func appendRecordList(dst []byte, recs []*syncv1.Record) []byte {
	var e listEncoder
	for _, r := range recs {
		e.measure(r)
		dst = protowire.AppendTag(dst, fieldListRecords, protowire.BytesType)
		dst = protowire.AppendVarint(dst, uint64(e.recSize))
		dst = e.appendRecord(dst, r)
	}
	return dst
}

// listEncoder holds one record's measurements between measuring and
// appending it, so that no size is computed twice: nested lengths come
// before their messages, and every unknown-fields lookup goes through
// protobuf's reflection.
type listEncoder struct {
	keys            []string // the event's attribute keys, sorted
	attrs           []attrInfo
	recUnknown      []byte
	evUnknown       []byte
	recSize, evSize int
	protoDataSize   int
}

type attrInfo struct {
	v                  *pb.CloudEventAttributeValue
	size               int // of the value message
	unknown, tsUnknown []byte
	tsSize             int
}

func (e *listEncoder) measure(r *syncv1.Record) {
	e.recUnknown = r.ProtoReflect().GetUnknown()
	e.recSize = len(e.recUnknown)
	if r.GetSeq() != 0 {
		e.recSize += sizeVarintField(fieldRecSeq, r.GetSeq())
	}
	if r.GetPriority() != 0 {
		e.recSize += sizeVarintField(fieldRecPriority, uint64(r.GetPriority()))
	}
	ev := r.GetEvent()
	if ev == nil {
		return
	}
	e.evUnknown = ev.ProtoReflect().GetUnknown()
	n := len(e.evUnknown)
	for _, f := range [...]string{ev.GetId(), ev.GetSource(), ev.GetSpecVersion(), ev.GetType()} {
		if f != "" {
			n += sizeBytesField(fieldEvID, len(f)) // fields 1-4 share a 1-byte tag
		}
	}
	m := ev.GetAttributes()
	e.keys = e.keys[:0]
	for k := range m {
		e.keys = append(e.keys, k)
	}
	slices.SortFunc(e.keys, strings.Compare)
	e.attrs = e.attrs[:0]
	for _, k := range e.keys {
		a := measureAttr(m[k])
		e.attrs = append(e.attrs, a)
		n += sizeBytesField(fieldEvAttributes, sizeBytesField(fieldEntryKey, len(k))+sizeBytesField(fieldEntryValue, a.size))
	}
	switch d := ev.GetData().(type) {
	case *pb.CloudEvent_BinaryData:
		n += sizeBytesField(fieldEvBinaryData, len(d.BinaryData))
	case *pb.CloudEvent_TextData:
		n += sizeBytesField(fieldEvTextData, len(d.TextData))
	case *pb.CloudEvent_ProtoData:
		e.protoDataSize = proto.MarshalOptions{Deterministic: true}.Size(d.ProtoData)
		n += sizeBytesField(fieldEvProtoData, e.protoDataSize)
	}
	e.evSize = n
	e.recSize += sizeBytesField(fieldRecEvent, n)
}

func measureAttr(v *pb.CloudEventAttributeValue) attrInfo {
	a := attrInfo{v: v}
	if v == nil {
		return a
	}
	a.unknown = v.ProtoReflect().GetUnknown()
	n := len(a.unknown)
	switch x := v.GetAttr().(type) {
	case *pb.CloudEventAttributeValue_CeBoolean:
		n += sizeVarintField(fieldAttrBoolean, protowire.EncodeBool(x.CeBoolean))
	case *pb.CloudEventAttributeValue_CeInteger:
		n += sizeVarintField(fieldAttrInteger, uint64(int64(x.CeInteger)))
	case *pb.CloudEventAttributeValue_CeString:
		n += sizeBytesField(fieldAttrString, len(x.CeString))
	case *pb.CloudEventAttributeValue_CeBytes:
		n += sizeBytesField(fieldAttrBytes, len(x.CeBytes))
	case *pb.CloudEventAttributeValue_CeUri:
		n += sizeBytesField(fieldAttrURI, len(x.CeUri))
	case *pb.CloudEventAttributeValue_CeUriRef:
		n += sizeBytesField(fieldAttrURIRef, len(x.CeUriRef))
	case *pb.CloudEventAttributeValue_CeTimestamp:
		t := x.CeTimestamp
		if t != nil {
			a.tsUnknown = t.ProtoReflect().GetUnknown()
			a.tsSize = len(a.tsUnknown)
		}
		if s := t.GetSeconds(); s != 0 {
			a.tsSize += sizeVarintField(fieldTsSeconds, uint64(s))
		}
		if ns := t.GetNanos(); ns != 0 {
			a.tsSize += sizeVarintField(fieldTsNanos, uint64(int64(ns)))
		}
		n += sizeBytesField(fieldAttrTimestamp, a.tsSize)
	}
	a.size = n
	return a
}

// appendRecord appends r, which measure has just measured.
func (e *listEncoder) appendRecord(b []byte, r *syncv1.Record) []byte {
	if r.GetSeq() != 0 {
		b = appendVarintField(b, fieldRecSeq, r.GetSeq())
	}
	if ev := r.GetEvent(); ev != nil {
		b = appendMessageHeader(b, fieldRecEvent, e.evSize)
		b = e.appendEvent(b, ev)
	}
	if r.GetPriority() != 0 {
		b = appendVarintField(b, fieldRecPriority, uint64(r.GetPriority()))
	}
	return append(b, e.recUnknown...)
}

func (e *listEncoder) appendEvent(b []byte, ev *pb.CloudEvent) []byte {
	for i, f := range [...]string{ev.GetId(), ev.GetSource(), ev.GetSpecVersion(), ev.GetType()} {
		if f != "" {
			b = appendStringField(b, protowire.Number(fieldEvID+i), f)
		}
	}
	for i, k := range e.keys {
		a := &e.attrs[i]
		b = appendMessageHeader(b, fieldEvAttributes, sizeBytesField(fieldEntryKey, len(k))+sizeBytesField(fieldEntryValue, a.size))
		b = appendStringField(b, fieldEntryKey, k)
		b = appendMessageHeader(b, fieldEntryValue, a.size)
		b = a.appendValue(b)
	}
	switch d := ev.GetData().(type) {
	case *pb.CloudEvent_BinaryData:
		b = protowire.AppendTag(b, fieldEvBinaryData, protowire.BytesType)
		b = protowire.AppendBytes(b, d.BinaryData)
	case *pb.CloudEvent_TextData:
		b = appendStringField(b, fieldEvTextData, d.TextData)
	case *pb.CloudEvent_ProtoData:
		b = appendMessageHeader(b, fieldEvProtoData, e.protoDataSize)
		// Marshalling an Any cannot fail: it has no required fields.
		b, _ = proto.MarshalOptions{Deterministic: true}.MarshalAppend(b, d.ProtoData)
	}
	return append(b, e.evUnknown...)
}

func (a *attrInfo) appendValue(b []byte) []byte {
	switch x := a.v.GetAttr().(type) {
	case *pb.CloudEventAttributeValue_CeBoolean:
		b = appendVarintField(b, fieldAttrBoolean, protowire.EncodeBool(x.CeBoolean))
	case *pb.CloudEventAttributeValue_CeInteger:
		b = appendVarintField(b, fieldAttrInteger, uint64(int64(x.CeInteger)))
	case *pb.CloudEventAttributeValue_CeString:
		b = appendStringField(b, fieldAttrString, x.CeString)
	case *pb.CloudEventAttributeValue_CeBytes:
		b = protowire.AppendTag(b, fieldAttrBytes, protowire.BytesType)
		b = protowire.AppendBytes(b, x.CeBytes)
	case *pb.CloudEventAttributeValue_CeUri:
		b = appendStringField(b, fieldAttrURI, x.CeUri)
	case *pb.CloudEventAttributeValue_CeUriRef:
		b = appendStringField(b, fieldAttrURIRef, x.CeUriRef)
	case *pb.CloudEventAttributeValue_CeTimestamp:
		b = appendMessageHeader(b, fieldAttrTimestamp, a.tsSize)
		if s := x.CeTimestamp.GetSeconds(); s != 0 {
			b = appendVarintField(b, fieldTsSeconds, uint64(s))
		}
		if ns := x.CeTimestamp.GetNanos(); ns != 0 {
			b = appendVarintField(b, fieldTsNanos, uint64(int64(ns)))
		}
		b = append(b, a.tsUnknown...)
	}
	return append(b, a.unknown...)
}

func sizeBytesField(num protowire.Number, n int) int {
	return protowire.SizeTag(num) + protowire.SizeBytes(n)
}

func sizeVarintField(num protowire.Number, v uint64) int {
	return protowire.SizeTag(num) + protowire.SizeVarint(v)
}

func appendStringField(b []byte, num protowire.Number, s string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendVarintField(b []byte, num protowire.Number, v uint64) []byte {
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

func appendMessageHeader(b []byte, num protowire.Number, size int) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendVarint(b, uint64(size))
}
