package devicestate

import (
	"fmt"
	"log/slog"
	"testing"

	"github.com/tributary-io/tributary/cloud/commitlog"
)

// BenchmarkApply is the Store's cost per log record: a state update merged
// into one of 1000 devices, and a telemetry record skipped (the common
// case on a shared log).
func BenchmarkApply(b *testing.B) {
	s := &Store{devices: map[key]*device{}, progress: make(chan struct{}), logger: discardLogger()}
	updates := make([]commitlog.Record, 1000)
	for i := range updates {
		updates[i] = commitlog.Record{Offset: uint64(i), Value: stateValue(b, "gw-1", fmt.Sprint("device-", i),
			fmt.Sprint("gw-1-", i), t0, fmt.Sprintf(`{"fw":"1.2.%d","uptime_s":%d,"net":{"rssi":-61,"ssid":"plant-4"}}`, i%7, i))}
	}
	b.Run("state", func(b *testing.B) {
		b.ReportAllocs()
		for i := range b.N {
			r := updates[i%len(updates)]
			r.Offset = uint64(i)
			s.mu.Lock()
			s.applyOne(&r)
			s.mu.Unlock()
		}
	})
	telemetry := commitlog.Record{Value: []byte(`... a 200-byte protobuf CloudEvent of type io.tributary.telemetry, source /gateways/gw-1/devices/device-17, data {"celsius":21.5,"n":12345} ..........................................`)}
	b.Run("telemetry", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			s.applyOne(&telemetry)
		}
	})
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
