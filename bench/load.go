package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/golang-jwt/jwt/v5"

	"github.com/ingest-io/ingest/client"
)

// device is one connection and what the load needs to time its messages.
type device struct {
	id     string
	idx    int
	c      *client.Client
	sendMu sync.Mutex // one Send at a time per device, so numbers match
	mu     sync.Mutex // guards sentAt and seq
	sentAt map[uint64]time.Time
	seq    int
	lastTS int64        // the ts of the last message, in ms: unique per device
	acked  map[int]bool // seqs acknowledged
	// shownAt holds send times until the live feed shows the message (only
	// while a feed is watched).
	shownAt map[int]time.Time
}

// stats collects what the run measures. Histograms are sharded to keep
// lock contention low with thousands of devices.
type stats struct {
	shards   []*shard
	sent     atomic.Int64
	acked    atomic.Int64
	mu       sync.Mutex
	errs     map[string]int64
	perSec   []int64 // acked per second of the run
	start    time.Time
	dials    *hdrhistogram.Histogram
	dialFail atomic.Int64
}

type shard struct {
	mu sync.Mutex
	h  *hdrhistogram.Histogram
}

func newHist() *hdrhistogram.Histogram {
	return hdrhistogram.New(1, 120_000_000, 3) // 1 µs to 120 s, 3 significant figures
}

func newStats() *stats {
	s := &stats{errs: map[string]int64{}, dials: newHist()}
	for range 32 {
		s.shards = append(s.shards, &shard{h: newHist()})
	}
	return s
}

func (s *stats) record(idx int, d time.Duration) {
	sh := s.shards[idx%len(s.shards)]
	sh.mu.Lock()
	sh.h.RecordValue(max(d.Microseconds(), 1))
	sh.mu.Unlock()
	s.acked.Add(1)
	sec := int(time.Since(s.start) / time.Second)
	s.mu.Lock()
	for len(s.perSec) <= sec {
		s.perSec = append(s.perSec, 0)
	}
	s.perSec[sec]++
	s.mu.Unlock()
}

func (s *stats) fail(err error) {
	code := "other"
	var se *client.ServerError
	switch {
	case errors.As(err, &se):
		code = se.Code
	case errors.Is(err, client.ErrClosed):
		code = "closed"
	case errors.Is(err, client.ErrRefused):
		code = "refused"
	}
	s.mu.Lock()
	s.errs[code]++
	s.mu.Unlock()
}

func (s *stats) merged() *hdrhistogram.Histogram {
	h := newHist()
	for _, sh := range s.shards {
		sh.mu.Lock()
		h.Merge(sh.h)
		sh.mu.Unlock()
	}
	return h
}

// load runs the scenario and returns what it measured.
func load(ctx context.Context, c config, lg *slog.Logger) (*result, error) {
	var secret []byte
	if c.SecretFile != "" {
		b, err := os.ReadFile(c.SecretFile)
		if err != nil {
			return nil, fmt.Errorf("read secret: %w", err)
		}
		secret = []byte(strings.TrimSpace(string(b)))
	}
	st := newStats()
	st.start = time.Now()
	sendq := make(chan *device, c.Devices*c.Window)
	closedLoop := c.Rate == 0

	// Connect every device, spread over the ramp-up, at most 256 dials at once.
	httpClients := make([]*http.Client, c.Sources)
	for i := range httpClients {
		local := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(i+1))}
		tr := &http.Transport{DialContext: (&net.Dialer{LocalAddr: local, Timeout: 10 * time.Second}).DialContext}
		httpClients[i] = &http.Client{Transport: tr}
	}
	devs := make([]*device, c.Devices)
	var (
		wg      sync.WaitGroup
		dialSem = make(chan struct{}, 256)
	)
	for i := range devs {
		if ctx.Err() != nil {
			break
		}
		if c.Ramp > 0 {
			time.Sleep(time.Until(st.start.Add(c.Ramp * time.Duration(i) / time.Duration(c.Devices))))
		}
		d := &device{id: fmt.Sprintf("bench-%06d", i), idx: i, sentAt: map[uint64]time.Time{}, acked: map[int]bool{}}
		if c.Feed != "" {
			d.shownAt = map[int]time.Time{}
		}
		devs[i] = d
		dialSem <- struct{}{}
		wg.Go(func() {
			defer func() { <-dialSem }()
			opts := client.Options{
				URL: c.URL, Window: c.Window, HTTPClient: httpClients[d.idx%c.Sources],
				MinBackoff: 50 * time.Millisecond, MaxBackoff: 2 * time.Second,
				OnResult: func(r client.Result) {
					d.mu.Lock()
					at, ok := d.sentAt[r.N]
					delete(d.sentAt, r.N)
					if r.Err == nil {
						d.acked[int(r.N)] = true
					}
					d.mu.Unlock()
					if r.Err != nil {
						st.fail(r.Err)
					} else if ok {
						st.record(d.idx, time.Since(at))
					}
					if closedLoop && ctx.Err() == nil {
						select {
						case sendq <- d:
						default:
						}
					}
				},
			}
			if len(c.urls) > 0 {
				opts.URL = c.urls[d.idx%len(c.urls)]
			}
			if c.Insecure {
				opts.URL = withDevice(opts.URL, d.id)
			} else {
				opts.Token = deviceToken(secret, d.id)
			}
			t := time.Now()
			cl, err := client.Dial(ctx, opts)
			if err != nil {
				st.dialFail.Add(1)
				lg.Warn("dial", "device", d.id, "err", err)
				return
			}
			st.mu.Lock()
			st.dials.RecordValue(max(time.Since(t).Microseconds(), 1))
			st.mu.Unlock()
			d.c = cl
			if closedLoop {
				for range c.Window {
					sendq <- d
				}
			}
		})
	}
	wg.Wait()
	connected := 0
	for _, d := range devs {
		if d != nil && d.c != nil {
			connected++
		}
	}
	if connected == 0 {
		return nil, errors.New("no device could connect")
	}

	// Watch the live feed, if there is one.
	var fw *feedWatch
	e2e := newStats()
	e2e.start = time.Now() // set again when sending starts
	if c.Feed != "" {
		var err error
		if fw, err = watchFeed(ctx, c.Feed, devs, e2e); err != nil {
			return nil, err
		}
	}

	// Send, for the duration.
	runCtx, stopRun := context.WithTimeout(ctx, c.Duration)
	defer stopRun()
	sendStart := time.Now()
	st.mu.Lock()
	st.start = sendStart
	st.perSec = nil
	st.mu.Unlock()
	e2e.mu.Lock()
	e2e.start = sendStart
	e2e.mu.Unlock()
	var workers sync.WaitGroup
	for range 8 {
		workers.Go(func() {
			for {
				select {
				case <-runCtx.Done():
					return
				case d := <-sendq:
					send(runCtx, d, c, st)
				}
			}
		})
	}
	if !closedLoop {
		pace(runCtx, devs, c.Rate, sendq)
	}
	progress(runCtx, st, c.Quiet)
	workers.Wait()
	sendTime := time.Since(sendStart)
	ackedInWindow := st.acked.Load()
	if c.onSendEnd != nil {
		c.onSendEnd()
	}

	// Drain: wait for what is in flight, then close.
	drainCtx, stopDrain := context.WithTimeout(ctx, c.Drain)
	defer stopDrain()
	var closers sync.WaitGroup
	for _, d := range devs {
		if d == nil || d.c == nil {
			continue
		}
		closers.Go(func() {
			d.c.Flush(drainCtx)
			d.c.Close()
		})
	}
	closers.Wait()
	res := newResult(c, st, connected, sendTime, ackedInWindow)
	if fw != nil {
		// Let the feed show what is still on its way.
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			fw.mu.Lock()
			shown := fw.shownN
			fw.mu.Unlock()
			if shown >= res.Acked {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		fw.close()
		h := e2e.merged()
		res.Feed = &feedResult{Shown: fw.shownN, Missed: fw.missed, Latency: latencyOf(h)}
	}
	if c.Check != "" {
		comp, err := check(ctx, c.Check, devs, st.start, c.CheckWait)
		if err != nil {
			return nil, err
		}
		res.Completeness = comp
	}
	return res, nil
}

// send sends the device's next message.
func send(ctx context.Context, d *device, c config, st *stats) {
	if d.c == nil {
		return
	}
	d.sendMu.Lock()
	defer d.sendMu.Unlock()
	d.mu.Lock()
	d.seq++
	seq := d.seq
	// A device time unique per device: the store keeps one sample per
	// series and millisecond, and the completeness check counts samples.
	d.lastTS = max(time.Now().UnixMilli(), d.lastTS+1)
	ts := d.lastTS
	d.mu.Unlock()
	payload := message(c.Shape, c.Size, d.idx, seq, ts)
	// Record the time before Send: the result may arrive before Send returns.
	at := time.Now()
	d.mu.Lock()
	n := uint64(seq) // the client numbers messages 1, 2, 3… per device, as Send returns them
	d.sentAt[n] = at
	if d.shownAt != nil {
		d.shownAt[seq] = at
	}
	d.mu.Unlock()
	got, err := d.c.Send(ctx, payload)
	if err != nil {
		d.mu.Lock()
		delete(d.sentAt, n)
		d.mu.Unlock()
		if ctx.Err() == nil {
			st.fail(err)
		}
		return
	}
	if got != n {
		panic(fmt.Sprintf("bench: the client numbered message %d as %d", n, got))
	}
	st.sent.Add(1)
}

// pace schedules each device's sends at rate per second, spreading devices
// evenly over each period, from a few goroutines.
func pace(ctx context.Context, devs []*device, rate float64, sendq chan<- *device) {
	period := time.Duration(float64(time.Second) / rate)
	const pacers = 4
	var wg sync.WaitGroup
	for p := range pacers {
		wg.Go(func() {
			next := make([]time.Time, 0, len(devs)/pacers+1)
			var mine []*device
			start := time.Now()
			for i := p; i < len(devs); i += pacers {
				mine = append(mine, devs[i])
				next = append(next, start.Add(time.Duration(rand.Int64N(int64(period)))))
			}
			tick := time.NewTicker(time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case now := <-tick.C:
					for i, d := range mine {
						if d == nil || now.Before(next[i]) {
							continue
						}
						next[i] = next[i].Add(period)
						select {
						case sendq <- d:
						default: // the senders are behind: the send is late, not lost
							next[i] = now
						}
					}
				}
			}
		})
	}
	go func() { wg.Wait() }()
}

// progress prints a line a second until ctx ends.
func progress(ctx context.Context, st *stats, quiet bool) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var last int64
	for {
		select {
		case <-ctx.Done():
			if !quiet {
				fmt.Fprintln(os.Stderr)
			}
			return
		case <-t.C:
			if quiet {
				continue
			}
			acked := st.acked.Load()
			h := st.merged()
			st.mu.Lock()
			var errs int64
			for _, n := range st.errs {
				errs += n
			}
			st.mu.Unlock()
			fmt.Fprintf(os.Stderr, "\r%5.0fs  sent %-10d acked %-10d %8d/s  p50 %7.2fms  p99 %7.2fms  errors %d   ",
				time.Since(st.start).Seconds(), st.sent.Load(), acked, acked-last,
				float64(h.ValueAtQuantile(50))/1000, float64(h.ValueAtQuantile(99))/1000, errs)
			last = acked
		}
	}
}

func withDevice(url, id string) string {
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	return url + sep + "device=" + id
}

func deviceToken(secret []byte, id string) string {
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{
		Subject: id, ExpiresAt: jwt.NewNumericDate(time.Now().Add(24 * time.Hour)),
	}).SignedString(secret)
	if err != nil {
		panic(err)
	}
	return s
}

// message builds a message of about size bytes in the given shape. seq is
// stored as a field (the id is the protocol's acknowledgement id, not data).
func message(shape string, size, dev, seq int, ts int64) []byte {
	var b []byte
	switch shape {
	case "gps":
		lat := 48.85 + float64(dev%1000)/10000 + float64(seq%100)/100000
		lon := 2.35 + float64(dev/1000)/10000
		b = fmt.Appendf(nil, `{"id":%d,"seq":%d,"ts":%d,"lat":%.6f,"lon":%.6f,"speed":%d,"heading":%d,"fix":true`, seq, seq, ts, lat, lon, seq%120, seq%360)
	default:
		b = fmt.Appendf(nil, `{"id":%d,"seq":%d,"ts":%d,"temp":%.1f,"hum":%d,"battery":%.2f,"ok":true`, seq, seq, ts, 20+float64(seq%100)/10, 40+seq%20, 3.3-float64(seq%50)/100)
	}
	if pad := size - len(b) - len(`,"note":""}`); pad > 0 {
		b = append(b, `,"note":"`...)
		b = append(b, strings.Repeat("x", pad)...)
		b = append(b, '"')
	}
	b = append(b, '}')
	return b
}
