package broker

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// Listener ids, as mochi reports them in client.Net.Listener.
const (
	listenerTCP = "tcp"
	listenerTLS = "tls"
	listenerWS  = "ws"
)

// deadlineConn gives every Write its own deadline, so no client write (mochi's
// deliveries or our PUBACKs) can block longer than the write timeout. mochi
// calls SetDeadline for its keepalive; that is narrowed to the read side, so
// the write deadline is owned here alone.
type deadlineConn struct {
	net.Conn
	timeout time.Duration
}

// Write writes p within the timeout. A failed write may have sent part of a
// packet, after which the stream cannot be trusted: the connection is
// closed, so the client reconnects instead of reading garbage.
func (c *deadlineConn) Write(p []byte) (int, error) {
	if err := c.Conn.SetWriteDeadline(time.Now().Add(c.timeout)); err != nil {
		return 0, err
	}
	n, err := c.Conn.Write(p)
	if err != nil {
		_ = c.Conn.Close()
	}
	return n, err
}

func (c *deadlineConn) SetDeadline(t time.Time) error { return c.Conn.SetReadDeadline(t) }

// NetConn returns the wrapped connection (a *tls.Conn on the TLS listener),
// for hooks that need peer certificates.
func (c *deadlineConn) NetConn() net.Conn { return c.Conn }

// deadlineListener wraps every accepted connection in a deadlineConn.
type deadlineListener struct {
	net.Listener
	timeout time.Duration
}

func (l *deadlineListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &deadlineConn{Conn: c, timeout: l.timeout}, nil
}

// serverTLS loads a certificate pair and, if caFile is set, requires client
// certificates signed by it. field names the config key in errors.
func serverTLS(field, certFile, keyFile, caFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("%w: %s.cert_file/key_file: %w", ErrConfig, field, err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("%w: %s.client_ca_file: %w", ErrConfig, field, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: %s.client_ca_file: no PEM certificates in %s", ErrConfig, field, caFile)
		}
		tc.ClientCAs = pool
		tc.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return tc, nil
}

// wsListener serves MQTT over WebSocket on a socket bound before Serve, so an
// address of ":0" reports its real port (mochi's own listener cannot).
type wsListener struct {
	id      string
	ln      net.Listener
	tls     *tls.Config
	timeout time.Duration
	srv     *http.Server
	log     *slog.Logger

	mu     sync.Mutex
	closed bool
}

var _ listeners.Listener = (*wsListener)(nil)

func (l *wsListener) ID() string      { return l.id }
func (l *wsListener) Address() string { return l.ln.Addr().String() }
func (l *wsListener) Protocol() string {
	if l.tls != nil {
		return "wss"
	}
	return "ws"
}

func (l *wsListener) Init(log *slog.Logger) error {
	l.log = log
	return nil
}

func (l *wsListener) Serve(establish listeners.EstablishFn) {
	up := &websocket.Upgrader{
		Subprotocols: []string{"mqtt"},
		// Devices are not browsers; there is no origin to protect.
		CheckOrigin: func(*http.Request) bool { return true },
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.srv = &http.Server{
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(l.log.Handler(), slog.LevelDebug),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c, err := up.Upgrade(w, r, nil)
			if err != nil {
				return // Upgrade already answered with an HTTP error
			}
			defer c.Close()
			if err := establish(l.id, &wsConn{c: c, timeout: l.timeout}); err != nil {
				l.log.Debug("websocket client ended", "error", err)
			}
		}),
	}
	srv := l.srv
	l.mu.Unlock()
	ln := l.ln
	if l.tls != nil {
		ln = tls.NewListener(ln, l.tls)
	}
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		l.log.Error("websocket listener stopped", "error", err)
	}
}

func (l *wsListener) Close(closeClients listeners.CloseFn) {
	l.mu.Lock()
	first := !l.closed
	l.closed = true
	srv := l.srv
	l.mu.Unlock()
	if !first {
		return
	}
	if srv != nil {
		_ = srv.Close() // hijacked (upgraded) connections are closed by closeClients
	} else {
		_ = l.ln.Close()
	}
	closeClients(l.id)
}

// wsConn adapts a WebSocket connection to the byte stream mochi reads: MQTT
// packets may span binary messages and one message may hold several packets.
type wsConn struct {
	c       *websocket.Conn
	r       io.Reader // the current message, nil between messages
	timeout time.Duration
}

var errNotBinary = errors.New("websocket: MQTT needs binary messages")

func (w *wsConn) Read(p []byte) (int, error) {
	for {
		if w.r == nil {
			op, r, err := w.c.NextReader()
			if err != nil {
				return 0, err
			}
			if op != websocket.BinaryMessage {
				return 0, errNotBinary
			}
			w.r = r
		}
		n, err := w.r.Read(p)
		if errors.Is(err, io.EOF) {
			w.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

func (w *wsConn) Write(p []byte) (int, error) {
	if err := w.c.SetWriteDeadline(time.Now().Add(w.timeout)); err != nil {
		return 0, err
	}
	if err := w.c.WriteMessage(websocket.BinaryMessage, p); err != nil {
		_ = w.c.Close() // as deadlineConn: a failed write ends the connection
		return 0, err
	}
	return len(p), nil
}

func (w *wsConn) Close() error                       { return w.c.Close() }
func (w *wsConn) LocalAddr() net.Addr                { return w.c.LocalAddr() }
func (w *wsConn) RemoteAddr() net.Addr               { return w.c.RemoteAddr() }
func (w *wsConn) SetDeadline(t time.Time) error      { return w.c.SetReadDeadline(t) }
func (w *wsConn) SetReadDeadline(t time.Time) error  { return w.c.SetReadDeadline(t) }
func (w *wsConn) SetWriteDeadline(t time.Time) error { return w.c.SetWriteDeadline(t) }
