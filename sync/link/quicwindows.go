package link

import "github.com/quic-go/quic-go"

// The server's receive flow-control windows.
//
// quic-go starts a stream's receive window at 512 KiB and grows it
// (auto-tuning) only when the reader hands back window updates fast compared
// with the RTT. A sync batch of 4096 telemetry records is about 350 KB on
// the wire, so a 512 KiB window admitted one or two batches in flight: the
// gateway's Window of 8 batches was in effect 1-2, and each batch's bytes
// waited for the session to read, decode and hand to the Sink the one
// before. On a loaded machine, where RTT samples swing from tens of
// microseconds to tens of milliseconds with scheduling, auto-tuning did not
// catch up within a drain: the sync-drain benchmark's client spent 22.7 s
// of a 26 s drain blocked in Stream.Write while the server's reader spent
// 15 s waiting for bytes (go tool trace -pprof=sync).
//
// The server therefore starts every connection at quic-go's own ceilings,
// which a gateway could reach by auto-tuning anyway: the memory a
// connection may pin in unread bytes is what it was, only reached at once.
const (
	serverStreamReceiveWindow     = 6 << 20  // quic-go's MaxStreamReceiveWindow default
	serverConnectionReceiveWindow = 15 << 20 // quic-go's MaxConnectionReceiveWindow default
)

// setServerReceiveWindows sets qc's receive windows to start at their
// maxima (see above).
func setServerReceiveWindows(qc *quic.Config) {
	qc.InitialStreamReceiveWindow = serverStreamReceiveWindow
	qc.MaxStreamReceiveWindow = serverStreamReceiveWindow
	qc.InitialConnectionReceiveWindow = serverConnectionReceiveWindow
	qc.MaxConnectionReceiveWindow = serverConnectionReceiveWindow
}
