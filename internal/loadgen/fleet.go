package loadgen

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ingest-io/ingest/internal/defaults"
	"github.com/ingest-io/ingest/internal/lifecycle"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Options configure a Fleet. Zero fields mean the defaults noted.
type Options struct {
	// URLs are device endpoints (ws://host:8080/v1/ingest, or wss://);
	// device i connects to URLs[i % len(URLs)]. Required.
	URLs []string
	// Devices is how many devices connect. Required.
	Devices int
	// DeviceID names device i. Default "dev-<i>".
	DeviceID func(i int) string
	// Insecure names each device with ?device=<id> in its URL, for an
	// engine that runs without auth.
	Insecure bool
	// Token, when set, returns the JWT device i presents as "Authorization:
	// Bearer"; it is called before every dial.
	Token func(i int) (string, error)
	// Sources spreads the connections over the local addresses 127.0.0.1 ..
	// 127.0.0.N (one address runs out of ports past ~28,000 connections).
	// Default 0: the system picks the address.
	Sources int
	// Ramp spreads the first dials over this long.
	Ramp time.Duration
	// MaxDials bounds the first dials in progress at once. Default 256.
	MaxDials int
	// DialTimeout bounds each dial with its handshake. Default 10s.
	DialTimeout time.Duration

	// Window is how many frames a device keeps unacknowledged. Default 16.
	Window int
	// Rate is messages per second per device; 0 runs closed loop: every
	// device keeps its window full.
	Rate float64
	// Duration is how long Send sends.
	Duration time.Duration
	// Total, when > 0, ends a closed-loop Send once this many messages are
	// sent in all (or at Duration, if that comes first).
	Total int64
	// Coalesce writes the frames a device has ready at once (the ones an
	// ack let go) with one write system call, as a device with a queue
	// would; each frame still holds one message. Without it every frame is
	// its own write, as coder/websocket and the client package do.
	Coalesce bool
	// Pacers are the goroutines that pace a Rate, each for its share of
	// the devices. Default 4.
	Pacers int
	// Backlog is how many due messages a paced device may owe while its
	// window is full or it is disconnected; they go out, oldest first, as
	// soon as they can, and past Backlog the oldest is skipped. 0: a message
	// due while the device cannot send it at once is skipped. Skipped
	// messages are counted and never sent.
	Backlog int

	// Reconnect makes a device whose connection ends connect again and
	// send every unacknowledged message again, in order, before anything
	// new. Without it the device stops and what it had in flight is
	// settled as "closed".
	Reconnect bool
	// MinBackoff and MaxBackoff bound the wait before each reconnect, which
	// doubles from one failed attempt to the next, with jitter, and is at
	// least the server's retry hint. Defaults 50ms and 2s.
	MinBackoff, MaxBackoff time.Duration

	// After, when > 0, is a device time (unix milliseconds) that every
	// message's follows: a device's times start past it even where the
	// clock is behind it (a store holds these devices' points up to
	// there, from an earlier run whose devices ran ahead of the clock).
	After int64

	// Message appends message seq (1, 2, 3… per device) of device dev, with
	// device time ts (unix milliseconds, distinct per device), to dst. It is
	// called again with the same arguments when the message is sent again,
	// and must append the same bytes. Required.
	Message func(dst []byte, dev int, seq uint64, ts int64) []byte
	// OnSend, when set, is called for each message just before the write
	// that first carries it, from the goroutine that writes, with the
	// device's lock held: it must be quick. sent is on the fleet's clock
	// (Fleet.Now).
	OnSend func(dev int, seq uint64, sent int64)
	// OnSettle, when set, is called with the messages of device dev that an
	// ack (or the end of the device) settled, in order, from the device's
	// goroutine, or from Close's for what was still in flight. ms is reused
	// once it returns. now is when the read that brought the ack returned,
	// on the fleet's clock.
	OnSettle func(dev int, ms []Msg, now int64)
}

// Msg is one message a device sent, as it is settled. Times are on the
// fleet's clock (Fleet.Now).
type Msg struct {
	Seq  uint64 // the device's message number: 1, 2, 3…
	TS   int64  // the device time in the message, unix milliseconds
	Due  int64  // when it was due: its slot in a paced schedule, or when the window let it go
	Sent int64  // just before the write that first carried it
	// Code is empty for a message acknowledged, else why it is not: the
	// server's error code for it, or "closed" for a message still
	// unacknowledged when the fleet closed or the device stopped.
	Code string
}

// CodeClosed settles a message that was not acknowledged when the fleet
// closed or its device stopped; it may or may not have been stored.
const CodeClosed = "closed"

// Stats is what a fleet did.
type Stats struct {
	Devices    int             // devices in the fleet
	Connected  int             // devices whose first dial succeeded
	DialFailed int             // devices whose first dial failed
	DialErr    error           // the first of those failures
	Dials      []time.Duration // time of each first dial that succeeded
	Sent       int64           // messages written, each counted once
	Acked      int64           // messages acknowledged
	Rejected   int64           // messages settled otherwise (Msg.Code)
	Resent     int64           // messages written again after a reconnect
	Reconnects int64           // connections made again
	Skipped    int64           // paced messages skipped, never sent (Options.Backlog)
	Writes     int64           // write system calls that carried frames
	Reads      int64           // read system calls on connections
	// Errors counts what went wrong, by code: error frames by the
	// server's code; close frames from the server as "close_<code>";
	// connections that ended without one, "conn_lost"; frames that break
	// the protocol, "protocol"; failed reconnects, "dial" or
	// "http_<status>"; messages settled as CodeClosed, "closed".
	Errors map[string]int64
	// Start is when Send began and LastAck when the last ack was read, on
	// the fleet's clock.
	Start, LastAck int64
}

// Fleet is a set of devices sending to an engine. Its methods are for
// one goroutine, in order: Connect, Send, Drain, Close; Stats, Now,
// Acked and ID may be called at any time from any goroutine.
type Fleet struct {
	opts     Options
	paced    bool
	interval time.Duration // paced: between two messages of a device
	window   int
	epoch    time.Time // the fleet's clock counts from here
	devs     []*device

	sending atomic.Bool  // Send is sending (closed loop: refill windows)
	start   atomic.Int64 // when Send began
	stopAt  atomic.Int64 // when sending ends
	budget  atomic.Int64 // messages left to send when Options.Total > 0
	spent   chan struct{}
	spendMu sync.Once

	sent       atomic.Int64
	acked      atomic.Int64
	rejected   atomic.Int64
	resent     atomic.Int64
	reconnects atomic.Int64
	skipped    atomic.Int64
	writes     atomic.Int64
	reads      atomic.Int64
	lastAck    atomic.Int64
	pending    atomic.Int64 // messages sent and not settled, plus messages owed

	errMu sync.Mutex
	errs  map[string]int64

	closing  atomic.Bool
	closed   chan struct{}
	readers  sync.WaitGroup // one goroutine per connected device
	closeOne sync.Once
}

// DefaultOptions returns the defaults that zero fields of Options stand
// for.
func DefaultOptions() Options {
	return Options{Window: 16, MaxDials: 256, DialTimeout: 10 * time.Second, Pacers: 4,
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 2 * time.Second}
}

// New returns a fleet of opts.Devices devices; it connects nothing.
func New(opts Options) (*Fleet, error) {
	switch {
	case len(opts.URLs) == 0:
		return nil, errors.New("loadgen: no URL")
	case opts.Devices < 1:
		return nil, errors.New("loadgen: no device")
	case opts.Message == nil:
		return nil, errors.New("loadgen: no Message")
	case opts.Rate < 0 || opts.Window < 0 || opts.Backlog < 0 || opts.Sources < 0 || opts.MaxDials < 0 || opts.Pacers < 0:
		return nil, errors.New("loadgen: negative rate, window, backlog, sources, dials or pacers")
	case opts.Duration <= 0 && opts.Total <= 0:
		return nil, errors.New("loadgen: no Duration and no Total")
	}
	def := DefaultOptions()
	defaults.Zero(&opts.Window, def.Window)
	defaults.Zero(&opts.MaxDials, def.MaxDials)
	defaults.Zero(&opts.Pacers, def.Pacers)
	defaults.Positive(&opts.DialTimeout, def.DialTimeout)
	defaults.Positive(&opts.MinBackoff, def.MinBackoff)
	defaults.Positive(&opts.MaxBackoff, def.MaxBackoff)
	if opts.DeviceID == nil {
		opts.DeviceID = func(i int) string { return "dev-" + strconv.Itoa(i) }
	}
	targets := make([]target, len(opts.URLs))
	for i, u := range opts.URLs {
		t, err := parseTarget(u)
		if err != nil {
			return nil, fmt.Errorf("loadgen: %w", err)
		}
		targets[i] = t
	}
	f := &Fleet{opts: opts, paced: opts.Rate > 0, window: opts.Window, epoch: time.Now(),
		errs: map[string]int64{}, closed: make(chan struct{}), spent: make(chan struct{})}
	if f.paced {
		f.interval = time.Duration(float64(time.Second) / opts.Rate)
	}
	f.devs = make([]*device, opts.Devices)
	for i := range f.devs {
		d := &device{f: f, i: i, id: opts.DeviceID(i), tg: targets[i%len(targets)]}
		d.topic = "devices/" + d.id
		d.lastTS = max(opts.After, 0)
		if opts.Insecure && d.tg.mqtt == 0 {
			d.tg = d.tg.withQuery("device", d.id)
		}
		if opts.Sources > 0 {
			d.local = &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(i%opts.Sources+1))}
		}
		f.devs[i] = d
	}
	return f, nil
}

// Now is the fleet's clock: nanoseconds since the fleet was made, on the
// monotonic clock.
func (f *Fleet) Now() int64 { return int64(time.Since(f.epoch)) }

// ID is device i's id.
func (f *Fleet) ID(i int) string { return f.devs[i].id }

// Acked returns how many messages device i settled, numbered 1 to n, and
// which of them were not acknowledged (Msg.Code), in order.
func (f *Fleet) Acked(i int) (n uint64, notAcked []uint64) {
	d := f.devs[i]
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.settled, append([]uint64(nil), d.notAcked...)
}

func (f *Fleet) count(code string, n int64) {
	f.errMu.Lock()
	f.errs[code] += n
	f.errMu.Unlock()
}

// Stats returns what the fleet has done so far.
func (f *Fleet) Stats() Stats {
	s := Stats{Devices: len(f.devs), Sent: f.sent.Load(), Acked: f.acked.Load(), Rejected: f.rejected.Load(),
		Resent: f.resent.Load(), Reconnects: f.reconnects.Load(), Skipped: f.skipped.Load(),
		Writes: f.writes.Load(), Reads: f.reads.Load(),
		Start: f.start.Load(), LastAck: f.lastAck.Load(), Errors: map[string]int64{}}
	for _, d := range f.devs {
		d.mu.Lock()
		switch {
		case d.dialErr != nil:
			s.DialFailed++
			if s.DialErr == nil {
				s.DialErr = d.dialErr
			}
		case d.dialTime > 0:
			s.Connected++
			s.Dials = append(s.Dials, d.dialTime)
		}
		d.mu.Unlock()
	}
	f.errMu.Lock()
	for k, v := range f.errs {
		s.Errors[k] = v
	}
	f.errMu.Unlock()
	return s
}

// Progress returns how many messages were sent and acknowledged so far,
// and how many errors were counted; it is cheaper than Stats.
func (f *Fleet) Progress() (sent, acked, errs int64) {
	f.errMu.Lock()
	for _, n := range f.errs {
		errs += n
	}
	f.errMu.Unlock()
	return f.sent.Load(), f.acked.Load(), errs
}

// Connect dials every device, spread over Options.Ramp, and starts a
// goroutine per device that connected, which runs until Close. It returns
// how many connected; a device whose first dial fails takes no part in the
// run. It fails only when no device connected.
func (f *Fleet) Connect(ctx context.Context) (int, error) {
	begin := time.Now()
	sem := make(chan struct{}, f.opts.MaxDials)
	var (
		wg        sync.WaitGroup
		connected atomic.Int64
	)
	for i, d := range f.devs {
		if f.opts.Ramp > 0 {
			at := begin.Add(f.opts.Ramp * time.Duration(i) / time.Duration(len(f.devs)))
			if !lifecycle.Sleep(ctx, time.Until(at)) {
				d.mu.Lock()
				d.dialErr = ctx.Err()
				d.mu.Unlock()
				continue
			}
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			d.mu.Lock()
			d.dialErr = ctx.Err()
			d.mu.Unlock()
			continue
		}
		wg.Go(func() {
			defer func() { <-sem }()
			t := time.Now()
			nc, rest, err := d.dial(ctx)
			d.mu.Lock()
			if err != nil {
				d.dialErr = err
				d.stopped = true
				d.mu.Unlock()
				return
			}
			d.dialTime = max(time.Since(t), 1)
			d.mu.Unlock()
			if !d.attach(nc) {
				nc.Close()
				return
			}
			connected.Add(1)
			f.readers.Add(1)
			go d.run(nc, rest)
		})
	}
	wg.Wait()
	if connected.Load() == 0 {
		if err := f.Stats().DialErr; err != nil {
			return 0, fmt.Errorf("loadgen: no device connected: %w", err)
		}
		return 0, errors.New("loadgen: no device connected")
	}
	return int(connected.Load()), nil
}

// Send sends for Options.Duration (or until Options.Total messages are
// sent, or ctx ends): in closed loop every device keeps its window full;
// paced, each device sends at Options.Rate from its own phase, the phases
// spread evenly over one period. It returns when sending stops; messages
// in flight are still acknowledged, and paced messages owed still go out.
func (f *Fleet) Send(ctx context.Context) {
	now := f.Now()
	stop := now + int64(f.opts.Duration)
	if f.opts.Duration <= 0 {
		stop = now + int64(100*365*24*time.Hour)
	}
	f.budget.Store(f.opts.Total)
	f.start.Store(now)
	f.stopAt.Store(stop)
	f.sending.Store(true)
	defer f.sending.Store(false)
	if f.paced {
		f.pace(ctx, stop)
		return
	}
	for _, d := range f.devs {
		d.mu.Lock()
		err := d.refill()
		d.mu.Unlock()
		if err != nil {
			d.breakConn()
		}
	}
	t := time.NewTimer(time.Duration(stop - f.Now()))
	defer t.Stop()
	select {
	case <-t.C:
	case <-f.spent:
	case <-ctx.Done():
	}
}

// take reserves one message of the closed loop's sending: false once the
// duration is over or the Total is sent.
func (f *Fleet) take(now int64) bool {
	if !f.sending.Load() || now >= f.stopAt.Load() {
		return false
	}
	if f.opts.Total > 0 {
		left := f.budget.Add(-1)
		if left == 0 {
			f.spendMu.Do(func() { close(f.spent) })
		}
		return left >= 0
	}
	return true
}

// dueAt is when paced message k (counted from 0) of device i is due: the
// devices' phases spread evenly over one period.
func (f *Fleet) dueAt(i int, k uint64) int64 {
	iv := int64(f.interval)
	return f.start.Load() + int64(k)*iv + iv*int64(i)/int64(len(f.devs))
}

// pace runs the pacers until stop (or ctx ends): pacer p makes every
// Pacers-th device's messages due in turn, sleeping until the next is.
func (f *Fleet) pace(ctx context.Context, stop int64) {
	var wg sync.WaitGroup
	// No more pacers than devices: a pacer without one would go round its
	// empty share for ever, and Send would never return.
	for p := range min(f.opts.Pacers, len(f.devs)) {
		wg.Go(func() {
			var mine []*device
			for i := p; i < len(f.devs); i += f.opts.Pacers {
				mine = append(mine, f.devs[i])
			}
			t := time.NewTimer(time.Hour)
			defer t.Stop()
			for round := uint64(0); ; round++ {
				for _, d := range mine {
					due := f.dueAt(d.i, round)
					if due >= stop {
						return
					}
					if wait := time.Duration(due - f.Now()); wait > 50*time.Microsecond {
						t.Reset(wait)
						select {
						case <-t.C:
						case <-ctx.Done():
							return
						}
					}
					d.due(round)
				}
			}
		})
	}
	wg.Wait()
}

// Drain waits until every message sent is settled and every message owed
// is sent and settled, or until timeout. It reports whether all were.
func (f *Fleet) Drain(ctx context.Context, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for f.pending.Load() > 0 {
		if time.Now().After(deadline) || !lifecycle.Sleep(ctx, 2*time.Millisecond) {
			return false
		}
	}
	return true
}

// Close closes every connection (with a close frame, 1000, where it can),
// stops reconnects, waits for the devices' goroutines, and settles what is
// still unacknowledged as CodeClosed. It may be called more than once.
func (f *Fleet) Close() {
	f.closeOne.Do(func() {
		f.closing.Store(true)
		close(f.closed)
		for _, d := range f.devs {
			d.sockMu.Lock()
			nc := d.sock
			d.sockMu.Unlock()
			if nc == nil {
				continue
			}
			// A write blocked on a full socket holds mu: then the close
			// frame is left out.
			if d.mu.TryLock() {
				switch {
				case d.nc != nil && d.tg.mqtt != 0:
					d.nc.Write([]byte{packets.Disconnect << 4, 0})
				case d.nc != nil:
					d.nc.Write(appendFrame(nil, opClose, closePayload(closeNormal)))
				}
				d.mu.Unlock()
			}
			nc.Close()
		}
		f.readers.Wait()
		for _, d := range f.devs {
			d.giveUp()
		}
	})
}

// Run connects the fleet, sends, drains for up to drain, and closes it.
func Run(ctx context.Context, opts Options, drain time.Duration) (Stats, error) {
	f, err := New(opts)
	if err != nil {
		return Stats{}, err
	}
	defer f.Close()
	if _, err := f.Connect(ctx); err != nil {
		return f.Stats(), err
	}
	f.Send(ctx)
	f.Drain(ctx, drain)
	f.Close()
	return f.Stats(), nil
}
