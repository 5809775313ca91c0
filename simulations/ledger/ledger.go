// Package ledger accounts for every message of a simulation: published,
// acknowledged by the gateway, present in the central log, delivered to the
// sink. Each message is identified by its device and the device's own
// counter, both carried in the payload, so the ledger needs nothing from the
// system under test to recognise a message.
package ledger

import (
	"encoding/json"
	"fmt"
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

type entry struct {
	sent       int64 // unix ns
	acked      bool
	inLog      int
	deliveries int
	latency    time.Duration // first delivery - sent
}

// Ledger is safe for concurrent use.
type Ledger struct {
	mu        sync.Mutex
	m         map[Key]*entry
	lastN     map[string]uint64 // per device: highest n delivered so far
	published int
	acked     int
	failed    int
	delivered int // unique
	redeliver int
	outOfOrd  int
	unknown   int
}

// New returns an empty ledger.
func New() *Ledger {
	return &Ledger{m: map[Key]*entry{}, lastN: map[string]uint64{}}
}

func (l *Ledger) get(k Key) *entry {
	e := l.m[k]
	if e == nil {
		e = &entry{}
		l.m[k] = e
	}
	return e
}

// Published records that k was handed to the MQTT client at sent.
func (l *Ledger) Published(k Key, sent time.Time) {
	l.mu.Lock()
	l.get(k).sent = sent.UnixNano()
	l.published++
	l.mu.Unlock()
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

// Failed records a publish that was not acknowledged (error or timeout).
func (l *Ledger) Failed(Key) {
	l.mu.Lock()
	l.failed++
	l.mu.Unlock()
}

// Delivered records one delivery of p to the sink at arrived.
func (l *Ledger) Delivered(p Payload, arrived time.Time) {
	k := Key{p.Device, p.N}
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.m[k]
	if !ok {
		l.unknown++
		return
	}
	e.deliveries++
	if e.deliveries > 1 {
		l.redeliver++
		return
	}
	l.delivered++
	e.latency = time.Duration(arrived.UnixNano() - e.sent)
	if last, seen := l.lastN[p.Device]; seen && p.N < last {
		l.outOfOrd++
	} else {
		l.lastN[p.Device] = p.N
	}
}

// InLog records that the central log holds one copy of k.
func (l *Ledger) InLog(k Key) {
	l.mu.Lock()
	if e, ok := l.m[k]; ok {
		e.inLog++
	} else {
		l.unknown++
	}
	l.mu.Unlock()
}

// Progress is a cheap snapshot for live output.
type Progress struct {
	Published, Acked, Failed, Delivered int
}

// Progress returns the running counters.
func (l *Ledger) Progress() Progress {
	l.mu.Lock()
	defer l.mu.Unlock()
	return Progress{l.published, l.acked, l.failed, l.delivered}
}

// Pending counts acknowledged messages not yet delivered.
func (l *Ledger) Pending() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, e := range l.m {
		if e.acked && e.deliveries == 0 {
			n++
		}
	}
	return n
}

// Summary is the verdict of a run. The JSON names are the SUMMARY line's keys.
type Summary struct {
	Published int `json:"published"`
	Acked     int `json:"acked"`
	// Failed publishes were never acknowledged: the device knows to resend.
	Failed int `json:"failed_publishes"`
	// InLog counts distinct acknowledged messages found in the central log
	// (-1 when the log was not checked).
	InLog     int `json:"in_log"`
	Delivered int `json:"delivered"`
	// Lost counts acknowledged messages missing from the log or never
	// delivered.
	Lost int `json:"lost"`
	// Duplicates counts extra copies of a message in the central log: the
	// exactly-once contract forbids any.
	Duplicates int `json:"duplicates"`
	// Redeliveries counts extra deliveries to the sink (allowed: push is
	// at-least-once; consumers deduplicate by event id).
	Redeliveries int `json:"redeliveries"`
	OutOfOrder   int `json:"out_of_order"`
	// Unknown counts deliveries or log records the ledger never published.
	Unknown int     `json:"unknown"`
	P50ms   float64 `json:"p50_ms"`
	P99ms   float64 `json:"p99_ms"`
	MaxMs   float64 `json:"max_ms"`
}

// OK reports whether the run kept the contracts: nothing acknowledged lost,
// nothing duplicated in the log, per-device order kept, nothing unknown.
func (s Summary) OK() bool {
	return s.Lost == 0 && s.Duplicates == 0 && s.OutOfOrder == 0 && s.Unknown == 0
}

// Summarise computes the verdict. checkedLog says whether InLog was fed.
func (l *Ledger) Summarise(checkedLog bool) Summary {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := Summary{
		Published: l.published, Acked: l.acked, Failed: l.failed,
		Delivered: l.delivered, Redeliveries: l.redeliver,
		OutOfOrder: l.outOfOrd, Unknown: l.unknown, InLog: -1,
	}
	if checkedLog {
		s.InLog = 0
	}
	lat := make([]time.Duration, 0, l.delivered)
	for _, e := range l.m {
		if e.deliveries > 0 {
			lat = append(lat, e.latency)
		}
		if checkedLog {
			if e.inLog > 0 && e.acked {
				s.InLog++
			}
			if e.inLog > 1 {
				s.Duplicates += e.inLog - 1
			}
		}
		if !e.acked {
			continue
		}
		if e.deliveries == 0 || (checkedLog && e.inLog == 0) {
			s.Lost++
		}
	}
	slices.Sort(lat)
	s.P50ms = ms(quantile(lat, 0.50))
	s.P99ms = ms(quantile(lat, 0.99))
	if len(lat) > 0 {
		s.MaxMs = ms(lat[len(lat)-1])
	}
	return s
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
