package link

import (
	"errors"
	"fmt"

	"github.com/quic-go/quic-go"

	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
)

// Sentinel errors. Compare with errors.Is.
var (
	// ErrProtocol wraps a violation of the sync protocol by the peer.
	ErrProtocol = errors.New("link: protocol error")
	// ErrRecordTooLarge means a single outbox record does not fit in a frame
	// the cloud accepts. Client.Run returns it: the record can never be sent
	// and the link cannot move past it.
	ErrRecordTooLarge = errors.New("link: record does not fit in a frame")
	// ErrServerClosed is returned by Serve after Close, or when called twice.
	ErrServerClosed = errors.New("link: server closed")
)

// RemoteError is an Error frame received from the peer, or the error code
// the peer closed the QUIC connection with (both carry the same code).
type RemoteError struct {
	Code    syncv1.ErrorCode
	Message string
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("link: peer error %s: %s", e.Code, e.Message)
}

// Is makes errors.Is(err, &RemoteError{Code: c}) match any RemoteError
// with code c.
func (e *RemoteError) Is(target error) bool {
	t, ok := target.(*RemoteError)
	return ok && t.Code == e.Code
}

// closeCode is the QUIC application error code carrying an ErrorCode.
func closeCode(c syncv1.ErrorCode) quic.ApplicationErrorCode {
	return quic.ApplicationErrorCode(c)
}

// remoteClose turns a connection closed, or a stream cancelled, by the peer
// with a non-zero code into a RemoteError; other errors are returned
// unchanged.
func remoteClose(err error) error {
	var ae *quic.ApplicationError
	if errors.As(err, &ae) && ae.Remote && ae.ErrorCode != 0 {
		return &RemoteError{Code: syncv1.ErrorCode(ae.ErrorCode), Message: ae.ErrorMessage}
	}
	var se *quic.StreamError
	if errors.As(err, &se) && se.Remote && se.ErrorCode != 0 {
		return &RemoteError{Code: syncv1.ErrorCode(se.ErrorCode), Message: "stream cancelled by the peer"}
	}
	return err
}

func errorFrame(code syncv1.ErrorCode, msg string) *syncv1.Frame {
	return &syncv1.Frame{Body: &syncv1.Frame_Error{Error: &syncv1.Error{Code: code, Message: msg}}}
}

// frameKind names a frame's body for error messages.
func frameKind(f *syncv1.Frame) string {
	switch f.GetBody().(type) {
	case *syncv1.Frame_Hello:
		return "Hello"
	case *syncv1.Frame_Welcome:
		return "Welcome"
	case *syncv1.Frame_Batch:
		return "Batch"
	case *syncv1.Frame_Ack:
		return "Ack"
	case *syncv1.Frame_Error:
		return "Error"
	default:
		return "unknown"
	}
}
