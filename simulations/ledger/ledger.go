// Package ledger accounts for every message of a simulation: published,
// acknowledged by the gateway, present in the central log, delivered to each
// subscription that should get it (or dead-lettered there), dropped by a
// configured policy, or lost. Each message is identified by its device and the
// device's own counter, both carried in the payload, so the ledger needs
// nothing from the system under test to recognise a message.
//
// A message's fate, decided by Account once the run is over:
//
//   - delivered: it is in the central log and every subscription expected to
//     deliver it did so at least once (more than once is a redelivery, which
//     push's at-least-once contract allows);
//   - dropped by a policy: a subscription dead-lettered it after its retries,
//     or the gateway's outbox deleted it before the cloud had it (quota
//     drop-oldest, TTL) and said so in its counters;
//   - lost: acknowledged to its device, yet neither of the above. A run with
//     a lost message broke a contract.
//
// Duplicates are told apart from device resends by the record's origin in the
// log (gateway id and outbox sequence): the same origin twice is a duplicate
// (the exactly-once contract forbids it); the same device message under two
// origins is a device's QoS 1 resend after a lost PUBACK, which MQTT allows
// and the ledger counts separately.
package ledger

import (
	"encoding/json"
	"fmt"
	"math/bits"
	"slices"
	"strings"
	"sync"
	"time"
)

// Key identifies one simulated message.
type Key struct {
	Device string
	N      uint64
}

// Payload is the JSON body a simulated device publishes.
type Payload struct {
	Device string `json:"d"`
	N      uint64 `json:"n"`
	// Sent is the publish time in Unix nanoseconds.
	Sent int64  `json:"ts"`
	Pad  string `json:"pad,omitempty"`
}

// MakePayload encodes a payload padded to about size bytes.
func MakePayload(device string, n uint64, sent time.Time, size int) []byte {
	p := Payload{Device: device, N: n, Sent: sent.UnixNano()}
	b, _ := json.Marshal(p)
	if pad := size - len(b) - len(`,"pad":""`); pad > 0 {
		p.Pad = strings.Repeat("x", pad)
		b, _ = json.Marshal(p)
	}
	return b
}

// ParsePayload decodes a payload made by MakePayload.
func ParsePayload(b []byte) (Payload, error) {
	var p Payload
	if err := json.Unmarshal(b, &p); err != nil {
		return p, fmt.Errorf("ledger: payload is not a simulation payload: %w", err)
	}
	if p.Device == "" {
		return p, fmt.Errorf("ledger: payload has no device")
	}
	return p, nil
}

// MaxSubscriptions is how many subscriptions one ledger can account for.
const MaxSubscriptions = 8

// Subscription is one subscription whose deliveries the ledger accounts.
type Subscription struct {
	// ID names it in summaries.
	ID string
	// Ordered says per-device order is checked on its deliveries.
	Ordered bool
}

// Meta says where a published message goes.
type Meta struct {
	// Gateway is the gateway the device publishes to; edge drop counters are
	// matched to messages by it. "" when unknown.
	Gateway string
	// Priority is the message's outbox priority class.
	Priority uint8
	// Subs is the set of subscriptions expected to deliver the message: bit
	// i stands for the ledger's subscription i. 0 means none (the message
	// must still reach the central log).
	Subs uint8
}

// origin identifies a record at its source: gateway and outbox sequence.
type origin struct {
	producer string
	seq      uint64
}

type entry struct {
	sent      int64 // unix ns
	gw        uint16
	prio      uint8
	expect    uint8 // subscriptions expected to deliver it
	delivered uint8 // subscriptions that delivered it at least once
	dead      uint8 // subscriptions that dead-lettered it
	acked     bool
	inLog     bool
	copies    uint16 // records in the log holding it
	dups      uint16 // records repeating an origin already seen
	resends   uint16 // records under a further origin (device resends)
	first     origin
	more      []origin // further distinct origins (rare)
}

// settled reports whether the entry needs nothing more: every expected
// subscription delivered or dead-lettered it, or, when none is expected, it
// is in the log.
func (e *entry) settled() bool {
	if e.expect == 0 {
		return e.inLog
	}
	return (e.delivered|e.dead)&e.expect == e.expect
}

// units is how many pending units a message counts for: one per expected
// subscription, or one for the log.
func units(expect uint8) int {
	if expect == 0 {
		return 1
	}
	return bits.OnesCount8(expect)
}

// pendingBucket is the width of the buckets PendingBefore sums.
const pendingBucket = 100 * time.Millisecond

// Ledger is safe for concurrent use.
type Ledger struct {
	mu       sync.Mutex
	subs     []Subscription
	m        map[Key]*entry
	gwIndex  map[string]uint16
	gwNames  []string
	lastN    []map[string]uint64 // per subscription, per device: highest n delivered first so far
	lat      [][]time.Duration   // per subscription: first-delivery latencies
	epoch    int64               // unix ns of bucket 0 (the first publish)
	pending  []int               // per pendingBucket of send time: unsettled units
	dlReason map[string]int

	published  int
	acked      int
	failed     int
	delivered  int // messages every expected subscription delivered
	redeliver  []int
	outOfOrd   []int
	unexpected []int
	dlCount    []int
	unknown    int
}

// New returns an empty ledger with one ordered subscription: Published
// messages are expected there and Delivered records its deliveries.
func New() *Ledger {
	l, _ := NewWithSubscriptions([]Subscription{{ID: "default", Ordered: true}})
	return l
}

// NewWithSubscriptions returns an empty ledger accounting deliveries to subs
// (at most MaxSubscriptions).
func NewWithSubscriptions(subs []Subscription) (*Ledger, error) {
	if len(subs) > MaxSubscriptions {
		return nil, fmt.Errorf("ledger: %d subscriptions, at most %d", len(subs), MaxSubscriptions)
	}
	n := len(subs)
	l := &Ledger{
		subs: slices.Clone(subs), m: map[Key]*entry{}, gwIndex: map[string]uint16{"": 0}, gwNames: []string{""},
		lastN: make([]map[string]uint64, n), lat: make([][]time.Duration, n), dlReason: map[string]int{},
		redeliver: make([]int, n), outOfOrd: make([]int, n), unexpected: make([]int, n), dlCount: make([]int, n),
	}
	for i := range l.lastN {
		l.lastN[i] = map[string]uint64{}
	}
	return l, nil
}

// Subscriptions returns the subscriptions the ledger accounts.
func (l *Ledger) Subscriptions() []Subscription { return slices.Clone(l.subs) }

func (l *Ledger) bucket(sent int64) int {
	return int(max(sent-l.epoch, 0) / int64(pendingBucket))
}

func (l *Ledger) addPending(sent int64, n int) {
	b := l.bucket(sent)
	if b >= len(l.pending) {
		l.pending = append(l.pending, make([]int, b+1-len(l.pending))...)
	}
	l.pending[b] += n
}

// Published records that k was created (handed to the device's MQTT client
// or its send queue) at sent, expected on the ledger's first subscription.
func (l *Ledger) Published(k Key, sent time.Time) {
	var subs uint8
	if len(l.subs) > 0 {
		subs = 1
	}
	l.PublishedMeta(k, sent, Meta{Subs: subs})
}

// PublishedMeta records that k was created at sent and where it goes.
// Publishing a key again (a retry of the same message) changes nothing.
func (l *Ledger) PublishedMeta(k Key, sent time.Time, m Meta) {
	m.Subs &= uint8(1<<len(l.subs) - 1)
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.m[k]; ok && e.sent != 0 {
		return
	}
	l.published++
	gw, ok := l.gwIndex[m.Gateway]
	if !ok {
		gw = uint16(len(l.gwNames))
		l.gwIndex[m.Gateway] = gw
		l.gwNames = append(l.gwNames, m.Gateway)
	}
	if l.epoch == 0 {
		l.epoch = sent.UnixNano()
	}
	e := l.m[k]
	if e == nil {
		e = &entry{}
		l.m[k] = e
	}
	e.sent, e.gw, e.prio, e.expect = sent.UnixNano(), gw, m.Priority, m.Subs
	l.addPending(e.sent, units(e.expect))
}

func (l *Ledger) get(k Key) *entry {
	e := l.m[k]
	if e == nil {
		// Acked or seen before Published: a caller bug, but keep counting.
		e = &entry{}
		l.m[k] = e
	}
	return e
}

// Acked records the gateway's PUBACK for k (the gateway promised durability).
func (l *Ledger) Acked(k Key) {
	l.mu.Lock()
	if e := l.get(k); !e.acked {
		e.acked = true
		l.acked++
	}
	l.mu.Unlock()
}

// Failed records a publish attempt that was not acknowledged (error or
// timeout). The message may still be acknowledged later, by a retry.
func (l *Ledger) Failed(Key) {
	l.mu.Lock()
	l.failed++
	l.mu.Unlock()
}

// Delivered records one delivery of p to the ledger's first subscription at
// arrived.
func (l *Ledger) Delivered(p Payload, arrived time.Time) {
	l.DeliveredTo(0, p, arrived)
}

// DeliveredTo records one delivery of p to subscription sub at arrived. It
// reports whether this was the subscription's first delivery of the message
// and, if so, the latency from publish to arrival.
func (l *Ledger) DeliveredTo(sub int, p Payload, arrived time.Time) (first bool, latency time.Duration) {
	k := Key{p.Device, p.N}
	l.mu.Lock()
	defer l.mu.Unlock()
	if sub < 0 || sub >= len(l.subs) {
		l.unknown++
		return false, 0
	}
	e, ok := l.m[k]
	if !ok || e.sent == 0 {
		l.unknown++
		return false, 0
	}
	bit := uint8(1) << sub
	if e.delivered&bit != 0 {
		l.redeliver[sub]++
		return false, 0
	}
	if e.expect&bit == 0 {
		l.unexpected[sub]++
	}
	e.delivered |= bit
	if e.expect&bit != 0 && e.dead&bit == 0 {
		l.addPending(e.sent, -1)
	}
	if e.expect != 0 && e.delivered&e.expect == e.expect && (e.delivered&^bit)&e.expect != e.expect {
		l.delivered++
	}
	latency = time.Duration(arrived.UnixNano() - e.sent)
	l.lat[sub] = append(l.lat[sub], latency)
	if l.subs[sub].Ordered {
		if last, seen := l.lastN[sub][p.Device]; seen && p.N < last {
			l.outOfOrd[sub]++
		} else {
			l.lastN[sub][p.Device] = p.N
		}
	}
	return true, latency
}

// DeadLettered records that subscription sub gave up on k and appended it to
// its dead-letter topic, for reason.
func (l *Ledger) DeadLettered(k Key, sub int, reason string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.m[k]
	if !ok || sub < 0 || sub >= len(l.subs) {
		l.unknown++
		return
	}
	bit := uint8(1) << sub
	if e.dead&bit != 0 {
		return
	}
	e.dead |= bit
	l.dlCount[sub]++
	if e.expect&bit != 0 && e.delivered&bit == 0 {
		l.addPending(e.sent, -1)
	}
	if len(reason) > 120 {
		reason = reason[:120] + "…"
	}
	if _, ok := l.dlReason[reason]; ok || len(l.dlReason) < 20 {
		l.dlReason[reason]++
	} else {
		l.dlReason["(other reasons)"]++
	}
}

// InLog records that the central log holds one copy of k whose origin is
// unknown: every copy after the first counts as a duplicate.
func (l *Ledger) InLog(k Key) { l.InLogFrom(k, "", 0) }

// InLogFrom records that the central log holds one copy of k, appended from
// outbox record seq of gateway producer.
func (l *Ledger) InLogFrom(k Key, producer string, seq uint64) {
	o := origin{producer, seq}
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.m[k]
	if !ok || e.sent == 0 {
		l.unknown++
		return
	}
	e.copies++
	switch {
	case e.copies == 1:
		e.first = o
		if e.expect == 0 {
			l.addPending(e.sent, -1)
		}
		e.inLog = true
	case o == e.first || slices.Contains(e.more, o):
		e.dups++
	default:
		e.more = append(e.more, o)
		e.resends++
	}
}

// Unknown records a delivery or log record that is not a message of the
// simulation at all (its payload could not be parsed).
func (l *Ledger) Unknown() {
	l.mu.Lock()
	l.unknown++
	l.mu.Unlock()
}

// Progress is a cheap snapshot for live output.
type Progress struct {
	// Published counts messages created; Acked those the gateway
	// acknowledged; Failed publish attempts that were not (retried or
	// not); Delivered messages every expected subscription delivered.
	Published, Acked, Failed, Delivered int
}

// Progress returns the running counters.
func (l *Ledger) Progress() Progress {
	l.mu.Lock()
	defer l.mu.Unlock()
	return Progress{l.published, l.acked, l.failed, l.delivered}
}

// Pending counts acknowledged messages some expected subscription has
// neither delivered nor dead-lettered (or, for a message no subscription
// expects, that is not in the log yet).
func (l *Ledger) Pending() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, e := range l.m {
		if e.acked && !e.settled() {
			n++
		}
	}
	return n
}

// PendingBefore counts the unsettled units — (message, expected
// subscription) pairs, or messages no subscription expects that are not in
// the log yet — of messages published before t, acknowledged or not. It
// works in buckets of 100 ms: a bucket is included when it starts before t.
// It is cheap (no scan of the messages), for polling drain progress.
func (l *Ledger) PendingBefore(t time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.epoch == 0 {
		return 0
	}
	limit := t.UnixNano() - l.epoch
	n := 0
	for b, v := range l.pending {
		if int64(b)*int64(pendingBucket) >= limit {
			break
		}
		n += v
	}
	return n
}

// EdgeDrops are a gateway's counters of records its outbox deleted before
// the cloud had them, for one priority class.
type EdgeDrops struct {
	Gateway  string
	Priority uint8
	// QuotaDropped were deleted by a drop-oldest overflow policy, Expired by
	// a TTL.
	QuotaDropped, Expired uint64
}

// Drop reasons, the keys of Summary.Drops.
const (
	DropDeadLetter = "dead-letter"       // a subscription gave up after its retries
	DropQuota      = "quota-drop-oldest" // the outbox made room under its quota
	DropExpired    = "expired"           // the outbox's TTL ran out
)

// AccountOptions say what Account may rely on.
type AccountOptions struct {
	// CheckedLog says the whole central log was read into the ledger.
	CheckedLog bool
	// EdgeDrops are the gateways' drop counters. An acknowledged message
	// missing from the log is accounted as dropped while its gateway and
	// class have drop counts left to explain it (the counters do not name
	// messages), and as lost otherwise.
	EdgeDrops []EdgeDrops
}

// Summary is the verdict of a run. The JSON names are the SUMMARY line's keys.
type Summary struct {
	Published int `json:"published"`
	Acked     int `json:"acked"`
	// Failed counts published messages that were never acknowledged: the
	// device knows to resend them.
	Failed int `json:"failed_publishes"`
	// InLog counts distinct acknowledged messages found in the central log
	// (-1 when the log was not checked).
	InLog int `json:"in_log"`
	// Delivered counts acknowledged messages every expected subscription
	// delivered.
	Delivered int `json:"delivered"`
	// Lost counts acknowledged messages missing from the log or from an
	// expected subscription, and not explained by a drop policy.
	Lost int `json:"lost"`
	// Duplicates counts extra copies in the central log of one outbox
	// record (same gateway and sequence): the exactly-once contract
	// forbids any. Without origins (InLog), every extra copy counts.
	Duplicates int `json:"duplicates"`
	// DeviceResends counts further copies of a message in the log under
	// another outbox record: a device resent it after a lost PUBACK (MQTT
	// QoS 1 is at-least-once from the device).
	DeviceResends int `json:"device_resends"`
	// Redeliveries counts extra deliveries to a subscription (allowed: push
	// is at-least-once; consumers deduplicate by event id).
	Redeliveries int `json:"redeliveries"`
	OutOfOrder   int `json:"out_of_order"`
	// Unknown counts deliveries or log records the ledger never published,
	// and deliveries to a subscription that was not expected to get the
	// message (a filter that let through what it should not).
	Unknown int `json:"unknown"`
	// Dropped counts acknowledged messages a configured policy dropped
	// somewhere (and that were not lost elsewhere); Drops counts the drops
	// by reason (a message dead-lettered by two subscriptions counts twice).
	Dropped int            `json:"dropped"`
	Drops   map[string]int `json:"drops"`
	P50ms   float64        `json:"p50_ms"`
	P99ms   float64        `json:"p99_ms"`
	MaxMs   float64        `json:"max_ms"`
	// Subscriptions breaks deliveries down per subscription.
	Subscriptions []SubscriptionSummary `json:"subscriptions,omitempty"`
	// DeadLetterReasons counts the dead letters by their recorded reason.
	DeadLetterReasons map[string]int `json:"dead_letter_reasons,omitempty"`
	// PerGateway breaks the fates down per gateway (not in the SUMMARY
	// line: a fleet has many gateways).
	PerGateway []GatewaySummary `json:"-"`
}

// SubscriptionSummary is one subscription's share of a Summary.
type SubscriptionSummary struct {
	ID string `json:"id"`
	// Expected counts acknowledged messages in the log it should deliver.
	Expected     int     `json:"expected"`
	Delivered    int     `json:"delivered"`
	DeadLettered int     `json:"dead_lettered"`
	Missing      int     `json:"missing"`
	Redeliveries int     `json:"redeliveries"`
	OutOfOrder   int     `json:"out_of_order"`
	Unexpected   int     `json:"unexpected"`
	P50ms        float64 `json:"p50_ms"`
	P99ms        float64 `json:"p99_ms"`
	MaxMs        float64 `json:"max_ms"`
}

// GatewaySummary is one gateway's share of a Summary.
type GatewaySummary struct {
	Gateway   string `json:"gateway"`
	Published int    `json:"published"`
	Acked     int    `json:"acked"`
	InLog     int    `json:"in_log"`
	Delivered int    `json:"delivered"`
	Dropped   int    `json:"dropped"`
	Lost      int    `json:"lost"`
}

// OK reports whether the run kept the contracts: nothing acknowledged lost,
// nothing duplicated in the log, per-device order kept, nothing unknown.
func (s Summary) OK() bool {
	return s.Lost == 0 && s.Duplicates == 0 && s.OutOfOrder == 0 && s.Unknown == 0
}

// Summarise computes the verdict. checkedLog says whether InLog was fed.
func (l *Ledger) Summarise(checkedLog bool) Summary {
	return l.Account(AccountOptions{CheckedLog: checkedLog})
}

type gwClass struct {
	gw   uint16
	prio uint8
}

// Account computes the verdict, explaining messages missing from the log by
// o.EdgeDrops where it can.
func (l *Ledger) Account(o AccountOptions) Summary {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := Summary{
		Published: l.published, Acked: l.acked,
		Unknown: l.unknown, InLog: -1, Drops: map[string]int{},
	}
	if o.CheckedLog {
		s.InLog = 0
	}
	subs := make([]SubscriptionSummary, len(l.subs))
	for i, sub := range l.subs {
		subs[i] = SubscriptionSummary{ID: sub.ID, Redeliveries: l.redeliver[i], OutOfOrder: l.outOfOrd[i], Unexpected: l.unexpected[i]}
		s.Redeliveries += l.redeliver[i]
		s.OutOfOrder += l.outOfOrd[i]
		s.Unknown += l.unexpected[i]
	}
	perGW := make([]GatewaySummary, len(l.gwNames))
	for i, n := range l.gwNames {
		perGW[i].Gateway = n
	}
	missing := map[gwClass]int{}
	for _, e := range l.m {
		if e.sent == 0 {
			continue // acked but never published: counted as unknown below
		}
		g := &perGW[e.gw]
		g.Published++
		s.Duplicates += int(e.dups)
		s.DeviceResends += int(e.resends)
		if !e.acked {
			continue
		}
		g.Acked++
		if e.inLog {
			s.InLog += btoi(o.CheckedLog)
			g.InLog++
		} else if o.CheckedLog {
			missing[gwClass{e.gw, e.prio}]++
			continue
		}
		lost, dropped := false, false
		for i := range l.subs {
			bit := uint8(1) << i
			if e.expect&bit == 0 {
				continue
			}
			subs[i].Expected++
			switch {
			case e.delivered&bit != 0:
				subs[i].Delivered++
			case e.dead&bit != 0:
				subs[i].DeadLettered++
				s.Drops[DropDeadLetter]++
				dropped = true
			default:
				subs[i].Missing++
				lost = true
			}
		}
		switch {
		case lost:
			s.Lost++
			g.Lost++
		case dropped:
			s.Dropped++
			g.Dropped++
		case e.expect != 0:
			s.Delivered++
			g.Delivered++
		}
	}
	// Explain messages missing from the log by the edge's drop counters.
	quota := map[gwClass]uint64{}
	expired := map[gwClass]uint64{}
	for _, d := range o.EdgeDrops {
		gw, ok := l.gwIndex[d.Gateway]
		if !ok {
			continue
		}
		c := gwClass{gw, d.Priority}
		quota[c] += d.QuotaDropped
		expired[c] += d.Expired
	}
	for c, n := range missing {
		q := min(uint64(n), quota[c])
		x := min(uint64(n)-q, expired[c])
		s.Drops[DropQuota] += int(q)
		s.Drops[DropExpired] += int(x)
		s.Dropped += int(q + x)
		perGW[c.gw].Dropped += int(q + x)
		lostHere := n - int(q+x)
		s.Lost += lostHere
		perGW[c.gw].Lost += lostHere
	}
	for k, v := range s.Drops {
		if v == 0 {
			delete(s.Drops, k)
		}
	}
	s.Failed = s.Published - s.Acked
	var all []time.Duration
	for i := range l.subs {
		lat := slices.Clone(l.lat[i])
		slices.Sort(lat)
		subs[i].P50ms, subs[i].P99ms = ms(quantile(lat, 0.50)), ms(quantile(lat, 0.99))
		if len(lat) > 0 {
			subs[i].MaxMs = ms(lat[len(lat)-1])
		}
		all = append(all, lat...)
	}
	slices.Sort(all)
	s.P50ms = ms(quantile(all, 0.50))
	s.P99ms = ms(quantile(all, 0.99))
	if len(all) > 0 {
		s.MaxMs = ms(all[len(all)-1])
	}
	if len(subs) > 1 || (len(subs) == 1 && (subs[0].DeadLettered > 0 || subs[0].Unexpected > 0)) {
		s.Subscriptions = subs
	}
	if len(l.dlReason) > 0 {
		s.DeadLetterReasons = map[string]int{}
		for k, v := range l.dlReason {
			s.DeadLetterReasons[k] = v
		}
	}
	for _, g := range perGW {
		if g.Published > 0 {
			s.PerGateway = append(s.PerGateway, g)
		}
	}
	return s
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
