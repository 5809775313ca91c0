package gateway

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"
	_ "modernc.org/sqlite" // the "sqlite" driver

	"github.com/tributary-io/tributary/edge/broker"
	syncv1 "github.com/tributary-io/tributary/proto/sync/v1"
	"github.com/tributary-io/tributary/sync/link"
)

// Cloud-to-device commands on the gateway.
//
// A command arrives from the cloud (link.Commands.Accept), is committed to
// <data_dir>/commands.db, answered ACCEPTED, and published to the device
// through the broker as soon as the device has a subscription to its
// command topic (now, when it connects or subscribes, or after a restart).
// The device's PUBACK makes it DELIVERED, its reply REPLIED; if neither
// reply nor delivery came before the command's expiry it becomes EXPIRED,
// with a reason saying whether the device ever got it. Every status is
// reported up and kept until the cloud acknowledges it; after a restart the
// unacknowledged ones are sent again.
//
// One goroutine (run) owns the database: it commits the queued changes of
// all commands in one transaction (synchronous=FULL), then sends the
// statuses that waited for that commit, then publishes what may be
// published and expires what is due. A new command is published in the
// same round as its commit, before the fsync rather than after it: the
// cloud hears ACCEPTED only once it is durable, but the device does not
// wait for the disk (on a loaded gateway the fsync queues behind the
// outbox's). If the gateway dies in that window, the device may run a
// command the cloud never saw accepted; its reply is then unknown to the
// restarted gateway and dropped, and the caller gets a timeout: a command
// is executed at most once, never silently twice. A reply is reported at once, before
// its change is committed: the reply itself is in the outbox already (the
// broker forwards it as an io.tributary.command.reply event before it
// acknowledges it), so a crash cannot lose it, and the command's RTT does
// not include an fsync of this file. Publishing never waits for an outbox
// commit or a group-commit linger.
//
// Locks: commandStore.mu is never held while calling the link or the
// database. It is held while calling Broker.PublishCommand, so that the
// decision to publish and the publish are atomic with respect to Delivered
// (a PUBACK arriving in between would otherwise let a command the session
// just gave up be published twice); the broker calls the observer only from
// its client goroutines, never from PublishCommand.

// commandRetention is how long a finished and acknowledged command is kept,
// so that a request sent again is recognised and not executed twice. The
// cloud sends a request again only while its caller waits (at most 5
// minutes).
const commandRetention = 10 * time.Minute

// sweepEvery is how often finished commands past commandRetention are
// looked for.
const sweepEvery = time.Minute

// CommandStats are the gateway's command counters since start.
type CommandStats struct {
	Accepted, Delivered, Replied, Expired, Rejected uint64
	Pending                                         int // commands not finished
	UnknownReplies                                  uint64
}

type gwCommand struct {
	req       *syncv1.CommandRequest
	state     syncv1.CommandState
	reason    string
	status    int32
	reply     []byte
	acked     syncv1.CommandState // the latest state the cloud acknowledged
	updated   time.Time
	published bool // handed to the broker in this process's lifetime
}

func (c *gwCommand) final() bool {
	return c.state >= syncv1.CommandState_COMMAND_STATE_REPLIED
}

func (c *gwCommand) statusMsg() *syncv1.CommandStatus {
	return &syncv1.CommandStatus{
		RequestId: c.req.GetRequestId(), Device: c.req.GetDevice(), State: c.state, Reason: c.reason,
		ReplyStatus: c.status, ReplyPayload: c.reply,
	}
}

// commandPublisher is the broker as the store uses it.
type commandPublisher interface {
	PublishCommand(c broker.Command, now time.Time) error
}

// commandStore implements link.Commands and broker.CommandObserver.
type commandStore struct {
	db  *sql.DB
	log *slog.Logger
	now func() time.Time

	// Set by start, read-only afterwards.
	pub  commandPublisher
	send func(*syncv1.CommandStatus)

	mu      sync.Mutex
	cmds    map[string]*gwCommand
	open    map[string]*gwCommand // the unfinished ones among cmds
	swept   time.Time             // the last retention sweep
	dirty   map[string]bool       // changed, not yet committed
	deleted map[string]bool       // to delete
	after   []*gwCommand          // statuses to send after the next commit
	online  map[string]bool       // devices to try publishing to
	started bool
	wake    chan struct{} // cap 1

	stop chan struct{}
	done chan struct{}

	accepted, delivered, replied, expired, rejected atomic.Uint64
}

var (
	_ link.Commands          = (*commandStore)(nil)
	_ broker.CommandObserver = (*commandStore)(nil)
)

const commandSchema = `
CREATE TABLE IF NOT EXISTS commands (
	request_id    TEXT PRIMARY KEY,
	request       BLOB NOT NULL,    -- the CommandRequest, protobuf
	state         INTEGER NOT NULL,
	reason        TEXT NOT NULL,
	reply_status  INTEGER NOT NULL,
	reply_payload BLOB,
	acked         INTEGER NOT NULL, -- the latest state the cloud acknowledged
	updated_ms    INTEGER NOT NULL
) WITHOUT ROWID`

// openCommandStore opens (creating it if missing) the commands database at
// path and loads it.
func openCommandStore(path string, logger *slog.Logger, now func() time.Time) (*commandStore, error) {
	// The driver reads everything after '?' as options, and a "file:"
	// prefix as a URI: such a path would open another file.
	if path == "" || strings.Contains(path, "?") || strings.HasPrefix(path, "file:") {
		return nil, fmt.Errorf("commands: file %q: want a plain file name without '?'", path)
	}
	q := url.Values{}
	q.Set("_txlock", "immediate")
	q.Set("_journal_mode", "WAL")
	q.Add("_pragma", "synchronous(FULL)")
	q.Add("_pragma", "busy_timeout(5000)")
	db, err := sql.Open("sqlite", path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("commands: open %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	s := &commandStore{
		db: db, log: logger, now: now,
		cmds: map[string]*gwCommand{}, open: map[string]*gwCommand{}, dirty: map[string]bool{}, deleted: map[string]bool{}, online: map[string]bool{},
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
	}
	if err := s.load(); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

func (s *commandStore) load() error {
	ctx := context.Background()
	if _, err := s.db.ExecContext(ctx, commandSchema); err != nil {
		return fmt.Errorf("commands: schema: %w", err)
	}
	rows, err := s.db.QueryContext(ctx, `SELECT request, state, reason, reply_status, reply_payload, acked, updated_ms FROM commands`)
	if err != nil {
		return fmt.Errorf("commands: load: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var raw []byte
		var updated int64
		c := &gwCommand{req: &syncv1.CommandRequest{}}
		if err := rows.Scan(&raw, &c.state, &c.reason, &c.status, &c.reply, &c.acked, &updated); err != nil {
			return fmt.Errorf("commands: load: %w", err)
		}
		if err := unmarshalRequest(raw, c.req); err != nil {
			s.log.Error("stored command unreadable; dropped", "err", err)
			continue
		}
		c.updated = time.UnixMilli(updated)
		s.cmds[c.req.GetRequestId()] = c
		if !c.final() {
			s.open[c.req.GetRequestId()] = c
		}
	}
	return rows.Err()
}

// start begins serving: statuses go to send, commands to pub. Commands
// loaded from the file are published (if their devices are subscribed) and
// their expiries scheduled.
func (s *commandStore) start(pub commandPublisher, send func(*syncv1.CommandStatus)) {
	s.mu.Lock()
	s.pub, s.send, s.started = pub, send, true
	for _, c := range s.open {
		s.online[c.req.GetDevice()] = true
	}
	s.mu.Unlock()
	go s.run()
	s.signal()
}

// close stops the store's goroutine after a last commit and closes the
// database.
func (s *commandStore) close() error {
	s.mu.Lock()
	started := s.started
	s.mu.Unlock()
	if started {
		close(s.stop)
		<-s.done
	}
	return s.db.Close()
}

func (s *commandStore) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// change marks c changed (to commit) and, if report, its status to be sent
// once committed. Called with mu held.
func (s *commandStore) change(c *gwCommand, report bool) {
	c.updated = s.now()
	s.dirty[c.req.GetRequestId()] = true
	if report {
		s.after = append(s.after, c)
	}
}

// Accept implements link.Commands.
func (s *commandStore) Accept(req *syncv1.CommandRequest) {
	id := req.GetRequestId()
	s.mu.Lock()
	if c, ok := s.cmds[id]; ok {
		// Sent again: answer with what we know, do nothing twice.
		st := c.statusMsg()
		committed := !s.dirty[id]
		if !committed {
			s.after = append(s.after, c)
		}
		s.mu.Unlock()
		if committed {
			s.send(st)
		}
		return
	}
	c := &gwCommand{req: req, state: syncv1.CommandState_COMMAND_STATE_ACCEPTED}
	switch {
	case !broker.ValidLevel(req.GetDevice()) || !broker.ValidLevel(req.GetName()) || !broker.ValidLevel(id):
		c.state, c.reason = syncv1.CommandState_COMMAND_STATE_REJECTED, "device, name and request id must each be a non-empty MQTT topic level (no '/', '+', '#')"
		s.rejected.Add(1)
	case !time.UnixMilli(req.GetExpiresUnixMs()).After(s.now()):
		c.state, c.reason = syncv1.CommandState_COMMAND_STATE_EXPIRED, "expired before it reached the gateway"
		s.expired.Add(1)
	default:
		s.accepted.Add(1)
		s.open[id] = c
	}
	s.cmds[id] = c
	s.change(c, true)
	if s.open[id] != nil && s.pub != nil {
		// Published now, before its commit (see run): one goroutine
		// hop less between the link and the device.
		s.publishLocked(c, s.now())
	}
	s.mu.Unlock()
	s.signal()
}

// Unacked implements link.Commands: the current status of every command
// whose latest state the cloud has not acknowledged, oldest change first.
func (s *commandStore) Unacked() []*syncv1.CommandStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	var list []*gwCommand
	for id, c := range s.cmds {
		if c.acked < c.state && !s.dirty[id] {
			list = append(list, c)
		}
	}
	sort.Slice(list, func(i, j int) bool { return list[i].updated.Before(list[j].updated) })
	out := make([]*syncv1.CommandStatus, len(list))
	for i, c := range list {
		out[i] = c.statusMsg()
	}
	return out
}

// Acked implements link.Commands.
func (s *commandStore) Acked(id string, state syncv1.CommandState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.cmds[id]
	if !ok || state <= c.acked || state > c.state {
		return
	}
	c.acked = state
	s.dirty[id] = true // updated stays: it orders Unacked and ages the row
	s.signal()
}

// Online implements broker.CommandObserver.
func (s *commandStore) Online(device string) {
	s.mu.Lock()
	s.online[device] = true
	s.mu.Unlock()
	s.signal()
}

// Delivered implements broker.CommandObserver.
func (s *commandStore) Delivered(device, id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.cmds[id]
	if !ok || c.req.GetDevice() != device || c.state != syncv1.CommandState_COMMAND_STATE_ACCEPTED {
		return
	}
	c.state = syncv1.CommandState_COMMAND_STATE_DELIVERED
	s.delivered.Add(1)
	s.change(c, true)
	s.signal()
}

// reply is the JSON a device publishes on its reply topic.
type reply struct {
	Status  *int            `json:"status"`
	Payload json.RawMessage `json:"payload"`
}

// parseReply reads a device's reply (untrusted bytes): its status and its
// payload (a JSON value, or nil), or status 502 and a reason when it is not
// {"status": 100..599, "payload": <any JSON>}.
func parseReply(payload []byte) (status int32, body []byte, reason string) {
	var r reply
	switch err := json.Unmarshal(payload, &r); {
	case err != nil:
		return 502, nil, "malformed reply from the device: " + err.Error()
	case r.Status == nil || *r.Status < 100 || *r.Status > 599:
		return 502, nil, `reply from the device without a "status" between 100 and 599`
	}
	if len(r.Payload) == 0 || string(r.Payload) == "null" {
		return int32(*r.Status), nil, ""
	}
	return int32(*r.Status), []byte(r.Payload), ""
}

// Replied implements broker.CommandObserver. A reply that is not the
// contract's JSON still finishes the command: status 502 and a reason.
func (s *commandStore) Replied(device, id string, payload []byte) bool {
	s.mu.Lock()
	c, ok := s.cmds[id]
	if !ok || c.req.GetDevice() != device || c.final() {
		s.mu.Unlock()
		return false
	}
	c.status, c.reply, c.reason = parseReply(payload)
	c.state = syncv1.CommandState_COMMAND_STATE_REPLIED
	delete(s.open, id)
	s.replied.Add(1)
	s.change(c, false)
	st := c.statusMsg()
	s.mu.Unlock()
	s.send(st) // at once: the reply is in the outbox already
	s.signal()
	return true
}

// stats returns the counters.
func (s *commandStore) stats() CommandStats {
	st := CommandStats{
		Accepted: s.accepted.Load(), Delivered: s.delivered.Load(), Replied: s.replied.Load(),
		Expired: s.expired.Load(), Rejected: s.rejected.Load(),
	}
	s.mu.Lock()
	st.Pending = len(s.open)
	s.mu.Unlock()
	return st
}

// run owns the database; see the comment at the top of the file.
func (s *commandStore) run() {
	defer close(s.done)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		s.publish()
		s.commit()
		next := s.expire()
		s.commit()
		if !next.IsZero() {
			timer.Reset(max(next.Sub(s.now()), time.Millisecond))
		} else {
			timer.Reset(time.Hour) // the retention sweep
		}
		select {
		case <-s.stop:
			s.commit()
			return
		case <-s.wake:
		case <-timer.C:
		}
	}
}

// commit writes every changed command in one transaction, then sends the
// statuses that waited for it. A failed commit is retried on the next
// round; its statuses wait.
func (s *commandStore) commit() {
	s.mu.Lock()
	if len(s.dirty) == 0 && len(s.deleted) == 0 {
		s.mu.Unlock()
		return
	}
	type row struct {
		id, reason           string
		req, reply           []byte
		state, status, acked int64
		updated              int64
	}
	rows := make([]row, 0, len(s.dirty))
	for id := range s.dirty {
		c := s.cmds[id]
		raw, err := marshalRequest(c.req)
		if err != nil {
			s.log.Error("command not storable", "request_id", id, "err", err)
			continue
		}
		rows = append(rows, row{id: id, reason: c.reason, req: raw, reply: c.reply, state: int64(c.state),
			status: int64(c.status), acked: int64(c.acked), updated: c.updated.UnixMilli()})
	}
	dels := make([]string, 0, len(s.deleted))
	for id := range s.deleted {
		dels = append(dels, id)
	}
	after := s.after
	s.dirty, s.deleted, s.after = map[string]bool{}, map[string]bool{}, nil
	s.mu.Unlock()

	err := func() error {
		tx, err := s.db.Begin()
		if err != nil {
			return err
		}
		defer tx.Rollback() //nolint:errcheck // after Commit it is a no-op
		for _, r := range rows {
			if _, err := tx.Exec(`INSERT INTO commands (request_id, request, state, reason, reply_status, reply_payload, acked, updated_ms)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?)
				ON CONFLICT (request_id) DO UPDATE SET state = excluded.state, reason = excluded.reason,
				reply_status = excluded.reply_status, reply_payload = excluded.reply_payload, acked = excluded.acked,
				updated_ms = excluded.updated_ms`,
				r.id, r.req, r.state, r.reason, r.status, r.reply, r.acked, r.updated); err != nil {
				return err
			}
		}
		for _, id := range dels {
			if _, err := tx.Exec(`DELETE FROM commands WHERE request_id = ?`, id); err != nil {
				return err
			}
		}
		return tx.Commit()
	}()
	if err != nil {
		s.log.Error("commands not committed; retrying", "err", err)
		s.mu.Lock()
		for _, r := range rows {
			s.dirty[r.id] = true
		}
		for _, id := range dels {
			s.deleted[id] = true
		}
		s.after = append(after, s.after...)
		s.mu.Unlock()
		return
	}
	s.mu.Lock()
	sts := make([]*syncv1.CommandStatus, 0, len(after))
	for _, c := range after {
		sts = append(sts, c.statusMsg())
	}
	for _, r := range rows {
		// Newly committed commands may be published now (publish skips
		// uncommitted ones, and may have run while this one was).
		if c := s.cmds[r.id]; c != nil && c.state == syncv1.CommandState_COMMAND_STATE_ACCEPTED && !c.published {
			s.online[c.req.GetDevice()] = true
		}
	}
	s.mu.Unlock()
	for _, st := range sts {
		s.send(st)
	}
}

// publish hands the committed, unfinished commands of the devices that came
// online (or got new commands) to the broker. The broker skips a command
// already held by the device's session; a device without a subscription
// keeps its commands pending.
func (s *commandStore) publish() {
	s.mu.Lock()
	if len(s.online) == 0 {
		s.mu.Unlock()
		return
	}
	defer s.mu.Unlock()
	var todo []*gwCommand
	for _, c := range s.open {
		if s.online[c.req.GetDevice()] && c.state == syncv1.CommandState_COMMAND_STATE_ACCEPTED {
			todo = append(todo, c)
		}
	}
	s.online = map[string]bool{}
	sort.Slice(todo, func(i, j int) bool { return todo[i].updated.Before(todo[j].updated) })
	now := s.now()
	for _, c := range todo {
		s.publishLocked(c, now)
	}
}

// publishLocked hands c to the broker; called with mu held.
func (s *commandStore) publishLocked(c *gwCommand, now time.Time) {
	r := c.req
	err := s.pub.PublishCommand(broker.Command{
		Device: r.GetDevice(), Name: r.GetName(), RequestID: r.GetRequestId(), Payload: r.GetPayload(),
		ContentType: r.GetContentType(), Expires: time.UnixMilli(r.GetExpiresUnixMs()),
	}, now)
	switch {
	case err == nil:
		c.published = true
	case errors.Is(err, broker.ErrNoSubscriber), errors.Is(err, broker.ErrCommandExpired):
		// Waits for the device (or for expire).
	default:
		s.log.Warn("command not published", "request_id", r.GetRequestId(), "device", r.GetDevice(), "err", err)
	}
}

// expire finishes the commands whose expiry passed, forgets finished and
// acknowledged ones after commandRetention, and returns the next expiry
// (zero if none).
func (s *commandStore) expire() time.Time {
	now := s.now()
	var next time.Time
	s.mu.Lock()
	defer s.mu.Unlock()
	if now.Sub(s.swept) > sweepEvery {
		s.swept = now
		for id, c := range s.cmds {
			if c.final() && c.acked == c.state && now.Sub(c.updated) > commandRetention && !s.dirty[id] {
				delete(s.cmds, id)
				s.deleted[id] = true
			}
		}
	}
	for id, c := range s.open {
		exp := time.UnixMilli(c.req.GetExpiresUnixMs())
		if now.Before(exp) {
			if next.IsZero() || exp.Before(next) {
				next = exp
			}
			continue
		}
		switch {
		case c.state == syncv1.CommandState_COMMAND_STATE_DELIVERED:
			c.reason = "device did not reply before expiry"
		case c.published:
			c.reason = "device offline until expiry: queued in its session, never acknowledged"
		default:
			c.reason = "device offline until expiry"
		}
		c.state = syncv1.CommandState_COMMAND_STATE_EXPIRED
		delete(s.open, id)
		s.expired.Add(1)
		s.change(c, true)
	}
	return next
}

func marshalRequest(req *syncv1.CommandRequest) ([]byte, error) { return proto.Marshal(req) }

func unmarshalRequest(b []byte, req *syncv1.CommandRequest) error {
	if err := proto.Unmarshal(b, req); err != nil {
		return fmt.Errorf("commands: stored request: %w", err)
	}
	return link.ValidateCommandRequest(req)
}

// CommandStats returns the command counters.
func (g *Gateway) CommandStats() CommandStats {
	st := g.commands.stats()
	st.UnknownReplies = g.broker.UnknownReplies()
	return st
}

// openCommands opens <data_dir>/commands.db and makes the store the broker's
// command observer (before the broker starts).
func (g *Gateway) openCommands(b *broker.Broker) error {
	s, err := openCommandStore(filepath.Join(g.dataDir, "commands.db"), g.log.With("part", "commands"), time.Now)
	if err != nil {
		return err
	}
	if err := b.SetCommandObserver(s); err != nil {
		s.close()
		return err
	}
	g.commands = s
	return nil
}
