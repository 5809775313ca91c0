package wire

import (
	"fmt"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"

	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
)

// RawRecord is a wire Record decoded only as far as the cloud needs it: the
// event stays in the bytes the gateway encoded, which are exactly what the
// central log stores (a CloudEvent in the protobuf format). Decoding every
// event into Go structs only to encode it again cost the cloud about half of
// its CPU per record; DecodeBatchRaw instead checks the event's encoding
// in one pass and reads the four attributes the cloud uses.
type RawRecord struct {
	Seq      uint64
	Priority uint32
	// Event is the record's CloudEvent, protobuf-encoded. It aliases the
	// batch's decoded buffer, which is never reused: the caller owns it.
	Event []byte
	// ID, Source and Type are the event's (never empty); they alias Event.
	ID, Source, Type []byte
	// Subject is the event's "subject" attribute when that is a string,
	// else "".
	Subject string
}

// Field numbers of proto/sync/v1 Record, RecordList and of the CloudEvents
// protobuf format (proto/cloudevent.proto), google.protobuf.Timestamp and
// google.protobuf.Any.
const (
	fieldListRecords = 1

	fieldRecSeq      = 1
	fieldRecEvent    = 2
	fieldRecPriority = 3

	fieldEvID          = 1
	fieldEvSource      = 2
	fieldEvSpecVersion = 3
	fieldEvType        = 4
	fieldEvAttributes  = 5
	fieldEvBinaryData  = 6
	fieldEvTextData    = 7
	fieldEvProtoData   = 8

	fieldEntryKey   = 1
	fieldEntryValue = 2

	fieldAttrBoolean   = 1
	fieldAttrInteger   = 2
	fieldAttrString    = 3
	fieldAttrBytes     = 4
	fieldAttrURI       = 5
	fieldAttrURIRef    = 6
	fieldAttrTimestamp = 7

	fieldTsSeconds = 1
	fieldTsNanos   = 2

	fieldAnyTypeURL = 1
	fieldAnyValue   = 2
)

// DecodeBatchRaw is DecodeBatch for the cloud: it decompresses b (with the
// same limits) and returns its records without decoding their events into
// Go structs. It accepts no batch DecodeBatch would refuse, and returns the
// same errors (ErrMalformed, ErrDecodedTooLarge, ErrInvalidBatch).
//
// It is stricter than protobuf in one respect: a field this package knows
// (in Record, CloudEvent and the messages inside it) that appears twice in
// one message, or with the wrong wire type, makes the batch malformed.
// protobuf would merge or override; no gateway encodes that, and refusing it
// keeps what the cloud reads from an event equal to what a consumer decoding
// the stored bytes gets. Unknown fields are skipped, as protobuf does.
func DecodeBatchRaw(b *syncv1.Batch, maxDecoded int) ([]RawRecord, error) {
	raw, err := batchBytes(b, maxDecoded)
	if err != nil {
		return nil, err
	}
	out := make([]RawRecord, 0, b.GetCount())
	for len(raw) > 0 {
		num, typ, n := protowire.ConsumeTag(raw)
		if n < 0 {
			return nil, fmt.Errorf("%w: records: %w", ErrMalformed, protowire.ParseError(n))
		}
		raw = raw[n:]
		if num != fieldListRecords {
			if n = protowire.ConsumeFieldValue(num, typ, raw); n < 0 {
				return nil, fmt.Errorf("%w: records: %w", ErrMalformed, protowire.ParseError(n))
			}
			raw = raw[n:]
			continue
		}
		if typ != protowire.BytesType {
			return nil, fmt.Errorf("%w: records: record with wire type %d", ErrMalformed, typ)
		}
		v, n := protowire.ConsumeBytes(raw)
		if n < 0 {
			return nil, fmt.Errorf("%w: records: %w", ErrMalformed, protowire.ParseError(n))
		}
		raw = raw[n:]
		if len(out) == int(b.GetCount()) {
			return nil, fmt.Errorf("%w: more records than count %d", ErrInvalidBatch, b.GetCount())
		}
		r, err := scanRecord(v)
		if err != nil {
			return nil, fmt.Errorf("%w: record %d: %w", ErrMalformed, len(out), err)
		}
		out = append(out, r)
	}
	if len(out) != int(b.GetCount()) {
		return nil, fmt.Errorf("%w: count %d but %d records", ErrInvalidBatch, b.GetCount(), len(out))
	}
	prev := uint64(0)
	for i := range out {
		r := &out[i]
		switch {
		case r.Seq <= prev:
			return nil, fmt.Errorf("%w: record %d has seq %d, not above %d", ErrInvalidBatch, i, r.Seq, prev)
		case r.Event == nil:
			return nil, fmt.Errorf("%w: record seq %d has no event", ErrInvalidBatch, r.Seq)
		case len(r.ID) == 0:
			return nil, fmt.Errorf("%w: record seq %d: event has no id", ErrInvalidBatch, r.Seq)
		case len(r.Source) == 0:
			return nil, fmt.Errorf("%w: record seq %d: event has no source", ErrInvalidBatch, r.Seq)
		case len(r.Type) == 0:
			return nil, fmt.Errorf("%w: record seq %d: event has no type", ErrInvalidBatch, r.Seq)
		}
		prev = r.Seq
	}
	if last := out[len(out)-1].Seq; last != b.GetLastSeq() {
		return nil, fmt.Errorf("%w: last_seq %d but last record has seq %d", ErrInvalidBatch, b.GetLastSeq(), last)
	}
	return out, nil
}

// batchBytes checks b's header and returns its decoded RecordList bytes.
func batchBytes(b *syncv1.Batch, maxDecoded int) ([]byte, error) {
	if maxDecoded <= 0 {
		maxDecoded = DefaultMaxDecoded
	}
	if b == nil {
		return nil, fmt.Errorf("%w: no batch", ErrMalformed)
	}
	if b.GetCount() == 0 {
		return nil, fmt.Errorf("%w: count is 0", ErrInvalidBatch)
	}
	if b.GetCount() > maxBatchRecords {
		return nil, fmt.Errorf("%w: count %d above %d", ErrInvalidBatch, b.GetCount(), maxBatchRecords)
	}
	switch b.GetEncoding() {
	case syncv1.Encoding_ENCODING_NONE:
		raw := b.GetRecords()
		if len(raw) > maxDecoded {
			return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrDecodedTooLarge, len(raw), maxDecoded)
		}
		return raw, nil
	case syncv1.Encoding_ENCODING_ZSTD:
		return decompress(b.GetRecords(), maxDecoded)
	default:
		return nil, fmt.Errorf("%w: unknown encoding %d", ErrMalformed, b.GetEncoding())
	}
}

// fieldSet notes which known fields of one message were seen, to refuse
// repeats. Field numbers here are all below 64.
type fieldSet uint64

func (s *fieldSet) once(num protowire.Number) error {
	bit := fieldSet(1) << uint(num)
	if *s&bit != 0 {
		return fmt.Errorf("field %d repeated", num)
	}
	*s |= bit
	return nil
}

// fieldScanner walks one message's fields.
type fieldScanner struct {
	b    []byte
	seen fieldSet
}

// next returns the next field's number and wire type, or ok false at the
// end of the message.
func (s *fieldScanner) next() (num protowire.Number, typ protowire.Type, ok bool, err error) {
	if len(s.b) == 0 {
		return 0, 0, false, nil
	}
	num, typ, n := protowire.ConsumeTag(s.b)
	if n < 0 {
		return 0, 0, false, protowire.ParseError(n)
	}
	s.b = s.b[n:]
	return num, typ, true, nil
}

// skip consumes the value of an unknown field.
func (s *fieldScanner) skip(num protowire.Number, typ protowire.Type) error {
	n := protowire.ConsumeFieldValue(num, typ, s.b)
	if n < 0 {
		return protowire.ParseError(n)
	}
	s.b = s.b[n:]
	return nil
}

// known checks that field num, which this package knows, appears once and
// with wire type want.
func (s *fieldScanner) known(num protowire.Number, typ, want protowire.Type) error {
	if typ != want {
		return fmt.Errorf("field %d has wire type %d, want %d", num, typ, want)
	}
	return s.seen.once(num)
}

func (s *fieldScanner) varint() (uint64, error) {
	v, n := protowire.ConsumeVarint(s.b)
	if n < 0 {
		return 0, protowire.ParseError(n)
	}
	s.b = s.b[n:]
	return v, nil
}

func (s *fieldScanner) bytes() ([]byte, error) {
	v, n := protowire.ConsumeBytes(s.b)
	if n < 0 {
		return nil, protowire.ParseError(n)
	}
	s.b = s.b[n:]
	return v, nil
}

// str reads a proto3 string field, which must be valid UTF-8. The bytes
// alias the message.
func (s *fieldScanner) str(num protowire.Number) ([]byte, error) {
	v, err := s.bytes()
	if err != nil {
		return nil, err
	}
	if !utf8.Valid(v) {
		return nil, fmt.Errorf("field %d: invalid UTF-8", num)
	}
	return v, nil
}

func scanRecord(b []byte) (RawRecord, error) {
	var r RawRecord
	s := fieldScanner{b: b}
	for {
		num, typ, ok, err := s.next()
		if err != nil || !ok {
			return r, err
		}
		switch num {
		case fieldRecSeq, fieldRecPriority:
			if err := s.known(num, typ, protowire.VarintType); err != nil {
				return r, err
			}
			v, err := s.varint()
			if err != nil {
				return r, err
			}
			if num == fieldRecSeq {
				r.Seq = v
			} else {
				r.Priority = uint32(v) // protobuf truncates a uint32 the same way
			}
		case fieldRecEvent:
			if err := s.known(num, typ, protowire.BytesType); err != nil {
				return r, err
			}
			ev, err := s.bytes()
			if err != nil {
				return r, err
			}
			if err := scanEvent(ev, &r); err != nil {
				return r, fmt.Errorf("event: %w", err)
			}
			r.Event = ev
			if r.Event == nil {
				r.Event = []byte{}
			}
		default:
			if err := s.skip(num, typ); err != nil {
				return r, err
			}
		}
	}
}

func scanEvent(b []byte, r *RawRecord) error {
	s := fieldScanner{b: b}
	dataSet := false
	for {
		num, typ, ok, err := s.next()
		if err != nil || !ok {
			return err
		}
		switch num {
		case fieldEvID, fieldEvSource, fieldEvSpecVersion, fieldEvType, fieldEvTextData:
			if err := s.known(num, typ, protowire.BytesType); err != nil {
				return err
			}
			v, err := s.str(num)
			if err != nil {
				return err
			}
			switch num {
			case fieldEvID:
				r.ID = v
			case fieldEvSource:
				r.Source = v
			case fieldEvType:
				r.Type = v
			}
		case fieldEvAttributes:
			if typ != protowire.BytesType {
				return fmt.Errorf("field %d has wire type %d", num, typ)
			}
			entry, err := s.bytes()
			if err != nil {
				return err
			}
			key, subject, isString, err := scanAttribute(entry)
			if err != nil {
				return fmt.Errorf("attribute: %w", err)
			}
			if string(key) == "subject" { // a later entry for a key replaces an earlier one
				r.Subject = ""
				if isString {
					r.Subject = string(subject)
				}
			}
		case fieldEvBinaryData:
			if err := s.known(num, typ, protowire.BytesType); err != nil {
				return err
			}
			if _, err := s.bytes(); err != nil {
				return err
			}
		case fieldEvProtoData:
			if err := s.known(num, typ, protowire.BytesType); err != nil {
				return err
			}
			v, err := s.bytes()
			if err != nil {
				return err
			}
			if err := scanAny(v); err != nil {
				return fmt.Errorf("proto_data: %w", err)
			}
		default:
			if err := s.skip(num, typ); err != nil {
				return err
			}
			continue
		}
		if num == fieldEvBinaryData || num == fieldEvTextData || num == fieldEvProtoData {
			if dataSet {
				return fmt.Errorf("more than one data field")
			}
			dataSet = true
		}
	}
}

// scanAttribute checks one attributes map entry and returns its key and,
// if its value is a ce_string, that string.
func scanAttribute(b []byte) (key, str []byte, isString bool, err error) {
	s := fieldScanner{b: b}
	for {
		num, typ, ok, err := s.next()
		if err != nil || !ok {
			return key, str, isString, err
		}
		switch num {
		case fieldEntryKey:
			if err := s.known(num, typ, protowire.BytesType); err != nil {
				return nil, nil, false, err
			}
			if key, err = s.str(num); err != nil {
				return nil, nil, false, err
			}
		case fieldEntryValue:
			if err := s.known(num, typ, protowire.BytesType); err != nil {
				return nil, nil, false, err
			}
			v, err := s.bytes()
			if err != nil {
				return nil, nil, false, err
			}
			if str, isString, err = scanAttrValue(v); err != nil {
				return nil, nil, false, fmt.Errorf("value: %w", err)
			}
		default:
			if err := s.skip(num, typ); err != nil {
				return nil, nil, false, err
			}
		}
	}
}

// scanAttrValue checks a CloudEventAttributeValue: at most one of its oneof
// fields.
func scanAttrValue(b []byte) (str []byte, isString bool, err error) {
	s := fieldScanner{b: b}
	set := false
	for {
		num, typ, ok, err := s.next()
		if err != nil || !ok {
			return str, isString, err
		}
		switch num {
		case fieldAttrBoolean, fieldAttrInteger:
			if err := s.known(num, typ, protowire.VarintType); err != nil {
				return nil, false, err
			}
			if _, err := s.varint(); err != nil {
				return nil, false, err
			}
		case fieldAttrString, fieldAttrURI, fieldAttrURIRef:
			if err := s.known(num, typ, protowire.BytesType); err != nil {
				return nil, false, err
			}
			v, err := s.str(num)
			if err != nil {
				return nil, false, err
			}
			if num == fieldAttrString {
				str, isString = v, true
			}
		case fieldAttrBytes:
			if err := s.known(num, typ, protowire.BytesType); err != nil {
				return nil, false, err
			}
			if _, err := s.bytes(); err != nil {
				return nil, false, err
			}
		case fieldAttrTimestamp:
			if err := s.known(num, typ, protowire.BytesType); err != nil {
				return nil, false, err
			}
			v, err := s.bytes()
			if err != nil {
				return nil, false, err
			}
			if err := scanTimestamp(v); err != nil {
				return nil, false, fmt.Errorf("ce_timestamp: %w", err)
			}
		default:
			if err := s.skip(num, typ); err != nil {
				return nil, false, err
			}
			continue
		}
		if set {
			return nil, false, fmt.Errorf("more than one value")
		}
		set = true
	}
}

func scanTimestamp(b []byte) error {
	s := fieldScanner{b: b}
	for {
		num, typ, ok, err := s.next()
		if err != nil || !ok {
			return err
		}
		switch num {
		case fieldTsSeconds, fieldTsNanos:
			if err := s.known(num, typ, protowire.VarintType); err != nil {
				return err
			}
			if _, err := s.varint(); err != nil {
				return err
			}
		default:
			if err := s.skip(num, typ); err != nil {
				return err
			}
		}
	}
}

func scanAny(b []byte) error {
	s := fieldScanner{b: b}
	for {
		num, typ, ok, err := s.next()
		if err != nil || !ok {
			return err
		}
		switch num {
		case fieldAnyTypeURL:
			if err := s.known(num, typ, protowire.BytesType); err != nil {
				return err
			}
			if _, err := s.str(num); err != nil {
				return err
			}
		case fieldAnyValue:
			if err := s.known(num, typ, protowire.BytesType); err != nil {
				return err
			}
			if _, err := s.bytes(); err != nil {
				return err
			}
		default:
			if err := s.skip(num, typ); err != nil {
				return err
			}
		}
	}
}
