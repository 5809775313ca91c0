package outbox

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"time"
)

// Quota and overflow.
//
// Options.QuotaBytes bounds the sum of Message.StoredSize over the records
// held. The writer enforces it while it builds each group commit, inside the
// group's transaction: it walks the group in order and, for a message that
// does not fit, either makes room or refuses the message (ErrQuotaExceeded).
// Deletions and inserts then commit together, so the quota holds exactly at
// every commit, however many clients append at once, and a failed commit
// (ErrDiskFull) changes nothing: every message of that group gets the
// commit's error, nothing is dropped, and only FailedGroups and FailedRows
// count it.
//
// Each priority class has an overflow policy, which says whether the class's
// own records may be deleted to make room:
//
//   - RejectNew (the default): never. A record of the class, once
//     acknowledged to its device, stays until the cloud has it or it
//     expires. This is the only policy that never loses an acknowledged
//     message, which is why it is the default.
//   - DropOldest: yes, oldest (lowest seq) first, and only for a message of
//     the same or a higher-priority class. These records were acknowledged
//     to their devices, so this is opt-in and every one is counted
//     (Stats.DroppedOldest).
//
// To fit a message of class c the writer deletes records of DropOldest
// classes numbered c or more (never of a higher class for a lower one),
// lowest-priority class first. If all of them together are too few, or the
// message alone is larger than the quota, the message is refused and
// nothing is deleted. So a RejectNew message of class 0 still displaces
// DropOldest telemetry of class 7: the policy protects a class's stored
// records, and a full outbox does not starve the highest class. A message of
// a RejectNew class that finds no droppable lower class is refused.
//
// Within one group, a DropOldest message that a later message of the same
// group displaces was never committed: it is refused with ErrQuotaExceeded
// (and counted as rejected) rather than acknowledged and dropped in the same
// breath, so no device is told a message was stored that never was.
//
// The free-space reserve (Options.MinFreeBytes, diskguard.go) is a second
// limit enforced by the same plan: each group is planned against the lower
// of QuotaBytes and the reserve's limit, and its refusals and drops are
// counted under the reason of the limit that applied (quotaPlan.disk).
//
// Rejected designs: checking the quota in Append (many goroutines would race
// for the same room, and room freed by Ack or expiry is only known to the
// writer); a trigger or a size column in SQLite (the writer already holds
// the per-class totals in memory and recounts them from the stored columns
// on Open, so the database format stays simple); deleting by received time
// instead of seq (seq order is the order the cloud receives, so dropping
// from the front of a class keeps what remains in order).

// Overflow is a priority class's overflow policy: what happens when a
// message does not fit in Options.QuotaBytes. The package documentation
// ("Quota, overflow and expiry") states the full rule.
type Overflow string

const (
	// RejectNew refuses a message that does not fit (after dropping records
	// of lower DropOldest classes), and never deletes the class's records to
	// make room.
	RejectNew Overflow = "reject-new"
	// DropOldest deletes the class's oldest records to make room for a
	// message of the same or a higher class; each is counted.
	DropOldest Overflow = "drop-oldest"
)

func (p Overflow) validate() error {
	switch p {
	case "", RejectNew, DropOldest:
		return nil
	}
	return fmt.Errorf("%q: want %q or %q", string(p), RejectNew, DropOldest)
}

// ClassPolicy is the policy of one priority class.
type ClassPolicy struct {
	// Overflow is the class's overflow policy. "" means Options.Overflow.
	Overflow Overflow
	// TTL is how long the class's records may wait for the cloud. 0 means
	// Options.TTL; a negative value means they never expire.
	TTL time.Duration
	// Lane is the priority lane the class's records are committed to,
	// below MaxLanes; 0 (the zero value) is lane 0. A record keeps the lane
	// it was committed with: changing the mapping affects later records
	// only (see lanes.go).
	Lane uint8
}

// classPolicy is a class's policy with the defaults applied.
type classPolicy struct {
	drop bool          // DropOldest
	ttl  time.Duration // 0: the class's records never expire
	lane uint8         // ClassPolicy.Lane
}

// policies resolves o's per-class table. anyTTL reports whether any class
// expires records, anyDrop whether any class is DropOldest.
func (o Options) policies() (t [256]classPolicy, anyTTL, anyDrop bool) {
	for c := range t {
		p := o.Classes[uint8(c)]
		ov := p.Overflow
		if ov == "" {
			ov = o.Overflow
		}
		ttl := p.TTL
		if ttl == 0 {
			ttl = o.TTL
		}
		t[c] = classPolicy{drop: ov == DropOldest, ttl: max(ttl, 0), lane: p.Lane}
		anyTTL = anyTTL || t[c].ttl > 0
		anyDrop = anyDrop || t[c].drop
	}
	return t, anyTTL, anyDrop
}

// classState is what the writer holds of one priority class.
type classState struct {
	records int64
	bytes   int64 // sum of StoredSize
	payload int64 // sum of len(Payload)
}

func (c *classState) add(d classState) {
	c.records += d.records
	c.bytes += d.bytes
	c.payload += d.payload
}

func (c *classState) sub(d classState) {
	c.records -= d.records
	c.bytes -= d.bytes
	c.payload -= d.payload
}

// sizeSQL is Message.StoredSize computed from a row's columns. octet_length
// counts a text's bytes, not its characters, does not stop at NUL, and
// (unlike length of a CAST to BLOB) reads the length from the record header
// without loading the text.
var sizeSQL = `(length(payload) + octet_length(client_id) + octet_length(username)
	+ octet_length(topic) + octet_length(content_type) + octet_length(event_type)
	+ coalesce(length(user_properties), 0) + ` + strconv.Itoa(RecordOverhead) + `)`

// quotaPlan is the writer's decision for one group, made inside the group's
// transaction before anything is written: which messages are refused and
// which committed records are dropped.
type quotaPlan struct {
	disk    bool                // the limit is the free-space reserve's (diskguard.go)
	group   [256]int64          // stored bytes of the group's kept messages, by class
	dropped [256]int64          // stored bytes of committed records dropped, by class
	cuts    map[uint8]*classCut // classes losing committed records or group messages
}

// classCut is what a group takes from one DropOldest class.
type classCut struct {
	upTo    uint64     // committed records of the class with seq <= upTo are dropped
	dropped classState // those records
	fetched []victim   // committed records fetched but not yet dropped, in seq order
	after   uint64     // the last seq fetched
	drained bool       // no committed record of the class is left beyond fetched
	cursor  int        // the group's messages before this index are not displaceable
}

type victim struct {
	seq            uint64
	bytes, payload int64
}

// victimFetch is how many records of a class one query fetches as drop
// candidates.
const victimFetch = 256

func (pl *quotaPlan) reset() {
	clear(pl.group[:])
	clear(pl.dropped[:])
	if pl.cuts == nil {
		pl.cuts = map[uint8]*classCut{}
	}
	clear(pl.cuts)
}

func (pl *quotaPlan) cut(class uint8) *classCut {
	c := pl.cuts[class]
	if c == nil {
		c = &classCut{}
		pl.cuts[class] = c
	}
	return c
}

// planQuota decides, for each message of batch in order, whether it fits in
// quota, deleting records of DropOldest classes to make room (see the
// comment at the top of this file). It marks refused messages, issues the
// DELETEs in tx. disk says quota is the free-space reserve's limit rather
// than Options.QuotaBytes: refusals then wrap ErrDiskFull and drops are
// counted by reason DropReasonDiskFull.
func (o *Outbox) planQuota(ctx context.Context, tx *sql.Tx, batch []*pending, quota int64, disk bool) error {
	w := &o.w
	pl := &w.plan
	pl.reset()
	pl.disk = disk
	held := w.bytes
	for i, p := range batch {
		c := p.m.Priority
		need := held + p.stored - quota
		if need > 0 {
			if p.stored > quota || o.droppable(c) < need {
				p.refused = pl.refusal(c, p.stored, held, quota)
				continue
			}
			freed, err := o.makeRoom(ctx, tx, batch[:i], c, need)
			if err != nil {
				return err
			}
			held -= freed
		}
		held += p.stored
		pl.group[c] += p.stored
	}
	for class, cut := range pl.cuts {
		if cut.upTo == 0 {
			continue
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM records INDEXED BY records_class
			WHERE priority = ? AND seq <= ?`, int64(class), int64(cut.upTo))
		if err != nil {
			return fmt.Errorf("drop oldest: %w", err)
		}
		if n, err := res.RowsAffected(); err != nil || n != cut.dropped.records {
			return fmt.Errorf("drop oldest of priority %d up to seq %d: deleted %d rows, planned %d (%v)",
				class, cut.upTo, n, cut.dropped.records, err)
		}
	}
	return nil
}

// droppable is how many bytes could be freed for a message of class c: the
// kept bytes of every DropOldest class numbered c or more.
func (o *Outbox) droppable(c uint8) int64 {
	w := &o.w
	var n int64
	for k := int(c); k < len(w.classes); k++ {
		if o.policy[k].drop {
			n += w.classes[k].bytes + w.plan.group[k] - w.plan.dropped[k]
		}
	}
	return n
}

// makeRoom frees at least need bytes for a message of class c, which
// droppable has confirmed is possible: from the lowest-priority DropOldest
// class up to c, committed records first (oldest first), then earlier
// messages of the group (earlier first). It returns the bytes freed.
func (o *Outbox) makeRoom(ctx context.Context, tx *sql.Tx, earlier []*pending, c uint8, need int64) (int64, error) {
	w := &o.w
	var freed int64
	for k := len(w.classes) - 1; k >= int(c) && freed < need; k-- {
		if !o.policy[k].drop {
			continue
		}
		class := uint8(k)
		if w.classes[k].bytes+w.plan.group[k] == 0 {
			continue
		}
		cut := w.plan.cut(class)
		for freed < need && w.classes[k].records > cut.dropped.records {
			if len(cut.fetched) == 0 {
				if cut.drained {
					return freed, fmt.Errorf("drop oldest: priority %d holds %d records by count, none left in the database",
						class, w.classes[k].records-cut.dropped.records)
				}
				if err := o.fetchVictims(ctx, tx, class, cut); err != nil {
					return freed, err
				}
				continue
			}
			v := cut.fetched[0]
			cut.fetched = cut.fetched[1:]
			cut.upTo = v.seq
			cut.dropped.add(classState{records: 1, bytes: v.bytes, payload: v.payload})
			w.plan.dropped[k] += v.bytes
			freed += v.bytes
		}
		for ; freed < need && cut.cursor < len(earlier); cut.cursor++ {
			p := earlier[cut.cursor]
			if p.m.Priority != class || p.refused != nil {
				continue
			}
			p.refused = fmt.Errorf("%w: priority %d message displaced by a newer message of priority %d in the same commit",
				w.plan.sentinel(), class, c)
			w.plan.group[k] -= p.stored
			freed += p.stored
		}
	}
	if freed < need {
		return freed, fmt.Errorf("drop oldest: freed %d of %d bytes for priority %d", freed, need, c)
	}
	return freed, nil
}

// fetchVictims reads the next committed records of class as drop candidates.
func (o *Outbox) fetchVictims(ctx context.Context, tx *sql.Tx, class uint8, cut *classCut) error {
	rows, err := tx.QueryContext(ctx, `SELECT seq, length(payload), `+sizeSQL+`
		FROM records INDEXED BY records_class WHERE priority = ? AND seq > ? ORDER BY seq LIMIT ?`,
		int64(class), int64(cut.after), victimFetch)
	if err != nil {
		return fmt.Errorf("drop oldest: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var v victim
		var seq int64
		if err := rows.Scan(&seq, &v.payload, &v.bytes); err != nil {
			return fmt.Errorf("drop oldest: %w", err)
		}
		v.seq = uint64(seq)
		cut.after = v.seq
		cut.fetched = append(cut.fetched, v)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("drop oldest: %w", err)
	}
	cut.drained = len(cut.fetched) < victimFetch
	return nil
}

// sentinel is the error a refusal of this plan wraps.
func (pl *quotaPlan) sentinel() error {
	if pl.disk {
		return ErrDiskFull
	}
	return ErrQuotaExceeded
}

// refusal is the error of a message of class c and stored bytes that does
// not fit with held bytes held.
func (pl *quotaPlan) refusal(c uint8, stored, held, quota int64) error {
	if pl.disk {
		return fmt.Errorf("%w: priority %d message of %d bytes: free space is below the reserve (outbox may hold %d bytes, holds %d)",
			ErrDiskFull, c, stored, quota, held)
	}
	return fmt.Errorf("%w: priority %d message of %d bytes; %d of %d bytes held",
		ErrQuotaExceeded, c, stored, held, quota)
}
