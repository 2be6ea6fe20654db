package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/ingest-io/ingest/internal/metricset"
	"github.com/prometheus/client_golang/prometheus"
)

// HTTPOptions are what the HTTP sinks (remote-write and InfluxDB line
// protocol) share: how long one request may take, how failed requests are
// retried, and what every request carries. Zero fields take the defaults of
// DefaultHTTPOptions.
type HTTPOptions struct {
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
}

// DefaultHTTPOptions returns the defaults of the HTTP sinks.
func DefaultHTTPOptions() HTTPOptions {
	return HTTPOptions{
		Timeout:      30 * time.Second,
		MinBackoff:   50 * time.Millisecond,
		MaxBackoff:   5 * time.Second,
		MaxRetryTime: time.Minute,
	}
}

func (o HTTPOptions) withDefaults() (HTTPOptions, error) {
	d := DefaultHTTPOptions()
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

// verdict is what an HTTP sink makes of one answer of its server.
type verdict int

const (
	// verdictOK: the server holds every sample of the request.
	verdictOK verdict = iota
	// verdictRetry: nothing useful was learnt (network error, 5xx, 429);
	// send the same request again after a backoff.
	verdictRetry
	// verdictTooOld: the server refused samples older than it accepts.
	verdictTooOld
	// verdictRejected: the server refused the content of the request for
	// another reason that will not change by retrying (a sample it cannot
	// parse or store).
	verdictRejected
	// verdictFail: the server refused the request itself (authentication,
	// a wrong URL, a missing database): no sample is at fault, nothing is
	// dropped, Write returns an error.
	verdictFail
)

// Error kinds of ingest_storage_external_errors_total.
const (
	errKindRetry    = "retry"
	errKindRejected = "rejected"
	errKindTooOld   = "too_old"
)

// StatusError is an answer of a store that Write could not get past: the
// request was refused as a whole, or retries ran out on it. Write returns it
// wrapped in a *KindError: kind "rejected" for a refusal, "unavailable" when
// retries ran out.
type StatusError struct {
	Sink   string // the sink's name
	Status int    // the HTTP status
	Body   string // the start of the answer's body
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%s: server answered %d: %s", e.Sink, e.Status, e.Body)
}

// sinkMetrics are the metrics of one external sink, labelled with its name.
type sinkMetrics struct {
	samples  prometheus.Counter
	dropped  *prometheus.CounterVec
	errors   *prometheus.CounterVec
	latency  prometheus.Histogram
	batch    prometheus.Histogram
	requests prometheus.Counter
	set      *metricset.Set
}

func newSinkMetrics(name string, reg prometheus.Registerer) (*sinkMetrics, error) {
	cl := prometheus.Labels{"sink": name}
	m := &sinkMetrics{
		samples: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ingest_storage_external_samples_written_total", ConstLabels: cl,
			Help: "Samples (or InfluxDB fields) the external store acknowledged.",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ingest_storage_external_dropped_samples_total", ConstLabels: cl,
			Help: "Samples the external store refused for good (or could never hold) and the sink dropped, by reason (too_old, duplicate_timestamp, rejected, string_too_long).",
		}, []string{"reason"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ingest_storage_external_errors_total", ConstLabels: cl,
			Help: "Failed requests to the external store, by kind: retry (network error, 5xx, 429: sent again), rejected (a 4xx answer), too_old (a 4xx answer for samples older than the store accepts).",
		}, []string{"kind"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "ingest_storage_external_request_duration_seconds", ConstLabels: cl,
			Help:    "Duration of one request to the external store, answer included.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		batch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "ingest_storage_external_batch_samples", ConstLabels: cl,
			Help:    "Samples (or lines, for InfluxDB) per request to the external store.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 9),
		}),
		requests: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ingest_storage_external_requests_total", ConstLabels: cl,
			Help: "Requests sent to the external store.",
		}),
	}
	for _, k := range []string{errKindRetry, errKindRejected, errKindTooOld} {
		m.errors.WithLabelValues(k)
	}
	for _, k := range []string{errKindRejected, errKindTooOld} {
		m.dropped.WithLabelValues(k)
	}
	set, err := metricset.Register(reg, m.samples, m.dropped, m.errors, m.latency, m.batch, m.requests)
	if err != nil {
		return nil, fmt.Errorf("register metrics: %w", err)
	}
	m.set = set
	return m, nil
}

// maxErrorBody bounds how much of an error answer is read and kept.
const maxErrorBody = 4 << 10

// httpSink is the request loop the HTTP sinks share: one request at a time,
// retried with backoff while the server answers network errors, 5xx or 429,
// within MaxRetryTime.
type httpSink struct {
	name    string
	opts    HTTPOptions
	client  *http.Client
	tr      *http.Transport
	m       *sinkMetrics
	lg      *slog.Logger
	errBody []byte
}

func newHTTPSink(name string, opts HTTPOptions, reg prometheus.Registerer, lg *slog.Logger) (*httpSink, error) {
	m, err := newSinkMetrics(name, reg)
	if err != nil {
		return nil, err
	}
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	tr := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
		// The sinks compress their own bodies; an answer is small.
		DisableCompression: true,
	}
	return &httpSink{
		name:   name,
		opts:   opts,
		tr:     tr,
		client: &http.Client{Transport: tr, Timeout: opts.Timeout},
		m:      m,
		lg:     lg.With("sink", name),
	}, nil
}

func (h *httpSink) close() {
	h.tr.CloseIdleConnections()
	h.m.set.Unregister()
}

// answer is one answer of the server: its status, and the start of its body
// when it is not a success.
type answer struct {
	status     int
	body       []byte
	retryAfter time.Duration
}

// post sends one request and reads its answer. The body of a success is
// discarded; the body of a failure is kept, up to maxErrorBody, in a buffer
// reused by the next post.
func (h *httpSink) post(ctx context.Context, url string, header http.Header, body []byte) (answer, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return answer{}, fmt.Errorf("build request: %w", err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	for k, v := range h.opts.Headers {
		req.Header.Set(k, v)
	}
	start := time.Now()
	h.m.requests.Inc()
	resp, err := h.client.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	a := answer{status: resp.StatusCode}
	if resp.StatusCode/100 != 2 {
		buf := bytes.NewBuffer(h.errBody[:0])
		_, err = io.Copy(buf, io.LimitReader(resp.Body, maxErrorBody))
		h.errBody = buf.Bytes()
		a.body = h.errBody
		if s := resp.Header.Get("Retry-After"); s != "" {
			if secs, perr := strconv.Atoi(s); perr == nil && secs > 0 {
				a.retryAfter = time.Duration(secs) * time.Second
			}
		}
	}
	// Drain what is left, within reason, so the connection is reused.
	_, derr := io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	h.m.latency.Observe(time.Since(start).Seconds())
	if err == nil {
		err = derr
	}
	if err != nil {
		return answer{}, fmt.Errorf("read answer: %w", err)
	}
	return a, nil
}

// send posts body until the server answers with something other than a
// retryable failure, and returns that answer with judge's verdict on it.
// Network errors, 5xx and 429 (unless judge says otherwise: an old
// Prometheus answers 500 for a too old sample) are retried with backoff
// until MaxRetryTime has passed; then send returns the last error.
func (h *httpSink) send(ctx context.Context, url string, header http.Header, body []byte, judge func(answer) verdict) (answer, verdict, error) {
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
		var v verdict
		if err == nil {
			v = judge(a)
			if v != verdictRetry {
				return a, v, nil
			}
			err = &StatusError{Sink: h.name, Status: a.status, Body: trimBody(a.body)}
		}
		if cerr := ctx.Err(); cerr != nil {
			return answer{}, verdictRetry, fmt.Errorf("write %s: %w", h.name, cerr)
		}
		wait := backoff + rand.N(backoff/4+1)
		if a.retryAfter > wait {
			wait = min(a.retryAfter, h.opts.MaxBackoff)
		}
		if time.Now().Add(wait).After(deadline) {
			return answer{}, verdictRetry, &KindError{Kind: "unavailable", Err: fmt.Errorf("write %s: retries ran out after %v: %w", h.name, h.opts.MaxRetryTime, err)}
		}
		h.m.errors.WithLabelValues(errKindRetry).Inc()
		h.lg.Debug("retrying a write", "err", err, "backoff", wait)
		if timer == nil {
			timer = time.NewTimer(wait)
		} else {
			timer.Reset(wait)
		}
		select {
		case <-ctx.Done():
			return answer{}, verdictRetry, fmt.Errorf("write %s: %w", h.name, ctx.Err())
		case <-timer.C:
		}
		backoff = min(2*backoff, h.opts.MaxBackoff)
	}
}

// errSinkClosed is returned by Write after Close.
var errSinkClosed = errors.New("sink closed")

// trimBody returns the start of an error body for messages and logs.
func trimBody(b []byte) string {
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
	dropDuplicateTimestamp = "duplicate_timestamp"
	dropStringTooLong      = "string_too_long"
)
