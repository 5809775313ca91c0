package link

import (
	"strconv"
	"strings"
)

// Priority lanes (issue 4, item 3): built as designed below;
// lanes_client.go, lanes_server.go and edge/outbox/lanes.go hold the code.
// Differences from the design: lanes are limited to MaxLanes (QUIC's eight
// urgencies); Welcome.lanes tells the gateway the cloud serves lanes (an old
// cloud does not, and the gateway then drains lane 0 only, never another
// lane's records under lane 0's producer); credits are sent on lane 0 only
// and bound all lanes together (connBudget, connShare).
//
// Goal: an alarm committed behind an hour of telemetry backlog reaches the
// cloud in about one round trip, not after the backlog. Today a gateway has
// one ordered stream and the cloud one high-water mark per gateway: if a
// lane sent seq 5,000 (an alarm) before seq 1,000 (telemetry), the cloud's
// mark would be 5,000 and it would drop 1,000 as a duplicate. Lanes
// therefore change the exactly-once contract from (gateway, seq) to
// (gateway, lane, seq).
//
// Wire (additive, proto/sync/v1). The control stream stays lane 0 and keeps
// today's exchange, so old peers are unaffected. A gateway that wants more
// lanes lists them in Hello (repeated uint32 lanes) and opens one more
// bidirectional stream per lane, whose first frame is LaneHello{lane}; the
// cloud answers LaneWelcome{lane, high_water_mark, credit} and from then on
// the stream carries Batch and Ack exactly as lane 0 does, with its own
// window. The client gives each lane's stream the QUIC urgency of its lane
// (quic-go SendStream.SetPriority(lane, false): lower is sent first, and
// non-incremental so a lane's bytes are not interleaved), so a small alarm
// batch overtakes telemetry bytes queued on the same connection. Credits
// stay per connection; lane 0 keeps at least a window of 1 when others are
// paused, so alarms are never held back by the backlog that paused telemetry.
//
// Cloud: each lane is a producer of its own in the central log, named by
// LaneProducer: lane 0 keeps the bare gateway id, so existing logs and
// high-water marks stay valid without migration, and lane n > 0 is
// "<gateway>/lane-<n>" (gateway ids cannot contain "/", so the names cannot
// collide). The log's dedup is per producer already, so cloud/commitlog
// needs no change; link.Sink only gains the lane in its calls (or the
// server passes LaneProducer(gw, lane) as the producer). Event ids stay
// "<gateway>-<outbox seq>", unique across lanes, so consumers dedup as
// before.
//
// Edge: the outbox must read and acknowledge per lane, which is the part
// that needs edge/outbox changes and why lanes are not built yet:
//
//   - ReadLane(lane, after, maxRecords, maxBytes): records of the lane's
//     priority classes with seq > after, in seq order (the records_class
//     index on (priority) with the rowid serves "priority IN (...) AND seq
//     > ?"; one range scan per class merged by seq, or an index on
//     (lane, seq)).
//   - AckLane(lane, upTo): DELETE ... WHERE lane = ? AND seq <= ?. The
//     cumulative Ack(upTo) of today would delete other lanes' records that
//     the cloud does not have yet, breaking contract 2.
//   - The lane must be fixed when a record is committed (a lane column, or
//     the priority class with a lane map that never changes while records
//     are held): if a class moved to another lane with records pending, the
//     new lane's mark could pass them and the cloud would drop them.
//
// Order (contract 4) becomes per device within a lane: one lane is one
// ordered stream, so a device's telemetry stays in order, and its alarms in
// theirs; an alarm may overtake the same device's older telemetry, which is
// the point. Subscriptions that need one order across lanes sort by the
// event's time or seq (the seq in the id is the outbox's commit order).
//
// Rejected: one stream with priority-ordered batches (the cloud's single
// mark forbids sending out of seq order, and a batch already queued in the
// stream still goes first); separate QUIC connections per lane (twice the
// handshakes, keep-alives and NAT bindings, and no shared congestion
// control); a per-record dedup set in the cloud instead of marks (unbounded
// state for a guarantee marks give for free).

// LaneProducer is the central log's producer name for lane of gateway:
// the gateway id for lane 0 (today's single lane), "<gateway>/lane-<n>"
// otherwise. The log keeps one high-water mark per producer, so each lane
// is deduplicated on its own.
func LaneProducer(gateway string, lane uint32) string {
	if lane == 0 {
		return gateway
	}
	return gateway + "/lane-" + strconv.FormatUint(uint64(lane), 10)
}

// ParseLaneProducer is the inverse of LaneProducer: the gateway and lane of
// a log producer name. A name without a lane suffix is lane 0 of the
// gateway of that name.
func ParseLaneProducer(producer string) (gateway string, lane uint32) {
	i := strings.LastIndex(producer, "/lane-")
	if i < 0 {
		return producer, 0
	}
	n, err := strconv.ParseUint(producer[i+len("/lane-"):], 10, 32)
	if err != nil || n == 0 || strconv.FormatUint(n, 10) != producer[i+len("/lane-"):] {
		return producer, 0
	}
	return producer[:i], uint32(n)
}
