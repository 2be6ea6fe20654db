package downlink

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/internal/defaults"
	"github.com/ingest-io/ingest/internal/lifecycle"
	"github.com/ingest-io/ingest/internal/metricset"
	"github.com/ingest-io/ingest/protocol"
	"github.com/ingest-io/ingest/wire"
	"github.com/ingest-io/ingest/zsock"
)

// Options configure a Link. Zero fields mean their defaults.
type Options struct {
	// Frontend is this frontend's id, as homes see it. Required.
	Frontend string
	// Homes are the ZeroMQ endpoints of the homes (tcp://host:5558), in
	// the same order on every frontend. Required.
	Homes []string
	// RequestTimeout is how long a request waits for its reply before it
	// is sent again. Default 1s.
	RequestTimeout time.Duration
	// PresenceInterval is how often each home gets the full list of its
	// devices connected here. Default 1s.
	PresenceInterval time.Duration
	// SendStall bounds one send on a home's connection. Default 2s.
	SendStall time.Duration
}

// DefaultOptions returns the defaults that zero fields stand for.
func DefaultOptions() Options {
	return Options{RequestTimeout: time.Second, PresenceInterval: time.Second, SendStall: zsock.DefaultSendStall}
}

// ErrUnavailable is returned by requests that got no reply from the
// device's home before their context ended.
var ErrUnavailable = errors.New("downlink: home unavailable")

// HomeIndex is the index of a device's home among n homes.
func HomeIndex(device string, n int) int {
	h := fnv.New32a()
	h.Write([]byte(device))
	return int(h.Sum32() % uint32(n))
}

// Link is a frontend's connection to the homes. See doc.go.
type Link struct {
	opts  Options
	lg    *slog.Logger
	m     *metrics
	homes []*home
	reqID atomic.Uint64

	mu      sync.Mutex
	devices map[string]*Attachment

	pmu     sync.Mutex
	pending map[uint64]chan *wire.Reply

	life sync.Mutex
	ran  bool
}

type home struct {
	l     *Link
	index int
	addr  string

	mu sync.Mutex
	d  *zsock.Dealer // nil while not connected

	// presence orders what this frontend tells the home of its devices:
	// a full list and a device's own connect or disconnect go out in the
	// order in which they read the devices, so that a list read before a
	// disconnect cannot reach the home after it and place the device
	// again. Taken before Link.mu.
	presence sync.Mutex
	// places is the full list's scratch, kept between lists (under
	// presence): the list is encoded into a buffer of its own.
	places []wire.Place
}

// Attachment is one device connection known to the Link.
type Attachment struct {
	l      *Link
	device string
	since  int64
	write  WriteFunc

	mu      sync.Mutex
	queue   []frame
	writing bool
	closed  bool
	// pending are the commands written (or being written) to this
	// connection and not yet answered, by id. One past its expiry is
	// forgotten (forgetExpired): its home never sends it again, and takes
	// no answer to it.
	pending map[string]sent
}

// sent is a command written to a device: its acceptance and expiry times
// (unix nanoseconds, the home's clock).
type sent struct{ created, expires int64 }

// expired reports whether a command that expires at expires (unix
// nanoseconds, 0 for never) has at now.
func expired(expires, now int64) bool { return expires > 0 && expires <= now }

// frame is a command frame waiting to be written.
type frame struct {
	cid     string
	created int64
	expires int64
	b       []byte
}

// New returns a Link. It starts nothing. reg and lg may be nil.
func New(opts Options, reg prometheus.Registerer, lg *slog.Logger) (*Link, error) {
	d := DefaultOptions()
	if opts.Frontend == "" || len(opts.Frontend) > wire.MaxNameLen {
		return nil, fmt.Errorf("downlink: frontend id must be 1 to %d bytes", wire.MaxNameLen)
	}
	if len(opts.Homes) == 0 {
		return nil, errors.New("downlink: no homes")
	}
	defaults.FillPositive(&opts, d)
	lg = lifecycle.Logger(lg)
	l := &Link{opts: opts, lg: lg, devices: map[string]*Attachment{}, pending: map[uint64]chan *wire.Reply{}}
	for i, a := range opts.Homes {
		l.homes = append(l.homes, &home{l: l, index: i, addr: a})
	}
	var err error
	if l.m, err = newMetrics(reg, opts.Frontend); err != nil {
		return nil, fmt.Errorf("downlink: register metrics: %w", err)
	}
	return l, nil
}

// Close unregisters the Link's metrics. Call it after Run has returned.
func (l *Link) Close() error {
	l.m.unregister()
	return nil
}

func (l *Link) homeOf(device string) *home { return l.homes[HomeIndex(device, len(l.homes))] }

// Run keeps a connection to every home until ctx ends.
func (l *Link) Run(ctx context.Context) error {
	l.life.Lock()
	if l.ran {
		l.life.Unlock()
		return errors.New("downlink: a Link runs once")
	}
	l.ran = true
	l.life.Unlock()
	var wg sync.WaitGroup
	for _, h := range l.homes {
		wg.Go(func() { h.run(ctx) })
	}
	wg.Wait()
	return nil
}

func (h *home) run(ctx context.Context) {
	flaps := 0 // connections in a row that ended within flapWindow
	for ctx.Err() == nil {
		d, err := zsock.Dial(h.addr, zsock.DealerOptions{Identity: zsock.Identity(h.l.opts.Frontend), SendStall: h.l.opts.SendStall, SendQueue: 1024, RecvQueue: 256})
		if err != nil {
			lifecycle.Sleep(ctx, 200*time.Millisecond)
			continue
		}
		began := time.Now()
		h.serve(ctx, d)
		h.mu.Lock()
		h.d = nil
		h.mu.Unlock()
		d.Close()
		h.l.m.reconnects.Inc()
		if time.Since(began) >= flapWindow {
			flaps = 0
			continue
		}
		// A home that drops each connection as it takes it (or one
		// request that makes it drop them) is dialed again after a
		// backoff that grows, not again and again at once.
		flaps++
		lifecycle.Sleep(ctx, zsock.RedialAfter(flaps))
	}
}

// flapWindow is how long a connection to a home must last for the next
// dial, once it ends, to go at once.
const flapWindow = time.Second

// serve carries one connection until it ends, a request goes unanswered
// twice in a row, or ctx ends.
func (h *home) serve(ctx context.Context, d *zsock.Dealer) {
	h.mu.Lock()
	h.d = d
	h.mu.Unlock()
	h.sendPresence(d)
	t := time.NewTicker(h.l.opts.PresenceInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.Done():
			// What the socket received before its end is still taken:
			// the select picks at random between the end and it.
			for {
				select {
				case frames := <-d.Recv():
					h.take(frames)
				default:
					return
				}
			}
		case <-t.C:
			h.sendPresence(d)
		case frames := <-d.Recv():
			h.take(frames)
		}
	}
}

// take handles one message from the home: a reply or a delivery.
func (h *home) take(frames [][]byte) {
	if len(frames) != 1 {
		h.l.m.invalid.Inc()
		return
	}
	m, err := wire.Decode(frames[0])
	if err != nil {
		h.l.m.invalid.Inc()
		return
	}
	switch m := m.(type) {
	case *wire.Reply:
		h.l.answer(m)
	case *wire.Deliver:
		h.l.deliver(h, m)
	default:
		h.l.m.invalid.Inc()
	}
}

// send hands m to the home's current connection, if there is one.
func (h *home) send(m wire.Message) bool {
	h.mu.Lock()
	d := h.d
	h.mu.Unlock()
	return d != nil && d.Send(wire.Append(nil, m))
}

// reconnect ends the current connection, so that run dials a new one.
func (h *home) reconnect(d *zsock.Dealer) {
	h.mu.Lock()
	cur := h.d
	h.mu.Unlock()
	if cur == d && d != nil {
		d.Close()
	}
}

func (h *home) sendPresence(d *zsock.Dealer) {
	h.presence.Lock()
	defer h.presence.Unlock()
	p := &wire.Presence{Frontend: h.l.opts.Frontend, Full: true, Devices: h.places[:0]}
	now := time.Now().UnixNano()
	h.l.mu.Lock()
	for id, a := range h.l.devices {
		if h.l.homeOf(id) == h {
			p.Devices = append(p.Devices, wire.Place{Device: id, Since: a.since, Present: true})
			a.forgetExpired(now)
		}
	}
	h.l.mu.Unlock()
	d.Send(wire.Append(nil, p))
	clear(p.Devices) // the ids are the devices' own strings: keep none alive
	h.places = p.Devices[:0]
}

// WriteFunc writes a command frame to a device's connection. expires is
// the command's expiry (zero for none): a write that has to wait, as an MQTT
// session does for the device's Receive Maximum, gives up at it, and
// returns an error, so that no device gets a command its home has
// reported expired.
type WriteFunc func(frame []byte, expires time.Time) error

// Attach records a device's connection, which write sends frames to, and
// tells its home. A newer attachment of the device replaces an older one.
func (l *Link) Attach(device string, write WriteFunc) *Attachment {
	a := &Attachment{l: l, device: device, since: time.Now().UnixNano(), write: write, pending: map[string]sent{}}
	h := l.homeOf(device)
	h.presence.Lock()
	defer h.presence.Unlock()
	l.mu.Lock()
	if old := l.devices[device]; old != nil && old.since >= a.since {
		a.since = old.since + 1
	}
	l.devices[device] = a
	n := len(l.devices)
	l.mu.Unlock()
	l.m.attached.Set(float64(n))
	h.send(&wire.Presence{Frontend: l.opts.Frontend, Devices: []wire.Place{{Device: device, Since: a.since, Present: true}}})
	return a
}

// Detach records the end of the connection and tells the device's home.
// Frames not yet written are dropped: the home hands them on again.
func (a *Attachment) Detach() {
	l := a.l
	a.mu.Lock()
	a.closed = true
	a.queue = nil
	l.m.pending.Sub(float64(len(a.pending)))
	clear(a.pending)
	a.mu.Unlock()
	h := l.homeOf(a.device)
	h.presence.Lock()
	defer h.presence.Unlock()
	l.mu.Lock()
	if l.devices[a.device] == a {
		delete(l.devices, a.device)
	}
	n := len(l.devices)
	l.mu.Unlock()
	l.m.attached.Set(float64(n))
	h.send(&wire.Presence{Frontend: l.opts.Frontend, Devices: []wire.Place{{Device: a.device, Since: a.since}}})
}

// forgetExpired forgets the commands written to the device whose time to
// live has passed at now: a device that never answers would otherwise keep
// each, and count it pending, for as long as it stays connected. The full
// presence list calls it (Link.mu held), each interval.
func (a *Attachment) forgetExpired(now int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for cid, c := range a.pending {
		if expired(c.expires, now) {
			delete(a.pending, cid)
			a.l.m.pending.Dec()
		}
	}
}

// push queues f for the device, in order, and makes sure a writer runs. A
// command already waiting to be written is not queued again: its home hands
// an unanswered command on again every redelivery interval, and a device
// whose writes stall (an MQTT session waiting for a PUBACK) would otherwise
// collect a frame per interval, without bound, and get them all in a burst
// once it reads again. So the queue holds at most the home's commands in
// flight for the device.
func (a *Attachment) push(f frame) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return
	}
	for i := range a.queue {
		if a.queue[i].cid == f.cid {
			return
		}
	}
	a.queue = append(a.queue, f)
	if !a.writing {
		a.writing = true
		go a.drain()
	}
}

func (a *Attachment) drain() {
	for {
		a.mu.Lock()
		if len(a.queue) == 0 || a.closed {
			a.writing = false
			a.mu.Unlock()
			return
		}
		f := a.queue[0]
		a.queue = a.queue[1:]
		if expired(f.expires, time.Now().UnixNano()) {
			// Expired while it waited behind others: its home reports it
			// expired, and the device never gets it.
			a.mu.Unlock()
			continue
		}
		var expires time.Time
		if f.expires > 0 {
			expires = time.Unix(0, f.expires)
		}
		// Pending before the write: the device may answer (Result)
		// before the write returns here, and an answer must find it.
		_, again := a.pending[f.cid]
		if !again {
			a.pending[f.cid] = sent{f.created, f.expires}
			a.l.m.pending.Inc()
		}
		a.mu.Unlock()
		if a.write(f.b, expires) != nil {
			if !again {
				a.mu.Lock()
				if _, ok := a.pending[f.cid]; ok {
					delete(a.pending, f.cid)
					a.l.m.pending.Dec()
				}
				a.mu.Unlock()
			}
			continue
		}
		a.l.m.written.Inc()
		if !again {
			a.l.m.deliveryLatency.Observe(sinceSeconds(f.created))
		}
	}
}

// deliver writes delivered commands to their devices, and answers for each
// device not here that it is gone.
func (l *Link) deliver(h *home, d *wire.Deliver) {
	var gone []wire.Place
	for i := range d.Commands {
		c := &d.Commands[i]
		l.mu.Lock()
		a := l.devices[c.Device]
		l.mu.Unlock()
		if a == nil {
			gone = append(gone, wire.Place{Device: c.Device, Since: time.Now().UnixNano()})
			continue
		}
		a.push(frame{cid: c.ID, created: c.Created, expires: c.Expires, b: protocol.AppendCommand(nil, c.ID, c.Name, c.Payload)})
	}
	if len(gone) > 0 {
		h.send(&wire.Presence{Frontend: l.opts.Frontend, Devices: gone})
	}
}

// Result carries a device's answer to its home. An answer lost on the way
// is asked for again: the home hands the command on again, and the device
// answers again.
func (l *Link) Result(device string, r protocol.CommandResult) {
	l.m.results.Inc()
	l.mu.Lock()
	a := l.devices[device]
	l.mu.Unlock()
	if a != nil {
		a.mu.Lock()
		if c, ok := a.pending[r.ID]; ok {
			delete(a.pending, r.ID)
			l.m.pending.Dec()
			l.m.resultLatency.Observe(sinceSeconds(c.created))
		}
		a.mu.Unlock()
	}
	l.homeOf(device).send(&wire.Result{Device: device, CID: r.ID, Status: r.Status, Payload: r.Payload})
}

func (l *Link) answer(r *wire.Reply) {
	l.pmu.Lock()
	ch := l.pending[r.Req]
	delete(l.pending, r.Req)
	l.pmu.Unlock()
	if ch != nil {
		ch <- r
	}
}

// request sends m (whose Req is set from req) to home h until a reply comes
// or ctx ends. It sends m again on each new connection as soon as the one
// it was sent on ends, and ends a connection that leaves it unanswered
// twice in a row: misses on an earlier connection do not count against a
// new one.
func (l *Link) request(ctx context.Context, h *home, m wire.Message, req uint64) (*wire.Reply, error) {
	ch := make(chan *wire.Reply, 1)
	l.pmu.Lock()
	l.pending[req] = ch
	l.pmu.Unlock()
	defer func() {
		l.pmu.Lock()
		delete(l.pending, req)
		l.pmu.Unlock()
	}()
	var last *zsock.Dealer // the connection the misses were counted on
	misses := 0
	for {
		h.mu.Lock()
		d := h.d
		h.mu.Unlock()
		wait := l.opts.RequestTimeout
		var ended <-chan struct{}
		if d == nil || !d.Send(wire.Append(nil, m)) {
			wait = 50 * time.Millisecond
		} else {
			ended = d.Done()
		}
		t := time.NewTimer(wait)
		select {
		case r := <-ch:
			t.Stop()
			return r, nil
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w: %w", ErrUnavailable, ctx.Err())
		case <-ended:
			// The connection ended with m on it: send it on the next one
			// (run dials it at once), not after the timeout.
			t.Stop()
			continue
		case <-t.C:
		}
		if ended == nil {
			continue // not sent: no connection to blame
		}
		if d != last {
			last, misses = d, 0
		}
		if misses++; misses >= 2 {
			h.reconnect(d)
			misses = 0
		}
	}
}

// Submit asks the device's home to accept a command, and returns the
// command once it is durable there (or the one an earlier Submit with the
// same key created).
func (l *Link) Submit(ctx context.Context, s wire.Submit) (*wire.Reply, error) {
	s.Req = l.reqID.Add(1)
	return l.request(ctx, l.homeOf(s.Device), &s, s.Req)
}

// Query asks the home of q.Device, or for a command id every home in turn
// until one has it.
func (l *Link) Query(ctx context.Context, q wire.Query) (*wire.Reply, error) {
	if q.Op == wire.QueryList {
		q.Req = l.reqID.Add(1)
		return l.request(ctx, l.homeOf(q.Device), &q, q.Req)
	}
	// A command id does not say which home keeps it: ask them all at once.
	type answer struct {
		r   *wire.Reply
		err error
	}
	ch := make(chan answer, len(l.homes))
	for _, h := range l.homes {
		q := q
		q.Req = l.reqID.Add(1)
		go func() {
			r, err := l.request(ctx, h, &q, q.Req)
			ch <- answer{r, err}
		}()
	}
	var first error
	for range l.homes {
		a := <-ch
		if a.err != nil {
			first = cmpErr(first, a.err)
			continue
		}
		if a.r.Code != wire.CodeNotFound {
			return a.r, nil
		}
	}
	if first != nil {
		// A home that did not answer may hold it.
		return nil, first
	}
	return &wire.Reply{Code: wire.CodeNotFound}, nil
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// sinceSeconds is the time since ns (unix nanoseconds), in seconds, never
// below zero: the home's clock stamped it, and clocks differ.
func sinceSeconds(ns int64) float64 {
	return max(float64(time.Now().UnixNano()-ns)/1e9, 0)
}

type metrics struct {
	set      *metricset.Set
	attached prometheus.Gauge
	pending  prometheus.Gauge
	// deliveryLatency and resultLatency run from a command's acceptance to
	// its first write to the device, and to its answer arriving here.
	deliveryLatency prometheus.Histogram
	resultLatency   prometheus.Histogram
	written         prometheus.Counter
	results         prometheus.Counter
	invalid         prometheus.Counter
	reconnects      prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, frontend string) (*metrics, error) {
	b := metricset.NewBuilder(prometheus.Labels{"frontend": frontend})
	m := &metrics{
		attached: b.Gauge("ingest_downlink_devices",
			"Devices connected here whose presence the homes are told of."),
		pending: b.Gauge("ingest_downlink_pending_commands",
			"Commands written to devices connected here and not yet answered."),
		deliveryLatency: b.Histogram("ingest_downlink_delivery_latency_seconds",
			"From a command's acceptance by its home to its first write to the device here.", latencyBuckets),
		resultLatency: b.Histogram("ingest_downlink_result_latency_seconds",
			"From a command's acceptance by its home to its device's answer arriving here.", latencyBuckets),
		written: b.Counter("ingest_downlink_commands_written_total",
			"Command frames written to devices (a command handed on again counts again)."),
		results: b.Counter("ingest_downlink_results_total",
			"command_result frames from devices carried to their homes."),
		invalid: b.Counter("ingest_downlink_invalid_messages_total",
			"Messages from homes that failed to decode or were of the wrong kind."),
		reconnects: b.Counter("ingest_downlink_reconnects_total",
			"Connections to homes ended and dialled again."),
	}
	var err error
	m.set, err = b.Register(reg)
	return m, err
}

var latencyBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}

func (m *metrics) unregister() { m.set.Unregister() }
