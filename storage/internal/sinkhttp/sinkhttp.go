// Package sinkhttp is the request loop the HTTP sinks (storage/remotewrite,
// storage/influx) share: one request at a time, retried with backoff while
// the server answers network errors, 5xx or 429, within a bound; the
// answers' classification into verdicts, which each sink makes for its
// protocol; the errors and the metrics the sinks have in common. Each sink
// package gives its users Options and StatusError under its own name.
package sinkhttp

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ingest-io/ingest/internal/lifecycle"
	"github.com/ingest-io/ingest/internal/lograte"
	"github.com/ingest-io/ingest/internal/metricset"
	"github.com/ingest-io/ingest/storage"
)

// Options are what the HTTP sinks (remote-write and InfluxDB line
// protocol) share: how long one request may take, how failed requests are
// retried, and what every request carries. Zero fields take the defaults of
// DefaultOptions.
type Options struct {
	// Timeout bounds one HTTP request, answer included. Default 30s.
	Timeout time.Duration
	// MinBackoff is the wait before the first retry; each further retry
	// waits twice as long, up to MaxBackoff, with up to 25% jitter.
	// Defaults 50ms and 5s. A Retry-After header longer than the backoff is
	// honoured, within MaxBackoff.
	MinBackoff time.Duration
	MaxBackoff time.Duration
	// MaxRetryTime bounds the time one request is retried for (network
	// errors, 5xx, 429). After it, Write returns the last error and keeps
	// nothing: the caller retries the points later. Default 1m.
	MaxRetryTime time.Duration
	// Headers are set on every request: Authorization, X-Scope-OrgID for
	// Mimir tenants, and the like.
	Headers map[string]string
	// RootCAs are the certificate authorities an https server's certificate
	// is checked against. Nil: the system's.
	RootCAs *x509.CertPool
}

// DefaultOptions returns the defaults of the HTTP sinks.
func DefaultOptions() Options {
	return Options{
		Timeout:      30 * time.Second,
		MinBackoff:   50 * time.Millisecond,
		MaxBackoff:   5 * time.Second,
		MaxRetryTime: time.Minute,
	}
}

// WithDefaults returns o with its zero fields set to their defaults, or
// an error if o cannot be used.
func (o Options) WithDefaults() (Options, error) {
	d := DefaultOptions()
	if o.Timeout == 0 {
		o.Timeout = d.Timeout
	}
	if o.MinBackoff == 0 {
		o.MinBackoff = d.MinBackoff
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = d.MaxBackoff
	}
	if o.MaxRetryTime == 0 {
		o.MaxRetryTime = d.MaxRetryTime
	}
	switch {
	case o.Timeout < 0:
		return o, fmt.Errorf("validate options: negative timeout %v", o.Timeout)
	case o.MinBackoff < 0 || o.MaxBackoff < o.MinBackoff:
		return o, fmt.Errorf("validate options: backoff from %v to %v", o.MinBackoff, o.MaxBackoff)
	case o.MaxRetryTime < 0:
		return o, fmt.Errorf("validate options: negative retry time %v", o.MaxRetryTime)
	}
	return o, nil
}

// Verdict is what an HTTP sink makes of one answer of its server.
type Verdict int

const (
	// OK: the server holds every sample of the request.
	OK Verdict = iota
	// Retry: nothing useful was learnt (network error, 5xx, 429); send the
	// same request again after a backoff.
	Retry
	// TooOld: the server refused samples older than it accepts.
	TooOld
	// Rejected: the server refused the content of the request for another
	// reason that will not change by retrying (a sample it cannot parse or
	// store).
	Rejected
	// Fail: the server refused the request itself (authentication, a wrong
	// URL, a missing database): no sample is at fault, nothing is dropped,
	// Write returns an error.
	Fail
)

// Error kinds of ingest_storage_external_errors_total, and reasons of
// ingest_storage_external_dropped_samples_total.
const (
	KindRetry    = "retry"
	KindRejected = "rejected"
	KindTooOld   = "too_old"
)

// StatusError is an answer of a store that Write could not get past: the
// request was refused as a whole, or retries ran out on it. Write returns it
// wrapped in a *storage.KindError: kind "rejected" for a refusal,
// "unavailable" when retries ran out.
type StatusError struct {
	Sink   string // the sink's name
	Status int    // the HTTP status
	Body   string // the start of the answer's body
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%s: server answered %d: %s", e.Sink, e.Status, e.Body)
}

// Metrics are the metrics of one external sink, labelled with its name.
type Metrics struct {
	Samples  prometheus.Counter
	Dropped  *prometheus.CounterVec // by reason
	Errors   *prometheus.CounterVec // by kind
	Latency  prometheus.Histogram
	Batch    prometheus.Histogram
	Requests prometheus.Counter
	set      *metricset.Set
}

func newMetrics(name string, reg prometheus.Registerer) (*Metrics, error) {
	b := metricset.NewBuilder(prometheus.Labels{"sink": name})
	m := &Metrics{
		Samples: b.Counter("ingest_storage_external_samples_written_total",
			"Samples (or InfluxDB fields) the external store acknowledged."),
		Dropped: b.CounterVec("ingest_storage_external_dropped_samples_total",
			"Samples the external store refused for good (or could never hold) and the sink dropped, by reason (too_old, duplicate_timestamp, rejected, string_too_long).",
			"reason"),
		Errors: b.CounterVec("ingest_storage_external_errors_total",
			"Failed requests to the external store, by kind: retry (network error, 5xx, 429: sent again), rejected (a 4xx answer), too_old (a 4xx answer for samples older than the store accepts).",
			"kind"),
		Latency: b.Histogram("ingest_storage_external_request_duration_seconds",
			"Duration of one request to the external store, answer included.", prometheus.ExponentialBuckets(0.0005, 2, 16)),
		Batch: b.Histogram("ingest_storage_external_batch_samples",
			"Samples (or lines, for InfluxDB) per request to the external store.", prometheus.ExponentialBuckets(1, 4, 9)),
		Requests: b.Counter("ingest_storage_external_requests_total", "Requests sent to the external store."),
	}
	for _, k := range []string{KindRetry, KindRejected, KindTooOld} {
		m.Errors.WithLabelValues(k)
	}
	for _, k := range []string{KindRejected, KindTooOld} {
		m.Dropped.WithLabelValues(k)
	}
	set, err := b.Register(reg)
	if err != nil {
		return nil, fmt.Errorf("register metrics: %w", err)
	}
	m.set = set
	return m, nil
}

// maxErrorBody bounds how much of an error answer is read and kept.
const maxErrorBody = 4 << 10

// Client is the request loop the HTTP sinks share: one request at a time,
// retried with backoff while the server answers network errors, 5xx or 429,
// within MaxRetryTime. A sink calls it from one goroutine at a time.
type Client struct {
	// Metrics are the sink's; Log is the sink's logger, with its name.
	Metrics *Metrics
	Log     *slog.Logger

	name    string
	opts    Options
	client  *http.Client
	tr      *http.Transport
	errBody []byte
	closed  bool
	drops   lograte.Limiter
}

// LogDropped logs what the store refused for good (msg, with args) at most
// every lograte.Every, with how many such lines were left out since: a
// device backfilling what the store cannot take sends some at every write.
// Every sample or line dropped is counted in the sink's metrics whether
// logged or not.
func (c *Client) LogDropped(msg string, args ...any) {
	if n, ok := c.drops.Allow(time.Now()); ok {
		c.Log.Warn(msg, append(args, "more_since_last_logged", n)...)
	}
}

// New returns the client of the sink called name, whose endpoint is
// endpoint (checked with CheckURL): opts take their defaults
// (WithDefaults), and the sink's metrics are registered with reg. reg and
// lg may be nil.
func New(name, endpoint string, opts Options, reg prometheus.Registerer, lg *slog.Logger) (*Client, error) {
	if err := CheckURL(endpoint); err != nil {
		return nil, err
	}
	opts, err := opts.WithDefaults()
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(name, reg)
	if err != nil {
		return nil, err
	}
	lg = lifecycle.Logger(lg)
	tr := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
		// The sinks compress their own bodies; an answer is small.
		DisableCompression: true,
	}
	if opts.RootCAs != nil {
		tr.TLSClientConfig = &tls.Config{RootCAs: opts.RootCAs, MinVersion: tls.VersionTLS12}
	}
	return &Client{
		name:    name,
		opts:    opts,
		tr:      tr,
		client:  &http.Client{Transport: tr, Timeout: opts.Timeout, CheckRedirect: keepMethod},
		Metrics: m,
		Log:     lg.With("sink", name),
		drops:   lograte.Limiter{Every: lograte.Every},
	}, nil
}

// keepMethod follows a redirect only if it keeps the request's method (307,
// 308: the body is sent again). A 301, 302 or 303 would turn the POST into
// a GET without a body, whose success says nothing of the samples: an
// authenticating proxy's sign-in page answers 200, VictoriaMetrics's /write
// 204. Such an answer is the sink's to judge instead, as one that refuses
// the request itself: Write fails, and the writer commits nothing.
func keepMethod(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return errors.New("stopped after 10 redirects")
	}
	if req.Method != via[0].Method {
		return http.ErrUseLastResponse
	}
	return nil
}

// Close releases the client's connections and unregisters the sink's
// metrics. Closing again does nothing.
func (h *Client) Close() {
	if h.closed {
		return
	}
	h.closed = true
	h.tr.CloseIdleConnections()
	h.Metrics.set.Unregister()
}

// CheckOpen returns nil before Close and, after it, the error a sink's
// Write returns: ErrClosed, wrapped with the sink's name.
func (h *Client) CheckOpen() error {
	if h.closed {
		return fmt.Errorf("write %s: %w", h.name, ErrClosed)
	}
	return nil
}

// Acked counts a request of sent samples (or lines) of which the server
// kept kept.
func (h *Client) Acked(kept, sent int) {
	h.Metrics.Samples.Add(float64(kept))
	h.Metrics.Batch.Observe(float64(sent))
}

// Refused counts the answer a, which refused the request itself (verdict
// Fail), and returns the error Write returns for it: a *StatusError wrapped
// in a *storage.KindError of kind "rejected".
func (h *Client) Refused(a Answer) error {
	h.Metrics.Errors.WithLabelValues(KindRejected).Inc()
	return &storage.KindError{Kind: "rejected", Err: fmt.Errorf("write %s: %w", h.name, &StatusError{Sink: h.name, Status: a.Status, Body: TrimBody(a.Body)})}
}

// Answer is one answer of the server: its status, and the start of its
// body when it is not a success.
type Answer struct {
	Status int
	// Body is the start of a failure's body, up to 4 KiB; valid until the
	// next request.
	Body []byte
	// RetryAfter is the wait a Retry-After header in seconds asked for.
	RetryAfter time.Duration
}

// post sends one request and reads its answer. The body of a success is
// discarded; the body of a failure is kept, up to maxErrorBody, in a buffer
// reused by the next post.
func (h *Client) post(ctx context.Context, url string, header http.Header, body []byte) (Answer, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return Answer{}, fmt.Errorf("build request: %w", err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	for k, v := range h.opts.Headers {
		req.Header.Set(k, v)
	}
	start := time.Now()
	h.Metrics.Requests.Inc()
	resp, err := h.client.Do(req)
	if err != nil {
		return Answer{}, err
	}
	defer resp.Body.Close()
	var a Answer
	a, h.errBody, err = readAnswer(resp, h.errBody)
	h.Metrics.Latency.Observe(time.Since(start).Seconds())
	if err != nil {
		return Answer{}, fmt.Errorf("read answer: %w", err)
	}
	return a, nil
}

// readAnswer reads the answer resp: its status and, for a failure, the
// start of its body, up to maxErrorBody, into buf (returned, to be used
// again), and the wait its Retry-After header asks for in seconds (an
// HTTP date is not read). It drains what is left of the body, up to 1 MiB,
// so that the connection is reused. a.Body is valid until buf is used
// again.
func readAnswer(resp *http.Response, buf []byte) (a Answer, _ []byte, err error) {
	a.Status = resp.StatusCode
	if resp.StatusCode/100 != 2 {
		b := bytes.NewBuffer(buf[:0])
		_, err = io.Copy(b, io.LimitReader(resp.Body, maxErrorBody))
		buf = b.Bytes()
		a.Body = buf
		if s := resp.Header.Get("Retry-After"); s != "" {
			if secs, perr := strconv.Atoi(s); perr == nil && secs > 0 {
				// Beyond what a Duration holds: the longest one, not a
				// product that wraps around to a negative wait.
				a.RetryAfter = time.Duration(math.MaxInt64)
				if secs <= math.MaxInt64/int(time.Second) {
					a.RetryAfter = time.Duration(secs) * time.Second
				}
			}
		}
	}
	// Drain what is left, within reason, so the connection is reused.
	_, derr := io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	if err == nil {
		err = derr
	}
	return a, buf, err
}

// Send posts body until the server answers with something other than a
// retryable failure, and returns that answer with judge's verdict on it.
// Network errors, 5xx and 429 (unless judge says otherwise: an old
// Prometheus answers 500 for a too old sample) are retried with backoff
// until MaxRetryTime has passed; then send returns the last error.
func (h *Client) Send(ctx context.Context, url string, header http.Header, body []byte, judge func(Answer) Verdict) (Answer, Verdict, error) {
	backoff := h.opts.MinBackoff
	deadline := time.Now().Add(h.opts.MaxRetryTime)
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		a, err := h.post(ctx, url, header, body)
		var v Verdict
		if err == nil {
			v = judge(a)
			if v != Retry {
				return a, v, nil
			}
			err = &StatusError{Sink: h.name, Status: a.Status, Body: TrimBody(a.Body)}
		}
		if cerr := ctx.Err(); cerr != nil {
			return Answer{}, Retry, fmt.Errorf("write %s: %w", h.name, cerr)
		}
		wait := backoff + rand.N(backoff/4+1)
		if a.RetryAfter > wait {
			wait = min(a.RetryAfter, h.opts.MaxBackoff)
		}
		if time.Now().Add(wait).After(deadline) {
			return Answer{}, Retry, &storage.KindError{Kind: "unavailable", Err: fmt.Errorf("write %s: retries ran out after %v: %w", h.name, h.opts.MaxRetryTime, err)}
		}
		h.Metrics.Errors.WithLabelValues(KindRetry).Inc()
		h.Log.Debug("retrying a write", "err", err, "backoff", wait)
		if timer == nil {
			timer = time.NewTimer(wait)
		} else {
			timer.Reset(wait)
		}
		select {
		case <-ctx.Done():
			return Answer{}, Retry, fmt.Errorf("write %s: %w", h.name, ctx.Err())
		case <-timer.C:
		}
		backoff = min(2*backoff, h.opts.MaxBackoff)
	}
}

// ErrClosed is what a sink's Write returns after Close.
var ErrClosed = errors.New("sink closed")

// TrimBody returns the start of an error body for messages and logs.
func TrimBody(b []byte) string {
	const n = 512
	b = bytes.TrimSpace(b)
	if len(b) > n {
		b = b[:n]
	}
	return string(b)
}

// Reasons of ingest_storage_external_dropped_samples_total besides the
// error kinds, named as the embedded TSDB names them.
const (
	DropDuplicateTimestamp = "duplicate_timestamp"
	DropStringTooLong      = "string_too_long"
)

// CheckURL checks that s is an http or https URL with a host: a sink's
// endpoint.
func CheckURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("validate options: parse url: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("validate options: url %q is not an http(s) URL", s)
	}
	return nil
}
