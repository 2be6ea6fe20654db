package frontend

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/auth"
	"github.com/ingest-io/ingest/downlink"
	"github.com/ingest-io/ingest/envelope"
	"github.com/ingest-io/ingest/internal/bodyread"
	"github.com/ingest-io/ingest/internal/lifecycle"
	"github.com/ingest-io/ingest/internal/loopback"
	"github.com/ingest-io/ingest/internal/probe"
	"github.com/ingest-io/ingest/protocol"
	"github.com/ingest-io/ingest/wal"
)

// Handshake refusals beside those of the device protocol.
const (
	// reasonNotReady counts handshakes refused with 503 while the server
	// is not ready (starting, draining, or its WAL failed).
	reasonNotReady = "not_ready"
	// reasonForeignHost counts requests refused with 403 without auth
	// because they name a host of the DNS, not a local one (Handler).
	reasonForeignHost = "foreign_host"
	// notReadyRetryAfter is the Retry-After of that 503, in seconds.
	notReadyRetryAfter = "5"
	// logEvery is how often a condition that repeats per connection is
	// logged: once, with how many times it happened since.
	logEvery = 10 * time.Second
)

// maxHeaderBytes bounds a handshake's request line and headers; past it
// net/http answers 431.
const maxHeaderBytes = 256 << 10

// ErrNotLoopback is returned by New when InsecureNoAuth is set and the
// listener is not on a loopback address.
var ErrNotLoopback = errors.New("frontend: running without auth requires a loopback listener")

// Server is the device-facing WebSocket server. It owns no WAL: the caller
// opens the log, hands it to New, and closes it after Run has returned.
type Server struct {
	opts Options
	log  *wal.Log
	lg   *slog.Logger
	m    *metrics
	auth *auth.Verifier // nil with InsecureNoAuth

	limits *limits // rate-limit buckets of devices between connections
	mqtt   mqttServer

	ready  atomic.Bool
	nconns atomic.Int64

	notReadyLog rateLog // handshakes refused while not ready
	walErrLog   rateLog // connections closed by a failed WAL append

	// hard ends WAL appends and writes still running when the drain window
	// is over.
	hard       context.Context
	hardCancel context.CancelFunc

	// mu guards the connection registry. Lock order: Server.mu before conn.mu.
	mu       sync.Mutex
	conns    map[session]struct{}
	devices  map[string]session // one session per device, across transports
	draining bool

	life lifecycle.Once

	wg sync.WaitGroup // connection handlers and their flushers

	pendPool sync.Pool // *pending
	readPool sync.Pool // *[]byte frame buffers
	msgPool  sync.Pool // *[]protocol.Message
}

// New validates opts and prepares a Server. It starts nothing. It takes
// opts.Listener and opts.MQTTListener: if New fails, it closes them. reg
// and lg may be nil.
func New(opts Options, log *wal.Log, reg prometheus.Registerer, lg *slog.Logger) (_ *Server, err error) {
	defer func() {
		if err != nil {
			closeListeners(opts)
		}
	}()
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if log == nil {
		return nil, errors.New("check wal: nil log")
	}
	for _, ln := range []net.Listener{o.Listener, o.MQTTListener} {
		if o.InsecureNoAuth && ln != nil && !isLoopback(ln.Addr()) {
			return nil, fmt.Errorf("check listener %s: %w", ln.Addr(), ErrNotLoopback)
		}
	}
	lg = lifecycle.Logger(lg)
	s := &Server{
		opts:    o,
		log:     log,
		lg:      lg,
		conns:   make(map[session]struct{}),
		devices: make(map[string]session),
	}
	if !o.InsecureNoAuth {
		if s.auth, err = auth.NewVerifier(o.Auth); err != nil {
			return nil, err
		}
	}
	if s.m, err = newMetrics(reg); err != nil {
		return nil, fmt.Errorf("register metrics: %w", err)
	}
	if o.MQTTListener != nil {
		s.mqtt.lns = []net.Listener{o.MQTTListener}
	}
	s.limits = newLimits(o.Rate, float64(o.Burst), o.MaxConnections)
	s.hard, s.hardCancel = context.WithCancel(context.Background())
	s.pendPool.New = func() any { return new(pending) }
	s.readPool.New = func() any { b := make([]byte, 0, 4096); return &b }
	s.msgPool.New = func() any { m := make([]protocol.Message, 0, 16); return &m }
	return s, nil
}

// Handler returns the HTTP handler: /v1/ingest, /healthz, /readyz, when
// Options.Gatherer is set /metrics, when Options.Downlink is set the
// command API, and Options.Handlers.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+protocol.Path, s.handleIngest)
	mux.HandleFunc("GET "+MQTTPath, s.handleMQTTWebSocket)
	probe.Mount(mux, probe.Options{Healthy: s.walHealthy, Ready: s.Ready, Gatherer: s.opts.Gatherer})
	if s.opts.Downlink != nil {
		api := downlink.NewAPI(s.opts.Downlink, downlink.APIOptions{Verifier: s.auth, MaxTTL: s.opts.CommandMaxTTL}, s.lg)
		for _, r := range downlink.Routes {
			mux.Handle(r, api)
		}
	}
	for pattern, h := range s.opts.Handlers {
		mux.Handle(pattern, h)
	}
	if !s.opts.InsecureNoAuth {
		return mux
	}
	// Without auth every local process is trusted, and no web page: a
	// page's host name rebound to 127.0.0.1 is same-origin with us for
	// the browser, and only the Host it names tells it apart (package
	// loopback).
	return loopback.Only(mux, func(w http.ResponseWriter) {
		s.refuse(w, http.StatusForbidden, reasonForeignHost, loopback.Refused)
	})
}

// walHealthy says why the frontend is not healthy: its WAL failed.
func (s *Server) walHealthy() error {
	if err := s.log.Err(); err != nil {
		return fmt.Errorf("wal failed: %w", err)
	}
	return nil
}

// Ready reports whether the server accepts devices: it is serving, not
// draining, and its WAL has not failed. While it is not, device handshakes
// are refused with HTTP 503 and Retry-After. A full disk does not make it
// unready: devices are answered overloaded, as at the WAL's bound, and
// acknowledged again once there is room.
func (s *Server) Ready() bool { return s.ready.Load() && s.log.Err() == nil }

// Run accepts devices on Options.Listener (and Options.MQTTListener) until
// ctx ends, then drains:
// readiness turns false, the listener closes, and connections are closed
// with Options.ShutdownCode spread over Options.DrainWindow, each after its
// pending messages have been appended and acknowledged. Run returns once
// every goroutine it started has ended; the listener is closed on return.
// A Server runs once.
//
// If the WAL fails (fail stop: a failed fsync, or a write that failed for
// another reason than a full disk), Run stops too, and returns the
// failure: the log can only be recovered by opening it again, and the
// process is meant to exit so that its supervisor starts it again (the
// frontend's liveness probe, /healthz, fails meanwhile). It first stays a
// lame duck for the drain window: handshakes are answered 503 with
// Retry-After, and connections are closed, so that devices and load
// balancers get a clear answer.
func (s *Server) Run(ctx context.Context) error {
	if !s.life.Start() {
		return errors.New("frontend: run: the server has run or is closed")
	}
	ln := s.opts.Listener
	if s.opts.InsecureNoAuth {
		s.lg.Warn("device authentication is OFF: any local process can write as any device", "addr", ln.Addr().String())
	}
	// Ready before the first device can be served, on either listener: a
	// CONNECT read before would be refused as if the server were stopping.
	s.ready.Store(true)
	stopMQTT := s.startMQTT()
	// Every handler counts in handlers, which Run waits for; a WebSocket
	// handshake's returns once its connection has its own goroutine (s.wg).
	var handlers lifecycle.Handlers
	hs := &http.Server{
		// A body (the command API's, or one sent to /healthz) is read
		// within HandshakeTimeout, as the headers are: the server has no
		// ReadTimeout, which would cut devices' connections.
		Handler:           handlers.Wrap(bodyread.Bound(s.Handler(), s.opts.HandshakeTimeout)),
		ReadHeaderTimeout: s.opts.HandshakeTimeout,
		IdleTimeout:       time.Minute,
		// Headers are read before any token is checked: net/http's 1 MiB
		// default let anyone hold 1.5–2 MB a connection for the
		// handshake timeout. A token is at most 8 KiB; a quarter of a MiB
		// still reads one far over it, to answer token_too_large.
		MaxHeaderBytes: maxHeaderBytes,
		ErrorLog:       slog.NewLogLogger(s.lg.Handler(), slog.LevelDebug),
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()

	var serveErr error
	walFailed := false
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
		errc = nil
		serveErr = fmt.Errorf("serve http: %w", serveErr)
	case <-s.log.Failed():
		walFailed = true
		serveErr = fmt.Errorf("serve: %w", s.log.Err())
	}
	s.ready.Store(false)
	start := time.Now()
	var n int
	if walFailed {
		// A lame duck for the drain window, ln still open: handshakes
		// get 503 and Retry-After (handleIngest), connections are closed.
		s.lg.Error("frontend stopping: its WAL failed and must be reopened from disk; devices are refused meanwhile",
			"err", s.log.Err(), "drain_window", s.opts.DrainWindow)
		n = s.drain()
		if rest := s.opts.DrainWindow - time.Since(start); rest > 0 {
			t := time.NewTimer(rest)
			select {
			case <-t.C:
			case <-ctx.Done():
			}
			t.Stop()
		}
	}
	// Shutdown closes ln and gives plain HTTP requests (the command API,
	// probes, metrics, a profile of --debug.pprof) the drain window; the
	// devices drain meanwhile, not after them: a request that takes its
	// time must not hold up their drain. Those still running then have
	// their connections closed, which ends their contexts, and are waited
	// for.
	shCtx, cancel := context.WithTimeout(context.Background(), s.opts.DrainWindow)
	defer cancel()
	shut := make(chan struct{})
	go func() {
		defer close(shut)
		hs.Shutdown(shCtx)
		hs.Close()
		handlers.End()
	}()
	if errc != nil {
		<-errc // Serve returns once Shutdown has closed ln
	}
	stopMQTT()
	if !walFailed {
		n = s.drain()
	}
	<-shut
	s.lg.Info("frontend drained", "connections", n, "duration", time.Since(start))
	return serveErr
}

// Close releases what New took when Run has not: it closes the listener of
// a Server that never ran, and unregisters the metrics. Call it after Run
// has returned, or instead of Run; it does not stop Run (end Run's context
// for that). It is idempotent.
func (s *Server) Close() error {
	return s.life.Release(s.m.unregister, func() error { return closeListeners(s.opts) })
}

// closeListeners closes the listeners of o.
func closeListeners(o Options) error {
	var errs []error
	for _, ln := range []net.Listener{o.Listener, o.MQTTListener} {
		if ln != nil {
			errs = append(errs, ln.Close())
		}
	}
	return errors.Join(errs...)
}

// drain closes every connection over the drain window and waits for them,
// hard-closing whatever is left after the window plus one write timeout.
func (s *Server) drain() int {
	s.mu.Lock()
	s.draining = true
	conns := make([]session, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()

	var closers sync.WaitGroup
	if len(conns) > 0 {
		step := s.opts.DrainWindow / time.Duration(len(conns))
		t := time.NewTimer(0)
		for i, c := range conns {
			if i > 0 && step > 0 {
				t.Reset(step)
				<-t.C
			}
			closers.Go(func() { c.finish(s.opts.ShutdownCode, reasonDrain) })
		}
		t.Stop()
	}
	done := make(chan struct{})
	go func() { closers.Wait(); s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(s.opts.WriteTimeout):
		s.lg.Warn("drain window over: closing remaining connections")
		s.hardCancel()
		s.mu.Lock()
		for c := range s.conns {
			c.closeNow()
		}
		s.mu.Unlock()
		<-done
	}
	s.hardCancel()
	return len(conns)
}

func isLoopback(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}

// verifyDevice checks a device's token and returns its subject, the device
// id, and its expiry (zero when the token has none). A token that carries
// a scope is an application's or a feed reader's (the same keys sign
// them): it is not a device's, whatever its subject.
func verifyDevice(v *auth.Verifier, token string) (device string, exp time.Time, err error) {
	var claims auth.ScopedClaims
	if err := v.Verify(token, &claims); err != nil {
		return "", time.Time{}, err
	}
	if len(claims.Scope) > 0 {
		return "", time.Time{}, fmt.Errorf("%w: a token with a scope (%s) is an application's or a feed reader's, not a device's",
			auth.ErrUnauthorized, strings.Join(claims.Scope, " "))
	}
	if err := envelope.CheckID(claims.Subject); err != nil {
		return "", time.Time{}, fmt.Errorf("%w: token subject: %w", auth.ErrUnauthorized, err)
	}
	if claims.ExpiresAt != nil {
		exp = claims.ExpiresAt.Time
	}
	return claims.Subject, exp, nil
}

// handleIngest authenticates the device, upgrades and runs the connection.
func (s *Server) handleIngest(w http.ResponseWriter, r *http.Request) {
	var (
		device string
		exp    time.Time
	)
	if !s.Ready() {
		// Starting, draining, or the WAL failed: no connection could
		// store anything. Logged once per interval, not per device.
		why := "draining"
		if err := s.walHealthy(); err != nil {
			why = err.Error()
		}
		s.notReadyLog.log(s.lg, slog.LevelWarn, "device handshakes refused: frontend not ready", "why", why)
		w.Header().Set("Retry-After", notReadyRetryAfter)
		s.refuse(w, http.StatusServiceUnavailable, reasonNotReady, "server not ready; reconnect later")
		return
	}
	if s.auth != nil {
		tok, ok := auth.BearerToken(r)
		if !ok {
			s.refuse(w, http.StatusUnauthorized, protocol.CodeUnauthorized, "missing bearer token")
			return
		}
		var err error
		if device, exp, err = verifyDevice(s.auth, tok); err != nil {
			s.lg.Debug("token refused", "remote", r.RemoteAddr, "err", err)
			code := protocol.CodeUnauthorized
			if errors.Is(err, auth.ErrTokenTooLarge) {
				code = protocol.CodeTokenTooLarge
			}
			s.refuse(w, http.StatusUnauthorized, code, err.Error())
			return
		}
	} else {
		device = r.URL.Query().Get("device")
		if envelope.CheckID(device) != nil {
			s.refuse(w, http.StatusUnauthorized, protocol.CodeUnauthorized, "without auth the device id must be given as ?device=")
			return
		}
	}
	if s.revoked(device) {
		s.lg.Debug("handshake of a disabled device refused", "device", device, "remote", r.RemoteAddr)
		s.refuse(w, http.StatusForbidden, protocol.CodeRevoked, "device "+device+" is disabled in the device registry")
		return
	}
	if s.nconns.Add(1) > int64(s.opts.MaxConnections) {
		s.nconns.Add(-1)
		w.Header().Set("Retry-After", "5")
		s.refuse(w, http.StatusServiceUnavailable, "too_many_connections", "too many connections")
		return
	}

	// Counted in s.wg from before the upgrade (admit): a drain that meets
	// the handshake waits for it as for a connection, so that whatever ends
	// it (a refusal below, with its close handshake) ends before Run
	// returns. One the drain has begun before is refused as not ready.
	if !s.admit() {
		s.nconns.Add(-1)
		w.Header().Set("Retry-After", notReadyRetryAfter)
		s.refuse(w, http.StatusServiceUnavailable, reasonNotReady, "server not ready; reconnect later")
		return
	}
	served := false
	defer func() {
		if !served {
			s.wg.Done()
		}
	}()
	c := &conn{s: s, device: device, exp: exp, done: make(chan struct{})}
	c.init(&s.pendPool, &s.wg, c.flush)
	hj := &hijacker{ResponseWriter: w, writeTimeout: s.opts.WriteTimeout}
	ws, err := websocket.Accept(hj, r, &websocket.AcceptOptions{
		OriginPatterns:  s.opts.OriginPatterns,
		CompressionMode: websocket.CompressionDisabled,
		OnPongReceived:  func(context.Context, []byte) { c.lastRead.Store(time.Now().UnixNano()) },
	})
	if err != nil {
		// Accept has answered the request (403 for a foreign Origin, 400 otherwise).
		s.nconns.Add(-1)
		s.m.handshakes.WithLabelValues("bad_handshake").Inc()
		s.lg.Debug("websocket handshake refused", "remote", r.RemoteAddr, "err", err)
		return
	}
	ws.SetReadLimit(int64(s.opts.MaxFrameBytes))
	c.ws, c.nc, c.bounded = ws, hj.nc, hj.bounded

	old, reg := s.register(c, device)
	switch reg {
	case refusedDraining:
		s.nconns.Add(-1)
		ws.Close(s.opts.ShutdownCode, protocol.ReasonShutdown)
		s.m.closes.WithLabelValues(reasonDrain).Inc()
		return
	case refusedRevoked:
		s.nconns.Add(-1)
		s.lg.Debug("device disabled in the registry during its handshake: closing", "device", device)
		ws.Close(protocol.ClosePolicyViolation, protocol.ReasonRevoked)
		s.m.closes.WithLabelValues(reasonRevoked).Inc()
		return
	}
	// The connection gets a goroutine of its own and the handler returns, so
	// that net/http lets go of the request, its buffers and the deep stack
	// of the handshake (~4 KB per connection). run ends its count in s.wg.
	served = true
	go s.run(c, old)
}

// run serves an upgraded connection until it ends. old is the device's
// previous connection, if it had one.
func (s *Server) run(c *conn, old session) {
	defer s.wg.Done()
	defer s.nconns.Add(-1)
	s.m.connections.Inc()
	defer s.m.connections.Dec()

	// The newer connection starts reading only after the older one has finished.
	s.takeOver(old, c.device)
	c.bucket = s.limits.take(c.device, time.Now().UnixNano())
	if t := s.endAtExpiry(c, c.device, c.exp); t != nil {
		defer t.Stop()
	}

	if s.opts.Downlink != nil {
		// A WebSocket write waits at most WriteTimeout, expiry or not.
		c.att = s.opts.Downlink.Attach(c.device, func(b []byte, _ time.Time) error { return c.write(b) })
	}
	c.serve()
	if c.att != nil {
		c.att.Detach()
	}

	s.unregister(c, c.device)
}

// refuse answers a handshake that will not be upgraded with a JSON error body
// shaped like an error frame.
func (s *Server) refuse(w http.ResponseWriter, status int, reason, msg string) {
	s.m.handshakes.WithLabelValues(reason).Inc()
	code := reason
	if status == http.StatusServiceUnavailable {
		code = protocol.CodeOverloaded
	}
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="ingest"`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(protocol.AppendRefusal(nil, code, msg), '\n'))
}

// rateLog logs a condition that can repeat for every connection at most
// once per logEvery, with how many times it happened since the last line.
type rateLog struct {
	mu     sync.Mutex
	last   time.Time
	missed int
}

func (r *rateLog) log(lg *slog.Logger, level slog.Level, msg string, args ...any) {
	r.mu.Lock()
	now := time.Now()
	if !r.last.IsZero() && now.Sub(r.last) < logEvery {
		r.missed++
		r.mu.Unlock()
		return
	}
	n := r.missed
	r.last, r.missed = now, 0
	r.mu.Unlock()
	if n > 0 {
		args = append(args, "more_since_last_logged", n)
	}
	lg.Log(context.Background(), level, msg, args...)
}
