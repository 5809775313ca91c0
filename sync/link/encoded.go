package link

import (
	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
	"github.com/tributary-io/tributary/sync/wire"
)

// EncodedSource is an optional fast path of a Source (or LaneSource): it
// returns records already in their wire encoding, which a gateway builds
// straight from its outbox rows, sparing a protobuf message per record and
// its encoding. When the Source implements it, the Client reads through it
// instead of Read (or ReadLane).
type EncodedSource interface {
	// ReadEncoded is Read (lane < 0) or ReadLane(lane) returning encoded
	// records: the Bytes of each are a syncv1.Record with that Seq. The
	// slices belong to the caller.
	ReadEncoded(lane int, after uint64, maxRecords, maxBytes int) ([]wire.EncodedRecord, error)
}

// srcBatch is one read's worth of records, as the source gave them:
// messages (recs) or encodings (enc, when enc is not nil).
type srcBatch struct {
	recs []*syncv1.Record
	enc  []wire.EncodedRecord
}

// ReadBatch reads through the source's fast path if it has one.
func (l laneIO) ReadBatch(after uint64, maxRecords, maxBytes int) (srcBatch, error) {
	if es, ok := l.src.(EncodedSource); ok {
		lane := -1
		if l.ls != nil {
			lane = int(l.lane)
		}
		enc, err := es.ReadEncoded(lane, after, maxRecords, maxBytes)
		if enc == nil {
			enc = []wire.EncodedRecord{}
		}
		return srcBatch{enc: enc}, err
	}
	recs, err := l.Read(after, maxRecords, maxBytes)
	return srcBatch{recs: recs}, err
}

func (b srcBatch) len() int {
	if b.enc != nil {
		return len(b.enc)
	}
	return len(b.recs)
}

// size is the records' payload as Read's maxBytes counts it: their
// encoding's size.
func (b srcBatch) size() int {
	if b.enc != nil {
		return wire.EncodedSize(b.enc)
	}
	return payloadSize(b.recs)
}

func (b srcBatch) firstSeq() uint64 {
	if b.enc != nil {
		return b.enc[0].Seq
	}
	return b.recs[0].GetSeq()
}

func (b srcBatch) lastSeq() uint64 {
	if b.enc != nil {
		return b.enc[len(b.enc)-1].Seq
	}
	return b.recs[len(b.recs)-1].GetSeq()
}

// from is the records from index i on.
func (b srcBatch) from(i int) srcBatch {
	if b.enc != nil {
		return srcBatch{enc: b.enc[i:]}
	}
	return srcBatch{recs: b.recs[i:]}
}

// encode makes a Batch of the first n records.
func (b srcBatch) encode(n, compressAbove int) (*syncv1.Batch, int, error) {
	if b.enc != nil {
		return wire.EncodeEncodedBatch(b.enc[:n], compressAbove)
	}
	return wire.EncodeBatch(b.recs[:n], compressAbove)
}
