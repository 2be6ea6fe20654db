package feed

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/auth"
	"github.com/ingest-io/ingest/internal/defaults"
	"github.com/ingest-io/ingest/registry"
	"github.com/ingest-io/ingest/wire"
)

// Source is one middletier the feed follows.
type Source struct {
	// Feed is the ZeroMQ endpoint of the middletier's feed PUB socket
	// (middletier Options.FeedAddr). Required.
	Feed string
	// Consumer is the endpoint of its consumer ROUTER (Options.ConsumerAddr),
	// used to fetch the records of a gap and to serve resumes. Empty: gaps are
	// reported to readers but never filled, and resume is refused.
	Consumer string
}

// Options configure a Server. A zero field means its default
// (DefaultOptions); Sources and either Auth keys or InsecureNoAuth are
// required.
type Options struct {
	// Listener is where readers connect; the Server serves HTTP on it.
	// Required: the caller binds it (tests on 127.0.0.1:0), so the address
	// is known before Run. The Server owns it from New on: Run closes it
	// when it returns, Close if Run never ran, New itself if it fails.
	Listener net.Listener

	// ID names this feed in its fetch requests and socket identities.
	// Default "feed".
	ID string
	// Sources are the middletiers to follow.
	Sources []Source

	// Auth configures JWT verification of readers: the same key options as
	// for devices.
	Auth auth.Options
	// Scope must be one of the token's scopes (claim "scope": a
	// space-separated string or an array of strings). Default "feed:read".
	Scope string
	// InsecureNoAuth accepts readers without a token. New then refuses a
	// Listener that is not on a loopback address.
	InsecureNoAuth bool
	// OriginPatterns lists the browser origins allowed to connect, as in
	// websocket.AcceptOptions; same-host origins and requests without an
	// Origin header are always allowed. Default none.
	OriginPatterns []string

	// Registry gives each device's group and labels. Nil: no labels, and
	// group filters match nothing.
	Registry *registry.Registry

	// MaxReaders bounds open reader connections; past it handshakes get HTTP
	// 503. Default 1,000.
	MaxReaders int
	// ClientQueue is how many messages may wait for one reader; past it new
	// messages for that reader are dropped and counted for its missed notice.
	// Default 1,024.
	ClientQueue int
	// SlowGrace and MaxMissed say when a reader is too slow: it is closed
	// with 4000 once it has been dropping messages for SlowGrace without its
	// queue emptying once, or has missed more than MaxMissed messages in
	// that time. Defaults 5s and 10,000.
	SlowGrace time.Duration
	MaxMissed int

	// SourceBuffer is how many stream messages (up to 256 records each) may
	// wait between a middletier's socket and the dispatcher. The socket is
	// always drained at once; past this buffer messages are dropped there and
	// handled as a gap. Default 1,024.
	SourceBuffer int
	// MaxGapFill is the most records fetched to fill one gap; older ones are
	// reported missed. Default 10,000.
	MaxGapFill int
	// MaxResume is the most records replayed for one resume request; older
	// ones are reported missed. Default 10,000.
	MaxResume int
	// FetchTimeout bounds one fetch from a middletier. Default 2s.
	FetchTimeout time.Duration

	// SubscribeTimeout is how long a new connection may take to send its
	// first subscribe frame. Default 10s.
	SubscribeTimeout time.Duration
	// MaxFrameBytes is the read limit for reader frames (1009 past it).
	// Default 16 KiB.
	MaxFrameBytes int
	// MaxFilters bounds the devices, prefixes and groups of one subscription
	// together. Default 1,000.
	MaxFilters int
	// PingInterval is how often a reader is pinged; PongTimeout how long the
	// pong may take. Defaults 30s and 15s.
	PingInterval time.Duration
	PongTimeout  time.Duration
	// WriteTimeout bounds every write to a reader. Default 10s.
	WriteTimeout time.Duration
	// HandshakeTimeout bounds reading the HTTP request headers. Default 10s.
	HandshakeTimeout time.Duration

	// Gatherer, when set, is served at /metrics.
	Gatherer prometheus.Gatherer
	// Handlers are more handlers served on the feed's listener, by
	// http.ServeMux pattern (e.g. "/status/" for the status page, which is
	// then same-origin with /v1/feed). They must not claim the feed's own
	// paths.
	Handlers map[string]http.Handler
}

// DefaultOptions returns the defaults that zero fields stand for.
func DefaultOptions() Options {
	return Options{
		ID:               "feed",
		Scope:            "feed:read",
		MaxReaders:       1000,
		ClientQueue:      1024,
		SlowGrace:        5 * time.Second,
		MaxMissed:        10000,
		SourceBuffer:     1024,
		MaxGapFill:       10000,
		MaxResume:        10000,
		FetchTimeout:     2 * time.Second,
		SubscribeTimeout: 10 * time.Second,
		MaxFrameBytes:    16 << 10,
		MaxFilters:       1000,
		PingInterval:     30 * time.Second,
		PongTimeout:      15 * time.Second,
		WriteTimeout:     10 * time.Second,
		HandshakeTimeout: 10 * time.Second,
	}
}

func (o Options) withDefaults() (Options, error) {
	d := DefaultOptions()
	defaults.Fill(&o, d)

	if o.Listener == nil {
		return o, errors.New("check listener: nil")
	}
	// The ID goes into socket identities of the form <id>#<purpose>-<n>-<hex>.
	if len(o.ID) > wire.MaxNameLen-40 {
		return o, fmt.Errorf("check id: %d bytes, at most %d", len(o.ID), wire.MaxNameLen-40)
	}
	if len(o.Sources) == 0 {
		return o, errors.New("check sources: at least one middletier feed endpoint is required")
	}
	for i, s := range o.Sources {
		if s.Feed == "" {
			return o, fmt.Errorf("check source %d: feed endpoint required", i)
		}
	}
	if o.InsecureNoAuth == o.Auth.Configured() {
		return o, errors.New("check auth: configure JWT keys or set InsecureNoAuth, not both or neither")
	}
	if o.MaxReaders < 0 || o.ClientQueue < 0 || o.MaxMissed < 0 || o.SourceBuffer < 0 || o.MaxGapFill < 0 ||
		o.MaxResume < 0 || o.MaxFrameBytes < 0 || o.MaxFilters < 0 || o.SlowGrace < 0 || o.FetchTimeout < 0 ||
		o.SubscribeTimeout < 0 || o.PingInterval < 0 || o.PongTimeout < 0 || o.WriteTimeout < 0 || o.HandshakeTimeout < 0 {
		return o, errors.New("check options: limits must not be negative")
	}
	return o, nil
}
