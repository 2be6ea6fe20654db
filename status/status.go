package status

import (
	"bytes"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/internal/lifecycle"
)

//go:embed web
var webFS embed.FS

// Options configure a Handler. A zero field means its default.
type Options struct {
	// Gatherer is the process's registry the snapshot is computed from,
	// or one that gathers only the families of Metrics (cheaper: the
	// history gathers every Interval). Required.
	Gatherer prometheus.Gatherer
	// FeedURL is the live feed WebSocket the page follows for its table of
	// recent messages: a path on the page's own host ("/v1/feed") or an
	// absolute ws:// or wss:// URL. Empty: the page has no table. A token
	// in the page's own URL (?token=) is passed on to the feed.
	FeedURL string
	// Window is the span rates and latency quantiles cover. Default 5s.
	Window time.Duration
	// History is how far back the page's charts reach: Run keeps the
	// points of this span. Default 15m.
	History time.Duration
	// Interval is how often Run takes a point of history. Default 1s.
	Interval time.Duration
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// Handler serves the status page. It expects to be mounted below a prefix
// with that prefix stripped (http.StripPrefix("/status", h) for
// "/status/"): it serves the page at "/", its script and style beside it,
// the snapshot at "/snapshot" and the history at "/history"; the page
// refers to them relatively. Run fills the history.
type Handler struct {
	opts  Options
	lg    *slog.Logger
	files http.Handler
	index []byte

	mu      sync.Mutex
	samples []sample // oldest first; never empty

	hmu  sync.Mutex // guards hist; never held with mu
	hist history
}

// New checks opts and takes the first gather. lg may be nil.
func New(opts Options, lg *slog.Logger) (*Handler, error) {
	if opts.Gatherer == nil {
		return nil, errors.New("status: a gatherer is required")
	}
	if opts.Window <= 0 {
		opts.Window = 5 * time.Second
	}
	if opts.History <= 0 {
		opts.History = 15 * time.Minute
	}
	if opts.Interval <= 0 {
		opts.Interval = time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	lg = lifecycle.Logger(lg)
	web, err := fs.Sub(webFS, "web")
	if err != nil {
		return nil, err
	}
	tmpl, err := template.ParseFS(web, "index.html")
	if err != nil {
		return nil, fmt.Errorf("parse page: %w", err)
	}
	var index bytes.Buffer
	if err := tmpl.Execute(&index, struct{ FeedURL string }{opts.FeedURL}); err != nil {
		return nil, fmt.Errorf("render page: %w", err)
	}
	h := &Handler{opts: opts, lg: lg, files: http.FileServerFS(web), index: index.Bytes()}
	first, err := h.gather(opts.Now())
	if err != nil {
		return nil, err
	}
	h.samples = []sample{first}
	h.hist.points = make([]point, 0, max(1, int(opts.History/opts.Interval)))
	h.hist.raw = []sample{first}
	return h, nil
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	switch r.URL.Path {
	case "/", "", "/index.html":
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-cache")
		w.Write(h.index)
	case "/snapshot":
		s, err := h.Snapshot()
		if err != nil {
			h.lg.Warn("status: snapshot", "err", err)
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		json.NewEncoder(w).Encode(s)
	case "/history":
		var since time.Time
		if s := r.URL.Query().Get("since"); s != "" {
			ms, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				http.Error(w, "since: want milliseconds since the epoch", http.StatusBadRequest)
				return
			}
			since = time.UnixMilli(ms)
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.Write(h.appendHistory(nil, since))
	case "/app.js", "/style.css":
		w.Header().Set("Cache-Control", "no-cache")
		h.files.ServeHTTP(w, r)
	default:
		http.NotFound(w, r)
	}
}

// Snapshot gathers the metrics now and computes the figures over the
// window (see the package documentation).
func (h *Handler) Snapshot() (*Snapshot, error) {
	now := h.opts.Now()
	cur, err := h.gather(now)
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	edge := now.Add(-h.opts.Window)
	i := 0
	for i+1 < len(h.samples) && !h.samples[i+1].at.After(edge) {
		i++
	}
	h.samples = h.samples[i:]
	base := h.samples[0]
	if now.Sub(h.samples[len(h.samples)-1].at) >= h.opts.Window/10 {
		h.samples = append(h.samples, cur)
	}
	h.mu.Unlock()
	return compute(base, cur), nil
}
