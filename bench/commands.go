package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/ingest-io/ingest/client"
	"github.com/ingest-io/ingest/internal/lifecycle"
	"github.com/ingest-io/ingest/protocol"
)

// The command mode (-commands): devices of the client package, each
// answering every command it gets, and an application that submits
// commands at a pace, each to a device drawn at random among those
// connected, through the command API.
//
// Each command's payload is {"k":N}, N its number in the run (1, 2, 3…),
// so that a device names the command it got before the API's answer, which
// carries the command's id, has reached the bench: the home answers the
// submit and hands the command to the device's frontend after the same
// fsync. Every latency runs from just before the POST is written, on one
// clock:
//
//   - submit: to the API's 202 (the command durable in its home);
//   - API → device: to the device's handler receiving it;
//   - API → result: to a GET /v1/commands/{cid} answering the command's
//     final state, for every -commands.poll'th command: the bench reads its
//     state from the moment the device has answered, every 2 ms, so the
//     figure is what an application polling that often would see, and the
//     reads are a load of their own on the API (counted in the summary).
//
// After the run, and the drain, the bench lists every device's commands
// through the API and fails the run if any accepted command is not
// acknowledged there.

// commandPollEvery is how often a polled command's state is read again.
const commandPollEvery = 2 * time.Millisecond

// cmdRec is what the bench knows of one command, by its number.
type cmdRec struct {
	dev      int
	due      int64 // its slot in the schedule, on the run's clock
	sent     int64 // just before its POST was written; 0: not sent
	cid      string
	accepted bool
	received int64 // when its device first got it; 0: not yet
}

// cmdRun is one command-mode run.
type cmdRun struct {
	c     config
	epoch time.Time
	api   string // base URL of the command API
	token string // application token; empty without auth
	web   *http.Client
	ids   []string // device ids, by index
	ttlMS int64

	mu      sync.Mutex
	recs    []*cmdRec // by number - 1
	refused map[string]int64

	sent, accepted, delivered, duplicates, misrouted, unknown atomic.Int64
	resultGets, resultDropped, pollsLeft                      atomic.Int64

	submitLat, deviceLat, resultLat, lag *stats
	perSec                               perSecond // delivered per second of the run
	start                                atomic.Int64

	polls  chan uint64
	pollWG sync.WaitGroup
}

func (r *cmdRun) now() int64 { return int64(time.Since(r.epoch)) }

// commandResult is what a command-mode run measured; it is also its JSON
// output.
type commandResult struct {
	Scenario struct {
		Devices  int     `json:"devices"`
		Rate     float64 `json:"commands_per_second"`
		Duration string  `json:"duration"`
		Poll     int     `json:"poll_every"`
	} `json:"scenario"`
	Connected   int              `json:"connected"`
	DialFailed  int              `json:"dial_failed"`
	Dial        latency          `json:"connect_ms"`
	Sent        int64            `json:"sent"`
	Accepted    int64            `json:"accepted"`
	AcceptedPS  float64          `json:"accepted_per_second"`
	Refused     map[string]int64 `json:"refused_by_code,omitempty"`
	Delivered   int64            `json:"delivered"`
	Duplicates  int64            `json:"delivered_again"`
	Misrouted   int64            `json:"misrouted"`
	Unknown     int64            `json:"unknown"`
	Final       map[string]int64 `json:"final_states"`
	Undelivered int64            `json:"accepted_not_delivered"`
	Unanswered  int64            `json:"accepted_not_acknowledged"`
	Submit      latency          `json:"submit_ms"`
	Device      latency          `json:"api_to_device_ms"`
	Result      *latency         `json:"api_to_result_ms,omitempty"`
	ResultN     int64            `json:"results_polled"`
	ResultGets  int64            `json:"result_reads"`
	ResultSkip  int64            `json:"results_not_polled,omitempty"` // the poll queue was full
	Lag         latency          `json:"send_lag_ms"`
	PerSecond   []int64          `json:"delivered_each_second"`
	Percentiles []point          `json:"api_to_device_distribution"`
	CPU         *cpuResult       `json:"cpu,omitempty"`
	Intervals   []cmdInterval    `json:"intervals,omitempty"`
}

// runCommands runs the command mode against the engine of -url or one it
// starts (-spawn-all).
func runCommands(ctx context.Context, c config, lg *slog.Logger) (err error) {
	r := &cmdRun{c: c, epoch: time.Now(), refused: map[string]int64{},
		submitLat: newStats(0), deviceLat: newStats(0), resultLat: newStats(0), lag: newStats(0),
		perSec: make(perSecond, int((c.Duration+c.Drain)/time.Second)+2),
		ttlMS:  (c.Duration + c.Drain + time.Minute).Milliseconds()}
	if c.Interval > 0 {
		for _, s := range []*stats{r.submitLat, r.deviceLat, r.resultLat} {
			s.ivl = newShards()
		}
	}
	var secret []byte
	if c.SecretFile != "" {
		b, err := os.ReadFile(c.SecretFile)
		if err != nil {
			return fmt.Errorf("read secret: %w", err)
		}
		secret = []byte(strings.TrimSpace(string(b)))
	}
	if c.SpawnAll != "" {
		eng, err := spawnAll(ctx, c.SpawnAll, c.SpawnSinks)
		if err != nil {
			return err
		}
		defer eng.stop()
		c.URL, c.Insecure, c.enginePID, c.engineMetrics = eng.url, true, eng.pid, eng.metrics
		var cancel context.CancelFunc
		outer := ctx
		ctx, cancel = eng.watch(ctx)
		defer cancel()
		defer func() {
			if xerr := eng.exitErr(); xerr != nil && outer.Err() == nil {
				err = xerr
			}
		}()
	} else {
		c.enginePID, c.engineMetrics = c.PID, c.Metrics
	}
	r.c = c
	if r.api, err = commandAPI(c); err != nil {
		return err
	}
	switch {
	case c.CommandsToken != "":
		b, err := os.ReadFile(c.CommandsToken)
		if err != nil {
			return fmt.Errorf("read application token: %w", err)
		}
		r.token = strings.TrimSpace(string(b))
	case secret != nil:
		if r.token, err = applicationToken(secret); err != nil {
			return err
		}
	}
	r.web = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: commandWorkers, DisableCompression: true,
		DialContext: (&net.Dialer{Timeout: 10 * time.Second}).DialContext}}
	defer r.web.CloseIdleConnections()

	fleet, err := r.connect(ctx, secret, lg)
	if err != nil {
		return err
	}
	defer fleet.close()
	res, err := r.run(ctx, fleet)
	if err != nil {
		return err
	}
	return reportCommands(c, res)
}

// commandAPI is the command API's base URL: -commands.api, or the device
// endpoint's scheme and host (the API is served on the frontend's
// listener).
func commandAPI(c config) (string, error) {
	if c.CommandsAPI != "" {
		return strings.TrimRight(c.CommandsAPI, "/"), nil
	}
	u, err := url.Parse(c.URL)
	if err != nil {
		return "", fmt.Errorf("parse -url: %w", err)
	}
	switch u.Scheme {
	case "ws":
		u.Scheme = "http"
	case "wss":
		u.Scheme = "https"
	default:
		return "", fmt.Errorf("-url %s: give the command API with -commands.api", c.URL)
	}
	return u.Scheme + "://" + u.Host, nil
}

// applicationToken signs a token with the commands scope.
func applicationToken(secret []byte) (string, error) {
	return jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "bench", "scope": "commands", "exp": time.Now().Add(24 * time.Hour).Unix(),
	}).SignedString(secret)
}

// cmdFleet is the devices of a command-mode run.
type cmdFleet struct {
	clients []*client.Client // nil where the device did not connect
	up      []int            // indexes of the devices connected
	dials   *stats
	failed  int
	lastErr error
}

func (f *cmdFleet) close() {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for _, cl := range f.clients {
		if cl == nil {
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			cl.Close()
		})
	}
	wg.Wait()
	f.clients = nil
}

// connect dials every device, spread over -ramp, at most 64 handshakes at
// once; a device that cannot connect in three attempts is left out.
func (r *cmdRun) connect(ctx context.Context, secret []byte, lg *slog.Logger) (*cmdFleet, error) {
	n := r.c.Devices
	r.ids = make([]string, n)
	for i := range r.ids {
		r.ids[i] = fmt.Sprintf("bench-%06d", i)
	}
	webs := make([]*http.Client, max(r.c.Sources, 1))
	for s := range webs {
		d := &net.Dialer{Timeout: 10 * time.Second}
		if r.c.Sources > 1 {
			d.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(s+1))}
		}
		webs[s] = &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
	}
	f := &cmdFleet{clients: make([]*client.Client, n), dials: newStats(0)}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	start := time.Now()
	for i := range n {
		if r.c.Ramp > 0 && !lifecycle.Sleep(ctx, time.Until(start.Add(r.c.Ramp*time.Duration(i)/time.Duration(n)))) {
			break
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			o := client.Options{URL: r.c.URL, HTTPClient: webs[i%len(webs)], OnCommand: r.onCommand(i),
				MinBackoff: 50 * time.Millisecond, MaxBackoff: 2 * time.Second}
			var cl *client.Client
			var err error
			if r.c.Insecure {
				o.URL, err = withDevice(o.URL, r.ids[i])
			} else if secret != nil {
				o.Token, err = deviceToken(secret, r.ids[i])
			}
			if err == nil {
				cl, err = dialDevice(ctx, o, f.dials, i)
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil || cl == nil {
				f.failed++
				f.lastErr = err
				return
			}
			f.clients[i] = cl
		})
	}
	wg.Wait()
	for i, cl := range f.clients {
		if cl != nil {
			f.up = append(f.up, i)
		}
	}
	if f.failed > 0 {
		lg.Warn("dial", "failed", f.failed, "err", f.lastErr)
	}
	if err := ctx.Err(); err != nil {
		f.close()
		return nil, err
	}
	if len(f.up) == 0 {
		return nil, fmt.Errorf("no device connected: %v", f.lastErr)
	}
	return f, nil
}

// dialDevice connects device i, trying three times.
func dialDevice(ctx context.Context, o client.Options, dials *stats, i int) (*client.Client, error) {
	var err error
	for range 3 {
		t0 := time.Now()
		var cl *client.Client
		if cl, err = client.Dial(ctx, o); err == nil {
			dials.record(i, int64(time.Since(t0)))
			return cl, nil
		}
		if !lifecycle.Sleep(ctx, 100*time.Millisecond) {
			break
		}
	}
	return nil, err
}

// onCommand is device dev's handler: it notes the command's arrival and
// answers ok.
func (r *cmdRun) onCommand(dev int) func(context.Context, client.Command) client.Answer {
	return func(_ context.Context, cmd client.Command) client.Answer {
		now := r.now()
		k, ok := commandKey(cmd.Payload)
		var sent int64
		r.mu.Lock()
		var rec *cmdRec
		if ok && k >= 1 && k <= uint64(len(r.recs)) {
			rec = r.recs[k-1]
		}
		switch {
		case rec == nil:
			r.unknown.Add(1) // not the bench's: answered all the same
		case rec.dev != dev:
			r.misrouted.Add(1)
		case rec.received != 0:
			r.duplicates.Add(1)
		default:
			rec.received, sent = now, rec.sent
		}
		r.mu.Unlock()
		if sent != 0 {
			r.delivered.Add(1)
			r.deviceLat.record(dev, now-sent)
			r.perSec.add(r.start.Load(), now, 1)
			if r.c.CommandsPoll > 0 && k%uint64(r.c.CommandsPoll) == 0 {
				r.pollsLeft.Add(1)
				select {
				case r.polls <- k:
				default:
					r.pollsLeft.Add(-1)
					r.resultDropped.Add(1)
				}
			}
		}
		return client.Answer{Status: protocol.StatusOK}
	}
}

// commandKey reads the number N out of a command payload {"k":N}.
func commandKey(payload []byte) (uint64, bool) {
	var p struct {
		K uint64 `json:"k"`
	}
	if json.Unmarshal(payload, &p) != nil || p.K == 0 {
		return 0, false
	}
	return p.K, true
}

// commandWorkers is how many submits may be in flight at once.
const commandWorkers = 256

// run sends commands for the duration, drains, and reads back every
// command's final state.
func (r *cmdRun) run(ctx context.Context, f *cmdFleet) (*commandResult, error) {
	// The polls: a command enters r.polls when its device has it, and
	// leaves pollsLeft when its state has been read final.
	r.polls = make(chan uint64, 1<<16)
	pollCtx, stopPolls := context.WithCancel(ctx)
	for range 32 {
		r.pollWG.Go(func() {
			for {
				select {
				case <-pollCtx.Done():
					return
				case k := <-r.polls:
					r.poll(pollCtx, k)
					r.pollsLeft.Add(-1)
				}
			}
		})
	}
	defer r.pollWG.Wait()
	defer stopPolls()

	sendTime, lines, cpuUsed := r.send(ctx, f)

	// Drain: every accepted command delivered, every polled one read back.
	deadline := time.Now().Add(r.c.Drain)
	for (r.delivered.Load() < r.accepted.Load() || r.pollsLeft.Load() > 0) && time.Now().Before(deadline) && lifecycle.Sleep(ctx, 20*time.Millisecond) {
	}
	stopPolls()
	r.pollWG.Wait()
	final, unanswered, err := r.finalStates(ctx, deadline)
	if err != nil {
		return nil, err
	}
	res := r.result(f, sendTime, cpuUsed)
	res.Final, res.Unanswered, res.Intervals = final, unanswered, lines
	return res, nil
}

// send submits commands at their pace for the duration, through
// commandWorkers goroutines, and returns how long it took, the interval
// lines, and the CPU time spent meanwhile.
func (r *cmdRun) send(ctx context.Context, f *cmdFleet) (time.Duration, []cmdInterval, *cpuResult) {
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	jobs := make(chan uint64, 1<<16)
	var workers sync.WaitGroup
	for range commandWorkers {
		workers.Go(func() {
			var buf []byte
			for k := range jobs {
				buf = r.submit(ctx, k, buf)
			}
		})
	}
	cpu := startCPU(r.c.enginePID)
	r.start.Store(r.now())
	sendStart := time.Now()
	var lines []cmdInterval
	var bg sync.WaitGroup
	bg.Go(func() {
		if r.c.Interval > 0 {
			lines = r.intervals(runCtx, os.Stdout)
		} else {
			r.progress(runCtx)
		}
	})
	r.pace(runCtx, jobs, f.up)
	close(jobs)
	workers.Wait()
	sendTime := time.Since(sendStart)
	stopRun()
	bg.Wait()
	return sendTime, lines, cpu.stop(r.accepted.Load())
}

// result summarises what the run measured.
func (r *cmdRun) result(f *cmdFleet, sendTime time.Duration, cpuUsed *cpuResult) *commandResult {
	res := &commandResult{Connected: len(f.up), DialFailed: f.failed, Dial: latencyOf(merged(f.dials.shards)),
		Sent: r.sent.Load(), Accepted: r.accepted.Load(), Delivered: r.delivered.Load(), Duplicates: r.duplicates.Load(),
		Misrouted: r.misrouted.Load(), Unknown: r.unknown.Load(),
		Submit: latencyOf(merged(r.submitLat.shards)), Lag: latencyOf(merged(r.lag.shards)),
		ResultGets: r.resultGets.Load(), ResultSkip: r.resultDropped.Load(), CPU: cpuUsed}
	res.Scenario.Devices, res.Scenario.Rate, res.Scenario.Duration, res.Scenario.Poll = r.c.Devices, r.c.Commands, r.c.Duration.String(), r.c.CommandsPoll
	res.AcceptedPS = float64(res.Accepted) / sendTime.Seconds()
	r.mu.Lock()
	for _, rec := range r.recs {
		if rec.accepted && rec.received == 0 {
			res.Undelivered++
		}
	}
	if len(r.refused) > 0 {
		res.Refused = r.refused
	}
	r.mu.Unlock()
	h := merged(r.deviceLat.shards)
	res.Device = latencyOf(h)
	for _, p := range []float64{0, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 100} {
		res.Percentiles = append(res.Percentiles, point{p, float64(h.ValueAtQuantile(p)) / 1000})
	}
	if rh := merged(r.resultLat.shards); rh.TotalCount() > 0 {
		l := latencyOf(rh)
		res.Result, res.ResultN = &l, rh.TotalCount()
	}
	res.PerSecond = r.perSec.counts()
	return res
}

// pace queues command numbers on jobs at -commands a second, for the
// duration, each for a device drawn from up, until ctx ends.
func (r *cmdRun) pace(ctx context.Context, jobs chan<- uint64, up []int) {
	period := float64(time.Second) / r.c.Commands
	start := r.now()
	stop := start + int64(r.c.Duration)
	for k := uint64(1); ; k++ {
		due := start + int64(float64(k-1)*period)
		if due >= stop || !lifecycle.Sleep(ctx, time.Duration(due-r.now())) {
			return
		}
		rec := &cmdRec{dev: up[rand.N(len(up))], due: due}
		r.mu.Lock()
		r.recs = append(r.recs, rec)
		r.mu.Unlock()
		select {
		case jobs <- k:
		case <-ctx.Done():
			return
		}
	}
}

// submit POSTs command k and records its answer; buf is reused for the
// body.
func (r *cmdRun) submit(ctx context.Context, k uint64, buf []byte) []byte {
	r.mu.Lock()
	rec := r.recs[k-1]
	r.mu.Unlock()
	buf = append(buf[:0], `{"name":"bench","payload":{"k":`...)
	buf = strconv.AppendUint(buf, k, 10)
	buf = append(buf, `},"ttl_ms":`...)
	buf = strconv.AppendInt(buf, r.ttlMS, 10)
	buf = append(buf, '}')
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.api+"/v1/devices/"+url.PathEscape(r.ids[rec.dev])+"/commands", bytes.NewReader(buf))
	if err != nil {
		r.refuse("request")
		return buf
	}
	req.Header.Set("Content-Type", "application/json")
	if r.token != "" {
		req.Header.Set("Authorization", "Bearer "+r.token)
	}
	t0 := r.now()
	r.mu.Lock()
	rec.sent = t0
	r.mu.Unlock()
	r.lag.record(rec.dev, t0-rec.due)
	r.sent.Add(1)
	resp, err := r.web.Do(req)
	if err != nil {
		r.refuse("post_failed")
		return buf
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	t1 := r.now()
	if err != nil {
		r.refuse("post_failed")
		return buf
	}
	if resp.StatusCode != http.StatusAccepted {
		r.refuse(fmt.Sprintf("http_%d_%s", resp.StatusCode, errorCode(body)))
		return buf
	}
	cid, _, err := parseCommand(body)
	if err != nil {
		r.refuse("bad_answer")
		return buf
	}
	r.mu.Lock()
	rec.cid, rec.accepted = cid, true
	r.mu.Unlock()
	r.accepted.Add(1)
	r.submitLat.record(rec.dev, t1-t0)
	return buf
}

func (r *cmdRun) refuse(code string) {
	r.mu.Lock()
	r.refused[code]++
	r.mu.Unlock()
}

// parseCommand reads a command's id and state out of the API's answer.
func parseCommand(body []byte) (cid, state string, err error) {
	var c struct {
		ID    string `json:"id"`
		State string `json:"state"`
	}
	if err := json.Unmarshal(body, &c); err != nil {
		return "", "", err
	}
	if c.ID == "" || len(c.ID) > protocol.MaxCommandIDBytes || strings.ContainsAny(c.ID, "/?#") {
		return "", "", errors.New("no command id")
	}
	return c.ID, c.State, nil
}

// errorCode reads the code of an API error body, or "?".
func errorCode(body []byte) string {
	var e struct {
		Code string `json:"code"`
	}
	if json.Unmarshal(body, &e) != nil || e.Code == "" || len(e.Code) > 64 {
		return "?"
	}
	return e.Code
}

// finalState reports whether state is one a command leaves no more.
func finalState(state string) bool {
	switch state {
	case "acknowledged", "failed", "expired", "cancelled":
		return true
	}
	return false
}

// poll reads command k's state every commandPollEvery until it is final,
// and records the latency at which it became visible so.
func (r *cmdRun) poll(ctx context.Context, k uint64) {
	r.mu.Lock()
	rec := r.recs[k-1]
	r.mu.Unlock()
	for ctx.Err() == nil {
		r.mu.Lock()
		cid, sent, dev := rec.cid, rec.sent, rec.dev
		r.mu.Unlock()
		if cid == "" { // the API's answer is still on its way
			if !lifecycle.Sleep(ctx, commandPollEvery) {
				return
			}
			continue
		}
		state, err := r.getState(ctx, cid)
		r.resultGets.Add(1)
		if err == nil && finalState(state) {
			if state == "acknowledged" {
				r.resultLat.record(dev, r.now()-sent)
			}
			return
		}
		if !lifecycle.Sleep(ctx, commandPollEvery) {
			return
		}
	}
}

func (r *cmdRun) get(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.api+path, nil)
	if err != nil {
		return nil, err
	}
	if r.token != "" {
		req.Header.Set("Authorization", "Bearer "+r.token)
	}
	resp, err := r.web.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: HTTP %d %s", path, resp.StatusCode, errorCode(body))
	}
	return body, nil
}

func (r *cmdRun) getState(ctx context.Context, cid string) (string, error) {
	body, err := r.get(ctx, "/v1/commands/"+url.PathEscape(cid))
	if err != nil {
		return "", err
	}
	_, state, err := parseCommand(body)
	return state, err
}

// parseList reads the ids and states out of a list answer.
func parseList(body []byte) (map[string]string, error) {
	var l struct {
		Commands []struct {
			ID    string `json:"id"`
			State string `json:"state"`
		} `json:"commands"`
	}
	if err := json.Unmarshal(body, &l); err != nil {
		return nil, err
	}
	out := make(map[string]string, len(l.Commands))
	for _, c := range l.Commands {
		out[c.ID] = c.State
	}
	return out, nil
}

// finalStates lists the commands of every device that was sent one and
// counts the accepted ones by state ("missing": not listed), reading again
// those not final until the deadline. unanswered counts the accepted
// commands not acknowledged.
func (r *cmdRun) finalStates(ctx context.Context, deadline time.Time) (map[string]int64, int64, error) {
	byDev := map[int]map[string]string{} // device → cid → state, "" unread
	r.mu.Lock()
	for _, rec := range r.recs {
		if rec.accepted {
			if byDev[rec.dev] == nil {
				byDev[rec.dev] = map[string]string{}
			}
			byDev[rec.dev][rec.cid] = ""
		}
	}
	r.mu.Unlock()
	var mu sync.Mutex
	var lastErr error
	for {
		var todo []int
		for dev, cmds := range byDev {
			for _, st := range cmds {
				if !finalState(st) {
					todo = append(todo, dev)
					break
				}
			}
		}
		var wg sync.WaitGroup
		sem := make(chan struct{}, 16)
		for _, dev := range todo {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				body, err := r.get(ctx, "/v1/devices/"+url.PathEscape(r.ids[dev])+"/commands")
				var got map[string]string
				if err == nil {
					got, err = parseList(body)
				}
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					lastErr = err
					return
				}
				for cid := range byDev[dev] {
					st, ok := got[cid]
					if !ok {
						st = "missing"
					}
					byDev[dev][cid] = st
				}
			})
		}
		wg.Wait()
		if len(todo) == 0 || !time.Now().Before(deadline) || !lifecycle.Sleep(ctx, 200*time.Millisecond) {
			break
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	final := map[string]int64{}
	var unanswered int64
	for _, cmds := range byDev {
		for _, st := range cmds {
			if st == "" {
				st = "unread"
			}
			final[st]++
			if st != "acknowledged" {
				unanswered++
			}
		}
	}
	if unanswered > 0 && lastErr != nil {
		fmt.Fprintln(os.Stderr, "bench: reading commands back:", lastErr)
	}
	return final, unanswered, nil
}

// refusedTotal is the number of commands the API has refused so far.
func (r *cmdRun) refusedTotal() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var n int64
	for _, k := range r.refused {
		n += k
	}
	return n
}

// progress prints a line a second until ctx ends, unless quiet.
func (r *cmdRun) progress(ctx context.Context) {
	var last int64
	everySecond(ctx, r.c.Quiet, func() string {
		d := r.delivered.Load()
		h := merged(r.deviceLat.shards)
		refused := r.refusedTotal()
		line := fmt.Sprintf("%5.0fs  accepted %-9d delivered %-9d %6d/s  API → device p50 %7.2fms  p99 %7.2fms  refused %d   ",
			float64(r.now()-r.start.Load())/1e9, r.accepted.Load(), d, d-last,
			float64(h.ValueAtQuantile(50))/1000, float64(h.ValueAtQuantile(99))/1000, refused)
		last = d
		return line
	})
}

// cmdInterval is one line of a command-mode run with -interval.
type cmdInterval struct {
	End          float64 `json:"end_s"`
	AcceptedPS   float64 `json:"accepted_per_second"`
	DeliveredPS  float64 `json:"delivered_per_second"`
	Refused      int64   `json:"refused"`
	SubmitP99    float64 `json:"submit_p99_ms"`
	DeviceP50    float64 `json:"device_p50_ms"`
	DeviceP99    float64 `json:"device_p99_ms"`
	DeviceP999   float64 `json:"device_p999_ms"`
	DeviceMax    float64 `json:"device_max_ms"`
	ResultP99    float64 `json:"result_p99_ms,omitempty"`
	RSSMiB       float64 `json:"engine_rss_mib,omitempty"`
	Goroutines   int     `json:"engine_goroutines,omitempty"`
	CPUPercent   float64 `json:"engine_cpu_percent,omitempty"`
	BenchPercent float64 `json:"bench_cpu_percent"`
	Load1        float64 `json:"load_average_1m"`
}

// intervals prints a line every -interval until ctx ends, and returns them.
func (r *cmdRun) intervals(ctx context.Context, w io.Writer) []cmdInterval {
	t := time.NewTicker(r.c.Interval)
	defer t.Stop()
	start := time.Now()
	var out []cmdInterval
	var lastAcc, lastDel, lastRef int64
	lastCPU, _ := processCPU(r.c.enginePID)
	lastSelf := selfCPU()
	lastAt := start
	fmt.Fprintf(w, "%8s %10s %11s %8s %10s %9s %9s %9s %9s %10s %8s %10s %7s %7s %6s\n",
		"end_s", "accepted/s", "delivered/s", "refused", "submit_p99", "dev_p50", "dev_p99", "dev_p99.9", "dev_max", "result_p99",
		"rss_mib", "goroutines", "cpu_%", "bench_%", "load")
	line := func(now time.Time) {
		secs := now.Sub(lastAt).Seconds()
		acc, del := r.accepted.Load(), r.delivered.Load()
		ref := r.refusedTotal()
		sh, dh, rh := r.submitLat.takeInterval(), r.deviceLat.takeInterval(), r.resultLat.takeInterval()
		iv := cmdInterval{End: now.Sub(start).Seconds(), AcceptedPS: float64(acc-lastAcc) / secs, DeliveredPS: float64(del-lastDel) / secs,
			Refused: ref - lastRef, SubmitP99: ms(sh.ValueAtQuantile(99)), DeviceP50: ms(dh.ValueAtQuantile(50)),
			DeviceP99: ms(dh.ValueAtQuantile(99)), DeviceP999: ms(dh.ValueAtQuantile(99.9)), DeviceMax: ms(dh.Max()),
			Load1: loadAverage()}
		if rh.TotalCount() > 0 {
			iv.ResultP99 = ms(rh.ValueAtQuantile(99))
		}
		self := selfCPU()
		iv.BenchPercent = 100 * (self - lastSelf).Seconds() / secs
		if r.c.enginePID > 0 {
			iv.RSSMiB = processMemory(r.c.enginePID).rss
			if c, ok := processCPU(r.c.enginePID); ok {
				iv.CPUPercent = 100 * (c - lastCPU).Seconds() / secs
				lastCPU = c
			}
		}
		if r.c.engineMetrics != "" {
			iv.Goroutines = scrapeRuntime(context.Background(), r.c.engineMetrics).goroutines
		}
		lastAcc, lastDel, lastRef, lastAt, lastSelf = acc, del, ref, now, self
		out = append(out, iv)
		fmt.Fprintf(w, "%8.0f %10.0f %11.0f %8d %10.2f %9.2f %9.2f %9.2f %9.2f %10.2f %8.1f %10d %7.1f %7.1f %6.2f\n",
			iv.End, iv.AcceptedPS, iv.DeliveredPS, iv.Refused, iv.SubmitP99, iv.DeviceP50, iv.DeviceP99, iv.DeviceP999, iv.DeviceMax,
			iv.ResultP99, iv.RSSMiB, iv.Goroutines, iv.CPUPercent, iv.BenchPercent, iv.Load1)
	}
	for {
		select {
		case <-ctx.Done():
			// The run's last part, if commands were accepted in it: a
			// slow tick (a scrape of a loaded engine) must not leave
			// them unreported.
			if r.accepted.Load() != lastAcc {
				line(time.Now())
			}
			return out
		case now := <-t.C:
			line(now)
		}
	}
}

func (r *commandResult) print(w io.Writer) {
	fmt.Fprintf(w, "scenario: %d devices, %g commands/s to random ones, %s\n", r.Scenario.Devices, r.Scenario.Rate, r.Scenario.Duration)
	fmt.Fprintf(w, "connected:  %d (failed %d); connect p50 %.1f ms, p99 %.1f ms, max %.1f ms\n",
		r.Connected, r.DialFailed, r.Dial.P50, r.Dial.P99, r.Dial.Max)
	fmt.Fprintf(w, "commands:   sent %d, accepted %d (%.0f/s), delivered %d (again %d), misrouted %d, unknown %d\n",
		r.Sent, r.Accepted, r.AcceptedPS, r.Delivered, r.Duplicates, r.Misrouted, r.Unknown)
	fmt.Fprintf(w, "submit → 202 ms:   p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  mean %.3f\n",
		r.Submit.P50, r.Submit.P90, r.Submit.P99, r.Submit.P999, r.Submit.Max, r.Submit.Mean)
	fmt.Fprintf(w, "API → device ms:   p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  mean %.3f\n",
		r.Device.P50, r.Device.P90, r.Device.P99, r.Device.P999, r.Device.Max, r.Device.Mean)
	if l := r.Result; l != nil {
		fmt.Fprintf(w, "API → result ms:   p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  (%d commands, 1 in %d, read %d times; %d not polled)\n",
			l.P50, l.P90, l.P99, l.P999, l.Max, r.ResultN, r.Scenario.Poll, r.ResultGets, r.ResultSkip)
	}
	fmt.Fprintf(w, "send lag ms (schedule → POST): p50 %.3f  p99 %.3f  max %.3f\n", r.Lag.P50, r.Lag.P99, r.Lag.Max)
	if cp := r.CPU; cp != nil {
		fmt.Fprintf(w, "cpu:        bench %.2f s", cp.BenchSeconds)
		if cp.EngineSeconds > 0 {
			fmt.Fprintf(w, ", engine %.2f s (%.1f µs per command)", cp.EngineSeconds, cp.EngineMicrosPerMsg)
		}
		fmt.Fprintf(w, " while sending; load average %.2f\n", cp.LoadAverage)
	}
	fmt.Fprintf(w, "final:      %s; accepted and not delivered %d, not acknowledged %d\n", countsLine(r.Final), r.Undelivered, r.Unanswered)
	if len(r.Refused) == 0 {
		fmt.Fprintln(w, "refused:    none")
		return
	}
	fmt.Fprintf(w, "refused:    %s\n", countsLine(r.Refused))
}

// countsLine prints counts by name, sorted by name.
func countsLine(m map[string]int64) string {
	if len(m) == 0 {
		return "none"
	}
	var parts []string
	for k, n := range m {
		parts = append(parts, fmt.Sprintf("%s=%d", k, n))
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

// reportCommands prints the results, writes the JSON, and fails the run
// when an accepted command was not acknowledged or none was accepted.
func reportCommands(c config, res *commandResult) error {
	res.print(os.Stdout)
	if err := writeJSON(c.JSON, res); err != nil {
		return err
	}
	return res.verdict()
}

// verdict is the run's failure, if any: no command accepted, an accepted
// one not delivered or not acknowledged, or one delivered to another
// device.
func (r *commandResult) verdict() error {
	switch {
	case r.Accepted == 0:
		return errors.New("no command was accepted")
	case r.Misrouted > 0:
		return fmt.Errorf("%d commands reached another device than their own", r.Misrouted)
	case r.Undelivered > 0:
		return fmt.Errorf("%d accepted commands not delivered", r.Undelivered)
	case r.Unanswered > 0:
		return fmt.Errorf("%d accepted commands not acknowledged (%s)", r.Unanswered, countsLine(r.Final))
	}
	return nil
}

// withDevice returns the device endpoint rawURL naming device id in its
// query (?device=, for an engine without auth), beside any query it has.
func withDevice(rawURL, id string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", err
	}
	q := u.Query()
	q.Set("device", id)
	u.RawQuery = q.Encode()
	return u.String(), nil
}
