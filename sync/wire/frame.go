// Package wire reads and writes the sync protocol's frames and batches
// (proto/sync/v1): the length-prefixed framing used on every stream, and the
// encoding of a batch's records (a RecordList, optionally zstd-compressed).
//
// Everything read here comes from the network and is untrusted: decoders
// never panic, bound every allocation by a caller-given limit, and return
// errors that wrap the sentinel errors below (compare with errors.Is).
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"

	"google.golang.org/protobuf/proto"

	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
)

// MaxFrameBytes is the hard cap on a frame's length, whatever a peer
// announces: 16 MiB.
const MaxFrameBytes = 16 << 20

// headerLen is the size of the big-endian length prefix.
const headerLen = 4

// Sentinel errors. Compare with errors.Is.
var (
	// ErrFrameTooLarge means a frame's length is above the reader's limit
	// (or above MaxFrameBytes when writing). The reader has not consumed the
	// frame's body: the stream is unusable afterwards.
	ErrFrameTooLarge = errors.New("wire: frame too large")
	// ErrMalformed means bytes that do not decode to a valid frame: a
	// zero-length frame, an undecodable protobuf, a frame without a body.
	ErrMalformed = errors.New("wire: malformed frame")
)

// WriteFrame writes f with its length prefix in a single Write call. It
// refuses a frame without a body (ErrMalformed) and one whose encoding is
// above MaxFrameBytes (ErrFrameTooLarge), writing nothing in both cases.
// Callers that share w between goroutines serialise the calls.
func WriteFrame(w io.Writer, f *syncv1.Frame) error {
	buf, err := AppendFrame(nil, f)
	if err != nil {
		return err
	}
	_, err = w.Write(buf)
	return err
}

// AppendFrame appends f with its length prefix to dst, as WriteFrame would
// write it, and returns the extended slice. It refuses the same frames as
// WriteFrame, returning dst unchanged.
func AppendFrame(dst []byte, f *syncv1.Frame) ([]byte, error) {
	if f == nil || f.GetBody() == nil {
		return dst, fmt.Errorf("%w: frame has no body", ErrMalformed)
	}
	n := proto.Size(f)
	if n > MaxFrameBytes {
		return dst, fmt.Errorf("%w: %d bytes", ErrFrameTooLarge, n)
	}
	start := len(dst)
	buf := binary.BigEndian.AppendUint32(dst, uint32(n))
	buf = slices.Grow(buf, n)
	buf, err := proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(buf, f)
	if err != nil {
		return dst, fmt.Errorf("wire: marshal frame: %w", err)
	}
	if m := len(buf) - start - headerLen; m != n {
		// proto.Size and Marshal disagree only if f changed concurrently.
		if m > MaxFrameBytes {
			return dst, fmt.Errorf("%w: %d bytes", ErrFrameTooLarge, m)
		}
		binary.BigEndian.PutUint32(buf[start:], uint32(m))
	}
	return buf, nil
}

// ReadFrame reads one frame from r. maxBytes limits the frame's length; a
// value <= 0 or above MaxFrameBytes means MaxFrameBytes.
//
// It returns io.EOF if r ends cleanly before a frame starts and
// io.ErrUnexpectedEOF if it ends inside one. A length of zero or a body that
// is not a Frame with a body returns ErrMalformed; a length above the limit
// returns ErrFrameTooLarge without reading the body. Other errors are r's.
func ReadFrame(r io.Reader, maxBytes int) (*syncv1.Frame, error) {
	if maxBytes <= 0 || maxBytes > MaxFrameBytes {
		maxBytes = MaxFrameBytes
	}
	var hdr [headerLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 {
		return nil, fmt.Errorf("%w: zero length", ErrMalformed)
	}
	if uint64(n) > uint64(maxBytes) {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, n, maxBytes)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	f := new(syncv1.Frame)
	if err := proto.Unmarshal(body, f); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if f.GetBody() == nil {
		return nil, fmt.Errorf("%w: frame has no body", ErrMalformed)
	}
	return f, nil
}
