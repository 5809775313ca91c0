package gateway

import (
	"context"
	"fmt"

	"github.com/tributary-io/tributary/edge/outbox"
	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
	"github.com/tributary-io/tributary/sync/link"
)

// Priority lanes: outbox.classes.N.lane puts a class's records in a lane,
// the outbox stores each record's lane when it commits it, and the link
// drains every lane on a QUIC stream of its own, lower lanes first (see
// sync/link/lanes.go). The source below is the outbox seen per lane.

var _ link.LaneSource = (*source)(nil)

// clientLanes is the lanes above 0 the link drains: those the classes use
// and those the outbox still holds records of (committed under an earlier
// configuration). Nil when there is only lane 0: the link then runs as a
// single-lane client, as gateways without lanes always did.
func clientLanes(ob *outbox.Outbox) []uint32 {
	var out []uint32
	for _, l := range ob.Lanes() {
		if l != 0 {
			out = append(out, uint32(l))
		}
	}
	return out
}

func (s *source) ReadLane(lane uint32, after uint64, maxRecords, maxBytes int) ([]*syncv1.Record, error) {
	if lane >= outbox.MaxLanes {
		return nil, laneError(lane)
	}
	recs, err := s.ob.ReadLane(uint8(lane), after, maxRecords, maxBytes)
	if err != nil {
		return nil, err
	}
	out := make([]*syncv1.Record, len(recs))
	for i := range recs {
		out[i] = ToRecord(s.gw, &recs[i])
	}
	return out, nil
}

func (s *source) WaitLane(ctx context.Context, lane uint32, after uint64) error {
	if lane >= outbox.MaxLanes {
		return laneError(lane)
	}
	return s.ob.WaitLane(ctx, uint8(lane), after)
}

func (s *source) AckLane(lane uint32, upTo uint64) error {
	if lane >= outbox.MaxLanes {
		return laneError(lane)
	}
	return s.ob.AckLane(uint8(lane), upTo)
}

func laneError(lane uint32) error {
	return fmt.Errorf("gateway: lane %d: lanes are 0 to %d", lane, outbox.MaxLanes-1)
}
