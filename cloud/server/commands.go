package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	format "github.com/cloudevents/sdk-go/binding/format/protobuf/v2"
	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/tributary-io/tributary/cloud/commitlog"
	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
	"github.com/tributary-io/tributary/sync/link"
)

// Cloud-to-device commands: the HTTP API.
//
//	POST /v1/gateways/{gateway}/devices/{device}/commands/{name}  (write scope)
//	GET  /v1/commands/{request_id}                                (read scope)
//
// A POST sends a CommandRequest down the gateway's sync link and, unless
// wait=false, holds the call until the device replied, the command
// finished otherwise, or timeout passed. The caller is woken by the status
// arriving over the link (no polling).
//
// State is kept in memory (commandHub): at most maxCommands commands, a
// finished one for commandKeep. It is not the record: every request and
// every status is also appended to the central log as a CloudEvent
// (io.tributary.command.request, io.tributary.command.status; subject
// "commands/<gateway>/<device>/<name>"), beside the device's own reply
// event (io.tributary.command.reply) that the gateway forwards, so the
// history is auditable, replayable and can be subscribed to. The request
// event carries the body; the status events carry state, reason and the
// reply status, not the reply payload (that is the reply event). After a
// cloud restart GET answers 404 for older commands: read the log. A status
// that arrives for a command the hub forgot is still appended.

const (
	maxCommands        = 10000
	commandKeep        = time.Hour
	defaultCmdTimeout  = 30 * time.Second
	maxCmdTimeout      = 5 * time.Minute
	maxCmdExpiry       = 24 * time.Hour
	maxCommandBody     = 256 << 10 // the gateway's default payload limit
	commandResend      = 2 * time.Second
	commandRequestType = "io.tributary.command.request"
	commandStatusType  = "io.tributary.command.status"
)

// CommandView is a command as the API shows it.
type CommandView struct {
	RequestID string `json:"request_id"`
	Gateway   string `json:"gateway"`
	Device    string `json:"device"`
	Name      string `json:"name"`
	// Status is sent (handed to the link, not yet acknowledged by the
	// gateway), accepted, delivered, replied, expired, rejected or failed
	// (the link lost it).
	Status      string          `json:"status"`
	Reason      string          `json:"reason,omitempty"`
	ReplyStatus int             `json:"reply_status,omitempty"`
	Payload     json.RawMessage `json:"payload,omitempty"`
	Created     time.Time       `json:"created"`
	Updated     time.Time       `json:"updated"`
	Expires     time.Time       `json:"expires"`
}

type cloudCommand struct {
	view CommandView
	rank int           // order of states; a status never moves it back
	done chan struct{} // closed when final
}

var stateNames = map[syncv1.CommandState]string{
	syncv1.CommandState_COMMAND_STATE_ACCEPTED:  "accepted",
	syncv1.CommandState_COMMAND_STATE_DELIVERED: "delivered",
	syncv1.CommandState_COMMAND_STATE_REPLIED:   "replied",
	syncv1.CommandState_COMMAND_STATE_EXPIRED:   "expired",
	syncv1.CommandState_COMMAND_STATE_REJECTED:  "rejected",
}

const rankFinal = 3 // replied, expired, rejected, failed

func stateRank(s syncv1.CommandState) int {
	switch s {
	case syncv1.CommandState_COMMAND_STATE_ACCEPTED:
		return 1
	case syncv1.CommandState_COMMAND_STATE_DELIVERED:
		return 2
	}
	return rankFinal
}

// commandHub holds the commands the API knows and wakes their callers.
type commandHub struct {
	log    *slog.Logger
	now    func() time.Time
	audit  commitlog.Log // nil: no audit events
	sender func(ctx context.Context, gateway string, req *syncv1.CommandRequest) error
	resend time.Duration // how often a request the gateway has not accepted is sent again

	mu    sync.Mutex
	cmds  map[string]*cloudCommand
	order []string // request ids, oldest first

	quit      chan struct{} // closed by close: followers stop
	closeOnce sync.Once
	followers sync.WaitGroup

	sent     prometheus.Counter
	finished *prometheus.CounterVec
	rtt      prometheus.Histogram
}

func newCommandHub(audit commitlog.Log, logger *slog.Logger) *commandHub {
	return &commandHub{
		log: logger, now: time.Now, audit: audit, cmds: map[string]*cloudCommand{}, resend: commandResend,
		quit: make(chan struct{}),
		sent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tributary_commands_sent_total", Help: "Commands sent to gateways.",
		}),
		finished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tributary_commands_finished_total", Help: "Commands by final state (replied, expired, rejected, failed).",
		}, []string{"state"}),
		rtt: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tributary_command_rtt_seconds", Help: "From the API call to the device's reply arriving in the cloud.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
	}
}

// close stops the followers of wait=false commands and waits for them;
// callers still waiting get their answer as at a timeout. Nil-safe.
func (h *commandHub) close() {
	if h == nil {
		return
	}
	h.closeOnce.Do(func() { close(h.quit) })
	h.followers.Wait()
}

func (h *commandHub) collectors() []prometheus.Collector {
	return []prometheus.Collector{h.sent, h.finished, h.rtt}
}

// add registers a new command; the oldest finished (or, if none, oldest)
// commands are forgotten beyond maxCommands, finished ones after
// commandKeep.
func (h *commandHub) add(v CommandView) *cloudCommand {
	c := &cloudCommand{view: v, done: make(chan struct{})}
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.now()
	for len(h.order) > 0 {
		old := h.cmds[h.order[0]]
		if old != nil && len(h.order) < maxCommands && (old.rank < rankFinal || now.Sub(old.view.Updated) < commandKeep) {
			break
		}
		delete(h.cmds, h.order[0])
		h.order = h.order[1:]
	}
	h.cmds[v.RequestID] = c
	h.order = append(h.order, v.RequestID)
	return c
}

func (h *commandHub) get(id string) (CommandView, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	c, ok := h.cmds[id]
	if !ok {
		return CommandView{}, false
	}
	return c.view, true
}

// finishLocked makes c final with state; called with mu held.
func (h *commandHub) finishLocked(c *cloudCommand, state string) {
	c.rank = rankFinal
	c.view.Status = state
	c.view.Updated = h.now()
	h.finished.WithLabelValues(state).Inc()
	if state == "replied" {
		h.rtt.Observe(c.view.Updated.Sub(c.view.Created).Seconds())
	}
	close(c.done)
}

// onStatus is the sync server's OnCommandStatus.
func (h *commandHub) onStatus(gateway string, st *syncv1.CommandStatus) {
	h.mu.Lock()
	c, ok := h.cmds[st.GetRequestId()]
	var v CommandView
	if ok && c.view.Gateway == gateway {
		if r := stateRank(st.GetState()); r > c.rank {
			c.view.Reason = st.GetReason()
			if st.GetState() == syncv1.CommandState_COMMAND_STATE_REPLIED {
				c.view.ReplyStatus = int(st.GetReplyStatus())
				if p := st.GetReplyPayload(); len(p) > 0 && json.Valid(p) {
					c.view.Payload = json.RawMessage(p)
				}
			}
			if r == rankFinal {
				h.finishLocked(c, stateNames[st.GetState()])
			} else {
				c.rank, c.view.Status, c.view.Updated = r, stateNames[st.GetState()], h.now()
			}
		}
		v = c.view
	} else {
		v = CommandView{RequestID: st.GetRequestId(), Gateway: gateway, Device: st.GetDevice(), Reason: st.GetReason(), ReplyStatus: int(st.GetReplyStatus())}
	}
	h.mu.Unlock()
	h.appendAudit(commandStatusType, st.GetRequestId()+"-"+strings.ToLower(strings.TrimPrefix(st.GetState().String(), "COMMAND_STATE_")), v, map[string]any{
		"request_id": st.GetRequestId(), "gateway": gateway, "device": st.GetDevice(),
		"status": stateNames[st.GetState()], "reason": st.GetReason(), "reply_status": st.GetReplyStatus(),
	})
}

// fail makes a command that never reached the gateway final.
func (h *commandHub) fail(c *cloudCommand, reason string) {
	h.mu.Lock()
	if c.rank < rankFinal {
		c.view.Reason = reason
		h.finishLocked(c, "failed")
	}
	h.mu.Unlock()
}

// appendAudit appends one event to the central log, without waiting.
func (h *commandHub) appendAudit(typ, id string, v CommandView, data any) {
	if h.audit == nil {
		return
	}
	ev := event.New()
	ev.SetID(id)
	ev.SetType(typ)
	ev.SetSource("/tributary/cloud/commands")
	ev.SetSubject("commands/" + v.Gateway + "/" + v.Device + "/" + v.Name)
	ev.SetTime(h.now())
	if err := ev.SetData(event.ApplicationJSON, data); err != nil {
		h.log.Warn("command audit event not built", "request_id", v.RequestID, "err", err)
		return
	}
	pe, err := format.ToProto(&ev)
	if err != nil {
		h.log.Warn("command audit event not built", "request_id", v.RequestID, "err", err)
		return
	}
	b, err := proto.Marshal(pe)
	if err != nil {
		h.log.Warn("command audit event not built", "request_id", v.RequestID, "err", err)
		return
	}
	h.audit.AppendAsync([]commitlog.Record{{Topic: ev.Subject(), Value: b}}, func(_ commitlog.AppendResult, err error) {
		if err != nil {
			h.log.Warn("command audit event not appended", "request_id", v.RequestID, "type", typ, "err", err)
		}
	})
}

// commandRoutes registers the command API; the hub was made before the
// sync server (its OnCommandStatus) and is connected to it here.
func (s *Server) commandRoutes(mux *http.ServeMux) {
	s.cmds.sender = s.sync.SendCommand
	mux.HandleFunc("POST /v1/gateways/{gateway}/devices/{device}/commands/{name}", s.auth.require(ScopeWrite, s.cmds.handlePost))
	mux.HandleFunc("GET /v1/commands/{request_id}", s.auth.require(ScopeRead, s.cmds.handleGet))
}

func validLevel(s string) bool { return s != "" && !strings.ContainsAny(s, "/+#\x00") }

// commandError is the body of a failed command call.
type commandError struct {
	Error     string `json:"error"`
	Code      string `json:"code,omitempty"`
	RequestID string `json:"request_id,omitempty"`
	Status    string `json:"status,omitempty"`
}

func durationParam(r *http.Request, name string, def, maxD time.Duration) (time.Duration, error) {
	raw := r.URL.Query().Get(name)
	if raw == "" {
		return def, nil
	}
	d, err := time.ParseDuration(raw)
	if err != nil {
		if n, nerr := strconv.ParseFloat(raw, 64); nerr == nil {
			d, err = time.Duration(n*float64(time.Second)), nil
		}
	}
	if err != nil || d <= 0 || d > maxD {
		return 0, fmt.Errorf("%s=%q: want a duration above 0 and at most %s (e.g. 30s, or seconds)", name, raw, maxD)
	}
	return d, nil
}

func (h *commandHub) handlePost(w http.ResponseWriter, r *http.Request) {
	gw, dev, name := r.PathValue("gateway"), r.PathValue("device"), r.PathValue("name")
	for _, p := range [][2]string{{"gateway", gw}, {"device", dev}, {"name", name}} {
		if !validLevel(p[1]) {
			writeError(w, http.StatusBadRequest, "%s %q: must be non-empty without '/', '+' or '#'", p[0], p[1])
			return
		}
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
		writeError(w, http.StatusUnsupportedMediaType, "content type %q: a command body is JSON (application/json)", r.Header.Get("Content-Type"))
		return
	}
	timeout, err := durationParam(r, "timeout", defaultCmdTimeout, maxCmdTimeout)
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	expiry, err := durationParam(r, "expiry", timeout, maxCmdExpiry)
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	wait := true
	if raw := r.URL.Query().Get("wait"); raw != "" {
		if wait, err = strconv.ParseBool(raw); err != nil {
			writeError(w, http.StatusBadRequest, "wait=%q: want true or false", raw)
			return
		}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxCommandBody))
	if err != nil {
		writeError(w, http.StatusRequestEntityTooLarge, "body over the %d-byte limit", maxCommandBody)
		return
	}
	var probe any
	if err := json.Unmarshal(body, &probe); err != nil {
		writeError(w, http.StatusBadRequest, "body is not JSON: %v", err)
		return
	}
	if h.sender == nil {
		writeError(w, http.StatusServiceUnavailable, "commands are not served")
		return
	}

	var idb [16]byte
	_, _ = rand.Read(idb[:])
	now := h.now()
	v := CommandView{
		RequestID: hex.EncodeToString(idb[:]), Gateway: gw, Device: dev, Name: name, Status: "sent",
		Created: now, Updated: now, Expires: now.Add(expiry),
	}
	c := h.add(v)
	h.sent.Inc()
	h.appendAudit(commandRequestType, v.RequestID+"-request", v, map[string]any{
		"request_id": v.RequestID, "gateway": gw, "device": dev, "name": name,
		"payload": json.RawMessage(body), "expires": v.Expires, "timeout_ms": timeout.Milliseconds(),
	})
	req := &syncv1.CommandRequest{
		RequestId: v.RequestID, Device: dev, Name: name, Payload: body,
		ContentType: "application/json", ExpiresUnixMs: v.Expires.UnixMilli(),
	}
	if err := h.sender(r.Context(), gw, req); err != nil {
		code, status := "send_failed", http.StatusServiceUnavailable
		switch {
		case errors.Is(err, link.ErrGatewayOffline):
			code = "gateway_offline"
			err = fmt.Errorf("gateway %q is not connected", gw)
		case errors.Is(err, link.ErrCommandsUnsupported):
			code = "gateway_unsupported"
			err = fmt.Errorf("gateway %q runs a version without commands", gw)
		}
		h.fail(c, code+": "+err.Error())
		writeJSON(w, status, commandError{Error: err.Error(), Code: code, RequestID: v.RequestID, Status: "failed"})
		return
	}
	location := "/v1/commands/" + v.RequestID
	w.Header().Set("Location", location)
	if !wait {
		view, _ := h.get(v.RequestID)
		writeJSON(w, http.StatusAccepted, view)
		// Nobody waits, but the request is still sent again until the
		// gateway takes it (or it expires).
		h.followers.Add(1)
		go func() {
			defer h.followers.Done()
			h.follow(context.Background(), c, gw, req, expiry)
		}()
		return
	}
	if !h.follow(r.Context(), c, gw, req, timeout) {
		return // the caller went away
	}
	h.mu.Lock()
	view := c.view
	h.mu.Unlock()
	switch view.Status {
	case "replied":
		writeJSON(w, http.StatusOK, view)
	case "expired":
		writeJSON(w, http.StatusGatewayTimeout, view)
	case "rejected":
		writeJSON(w, http.StatusUnprocessableEntity, view)
	case "failed":
		writeJSON(w, http.StatusServiceUnavailable, view)
	default: // timed out while sent, accepted or delivered
		if view.Reason == "" {
			switch view.Status {
			case "delivered":
				view.Reason = "timeout: the device got the command but has not replied"
			case "accepted":
				view.Reason = "timeout: device offline (the command waits on the gateway until it expires)"
			default:
				view.Reason = "timeout: the gateway has not acknowledged the command"
			}
		}
		writeJSON(w, http.StatusGatewayTimeout, view)
	}
}

// follow waits until c is final, d passed or the hub closes (true), or ctx
// ended (false).
// Meanwhile a request the gateway has not accepted (lost with its session,
// the link having dropped before ACCEPTED) is sent again every h.resend;
// the gateway executes a request id once.
func (h *commandHub) follow(ctx context.Context, c *cloudCommand, gw string, req *syncv1.CommandRequest, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	resend := time.NewTicker(h.resend)
	defer resend.Stop()
	for {
		select {
		case <-c.done:
			return true
		case <-t.C:
			return true
		case <-ctx.Done():
			return false
		case <-h.quit:
			return true
		case <-resend.C:
			h.mu.Lock()
			unaccepted := c.rank == 0
			h.mu.Unlock()
			if unaccepted {
				_ = h.sender(ctx, gw, req)
			}
		}
	}
}

func (h *commandHub) handleGet(w http.ResponseWriter, r *http.Request) {
	v, ok := h.get(r.PathValue("request_id"))
	if !ok {
		writeError(w, http.StatusNotFound, "command %q is not known (it may be older than the cloud's memory: its events are in the log)", r.PathValue("request_id"))
		return
	}
	writeJSON(w, http.StatusOK, v)
}
