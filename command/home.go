package command

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/envelope"
	"github.com/ingest-io/ingest/internal/defaults"
	"github.com/ingest-io/ingest/internal/lifecycle"
	"github.com/ingest-io/ingest/protocol"
	"github.com/ingest-io/ingest/uplink"
	"github.com/ingest-io/ingest/wal"
	"github.com/ingest-io/ingest/wire"
	"github.com/ingest-io/ingest/zsock"
)

// Options configure a Home. Zero fields mean their defaults.
type Options struct {
	// ID names the home in logs and metrics. Required.
	ID string
	// Addr is the ZeroMQ endpoint of the ROUTER frontends connect to.
	// Default tcp://127.0.0.1:5558.
	Addr string
	// MaxInFlight is how many commands a device may have sent and
	// unanswered at a time. Default 1: a device then sees its commands
	// strictly in the order accepted, even when one is delivered again.
	MaxInFlight int
	// Redeliver is how long a sent command waits for its answer before it
	// is handed on again. Default 2s.
	Redeliver time.Duration
	// PresenceTimeout is how long a device's place stands without a
	// frontend naming it again. Default 5s.
	PresenceTimeout time.Duration
	// DefaultTTL is the time to live of a command submitted without one.
	// Default 24h, or MaxTTL if that is shorter.
	DefaultTTL time.Duration
	// MaxTTL bounds a command's time to live, with one or without.
	// Default 7 days.
	MaxTTL time.Duration
	// SendStall bounds one send on the ROUTER. Default 2s.
	SendStall time.Duration
	// ListMax bounds the commands of one list answer, the latest kept.
	// Default 1000.
	ListMax int
	// Retain is how long a command stays known after its final state: its
	// GET and list answers, and its idempotency key. Default 24h.
	Retain time.Duration
	// CompactEntries is how many entries the log may hold beyond twice the
	// commands kept before the home writes the kept ones again and
	// releases the rest. Default 4096.
	CompactEntries int
	// Events, if not nil, is the log of the home's command events: for
	// every change of a command's state the home appends an event
	// (wire.CommandEvent, in an envelope on topic wire.CommandEventTopic)
	// to it before the change itself, and forwards it to EventsTo as a
	// frontend forwards its WAL (package uplink), so that the changes reach
	// the storage writers and the live feed. The home does not close it.
	Events *wal.Log
	// EventsTo are the ingest endpoints of the middletiers the events go
	// to (the home's own middletier's); required with Events.
	EventsTo []string
}

// DefaultOptions returns the defaults that zero fields stand for.
func DefaultOptions() Options {
	return Options{
		Addr:            "tcp://127.0.0.1:5558",
		MaxInFlight:     1,
		Redeliver:       2 * time.Second,
		PresenceTimeout: 5 * time.Second,
		DefaultTTL:      24 * time.Hour,
		MaxTTL:          7 * 24 * time.Hour,
		SendStall:       zsock.DefaultSendStall,
		ListMax:         1000,
		Retain:          24 * time.Hour,
		CompactEntries:  4096,
	}
}

func (o Options) withDefaults() (Options, error) {
	d := DefaultOptions()
	if o.ID == "" || len(o.ID) > wire.MaxNameLen {
		return o, fmt.Errorf("command: id must be 1 to %d bytes", wire.MaxNameLen)
	}
	if o.Events != nil && len(o.EventsTo) == 0 {
		return o, errors.New("command: events need the middletiers to send them to")
	}
	defaults.FillPositive(&o, d)
	// A command without a time to live lives no longer than one with.
	o.DefaultTTL = min(o.DefaultTTL, o.MaxTTL)
	return o, nil
}

// Home keeps the commands of the devices that hash to it. See doc.go.
type Home struct {
	opts Options
	log  *wal.Log
	lg   *slog.Logger
	m    *metrics
	sock *zsock.Router
	link *uplink.Link // forwards Options.Events; nil without
	in   chan inbound
	stop chan struct{} // closed when the loop has ended: nothing takes from in
	ran  atomic.Bool

	// Owned by the loop.
	cmds   map[string]*wire.Command
	keys   map[deviceKey]string // a device's idempotency key → command id
	devs   map[string]*device
	byPeer map[string]map[string]struct{} // peer identity → devices placed there
	now    time.Time
	// listing numbers the full presence lists read; a device listed in
	// the one being read has its listed set to it.
	listing uint64
	dirty   map[*device]struct{}
	logBuf  [][]byte
	evBuf   [][]byte // the round's events, appended before logBuf
	// evDropped counts the events dropped since the first drop was
	// logged; 0 while events are appended. A log that stays full drops
	// the events of every round: that is logged once, and its end.
	evDropped int
	outs      []outbound
	// releaseTo, when not 0, is released once the round's append is
	// durable: every entry up to it is superseded by that append.
	releaseTo uint64
	// liveBytes is what the kept commands take in the log, at most
	// (size): what a compaction writes. Submits are refused past a
	// quarter of the log's bound (submit), and a round compacts before
	// its append would take the log past half of it (compactFirst).
	liveBytes   int64
	lastCompact time.Time
	lastPlaces  time.Time // when sweep last looked for places gone stale
	// counts are the commands kept, by state, kept up to date with every
	// change so that the gauge costs nothing per tick however many are
	// kept.
	counts [wire.StateCancelled + 1]int
}

// deviceKey is a device's idempotency key: its two strings kept apart, as
// device ids and keys may hold any byte.
type deviceKey struct{ device, key string }

type inbound struct {
	peer []byte
	m    wire.Message
}

type outbound struct {
	peer []byte
	m    wire.Message
}

// device is what a home knows of one device.
type device struct {
	id    string
	open  []*wire.Command // not final, in the order accepted
	all   []*wire.Command // every command kept, in the order accepted
	peer  []byte          // where it is connected; nil: nowhere known
	since int64
	seen  time.Time
	// listed is the number (Home.listing) of the last full presence list
	// that named the device.
	listed uint64
	// handed is when each sent command was last handed on, not durable: a
	// restarted home hands its sent commands on again at once.
	handed map[string]time.Time
	// lastEventMS is the time of the device's last event, ms: each of its
	// events gets a millisecond of its own (see emit).
	lastEventMS int64
}

// New returns a Home over log, reading back every command it holds, and
// binds its socket. It starts nothing. reg and lg may be nil.
func New(opts Options, log *wal.Log, reg prometheus.Registerer, lg *slog.Logger) (*Home, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	lg = lifecycle.Logger(lg)
	h := &Home{
		opts: opts, log: log, lg: lg,
		in:     make(chan inbound, 4096),
		stop:   make(chan struct{}),
		cmds:   map[string]*wire.Command{},
		keys:   map[deviceKey]string{},
		devs:   map[string]*device{},
		byPeer: map[string]map[string]struct{}{},
		dirty:  map[*device]struct{}{},
	}
	if err := h.recover(); err != nil {
		return nil, err
	}
	h.now = time.Now()
	h.forget()
	if h.m, err = newMetrics(reg, opts.ID); err != nil {
		return nil, fmt.Errorf("command: register metrics: %w", err)
	}
	h.countStates()
	h.sock = zsock.NewRouter(opts.Addr, zsock.RouterOptions{SendStall: opts.SendStall, SendQueue: 4096, OnStall: func() {
		lg.Warn("command: send stalled; closing the socket and listening again", "after", opts.SendStall)
	}}, lg)
	if opts.Events != nil {
		// No registerer: the uplink's metrics are the frontend's, and an
		// engine in one process has both. The events' queue shows as the
		// log's depth (its hop).
		if h.link, err = uplink.New(uplink.Options{ID: opts.ID + ".commands", Middletiers: opts.EventsTo, SendStall: opts.SendStall},
			opts.Events, nil, lg); err != nil {
			h.m.unregister()
			return nil, fmt.Errorf("command: events: %w", err)
		}
	}
	if err := h.sock.Listen(); err != nil {
		h.m.unregister()
		return nil, fmt.Errorf("command: %w", err)
	}
	return h, nil
}

// Addr is the endpoint the home listens on, its port resolved.
func (h *Home) Addr() string { return h.sock.Addr() }

// recover reads every command state in the log; the last of each id wins.
func (h *Home) recover() error {
	err := h.log.ForEach(func(e wal.Entry) error {
		cmd, err := wire.DecodeCommand(bytes.Clone(e.Data))
		if err != nil {
			return fmt.Errorf("entry %d: %w", e.Index, err)
		}
		h.apply(&cmd)
		return nil
	})
	if err != nil {
		return fmt.Errorf("command: recover: %w", err)
	}
	return nil
}

// apply makes c the state of its id, in memory only.
func (h *Home) apply(c *wire.Command) {
	d := h.device(c.Device)
	if old, ok := h.cmds[c.ID]; ok {
		h.counts[old.State]--
		h.counts[c.State]++
		h.liveBytes += size(c) - size(old)
		*old = *c
		if c.State.Final() {
			d.remove(old)
		}
		return
	}
	cp := new(wire.Command)
	*cp = *c
	h.cmds[c.ID] = cp
	h.counts[c.State]++
	h.liveBytes += size(c)
	if c.Key != "" {
		h.keys[deviceKey{c.Device, c.Key}] = c.ID
	}
	d.all = append(d.all, cp)
	if !c.State.Final() {
		d.open = append(d.open, cp)
	}
}

func (d *device) remove(c *wire.Command) {
	for i, o := range d.open {
		if o == c {
			d.open = append(d.open[:i], d.open[i+1:]...)
			break
		}
	}
	delete(d.handed, c.ID)
}

func (h *Home) device(id string) *device {
	d := h.devs[id]
	if d == nil {
		d = &device{id: id, handed: map[string]time.Time{}}
		h.devs[id] = d
	}
	return d
}

// Run serves frontends until ctx ends or the log fails, then closes the
// socket. It returns the log's failure, if any. A Home runs once.
func (h *Home) Run(ctx context.Context) error {
	if !h.ran.CompareAndSwap(false, true) {
		return errors.New("command: run: the home has run")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- h.sock.Run(ctx, h.receive) }()
	linkc := make(chan error, 1)
	if h.link != nil {
		go func() {
			err := h.link.Run(ctx)
			if err != nil {
				cancel() // its log failed: stop the home with it
			}
			linkc <- err
		}()
	} else {
		linkc <- nil
	}
	err := h.loop(ctx)
	close(h.stop)
	cancel()
	<-errc
	if lerr := <-linkc; err == nil && lerr != nil {
		err = fmt.Errorf("command: events: %w", lerr)
	}
	return err
}

// Close releases a Home that never ran, and unregisters its metrics.
func (h *Home) Close() error {
	h.sock.Close()
	if h.link != nil {
		h.link.Close()
	}
	h.m.unregister()
	return nil
}

func (h *Home) receive(frames [][]byte) {
	if len(frames) != 2 {
		h.m.invalid.Inc()
		return
	}
	m, err := wire.Decode(frames[1])
	if err != nil {
		h.m.invalid.Inc()
		return
	}
	switch m.(type) {
	case *wire.Submit, *wire.Query, *wire.Presence, *wire.Result:
	default:
		h.m.invalid.Inc()
		return
	}
	// Decoded slices alias the frame, which is the home's from here on.
	select {
	case h.in <- inbound{peer: bytes.Clone(frames[0]), m: m}:
	case <-h.stop:
	}
}

func (h *Home) loop(ctx context.Context) error {
	// A round once begun is made durable whole: an append abandoned when
	// ctx ends may still have been committed, and would read as a failure.
	actx := context.WithoutCancel(ctx)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	batch := make([]inbound, 0, 256)
	for {
		batch = batch[:0]
		swept := false
		select {
		case <-ctx.Done():
			return nil
		case <-h.log.Failed():
			return fmt.Errorf("command: %w", h.log.Err())
		case in := <-h.in:
			batch = append(batch, in)
		drain:
			for len(batch) < cap(batch) {
				select {
				case in := <-h.in:
					batch = append(batch, in)
				default:
					break drain
				}
			}
		case <-tick.C:
			swept = true
		}
		h.now = time.Now()
		for _, in := range batch {
			h.handle(in)
		}
		if swept {
			h.sweep()
			if h.now.Sub(h.lastCompact) >= time.Second {
				h.lastCompact = h.now
				h.forget()
				h.compact()
			}
			h.countStates()
		}
		// Once a round, so that a device's move (let go of, placed again)
		// never shows as a device fewer; before the round's replies, so
		// that a frontend's answer comes after it.
		h.m.placed.Set(float64(h.placedCount()))
		for d := range h.dirty {
			h.dispatch(d)
		}
		clear(h.dirty)
		if h.compactFirst() {
			h.compactNow()
		}
		if err := h.appendEvents(actx); err != nil {
			return err
		}
		if len(h.logBuf) > 0 {
			if stopped, err := h.appendRound(ctx, actx); err != nil || stopped {
				return err
			}
			clear(h.logBuf)
			h.logBuf = h.logBuf[:0]
		}
		if h.releaseTo > 0 {
			if err := h.log.Release(h.releaseTo); err != nil {
				return fmt.Errorf("command: release: %w", err)
			}
			h.m.compactions.Inc()
			h.releaseTo = 0
		}
		for _, o := range h.outs {
			h.sock.Send(o.peer, wire.Append(nil, o.m))
		}
		clear(h.outs)
		h.outs = h.outs[:0]
	}
}

// appendRound appends the round's changes to the log. A disk without room
// (wal.ErrNoSpace: the middletier's WAL on the same volume filled it, or
// the log itself) holds the round, its replies and hand-overs unsent, and
// the append is tried again when the log may take it (wal.Log.Room: its
// no-space wait over, room released, or the log failed) until there is
// room: backpressure, as for the tier's WAL, and requests wait in the
// socket meanwhile. It reports stopped when ctx ended first: the round was
// not made durable, and nothing of it was told. Any other failure is
// returned: memory is ahead of the disk, and the process starts again from
// the log.
func (h *Home) appendRound(ctx, actx context.Context) (stopped bool, err error) {
	waited := false
	for {
		room := h.log.Room()
		if h.releaseTo > 0 {
			// A compaction: within the bound once what it supersedes
			// is gone, also in a log over the bound (one reopened
			// after a crash with its last releases not yet durable,
			// or under a lower bound).
			_, err = h.log.AppendReplacing(actx, h.logBuf, h.releaseTo)
		} else {
			_, err = h.log.AppendBatch(actx, h.logBuf)
		}
		if !errors.Is(err, wal.ErrNoSpace) {
			if err != nil {
				return false, fmt.Errorf("command: append: %w", err)
			}
			if waited {
				h.lg.Info("command: room on disk again; the home serves")
			}
			return false, nil
		}
		if !waited {
			h.lg.Warn("command: disk full; the home waits for room, its requests unanswered meanwhile", "err", err)
			waited = true
		}
		select {
		case <-ctx.Done():
			return true, nil
		case <-room:
		}
	}
}

// save queues c's state for the round's append.
func (h *Home) save(c *wire.Command) {
	h.logBuf = append(h.logBuf, wire.AppendCommand(nil, c))
}

// emit queues the event of c's change to its current state for the
// round's append to the events log. The event's time is the change's,
// moved on to the millisecond after the device's last event where it
// would share one: the stores keep one sample per series and millisecond,
// and a device's events of one name and state must each count.
func (h *Home) emit(c *wire.Command) {
	if h.link == nil {
		return
	}
	d := h.device(c.Device)
	ms := max(h.now.UnixMilli(), d.lastEventMS+1)
	d.lastEventMS = ms
	e := envelope.Envelope{Frontend: h.opts.ID, Device: c.Device, Received: ms * 1e6,
		Topic: wire.CommandEventTopic, Payload: wire.AppendCommandEvent(nil, c)}
	h.evBuf = append(h.evBuf, envelope.AppendEncode(nil, &e))
}

// appendEvents makes the round's events durable, before the changes
// themselves: a change the home keeps has its event, and a crash between
// the two appends leaves events of changes the home then makes again or
// never made (docs/commands.md). Events that find the log full or the disk
// without room are dropped and counted: the commands go on.
func (h *Home) appendEvents(ctx context.Context) error {
	if len(h.evBuf) == 0 {
		return nil
	}
	_, err := h.opts.Events.AppendBatch(ctx, h.evBuf)
	switch {
	case errors.Is(err, wal.ErrFull), errors.Is(err, wal.ErrNoSpace), errors.Is(err, wal.ErrTooLarge):
		h.m.eventsDropped.Add(float64(len(h.evBuf)))
		if h.evDropped == 0 {
			h.lg.Warn("command: events dropped until the events' log has room again (counted in ingest_command_events_dropped_total)",
				"events", len(h.evBuf), "err", err)
		}
		h.evDropped += len(h.evBuf)
	case err != nil:
		return fmt.Errorf("command: append events: %w", err)
	default:
		if h.evDropped > 0 {
			h.lg.Info("command: events appended again", "dropped", h.evDropped)
			h.evDropped = 0
		}
	}
	clear(h.evBuf)
	h.evBuf = h.evBuf[:0]
	return nil
}

func (h *Home) reply(peer []byte, req uint64, code string, cmds ...*wire.Command) {
	r := &wire.Reply{Req: req, Code: code, Commands: make([]wire.Command, 0, len(cmds))}
	for _, c := range cmds {
		r.Commands = append(r.Commands, *c)
	}
	h.outs = append(h.outs, outbound{peer, r})
}

func (h *Home) handle(in inbound) {
	switch m := in.m.(type) {
	case *wire.Submit:
		h.submit(in.peer, m)
	case *wire.Query:
		h.query(in.peer, m)
	case *wire.Presence:
		h.presence(in.peer, m)
	case *wire.Result:
		h.result(m)
	}
}

// CheckSubmit validates a command as a home accepts it: a device id, a name
// of 1 to protocol.MaxCommandNameBytes bytes, a payload that is one JSON
// value, UTF-8, of at most protocol.MaxCommandPayloadBytes nested at most
// protocol.MaxCommandPayloadDepth deep (a device could not read it in its
// command frame), and a time to live within maxTTL.
func CheckSubmit(s *wire.Submit, maxTTL time.Duration) error {
	payloadErr := protocol.CheckCommandPayload(s.Payload)
	switch {
	case s.Device == "":
		return errors.New("no device")
	case s.Name == "" || len(s.Name) > protocol.MaxCommandNameBytes:
		return fmt.Errorf("name must be 1 to %d bytes", protocol.MaxCommandNameBytes)
	case len(s.Payload) > protocol.MaxCommandPayloadBytes:
		return fmt.Errorf("payload over %d bytes", protocol.MaxCommandPayloadBytes)
	case payloadErr != nil:
		return payloadErr
	case s.TTLMS > uint64(maxTTL/time.Millisecond):
		return fmt.Errorf("ttl over %s", maxTTL)
	}
	return nil
}

func (h *Home) submit(peer []byte, s *wire.Submit) {
	if id, ok := h.keys[deviceKey{s.Device, s.Key}]; ok && s.Key != "" {
		c := h.cmds[id]
		if c.Name != s.Name || !bytes.Equal(c.Payload, s.Payload) {
			h.reply(peer, s.Req, CodeKeyReused, c)
			return
		}
		h.reply(peer, s.Req, "", c)
		return
	}
	if err := CheckSubmit(s, h.opts.MaxTTL); err != nil {
		h.reply(peer, s.Req, wire.CodeInvalid)
		return
	}
	ttl := time.Duration(s.TTLMS) * time.Millisecond
	if ttl == 0 {
		ttl = h.opts.DefaultTTL
	}
	c := &wire.Command{
		ID: newID(), Device: s.Device, Name: s.Name, Payload: bytes.Clone(s.Payload), Key: s.Key,
		State: wire.StateQueued, Created: h.now.UnixNano(), Expires: h.now.Add(ttl).UnixNano(),
	}
	if maxEntries, maxBytes := h.log.Bound(); h.liveBytes+size(c) > maxBytes/4 || maxEntries > 0 && int64(len(h.cmds)+1) > maxEntries/4 {
		// The log keeps room to write every kept command again (compact)
		// and their changes: a home that cannot append stops.
		h.m.refusedFull.Inc()
		h.reply(peer, s.Req, wire.CodeFull)
		return
	}
	h.apply(c)
	c = h.cmds[c.ID]
	h.save(c)
	h.emit(c)
	h.m.accepted.Inc()
	h.reply(peer, s.Req, "", c)
	h.dirty[h.devs[c.Device]] = struct{}{}
}

// CodeKeyReused answers a Submit whose idempotency key names an earlier
// command with another name or payload.
const CodeKeyReused = "key_reused"

func newID() string {
	var b [10]byte
	rand.Read(b[:])
	return "c" + hex.EncodeToString(b[:])
}

func (h *Home) query(peer []byte, q *wire.Query) {
	switch q.Op {
	case wire.QueryGet:
		c := h.cmds[q.CID]
		if c == nil {
			h.reply(peer, q.Req, wire.CodeNotFound)
			return
		}
		h.reply(peer, q.Req, "", c)
	case wire.QueryList:
		d := h.devs[q.Device]
		var out []*wire.Command
		if d != nil {
			for i := len(d.all) - 1; i >= 0 && len(out) < h.opts.ListMax; i-- {
				if c := d.all[i]; q.State == 0 || c.State == q.State {
					out = append(out, c)
				}
			}
		}
		for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
			out[i], out[j] = out[j], out[i]
		}
		h.reply(peer, q.Req, "", out...)
	case wire.QueryCancel:
		c := h.cmds[q.CID]
		switch {
		case c == nil:
			h.reply(peer, q.Req, wire.CodeNotFound)
		case c.State == wire.StateQueued:
			h.finish(c, wire.StateCancelled, "", nil)
			h.m.cancelled.Inc()
			h.reply(peer, q.Req, "", c)
		case c.State == wire.StateCancelled:
			h.reply(peer, q.Req, "", c)
		default:
			h.reply(peer, q.Req, wire.CodeNotCancellable, c)
		}
	}
}

// finish moves c to a final state and queues it for the log.
func (h *Home) finish(c *wire.Command, s wire.CommandState, status string, result []byte) {
	h.counts[c.State]--
	h.counts[s]++
	h.liveBytes -= size(c)
	c.State, c.Done, c.Status, c.Result = s, h.now.UnixNano(), status, result
	h.liveBytes += size(c)
	d := h.devs[c.Device]
	d.remove(c)
	h.save(c)
	h.emit(c)
	h.dirty[d] = struct{}{}
}

func (h *Home) presence(peer []byte, p *wire.Presence) {
	key := string(peer)
	if p.Full {
		h.listing++
	}
	for _, pl := range p.Devices {
		d := h.devs[pl.Device]
		if !pl.Present {
			if d != nil && bytes.Equal(d.peer, peer) && pl.Since >= d.since {
				h.unplace(d)
			}
			continue
		}
		if d == nil {
			d = h.device(pl.Device)
		}
		if p.Full {
			d.listed = h.listing
		}
		listed := d.listed // what a device made again below must keep
		if d.peer != nil && pl.Since < d.since {
			continue // an older connection, still listed by a frontend that has not seen it end
		}
		if !bytes.Equal(d.peer, peer) || d.since != pl.Since {
			h.unplace(d)
			d = h.device(pl.Device) // unplace forgets a device with no commands
			d.peer, d.since, d.listed = peer, pl.Since, listed
			set := h.byPeer[key]
			if set == nil {
				set = map[string]struct{}{}
				h.byPeer[key] = set
			}
			set[d.id] = struct{}{}
			h.m.placements.Inc()
			clear(d.handed) // whatever was handed on went to another connection
			h.dirty[d] = struct{}{}
		}
		d.seen = h.now
	}
	if p.Full {
		for id := range h.byPeer[key] {
			if d := h.devs[id]; d == nil || d.listed != h.listing {
				h.unplace(d)
			}
		}
	}
}

// placedCount is the number of devices placed at a frontend: one set in
// byPeer per frontend.
func (h *Home) placedCount() int {
	n := 0
	for _, set := range h.byPeer {
		n += len(set)
	}
	return n
}

func (h *Home) unplace(d *device) {
	if d.peer == nil {
		return
	}
	key := string(d.peer)
	delete(h.byPeer[key], d.id)
	if len(h.byPeer[key]) == 0 {
		delete(h.byPeer, key)
	}
	d.peer, d.since = nil, 0
	clear(d.handed)
	if len(d.open) == 0 && len(d.all) == 0 {
		delete(h.devs, d.id)
	}
}

func (h *Home) result(r *wire.Result) {
	c := h.cmds[r.CID]
	if c == nil || c.Device != r.Device {
		h.m.strayResults.Inc()
		return
	}
	if c.State != wire.StateSent {
		h.m.repeatResults.Inc()
		return
	}
	state := wire.StateFailed
	if r.Status == protocol.StatusOK {
		state = wire.StateAcknowledged
	}
	h.finish(c, state, r.Status, bytes.Clone(r.Payload))
	h.m.answered.WithLabelValues(state.String()).Inc()
	h.m.latency.Observe(float64(c.Done-c.Created) / 1e9)
}

// sweep expires commands past their time to live, forgets places no
// frontend has confirmed, and marks devices with commands to hand on again.
// It looks at every device, so it does what it must only: commands while
// some are open, and places once a fifth of Options.PresenceTimeout (at
// most a second, at least each tick). A fleet of connected devices with no
// commands costs a pass a second, not ten.
func (h *Home) sweep() {
	open := h.counts[wire.StateQueued]+h.counts[wire.StateSent] > 0
	places := h.now.Sub(h.lastPlaces) >= min(h.opts.PresenceTimeout/5, time.Second)
	if places {
		h.lastPlaces = h.now
	}
	if !open && !places {
		return
	}
	now := h.now.UnixNano()
	for _, d := range h.devs {
		for i := 0; i < len(d.open); {
			c := d.open[i]
			if c.Expires <= now {
				h.finish(c, wire.StateExpired, "", nil)
				h.m.expired.Inc()
				continue // finish removed it
			}
			i++
		}
		if places && d.peer != nil && h.now.Sub(d.seen) > h.opts.PresenceTimeout {
			h.unplace(d)
		}
		if d.peer != nil && len(d.open) > 0 {
			h.dirty[d] = struct{}{}
		}
	}
}

// dispatch hands a placed device the commands it should have now: sent ones
// due again, and queued ones while fewer than MaxInFlight are unanswered.
func (h *Home) dispatch(d *device) {
	if d.peer == nil || len(d.open) == 0 {
		return
	}
	var out []wire.Command
	inflight := 0
commands:
	for _, c := range d.open {
		if inflight >= h.opts.MaxInFlight {
			break
		}
		switch c.State {
		case wire.StateSent:
			inflight++
			if t, ok := d.handed[c.ID]; ok && h.now.Sub(t) < h.opts.Redeliver {
				continue
			}
			if c.Expires <= h.now.UnixNano() {
				continue // past its time to live: never sent again; the sweep expires it
			}
			h.m.redelivered.Inc()
		case wire.StateQueued:
			if c.Expires <= h.now.UnixNano() {
				break commands // the sweep expires it; nothing after it goes first
			}
			inflight++
			h.counts[c.State]--
			h.counts[wire.StateSent]++
			c.State, c.Sent = wire.StateSent, h.now.UnixNano()
			h.save(c)
			h.emit(c)
			h.m.sendLatency.Observe(float64(c.Sent-c.Created) / 1e9)
		default:
			continue
		}
		d.handed[c.ID] = h.now
		out = append(out, wire.Command{ID: c.ID, Device: c.Device, Name: c.Name, Payload: c.Payload, State: c.State, Created: c.Created, Expires: c.Expires, Sent: c.Sent})
	}
	if len(out) > 0 {
		h.outs = append(h.outs, outbound{d.peer, &wire.Deliver{Commands: out}})
	}
}

// forget drops the commands that reached their final state more than
// Options.Retain ago: from memory now, from the log at the next compaction.
func (h *Home) forget() {
	horizon := h.now.Add(-h.opts.Retain).UnixNano()
	for _, d := range h.devs {
		kept := d.all[:0]
		for _, c := range d.all {
			if !c.State.Final() || c.Done > horizon {
				kept = append(kept, c)
				continue
			}
			delete(h.cmds, c.ID)
			h.counts[c.State]--
			h.liveBytes -= size(c)
			if k := (deviceKey{c.Device, c.Key}); c.Key != "" && h.keys[k] == c.ID {
				delete(h.keys, k)
			}
		}
		clear(d.all[len(kept):])
		d.all = kept
		if d.peer == nil && len(d.open) == 0 && len(d.all) == 0 {
			delete(h.devs, d.id)
		}
	}
}

// compact bounds the log: once it holds more than twice the commands kept
// and Options.CompactEntries besides, the round appends the state of every
// kept command again, each device's in the order accepted (the order
// recover rebuilds), and then releases every entry before them. A crash
// before the release repeats states on recovery; the last of each id is
// still the command's state.
func (h *Home) compact() {
	last := h.log.LastIndex()
	released := h.log.Released()
	if last <= released || last-released <= uint64(2*len(h.cmds)+h.opts.CompactEntries) {
		return
	}
	h.compactNow()
}

// compactFirst reports whether the round should compact (compactNow) in
// place of its append: when the append would take the log past half its
// bound, and the compaction leaves it holding less than the append would.
// The compaction writes the kept commands, at most a quarter of the bound
// (submit), which supersede the round's changes: so the log never holds
// more than three quarters of its bound while the home runs, and a
// compaction always has room (wal.Log.AppendReplacing). When the kept
// commands take what the log would hold already (a log written under a
// larger bound), a compaction each round would only write them again.
func (h *Home) compactFirst() bool {
	maxEntries, maxBytes := h.log.Bound()
	entries, used := h.log.Depth()
	for _, b := range h.logBuf {
		used += int64(len(b))
	}
	entries += int64(len(h.logBuf))
	if used <= maxBytes/2 && (maxEntries == 0 || entries <= maxEntries/2) {
		return false
	}
	open := int64(h.counts[wire.StateQueued] + h.counts[wire.StateSent])
	return h.liveBytes-open*answerRoom < used // what the compaction writes: no answer's room
}

// compactNow makes the round's append the state of every kept command,
// each device's in the order accepted (the order recover rebuilds), in
// place of the round's changes, which it holds; every entry before it is
// released once it is durable.
func (h *Home) compactNow() {
	clear(h.logBuf)
	h.logBuf = h.logBuf[:0]
	for _, d := range h.devs {
		for _, c := range d.all {
			h.save(c)
		}
	}
	h.releaseTo = h.log.LastIndex()
}

// size is at least what c takes in the log: its strings and bytes, and 80
// bytes for the version, state, times and lengths; and, while it is not
// final, room for its device's answer (answerRoom), which comes unasked
// for and cannot be refused.
func size(c *wire.Command) int64 {
	n := int64(len(c.ID)+len(c.Device)+len(c.Name)+len(c.Payload)+len(c.Key)+len(c.Status)+len(c.Result)) + 80
	if !c.State.Final() {
		n += answerRoom
	}
	return n
}

// answerRoom is the most a device's answer adds to its command: a status
// and a payload at their bounds.
const answerRoom = protocol.MaxStatusBytes + protocol.MaxCommandPayloadBytes

// countStates sets the gauge of commands by state.
func (h *Home) countStates() {
	for s := wire.StateQueued; s <= wire.StateCancelled; s++ {
		h.m.states.WithLabelValues(s.String()).Set(float64(h.counts[s]))
	}
}
