package fleet

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/tributary-io/tributary/simulations/ledger"
)

// device is one simulated MQTT device with its own paho connection. It
// creates messages on its streams' schedules into a local queue and
// publishes them with QoS 1, one at a time: the next message goes out once
// the gateway acknowledged the previous one. While the gateway does not
// answer (it is down, or refuses because its disk is full), the queue grows,
// as a sensor's buffer would, and drains once it answers again. A failed
// attempt is retried with the same message; paho may still hold the failed
// attempt and resend it after a reconnect, so a retried message can reach
// the log twice, under two outbox records (a device resend, which MQTT QoS 1
// allows; the ledger counts it apart from duplicates).
//
// One message in flight keeps each device's order through reconnects: paho
// resends an unacknowledged publish when it reconnects, and a second
// publish made meanwhile could overtake it.
type device struct {
	id, gateway string
	addr        string
	streams     []devStream
	led         *ledger.Ledger
	ser         *series
	client      mqtt.Client
	errs        *tally       // publish errors, by message
	queued      atomic.Int64 // messages created and not yet acknowledged
	n           uint64
}

// tally counts strings; safe for concurrent use.
type tally struct {
	mu sync.Mutex
	m  map[string]int
}

func (t *tally) add(s string) {
	t.mu.Lock()
	if t.m == nil {
		t.m = map[string]int{}
	}
	if _, ok := t.m[s]; ok || len(t.m) < 20 {
		t.m[s]++
	} else {
		t.m["(other errors)"]++
	}
	t.mu.Unlock()
}

func (t *tally) snapshot() map[string]int {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.m) == 0 {
		return nil
	}
	out := make(map[string]int, len(t.m))
	for k, v := range t.m {
		out[k] = v
	}
	return out
}

// devStream is one stream as a device publishes it.
type devStream struct {
	topic    string
	size     int
	interval time.Duration
	offset   time.Duration // of the first message from the start
	next     time.Time
	meta     ledger.Meta
}

// message is one queued message.
type message struct {
	key     ledger.Key
	topic   string
	payload []byte
}

// connectLimit bounds the wait for a device's first connection (paho retries
// meanwhile): generous, as ten thousand devices connecting to gateways on a
// busy two-core machine wait their turn.
const connectLimit = 3 * time.Minute

// connect opens the device's MQTT connection (paho reconnects on its own
// afterwards).
func (d *device) connect(ctx context.Context) error {
	opts := mqtt.NewClientOptions().
		AddBroker("tcp://" + d.addr).
		SetClientID(d.id).
		SetCleanSession(true).
		SetAutoReconnect(true).
		SetConnectRetry(true).
		SetConnectRetryInterval(250 * time.Millisecond).
		SetMaxReconnectInterval(time.Second).
		SetConnectTimeout(10 * time.Second).
		SetWriteTimeout(10 * time.Second).
		SetKeepAlive(30 * time.Second).
		SetOrderMatters(false).
		// Stored (unacknowledged) publishes are resent in their order.
		SetStore(mqtt.NewOrderedMemoryStore())
	d.client = mqtt.NewClient(opts)
	tok := d.client.Connect()
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return fmt.Errorf("device %s: connect to %s: %w", d.id, d.addr, err)
		}
		return nil
	case <-time.After(connectLimit):
		return fmt.Errorf("device %s: connect to %s: not connected within %v", d.id, d.addr, connectLimit)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run creates messages on schedule from start until end (or stopCreating is
// closed), and publishes until its queue is empty after that, or ctx ends.
// A device that falls behind (a starved goroutine) creates the messages it
// missed, but none scheduled at or after end.
func (d *device) run(ctx context.Context, start, end time.Time, stopCreating <-chan struct{}) {
	for i := range d.streams {
		d.streams[i].next = start.Add(d.streams[i].offset)
	}
	timer := time.NewTimer(max(time.Until(d.nextDue()), 0))
	defer timer.Stop()
	var (
		queue    []message
		tok      mqtt.Token
		inflight <-chan struct{}
		retry    <-chan time.Time
		creating = true
		backoff  = 100 * time.Millisecond
	)
	for {
		if inflight == nil && retry == nil && len(queue) > 0 {
			m := queue[0]
			tok = d.client.Publish(m.topic, 1, false, m.payload)
			inflight = tok.Done()
		}
		if !creating && len(queue) == 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-stopCreating:
			creating, stopCreating = false, nil
			timer.Stop()
		case now := <-timer.C:
			if !creating {
				continue
			}
			for i := range d.streams {
				st := &d.streams[i]
				for !st.next.After(now) && st.next.Before(end) {
					queue = append(queue, d.create(st))
					st.next = st.next.Add(st.interval)
				}
			}
			if next := d.nextDue(); next.Before(end) {
				timer.Reset(max(time.Until(next), 0))
			}
		case <-inflight:
			inflight = nil
			k := queue[0].key
			if err := tok.Error(); err != nil {
				d.led.Failed(k)
				d.errs.add(err.Error())
				retry = time.After(backoff)
				backoff = min(2*backoff, 2*time.Second)
				continue
			}
			backoff = 100 * time.Millisecond
			d.led.Acked(k)
			d.ser.Acked(time.Now())
			d.queued.Add(-1)
			queue[0] = message{}
			queue = queue[1:]
		case <-retry:
			retry = nil
		}
	}
}

// create makes the next message of st, now.
func (d *device) create(st *devStream) message {
	d.n++
	now := time.Now()
	k := ledger.Key{Device: d.id, N: d.n}
	d.led.PublishedMeta(k, now, st.meta)
	d.ser.Published(now)
	d.queued.Add(1)
	return message{key: k, topic: st.topic, payload: ledger.MakePayload(d.id, d.n, now, st.size)}
}

// nextDue is when the device's next message is due (far away for a device
// without streams).
func (d *device) nextDue() time.Time {
	if len(d.streams) == 0 {
		return time.Now().Add(24 * time.Hour)
	}
	next := d.streams[0].next
	for _, st := range d.streams[1:] {
		if st.next.Before(next) {
			next = st.next
		}
	}
	return next
}

func (d *device) close() {
	if d.client != nil {
		d.client.Disconnect(20)
	}
}
