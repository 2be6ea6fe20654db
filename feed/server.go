package feed

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/auth"
	"github.com/ingest-io/ingest/internal/bodyread"
	"github.com/ingest-io/ingest/internal/lifecycle"
	"github.com/ingest-io/ingest/internal/loopback"
	"github.com/ingest-io/ingest/internal/probe"
)

// maxHeaderBytes bounds a handshake's request line and headers; past it
// net/http answers 431.
const maxHeaderBytes = 256 << 10

// ErrNotLoopback is returned by New without auth on a listener that is not
// on a loopback address.
var ErrNotLoopback = errors.New("feed: running without auth requires a loopback listener")

// Server is the live feed: it follows middletiers' feed sockets and serves
// their messages to dashboard readers over WebSocket.
type Server struct {
	opts    Options
	lg      *slog.Logger
	m       *metrics
	auth    *auth.Verifier // nil with InsecureNoAuth
	hub     *hub
	sources []*source

	nreaders atomic.Int64
	ready    atomic.Bool

	life lifecycle.Once

	// At shutdown the context Run gives every request (http.Server's
	// BaseContext) ends every reader connection; connWG waits for them. A
	// handler joins connWG only under connMu and while !closing.
	connMu  sync.Mutex
	closing bool
	connWG  sync.WaitGroup
}

// New checks opts and registers the metrics. It starts nothing: Run does.
// It takes opts.Listener: if New fails, it closes it. reg and lg may be nil.
func New(opts Options, reg prometheus.Registerer, lg *slog.Logger) (_ *Server, err error) {
	defer func() {
		if err != nil && opts.Listener != nil {
			opts.Listener.Close()
		}
	}()
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if o.InsecureNoAuth {
		if ta, ok := o.Listener.Addr().(*net.TCPAddr); !ok || !ta.IP.IsLoopback() {
			return nil, fmt.Errorf("check listener %s: %w", o.Listener.Addr(), ErrNotLoopback)
		}
	}
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	s := &Server{opts: o, lg: lg, hub: newHub()}
	if !o.InsecureNoAuth {
		if s.auth, err = auth.NewVerifier(o.Auth); err != nil {
			return nil, err
		}
	}
	if s.m, err = newMetrics(reg); err != nil {
		return nil, fmt.Errorf("register metrics: %w", err)
	}
	for _, c := range o.Sources {
		src, err := newSource(s, c)
		if err != nil {
			s.m.unregister()
			return nil, fmt.Errorf("follow %s: %w", c.Feed, err)
		}
		s.sources = append(s.sources, src)
	}
	return s, nil
}

// Handler returns the HTTP handler: /v1/feed, /healthz, /readyz, /metrics
// when Options.Gatherer is set, and Options.Handlers.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/feed", s.handleFeed)
	probe.Mount(mux, probe.Options{Ready: s.Ready, Gatherer: s.opts.Gatherer})
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
		s.refuse(w, http.StatusForbidden, "foreign_host", loopback.Refused)
	})
}

// Ready reports whether the feed is serving and subscribed to at least one
// middletier.
func (s *Server) Ready() bool {
	if !s.ready.Load() {
		return false
	}
	for _, src := range s.sources {
		if src.f.Connected() {
			return true
		}
	}
	return false
}

// Run follows the middletiers and serves readers on Options.Listener until
// ctx ends. Then readiness turns false, the listener closes, every reader is
// closed with 1001, and the sockets to the middletiers close. Run returns
// once every goroutine it started has ended, and unregisters the metrics.
// A Server runs once.
func (s *Server) Run(ctx context.Context) error {
	if !s.life.Start() {
		return errors.New("feed: run: the server has run or is closed")
	}
	defer s.m.unregister()
	ln := s.opts.Listener
	if s.opts.InsecureNoAuth {
		s.lg.Warn("feed: reader authentication is OFF: any local process can read every device", "addr", ln.Addr().String())
	}
	srcCtx, srcCancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, src := range s.sources {
		wg.Go(func() { src.f.Run(srcCtx) })
	}
	// Reader connections end with this context: every request's context
	// descends from it, and a hijacked connection's request context ends
	// only with it or when its handler returns.
	conns, endConns := context.WithCancel(context.Background())
	defer endConns()
	// Every handler counts in handlers, which Run waits for: readers'
	// (their connections end with conns) and plain requests' (the status
	// page, metrics) alike.
	var handlers lifecycle.Handlers
	hs := &http.Server{
		// A body is read within HandshakeTimeout, as the headers are: the
		// server has no ReadTimeout, which would cut readers' connections.
		Handler:           handlers.Wrap(bodyread.Bound(s.Handler(), s.opts.HandshakeTimeout)),
		ReadHeaderTimeout: s.opts.HandshakeTimeout,
		IdleTimeout:       time.Minute,
		// Headers are read before any token is checked: net/http's 1 MiB
		// default let anyone hold 1.5–2 MB a connection for the
		// handshake timeout. A token is at most 8 KiB; a quarter of a MiB
		// still reads one far over it, to answer token_too_large.
		MaxHeaderBytes: maxHeaderBytes,
		ErrorLog:       slog.NewLogLogger(s.lg.Handler(), slog.LevelDebug),
		BaseContext:    func(net.Listener) context.Context { return conns },
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	s.ready.Store(true)

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		err = fmt.Errorf("serve http: %w", err)
	}
	s.ready.Store(false)
	// Stop accepting; reader connections are hijacked, so Shutdown does not
	// wait for them: their context ends them with 1001.
	sctx, cancel := context.WithTimeout(context.Background(), time.Second)
	hs.Shutdown(sctx)
	cancel()
	hs.Close()
	if err == nil {
		<-errc
	}
	s.connMu.Lock()
	s.closing = true
	s.connMu.Unlock()
	endConns()
	s.connWG.Wait()
	handlers.End()
	srcCancel()
	wg.Wait()
	return err
}

// Close releases what New took when Run has not: it closes the listener of
// a Server that never ran, and unregisters the metrics, as Run does when it
// returns. Call it after Run has returned, or instead of Run; it does not
// stop Run (end Run's context for that). It is idempotent.
func (s *Server) Close() error {
	return s.life.Release(s.m.unregister, s.opts.Listener.Close)
}
