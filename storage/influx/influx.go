package influx

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"

	"github.com/ingest-io/ingest/storage"
	"github.com/ingest-io/ingest/storage/internal/series"
	"github.com/ingest-io/ingest/storage/internal/sinkhttp"
)

// HTTPOptions are what the HTTP sinks share: how long one request may
// take, how failed requests are retried (MinBackoff, MaxBackoff,
// MaxRetryTime) and the headers every request carries. Zero fields take
// their defaults: Timeout 30s, backoff from 50ms to 5s, retries for 1m.
type HTTPOptions = sinkhttp.Options

// StatusError is an answer of the store that Write could not get past: the
// request was refused as a whole, or retries ran out on it. Write returns
// it wrapped in a *storage.KindError: kind "rejected" for a refusal,
// "unavailable" when retries ran out. It is the same type as
// remotewrite.StatusError.
type StatusError = sinkhttp.StatusError

// Options configure a Sink. Zero fields take the defaults of
// DefaultOptions.
type Options struct {
	// URL is the store's line-protocol write endpoint with its query
	// parameters: http://host:8086/write?db=ingest for InfluxDB 1.x (add
	// &rp= for a retention policy other than the default),
	// http://host:8428/write for VictoriaMetrics. The sink sets
	// precision=ms. Required.
	URL string
	// Name labels the sink's metrics (label sink). Default "influx".
	Name string
	// Measurement is the measurement of every line. Default "ingest".
	Measurement string
	// MaxLinesPerRequest bounds the lines (points) of one request; a Write
	// of more points sends several requests, one after another. Default
	// 5000.
	MaxLinesPerRequest int
	// NoStrings leaves string fields out. For VictoriaMetrics, which stores
	// a string field as a sample of value 0 under the field's name; use its
	// remote-write endpoint to keep strings (as info series).
	NoStrings bool
	HTTPOptions
}

// DefaultOptions returns the defaults of a Sink.
func DefaultOptions() Options {
	return Options{
		Name:               "influx",
		Measurement:        "ingest",
		MaxLinesPerRequest: 5000,
		HTTPOptions:        sinkhttp.DefaultOptions(),
	}
}

// maxInfluxString is the longest string field value InfluxDB stores.
const maxInfluxString = 64<<10 - 1

// Sink writes points to a store that takes InfluxDB line protocol over
// HTTP: one line per point, with the measurement of the options, the tags
// device and the registry labels (named as the embedded TSDB names them),
// every numeric field as a float field and every string field as a string
// field, at the point's time in milliseconds:
//
//	ingest,device=d1,site=lab gps.lat=52.1,status="ok" 1700000000000
//
// A repeated delivery overwrites a line with itself: InfluxDB keeps one value
// per measurement, tag set, field and timestamp (VictoriaMetrics needs
// -dedup.minScrapeInterval for that; docs/storage.md).
//
// InfluxDB answers points older than the retention policy (and fields of a
// type other than the one stored) with a partial write: it stores the other
// points and says how many it dropped; the sink counts them in
// ingest_storage_external_dropped_samples_total and takes the request as
// done. Lines InfluxDB 1.x could not parse in a request it otherwise
// stores come back as a partial write with dropped=0 that names each
// line; the sink counts those lines as dropped (rejected). A request
// refused as a whole as unparseable is split in halves until the refused
// lines stand alone, which are dropped and counted.
type Sink struct {
	opts Options
	url  string
	h    *sinkhttp.Client

	mu     sync.Mutex // one Write at a time; guards h and everything below
	buf    []byte     // the lines of one Write, reused
	ends   []int      // ends[i] is the end of line i in buf
	fields []string
	base   []labels.Label
}

// New returns a sink writing to opts.URL. It starts nothing and sends
// nothing until Write. reg and lg may be nil.
func New(opts Options, reg prometheus.Registerer, lg *slog.Logger) (*Sink, error) {
	d := DefaultOptions()
	if opts.Name == "" {
		opts.Name = d.Name
	}
	if opts.Measurement == "" {
		opts.Measurement = d.Measurement
	}
	if opts.MaxLinesPerRequest == 0 {
		opts.MaxLinesPerRequest = d.MaxLinesPerRequest
	}
	if opts.MaxLinesPerRequest < 0 {
		return nil, fmt.Errorf("validate options: max lines per request %d", opts.MaxLinesPerRequest)
	}
	h, err := sinkhttp.New(opts.Name, opts.URL, opts.HTTPOptions, reg, lg)
	if err != nil {
		return nil, err
	}
	u, _ := url.Parse(opts.URL) // sinkhttp.New checked it
	q := u.Query()
	q.Set("precision", "ms")
	u.RawQuery = q.Encode()
	return &Sink{opts: opts, url: u.String(), h: h}, nil
}

var influxHeader = http.Header{
	"Content-Type": {"text/plain; charset=utf-8"},
	"User-Agent":   {"ingest-storage"},
}

// Write sends every point as a line and returns nil once the store has
// acknowledged each line or said it dropped it for good.
func (s *Sink) Write(ctx context.Context, points []storage.Point) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.h.CheckOpen(); err != nil {
		return err
	}
	s.buf, s.ends = s.buf[:0], s.ends[:0]
	var dropped, tooLong int
	for i := range points {
		var d, tl int
		s.buf, d, tl = s.appendLine(s.buf, &points[i])
		dropped += d
		tooLong += tl
		if len(s.buf) > s.lineEnd() { // a point without a field makes no line
			s.ends = append(s.ends, len(s.buf))
		}
	}
	if dropped > 0 {
		s.h.Metrics.Dropped.WithLabelValues(sinkhttp.KindRejected).Add(float64(dropped))
	}
	if tooLong > 0 {
		s.h.Metrics.Dropped.WithLabelValues(sinkhttp.DropStringTooLong).Add(float64(tooLong))
	}
	for lo := 0; lo < len(s.ends); {
		hi := min(len(s.ends), lo+s.opts.MaxLinesPerRequest)
		if err := s.writeLines(ctx, lo, hi); err != nil {
			return err
		}
		lo = hi
	}
	return nil
}

// lineEnd is where the last line of buf ends: 0 before the first.
func (s *Sink) lineEnd() int {
	if len(s.ends) == 0 {
		return 0
	}
	return s.ends[len(s.ends)-1]
}

// writeLines sends lines [lo, hi) as one request and, when the store refuses
// the request as a whole for its content, splits it to find the lines at
// fault and drop them.
func (s *Sink) writeLines(ctx context.Context, lo, hi int) error {
	start := 0
	if lo > 0 {
		start = s.ends[lo-1]
	}
	body := s.buf[start:s.ends[hi-1]]
	a, v, err := s.h.Send(ctx, s.url, influxHeader, body, judgeInflux)
	if err != nil {
		return err
	}
	n := hi - lo
	switch v {
	case sinkhttp.OK:
		s.h.Acked(n, n)
		return nil
	case sinkhttp.Fail:
		return s.h.Refused(a)
	}
	kind := sinkhttp.KindRejected
	if v == sinkhttp.TooOld {
		kind = sinkhttp.KindTooOld
	}
	s.h.Metrics.Errors.WithLabelValues(kind).Inc()
	if ie, ok := parseInfluxError(a.Body); ok && ie.Partial {
		// The store kept the other lines and says how many it dropped,
		// or which it could not parse (and then says dropped=0).
		dropped := min(ie.Dropped+ie.Unparsed, n)
		s.h.Metrics.Dropped.WithLabelValues(kind).Add(float64(dropped))
		s.h.Acked(n-dropped, n)
		if v == sinkhttp.Rejected {
			s.h.LogDropped("store dropped lines", "dropped", dropped, "answer", ie.Message)
		}
		return nil
	}
	if n == 1 {
		s.h.Metrics.Dropped.WithLabelValues(kind).Inc()
		s.h.LogDropped("store refused a line; dropped", "line", sinkhttp.TrimBody(body), "status", a.Status, "answer", sinkhttp.TrimBody(a.Body))
		return nil
	}
	mid := lo + n/2
	if err := s.writeLines(ctx, lo, mid); err != nil {
		return err
	}
	return s.writeLines(ctx, mid, hi)
}

// Close releases the sink's connections and unregisters its metrics.
func (s *Sink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.h.Close()
	return nil
}

// judgeInflux classifies an answer of a line-protocol endpoint.
func judgeInflux(a sinkhttp.Answer) sinkhttp.Verdict {
	switch {
	case a.Status/100 == 2:
		return sinkhttp.OK
	case a.Status == http.StatusTooManyRequests || a.Status/100 == 5:
		return sinkhttp.Retry
	case a.Status == http.StatusBadRequest || a.Status == http.StatusRequestEntityTooLarge || a.Status == http.StatusUnprocessableEntity:
		ie, ok := parseInfluxError(a.Body)
		switch {
		case !ok:
			return sinkhttp.Rejected
		case ie.BeyondRetention:
			return sinkhttp.TooOld
		case ie.Partial || bytes.HasPrefix([]byte(ie.Message), []byte("unable to parse")) || a.Status == http.StatusRequestEntityTooLarge:
			return sinkhttp.Rejected
		}
		// A 400 about the request itself ("database not found" comes as
		// 404; an unknown precision, a missing db parameter as 400).
		return sinkhttp.Fail
	default:
		return sinkhttp.Fail
	}
}

// influxError is what an InfluxDB error answer says.
type influxError struct {
	Message string
	// Partial: the store kept the other points of the request and dropped
	// Dropped of them.
	Partial         bool
	Dropped         int
	BeyondRetention bool
	// Unparsed is how many lines of a partial write the store could not
	// parse: InfluxDB 1.x stores the others and answers "partial write:
	// unable to parse '<line>': <reason>" (one such entry per line, joined
	// by newlines) with dropped=0, which does not count them.
	Unparsed int
}

// parseInfluxError reads an InfluxDB error answer, 1.x's
// {"error":"partial write: points beyond retention policy dropped=3"}, 2.x's
// {"code":"unprocessable entity","message":"failure writing points to
// database: partial write: …"}, or a plain-text one (VictoriaMetrics). ok is false when body says nothing.
func parseInfluxError(body []byte) (e influxError, ok bool) {
	var j struct {
		Error   string `json:"error"`   // 1.x
		Message string `json:"message"` // 2.x: {"code":"unprocessable entity","message":"…"}
	}
	if json.Unmarshal(body, &j) == nil && (j.Error != "" || j.Message != "") {
		e.Message = firstNonEmpty(j.Error, j.Message)
	} else {
		e.Message = string(bytes.TrimSpace(body))
	}
	if e.Message == "" {
		return e, false
	}
	msg := []byte(e.Message)
	// 2.x puts "failure writing points to database: " in front.
	if i := bytes.Index(msg, []byte("partial write:")); i >= 0 {
		rest := msg[i+len("partial write:"):]
		i := bytes.LastIndex(rest, []byte(" dropped="))
		if i >= 0 {
			if n, err := strconv.Atoi(string(rest[i+len(" dropped="):])); err == nil && n >= 0 {
				e.Partial, e.Dropped = true, n
				e.BeyondRetention = bytes.Contains(rest[:i], []byte("beyond retention policy"))
				e.Unparsed = countUnparsed(rest[:i])
			}
		}
	}
	return e, true
}

// countUnparsed counts the entries "unable to parse '…': …" of the reason
// of a partial write, the first at its start and each other after a
// newline. (A string field holding a newline and then "unable to parse '"
// would be counted too: the caller caps the count at the lines sent.)
func countUnparsed(reason []byte) int {
	entry := []byte("unable to parse '")
	reason = bytes.TrimLeft(reason, " ")
	if !bytes.HasPrefix(reason, entry) {
		return 0
	}
	return 1 + bytes.Count(reason, append([]byte("\n"), entry...))
}

// timeKey is the key InfluxDB reserves for a point's timestamp. A field
// named so is not stored (1.x before 1.8 answers 204 and leaves it out of
// the line, later versions refuse the whole line), and a tag named so makes
// it refuse the whole line ("invalid tag key").
const timeKey = "time"

// appendLine appends the line of p to b, with its trailing newline. A point
// with no field that can be written appends nothing. rejected counts the
// fields left out because line protocol cannot carry them (a NaN or
// infinite number, an empty name, the name time); tooLong, the string
// fields longer than InfluxDB stores. A registry label named time is left
// out of the tags, so that the line lands.
func (s *Sink) appendLine(b []byte, p *storage.Point) (_ []byte, rejected, tooLong int) {
	start := len(b)
	b = appendInfluxName(b, s.opts.Measurement, false)
	s.base = series.Base(s.base[:0], p)
	for _, l := range s.base {
		if l.Value == "" || l.Name == timeKey {
			continue
		}
		b = appendInfluxKey(b, ',', l.Name)
		b = appendInfluxName(b, l.Value, true)
	}
	sep := byte(' ')
	s.fields = slices.AppendSeq(s.fields[:0], maps.Keys(p.Numbers))
	slices.Sort(s.fields)
	for _, k := range s.fields {
		v := p.Numbers[k]
		if k == "" || k == timeKey || math.IsNaN(v) || math.IsInf(v, 0) {
			rejected++
			continue
		}
		b = appendInfluxKey(b, sep, k)
		sep = ','
		b = strconv.AppendFloat(b, v, 'g', -1, 64)
	}
	s.fields = s.fields[:0]
	if !s.opts.NoStrings {
		s.fields = slices.AppendSeq(s.fields, maps.Keys(p.Strings))
	}
	slices.Sort(s.fields)
	for _, k := range s.fields {
		v := p.Strings[k]
		switch {
		case k == "" || k == timeKey:
			rejected++
			continue
		case len(v) > maxInfluxString:
			tooLong++
			continue
		}
		b = appendInfluxKey(b, sep, k)
		sep = ','
		b = appendInfluxString(b, v)
	}
	if sep == ' ' { // no field
		return b[:start], rejected, tooLong
	}
	b = append(b, ' ')
	b = strconv.AppendInt(b, p.Time.UnixMilli(), 10)
	b = append(b, '\n')
	return b, rejected, tooLong
}

// appendInfluxName appends a measurement (key false) or a tag key, tag value
// or field key (key true), escaped as line protocol wants: a backslash
// before each comma and space, and, in keys and tag values, before each '='.
// Line protocol has no escape for a newline, which becomes a space, nor for
// a backslash at the end of a name: InfluxDB takes any separator after a
// backslash as escaped, a doubled one included, and would refuse the line
// or read the rest of it into the name. A name that ends in a backslash
// gets a '_' after it, and is stored so (`C:\data\` as `C:\data\_`).
func appendInfluxName(b []byte, s string, key bool) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case ',', ' ':
			b = append(b, '\\', c)
		case '=':
			if key {
				b = append(b, '\\')
			}
			b = append(b, c)
		case '\n', '\r':
			b = append(b, '\\', ' ')
		case '\\':
			b = append(b, c)
			if i == len(s)-1 {
				b = append(b, '_')
			}
		default:
			b = append(b, c)
		}
	}
	return b
}

// appendInfluxKey appends sep, the tag or field key k escaped as a key, and
// the '=' before its value.
func appendInfluxKey(b []byte, sep byte, k string) []byte {
	b = append(b, sep)
	b = appendInfluxName(b, k, true)
	return append(b, '=')
}

// appendInfluxString appends a string field value: in double quotes, with a
// backslash before each double quote and backslash.
func appendInfluxString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '"' || c == '\\' {
			b = append(b, '\\')
		}
		b = append(b, c)
	}
	return append(b, '"')
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
