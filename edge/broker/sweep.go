package broker

import (
	"errors"
	"reflect"
	"time"
	"unsafe"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// inflightSweepInterval is how often mochi looks for expired in-flight
// messages (those sent to a subscriber and awaiting its PUBACK), instead of
// mochi's fixed one second.
//
// Why: each sweep copies every client's whole in-flight map into a fresh
// slice and sorts it (mochi v2.7.9 Client.ClearExpiredInflights →
// Inflight.GetAll). A local subscriber behind a busy gateway holds tens of
// thousands of in-flight messages, so the sweep took 23% of the broker's CPU
// in the edge-ingest benchmark with 50 publishers, plus the garbage it
// leaves; and the CPU it takes slows the subscriber further, which grows the
// map. mochi has no option for the interval; the ticker is reached by
// reflection (slowInflightSweep). The cost of sweeping less often: an
// in-flight message may outlive Limits.MessageExpiry, or an MQTT 5 message
// its expiry interval, by up to this long before it is dropped.
const inflightSweepInterval = time.Minute

var errNoSweepTicker = errors.New("broker: mochi's in-flight expiry ticker (Server.loop.inflightExpiry) not found")

// slowInflightSweep resets mochi's in-flight expiry ticker to every. It must
// be called before srv.Serve (which starts the loop reading the ticker). It
// depends on mochi v2.7.9's unexported layout and returns errNoSweepTicker,
// changing nothing, if that layout is not there (TestSlowInflightSweep fails
// on such an upgrade).
func slowInflightSweep(srv *mqtt.Server, every time.Duration) error {
	loop := reflect.ValueOf(srv).Elem().FieldByName("loop")
	if !loop.IsValid() || loop.Kind() != reflect.Pointer || loop.IsNil() {
		return errNoSweepTicker
	}
	f := loop.Elem().FieldByName("inflightExpiry")
	if !f.IsValid() || f.Type() != reflect.TypeFor[*time.Ticker]() {
		return errNoSweepTicker
	}
	t := *(**time.Ticker)(unsafe.Pointer(f.UnsafeAddr()))
	if t == nil {
		return errNoSweepTicker
	}
	t.Reset(every)
	return nil
}
