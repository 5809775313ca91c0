package broker

import (
	"context"
	"errors"
	"io"
	"log/slog"

	"github.com/mochi-mqtt/server/v2/packets"
)

// mochiHandler is the slog.Handler given to mochi. It passes every record
// through to the broker's handler except two kinds of noise:
//
//   - "publish packet rejected" with packets.ErrRejectPacket, which mochi logs
//     at DEBUG, dumping the whole packet (about 5 KB of text), whenever the
//     hook answers a publish itself: refusals (negative acknowledgements,
//     disconnects) and publishes abandoned at shutdown. It used to be every
//     QoS 1 publish in AckAsync mode, before taken. These records are
//     dropped; the broker logs refusals in its own words. A rejection with
//     any other error, and every other message, passes.
//   - the listener's WARN with an empty message and an io.EOF error, which
//     mochi logs whenever a client closes its socket without DISCONNECT
//     ("EOF") or before CONNECT ("read connection: EOF"). That is how most
//     devices leave, not a fault: the record is demoted to DEBUG. Other
//     listener errors keep their level.
type mochiHandler struct {
	inner slog.Handler
}

var _ slog.Handler = mochiHandler{}

// msgPublishRejected is the message mochi's Hooks.OnPublish logs when a hook
// returns packets.ErrRejectPacket.
const msgPublishRejected = "publish packet rejected"

func (h mochiHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h mochiHandler) Handle(ctx context.Context, r slog.Record) error {
	switch {
	case r.Level == slog.LevelDebug && r.Message == msgPublishRejected:
		if errors.Is(recordError(r), packets.ErrRejectPacket) {
			return nil
		}
	case r.Level == slog.LevelWarn && r.Message == "":
		if errors.Is(recordError(r), io.EOF) {
			if !h.inner.Enabled(ctx, slog.LevelDebug) {
				return nil
			}
			r.Level = slog.LevelDebug // r is a copy; its attributes are not touched
		}
	}
	return h.inner.Handle(ctx, r)
}

func (h mochiHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return mochiHandler{inner: h.inner.WithAttrs(as)}
}

func (h mochiHandler) WithGroup(name string) slog.Handler {
	return mochiHandler{inner: h.inner.WithGroup(name)}
}

// recordError returns the record's top-level "error" attribute if it holds
// an error, else nil.
func recordError(r slog.Record) error {
	var err error
	r.Attrs(func(a slog.Attr) bool {
		if a.Key != "error" {
			return true
		}
		if e, ok := a.Value.Any().(error); ok {
			err = e
		}
		return false
	})
	return err
}
