package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/golang-jwt/jwt/v5"

	"github.com/ingest-io/ingest/internal/loadgen"
)

// device is what the bench keeps of one device beside the load generator.
type device struct {
	id  string
	idx int

	// While a live feed is watched: when each message was sent (index
	// seq-1), until the feed shows it (then 0).
	mu     sync.Mutex
	sentAt []int64

	// After the run: messages 1..settled have their fate, and those in
	// notAcked were not acknowledged.
	settled  uint64
	notAcked map[uint64]bool
}

// stats collects what the run measures. Histograms are sharded by device
// to keep lock contention low with thousands of devices; each ack records
// every message it covers under one lock.
type stats struct {
	shards []*shard
	start  atomic.Int64 // when sending began, on the fleet's clock
	// latestTS is the latest device time (unix ms) of a settled message.
	latestTS atomic.Int64
	perSec   perSecond // acknowledged per second of the run
	late     []*shard  // paced: from a message's slot in the schedule to its first write
	dials    *hdrhistogram.Histogram
	// firstTS is the earliest device time (unix ms) of a settled message;
	// 0 before the first.
	firstTS atomic.Int64
	// ivl holds the latencies since the last interval line (-interval);
	// nil when the run prints none.
	ivl []*shard
}

// perSecond counts events by the second of the run they happen in.
type perSecond []atomic.Int64

// add counts n events at now, the run having started at start (both unix
// nanoseconds); events outside the run's seconds are not counted.
func (p perSecond) add(start, now, n int64) {
	if sec := (now - start) / int64(time.Second); sec >= 0 && sec < int64(len(p)) {
		p[sec].Add(n)
	}
}

// counts returns the count of each second up to the last second with
// any: the seconds after it are not part of the run.
func (p perSecond) counts() []int64 {
	var out []int64
	last := 0
	for i := range p {
		out = append(out, p[i].Load())
		if out[i] > 0 {
			last = i + 1
		}
	}
	return out[:last]
}

type shard struct {
	mu sync.Mutex
	h  *hdrhistogram.Histogram
}

// histMax is the longest latency the histograms hold, in µs: an hour,
// past what a message can wait in a run that reconnects to an engine
// restarted under it.
const histMax = int64(time.Hour / time.Microsecond)

func newHist() *hdrhistogram.Histogram {
	return hdrhistogram.New(1, histMax, 3) // 1 µs to an hour, 3 significant figures
}

// micros is a latency d (nanoseconds) as the histograms record it: in µs,
// at least 1, and at most histMax, so that a longer one still counts, as
// the longest, rather than being refused by the histogram and left out of
// the percentiles and the max.
func micros(d int64) int64 { return min(max(d/1000, 1), histMax) }

func newShards() []*shard {
	s := make([]*shard, 32)
	for i := range s {
		s[i] = &shard{h: newHist()}
	}
	return s
}

func newStats(seconds int) *stats {
	return &stats{shards: newShards(), perSec: make(perSecond, seconds), dials: newHist()}
}

// settle records the ack latency of every message an ack settled, from
// just before the write that first carried it to just after the read that
// brought the ack.
func (s *stats) settle(dev int, ms []loadgen.Msg, now int64) {
	if n := len(ms); n > 0 { // a device's times increase with its seq
		for ts := ms[n-1].TS; ; {
			cur := s.latestTS.Load()
			if ts <= cur || s.latestTS.CompareAndSwap(cur, ts) {
				break
			}
		}
		for ts := ms[0].TS; ; {
			cur := s.firstTS.Load()
			if (cur != 0 && ts >= cur) || s.firstTS.CompareAndSwap(cur, ts) {
				break
			}
		}
	}
	sh := s.shards[dev%len(s.shards)]
	// Messages written together share their send time: one record each
	// run of them.
	var n int64
	sh.mu.Lock()
	for i := 0; i < len(ms); {
		j := i + 1
		for j < len(ms) && ms[j].Sent == ms[i].Sent && ms[j].Code == ms[i].Code {
			j++
		}
		if ms[i].Code == "" {
			sh.h.RecordValues(micros(now-ms[i].Sent), int64(j-i))
			n += int64(j - i)
		}
		i = j
	}
	sh.mu.Unlock()
	if s.ivl != nil {
		s.ivl[dev%len(s.ivl)].recordAcked(ms, now)
	}
	if n > 0 {
		s.perSec.add(s.start.Load(), now, n)
	}
	if s.late != nil {
		sh := s.late[dev%len(s.late)]
		sh.mu.Lock()
		for i := range ms {
			if ms[i].Code == "" {
				sh.h.RecordValue(micros(ms[i].Sent - ms[i].Due))
			}
		}
		sh.mu.Unlock()
	}
}

// recordAcked records the latency of each acknowledged message of ms.
func (sh *shard) recordAcked(ms []loadgen.Msg, now int64) {
	sh.mu.Lock()
	for i := range ms {
		if ms[i].Code == "" {
			sh.h.RecordValue(micros(now - ms[i].Sent))
		}
	}
	sh.mu.Unlock()
}

// record records one latency d (nanoseconds).
func (s *stats) record(dev int, d int64) {
	sh := s.shards[dev%len(s.shards)]
	sh.mu.Lock()
	sh.h.RecordValue(micros(d))
	sh.mu.Unlock()
	if s.ivl != nil {
		sh := s.ivl[dev%len(s.ivl)]
		sh.mu.Lock()
		sh.h.RecordValue(micros(d))
		sh.mu.Unlock()
	}
}

// takeInterval returns the latencies recorded since the last call and
// starts the next interval.
func (s *stats) takeInterval() *hdrhistogram.Histogram {
	h := newHist()
	for _, sh := range s.ivl {
		sh.mu.Lock()
		h.Merge(sh.h)
		sh.h.Reset()
		sh.mu.Unlock()
	}
	return h
}

func merged(shards []*shard) *hdrhistogram.Histogram {
	h := newHist()
	for _, sh := range shards {
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
	devs := make([]*device, c.Devices)
	for i := range devs {
		devs[i] = &device{id: fmt.Sprintf("bench-%06d", i), idx: i}
	}
	st := newStats(int((c.Duration+c.Drain)/time.Second) + 2)
	if c.Rate > 0 {
		st.late = newShards()
	}
	if c.Interval > 0 {
		st.ivl = newShards()
	}
	// The store may hold these devices' points at times ahead of the
	// clock, from an earlier run whose devices sent more than a thousand
	// messages a second: this run's device times start past them.
	var apis []string
	var after time.Time
	if c.Check != "" {
		apis = c.checkAPIs
		if len(apis) == 0 {
			apis = []string{c.Check}
		}
		var err error
		if after, err = storedAhead(ctx, apis, devs, time.Now()); err != nil {
			return nil, err
		}
		if !after.IsZero() {
			fmt.Fprintf(os.Stderr, "bench: the store holds these devices' points up to %.1f s ahead of the clock (an earlier run's): this run's device times start after them\n",
				time.Until(after).Seconds())
		}
	}
	urls := c.urls
	if len(urls) == 0 {
		urls = []string{c.URL}
	}
	shape, size := c.Shape, c.Size
	sources := 0 // one source address: the system picks it, so that -url may name another host
	if c.Sources > 1 {
		sources = c.Sources
	}
	opts := loadgen.Options{
		URLs: urls, Devices: c.Devices, DeviceID: func(i int) string { return devs[i].id }, Insecure: c.Insecure,
		Sources: sources, Ramp: c.Ramp, Window: c.Window, Rate: c.Rate, Duration: c.Duration, Coalesce: !c.FramePerWrite,
		// A paced device keeps what comes due while it cannot send (its
		// window is full, or it is reconnecting) and sends it as soon as
		// it can: the load is late, not lost.
		Backlog:   10_000,
		Reconnect: true, MinBackoff: 50 * time.Millisecond, MaxBackoff: 2 * time.Second,
		Message: func(dst []byte, dev int, seq uint64, ts int64) []byte {
			return appendMessage(dst, shape, size, dev, seq, ts)
		},
		OnSettle: st.settle,
	}
	if !after.IsZero() {
		opts.After = after.UnixMilli()
	}
	if !c.Insecure {
		opts.Token = func(i int) (string, error) { return deviceToken(secret, devs[i].id) }
	}
	if c.Feed != "" {
		opts.OnSend = func(dev int, seq uint64, sent int64) {
			d := devs[dev]
			d.mu.Lock()
			d.sentAt = append(d.sentAt, sent)
			d.mu.Unlock()
		}
	}
	fl, err := loadgen.New(opts)
	if err != nil {
		return nil, err
	}
	defer fl.Close()

	// Connect every device, spread over the ramp-up.
	connected, err := fl.Connect(ctx)
	if err != nil {
		return nil, err
	}
	if s := fl.Stats(); s.DialFailed > 0 {
		lg.Warn("dial", "failed", s.DialFailed, "err", s.DialErr)
	}

	// Watch the live feed, if there is one.
	var fw *feedWatch
	e2e := newStats(0)
	if c.Interval > 0 {
		e2e.ivl = newShards()
	}
	if c.Feed != "" {
		if fw, err = watchFeed(ctx, c.Feed, devs, e2e, fl.Now); err != nil {
			return nil, err
		}
	}

	// Send, for the duration.
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	if c.onSendStart != nil {
		c.onSendStart(c.enginePID)
	}
	cpu := startCPU(c.enginePID)
	scrapeBefore := scrapeEngine(ctx, c.engineMetrics)
	st.start.Store(fl.Now())
	sendStart := time.Now()
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		progress(runCtx, fl, st, c.Quiet || c.Interval > 0)
	}()
	var lines []interval
	linesDone := make(chan struct{})
	go func() {
		defer close(linesDone)
		if c.Interval > 0 {
			lines = intervals(runCtx, c.Interval, fl, st, e2e, c.enginePID, c.engineMetrics, os.Stdout)
		}
	}()
	fl.Send(runCtx)
	sendTime := time.Since(sendStart)
	stopRun()
	<-progressDone
	<-linesDone
	ackedInWindow := fl.Stats().Acked
	cpuUsed := cpu.stop(ackedInWindow)
	scrapeSent := scrapeEngine(ctx, c.engineMetrics)
	if c.onSendEnd != nil {
		c.onSendEnd()
	}

	// Drain: wait for what is in flight, then close.
	fl.Drain(ctx, c.Drain)
	fl.Close()
	for i, d := range devs {
		n, not := fl.Acked(i)
		d.settled = n
		if len(not) > 0 {
			d.notAcked = map[uint64]bool{}
			for _, s := range not {
				d.notAcked[s] = true
			}
		}
	}
	res := newResult(c, fl.Stats(), st, connected, sendTime, ackedInWindow)
	res.CPU = cpuUsed
	res.Intervals = lines
	if fw != nil {
		// Let the feed show what is still on its way.
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			fw.mu.Lock()
			shown, ended := fw.shownN, fw.ended
			fw.mu.Unlock()
			if shown >= res.Acked || ended != "" {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		fw.close()
		h := merged(e2e.shards)
		res.Feed = &feedResult{Shown: fw.shownN, Missed: fw.missed, Latency: latencyOf(h), Closed: fw.ended}
	}
	// An interrupted run (ctx ended) is not checked: it did not drain.
	if c.Check != "" && ctx.Err() == nil {
		// The store is read from the run's first device time on: what
		// it holds of the same devices from before (an earlier run
		// against the same engine) is not this run's.
		since := sendStart
		if ts := st.firstTS.Load(); ts != 0 {
			since = time.UnixMilli(ts)
		}
		comp, err := check(ctx, apis, devs, since, time.UnixMilli(st.latestTS.Load()), c.CheckWait)
		if err != nil {
			return nil, err
		}
		res.Completeness = comp
	}
	var scrapeStored scrape
	if res.Completeness != nil {
		scrapeStored = scrapeEngine(ctx, c.engineMetrics)
	}
	res.Engine = engineDelta(scrapeBefore, scrapeSent, scrapeStored, ackedInWindow)
	return res, nil
}

// progress prints a line a second until ctx ends.
func progress(ctx context.Context, fl *loadgen.Fleet, st *stats, quiet bool) {
	var last int64
	everySecond(ctx, quiet, func() string {
		sent, acked, errs := fl.Progress()
		h := merged(st.shards)
		line := fmt.Sprintf("%5.0fs  sent %-10d acked %-10d %8d/s  p50 %7.2fms  p99 %7.2fms  errors %d   ",
			float64(fl.Now()-st.start.Load())/1e9, sent, acked, acked-last,
			float64(h.ValueAtQuantile(50))/1000, float64(h.ValueAtQuantile(99))/1000, errs)
		last = acked
		return line
	})
}

// everySecond prints line's result over the last one on stderr once a
// second until ctx ends, then ends the line; nothing when quiet.
func everySecond(ctx context.Context, quiet bool, line func() string) {
	if quiet {
		<-ctx.Done()
		return
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintln(os.Stderr)
			return
		case <-t.C:
			fmt.Fprint(os.Stderr, "\r"+line())
		}
	}
}

func deviceToken(secret []byte, id string) (string, error) {
	return jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{
		Subject: id, ExpiresAt: jwt.NewNumericDate(time.Now().Add(24 * time.Hour)),
	}).SignedString(secret)
}
