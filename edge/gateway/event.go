package gateway

import (
	"net/url"
	"strconv"

	"github.com/cloudevents/sdk-go/binding/format/protobuf/v2/pb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tributary-io/tributary/edge/outbox"
	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
)

// DefaultEventType is the CloudEvent type of a message no rule typed.
const DefaultEventType = "io.tributary.telemetry"

// EventID is the CloudEvent id of outbox record seq of gateway gw. It is fixed
// when the record is committed at the edge, so it is the same on every resend
// and every delivery: consumers deduplicate by it.
func EventID(gw string, seq uint64) string {
	return gw + "-" + strconv.FormatUint(seq, 10)
}

// EventSource is the CloudEvent source of a device behind gateway gw.
func EventSource(gw, device string) string {
	return "/gateways/" + url.PathEscape(gw) + "/devices/" + url.PathEscape(device)
}

// ToRecord turns a committed outbox record into the wire record: a CloudEvent
// in the protobuf format with
//
//	id              <gateway>-<outbox seq>
//	source          /gateways/<gateway>/devices/<client id>
//	subject         the MQTT topic
//	type            the forwarding rule's type (DefaultEventType if none)
//	time            when the broker received the publish
//	datacontenttype the MQTT 5 content type, else application/json for a
//	                valid JSON payload, else application/octet-stream
//	partitionkey    the client id (per-device order downstream)
//
// The payload is not copied.
//
// ToRecord runs once per record on every drain, so it builds the record in
// a handful of allocations: the messages live in one block, the id and the
// source share one string.
func ToRecord(gw string, r *outbox.Record) *syncv1.Record {
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
	// id and source in one string: "<gw>-<seq>/gateways/<gw>/devices/<device>".
	esc := url.PathEscape(gw)
	buf := make([]byte, 0, 2*len(gw)+len(esc)+len("-/gateways//devices/")+20+len(r.ClientID)+4)
	buf = append(buf, gw...)
	buf = append(buf, '-')
	buf = strconv.AppendUint(buf, r.Seq, 10)
	idLen := len(buf)
	buf = append(buf, "/gateways/"...)
	buf = append(buf, esc...)
	buf = append(buf, "/devices/"...)
	buf = append(buf, url.PathEscape(r.ClientID)...)
	ids := string(buf)

	m := new(recordBlock)
	m.subject.CeString, m.ct.CeString, m.key.CeString = r.Topic, ct, r.ClientID
	m.attrs[0].Attr, m.attrs[1].Attr, m.attrs[2].Attr = &m.subject, &m.ct, &m.key
	m.ts.Seconds, m.ts.Nanos = r.Received.Unix(), int32(r.Received.Nanosecond())
	m.time.CeTimestamp = &m.ts
	m.attrs[3].Attr = &m.time
	m.data.BinaryData = r.Payload
	m.ev.Id, m.ev.Source, m.ev.SpecVersion, m.ev.Type = ids[:idLen], ids[idLen:], "1.0", typ
	m.ev.Attributes = map[string]*pb.CloudEventAttributeValue{
		"subject":         &m.attrs[0],
		"datacontenttype": &m.attrs[1],
		"partitionkey":    &m.attrs[2],
		"time":            &m.attrs[3],
	}
	m.ev.Data = &m.data
	m.rec.Seq, m.rec.Priority, m.rec.Event = r.Seq, uint32(r.Priority), &m.ev
	return &m.rec
}

// recordBlock holds the messages of one record, allocated together.
type recordBlock struct {
	rec              syncv1.Record
	ev               pb.CloudEvent
	data             pb.CloudEvent_BinaryData
	attrs            [4]pb.CloudEventAttributeValue
	subject, ct, key pb.CloudEventAttributeValue_CeString
	time             pb.CloudEventAttributeValue_CeTimestamp
	ts               timestamppb.Timestamp
}

// maxJSONDepth is encoding/json's nesting limit, which validJSON shares.
const maxJSONDepth = 10000

// validJSON reports whether b holds exactly one JSON value, surrounded by
// optional whitespace: json.Valid's answer, including its nesting limit and
// its acceptance of any byte from 0x20 up, valid UTF-8 or not, inside
// strings. encoding/json's scanner steps through a function per byte and
// was half of ToRecord's CPU; this loop does the same check several times
// faster (FuzzValidJSON holds it to json.Valid).
func validJSON(b []byte) bool {
	var stackArr [32]byte
	stack := stackArr[:0] // '{' or '[' of each open container
	i := skipSpace(b, 0)
	for {
		// A value starts at i.
		if i >= len(b) {
			return false
		}
		switch c := b[i]; {
		case c == '{' || c == '[':
			if len(stack) >= maxJSONDepth {
				return false
			}
			stack = append(stack, c)
			i = skipSpace(b, i+1)
			if i < len(b) && b[i] == c+2 { // '}' or ']'
				stack = stack[:len(stack)-1]
				i++
				break
			}
			if c == '{' {
				if i = objectKey(b, i); i < 0 {
					return false
				}
			}
			continue
		case c == '"':
			if i = skipString(b, i); i < 0 {
				return false
			}
		case c == '-' || '0' <= c && c <= '9':
			if i = skipNumber(b, i); i < 0 {
				return false
			}
		case c == 't':
			if i = skipLiteral(b, i, "true"); i < 0 {
				return false
			}
		case c == 'f':
			if i = skipLiteral(b, i, "false"); i < 0 {
				return false
			}
		case c == 'n':
			if i = skipLiteral(b, i, "null"); i < 0 {
				return false
			}
		default:
			return false
		}
		// A value ended before i: close containers, or find the next value.
		for {
			i = skipSpace(b, i)
			if len(stack) == 0 {
				return i == len(b)
			}
			if i >= len(b) {
				return false
			}
			top := stack[len(stack)-1]
			if b[i] == top+2 {
				stack = stack[:len(stack)-1]
				i++
				continue
			}
			if b[i] != ',' {
				return false
			}
			i = skipSpace(b, i+1)
			if top == '{' {
				if i = objectKey(b, i); i < 0 {
					return false
				}
			}
			break
		}
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// objectKey skips `"key" :` and the space after it; -1 if that is not
// what starts at i.
func objectKey(b []byte, i int) int {
	if i >= len(b) || b[i] != '"' {
		return -1
	}
	if i = skipString(b, i); i < 0 {
		return -1
	}
	i = skipSpace(b, i)
	if i >= len(b) || b[i] != ':' {
		return -1
	}
	return skipSpace(b, i+1)
}

// skipString returns the index after the string starting at b[i] == '"',
// or -1.
func skipString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			return i + 1
		case c < 0x20:
			return -1
		case c == '\\':
			i++
			if i >= len(b) {
				return -1
			}
			switch b[i] {
			case 'b', 'f', 'n', 'r', 't', '\\', '/', '"':
			case 'u':
				if i+4 >= len(b) {
					return -1
				}
				for _, h := range b[i+1 : i+5] {
					if !('0' <= h && h <= '9' || 'a' <= h && h <= 'f' || 'A' <= h && h <= 'F') {
						return -1
					}
				}
				i += 4
			default:
				return -1
			}
		}
	}
	return -1
}

// skipNumber returns the index after the number starting at i, or -1.
func skipNumber(b []byte, i int) int {
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && '1' <= b[i] && b[i] <= '9':
		i = skipDigits(b, i+1)
	default:
		return -1
	}
	if i < len(b) && b[i] == '.' {
		j := skipDigits(b, i+1)
		if j == i+1 {
			return -1
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := skipDigits(b, i)
		if j == i {
			return -1
		}
		i = j
	}
	return i
}

func skipDigits(b []byte, i int) int {
	for i < len(b) && '0' <= b[i] && b[i] <= '9' {
		i++
	}
	return i
}

func skipLiteral(b []byte, i int, lit string) int {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return -1
	}
	return i + len(lit)
}
